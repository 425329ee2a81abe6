import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def onednn_convolutions():
    """At least 2 torch threads while a test counts layout copies on a CPU.

    With one thread PyTorch runs small unstrided convs with its NCDHW reference
    conv3d, which copies to and from NCDHW: a CPU backend choice, not the
    model's layout. (Other tests, e.g. tpn.train runs with --threads 1, leave
    the thread count changed.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3():
    """One local S3 server for the whole session (moto keeps its buckets per process anyway)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from tests.s3_helpers import start_s3

    fs, stop = start_s3()
    yield fs
    stop()
