"""`pipeline.ClipLoader` end to end on CPU, on tiny VP9 and JPEG frame shards whose frames say what they are.

Every test that takes the `coded` or `gradient` fixture runs once per shard format.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import ClipLoader, ClipSpec
from pipeline.clips import sampling
from pipeline import ShardReadError
from tests.clipdata import CODED, SMALL, coded_frames, coded_shards, frame_codes, gradient_shards, make_shards, to_rgb


FORMATS = ["vp9", "jpeg"]


@pytest.fixture(scope="module", params=FORMATS)
def coded(request, tmp_path_factory) -> Path:
    return coded_shards(tmp_path_factory.mktemp(f"coded-{request.param}"), codec=request.param)


@pytest.fixture(scope="module", params=FORMATS)
def gradient(request, tmp_path_factory) -> Path:
    return gradient_shards(tmp_path_factory.mktemp(f"gradient-{request.param}"), codec=request.param)


def is_frames(shards: Path) -> bool:
    return json.loads((shards / "manifest.json").read_text())["settings"]["codec"] == "jpeg"


# The CPU backends: DALI's graph ("dali": decoder "cpu"), the host threads ("host", the CPU default), and for
# video shards PyAV-decoded frames augmented by DALI ("pyav").
BACKENDS = ["dali", "host", "pyav"]


def decoder_of(shards: Path, backend: str) -> str:
    """The decoder that picks `backend` for these shards (frame shards have no "pyav" backend: skipped)."""
    if backend == "pyav" and is_frames(shards):
        pytest.skip("decoder='pyav' decodes video shards")
    return {"dali": "cpu", "host": "host", "pyav": "pyav"}[backend]


def loader(shards, spec=SMALL, backend: str | None = None, **kw) -> ClipLoader:
    """A CPU loader with keys; `backend` ("dali" or "host") picks the decoder, else the default ("auto")."""
    kw.setdefault("batch_size", 2)
    if backend is not None:
        kw["decoder"] = decoder_of(Path(shards), backend)
    return ClipLoader(shards, spec, device="cpu", return_keys=True, **kw)


def expected_train_view(ld: ClipLoader, key: str, epoch: int) -> sampling.TrainView:
    index = [ld.data.key(i) for i in range(len(ld.data))].index(key)
    meta = ld.data.meta(index)
    rng = sampling.sample_rng(ld.seed, epoch, index)
    return sampling.draw_train_view(ld.clip, ld.data.frame_count(index), meta["height"], meta["width"], rng)


def every_batch(ld: ClipLoader):
    """The loader's batches; afterwards, that there were exactly len(ld) of them, and some: a loop over them
    asserts something only if batches come."""
    count = 0
    for batch in ld:
        count += 1
        yield batch
    assert count == len(ld) > 0, f"{count} batches, len() {len(ld)}"


def all_batches(ld: ClipLoader) -> list:
    return [(c.clone(), labels.clone(), k) for c, labels, k in ld]


# -- shapes, values, labels -------------------------------------------------------------------


def test_train_batches_shape_dtype_and_value_range(coded):
    ld = loader(coded)
    batches = all_batches(ld)
    assert len(batches) == len(ld) == 4  # 8 videos, batch 2
    lo = (0 - max(SMALL.mean)) / min(SMALL.std)
    hi = (255 - min(SMALL.mean)) / min(SMALL.std)
    for clips, labels, keys in batches:
        assert clips.shape == (2, 3, 4, 32, 32) and clips.dtype == torch.float32
        assert labels.shape == (2,) and labels.dtype == torch.int64
        assert lo <= clips.min() and clips.max() <= hi and len(keys) == 2
    assert ld.classes == ["a", "b", "c"] and ld.num_classes == 3


def test_labels_follow_classes_json(coded):
    ld = loader(coded, mode="test", batch_size=3)
    for _, labels, keys in every_batch(ld):
        assert [ld.classes[int(label)] for label in labels] == [k[0] for k in keys]


@pytest.mark.parametrize(
    "spec",
    [
        SMALL,  # span 10: the 9-frame video loops
        SMALL.replace(frames=8, stride=8, short_video="edge"),  # span 57: most videos are short
        SMALL.replace(frames=5, sampling="segments"),
    ],
    ids=["dense4x3", "dense8x8-edge", "segments5"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_clips_hold_exactly_the_sampled_frames(coded, spec, backend):
    ld = loader(coded, spec, backend, seed=5)
    ld.set_epoch(2)
    for clips, _, keys in every_batch(ld):
        got = frame_codes(clips, spec)
        want = [expected_train_view(ld, k, 2).indices for k in keys]
        np.testing.assert_array_equal(got, np.stack(want))


@pytest.mark.parametrize(
    "spec,clips",
    [
        (SMALL.replace(test_crops="three", test_flip=True), 3),
        (SMALL.replace(frames=4, sampling="segments", twice_sample=True, test_crops="center"), 2),
    ],
    ids=["dense-3clips-3crops-flip", "segments-twice"],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_test_views_are_clips_major_with_the_spread_frames(coded, spec, clips, backend):
    ld = loader(coded, spec, backend, mode="test", batch_size=3)
    views = spec.num_test_views
    for batch, _, keys in every_batch(ld):
        assert batch.shape[1:] == (views, 3, spec.frames, 48, 48)
        got = frame_codes(batch, spec)  # (N, V, F)
        for sample, key in zip(got, keys):
            count = int(key.split("-")[0].split("_")[1])  # frame count is in the source file name
            want = sampling.clip_indices(spec, count, "test")
            assert want.shape[0] == clips
            np.testing.assert_array_equal(sample, np.repeat(want, views // clips, axis=0))


def test_test_mode_keeps_the_last_partial_batch(coded):
    ld = loader(coded, mode="test", batch_size=3)
    sizes = [len(k) for _, _, k in ld]
    assert sizes == [3, 3, 2] and len(ld) == 3


# -- determinism, resume, ranks ---------------------------------------------------------------


def test_same_seed_same_batches_whatever_ran_before(coded):
    first = loader(coded, seed=11)
    first.set_epoch(1)
    reference = all_batches(first)
    other = loader(coded, seed=11)
    for _ in other:  # epoch 0 first, then epoch 1
        pass
    other.set_epoch(1)
    for (a, la, ka), (b, lb, kb) in zip(reference, all_batches(other), strict=True):
        assert ka == kb and torch.equal(la, lb) and torch.equal(a, b)
    changed = loader(coded, seed=12)
    changed.set_epoch(1)
    assert any(not torch.equal(a, b) for (a, _, _), (b, _, _) in zip(reference, all_batches(changed)))


def test_resume_mid_epoch_is_bit_identical(coded):
    ld = loader(coded, seed=3)
    ld.set_epoch(4)
    full = all_batches(ld)
    ld.set_epoch(4, start_batch=2)
    resumed = all_batches(ld)
    assert len(resumed) == len(full) - 2
    for (a, la, ka), (b, lb, kb) in zip(full[2:], resumed, strict=True):
        assert ka == kb and torch.equal(la, lb) and torch.equal(a, b)
    assert len(all_batches(ld)) == len(full)  # start_batch applies once


def test_epochs_reshuffle(coded):
    ld = loader(coded)
    order0 = [k for _, _, keys in ld for k in keys]
    ld.set_epoch(1)
    assert order0 != [k for _, _, keys in ld for k in keys]


def test_two_ranks_see_disjoint_samples(coded):
    train = [loader(coded, rank=r, world_size=2) for r in (0, 1)]
    keys = [[k for _, _, ks in ld for k in ks] for ld in train]
    assert len(train[0]) == len(train[1]) == 2
    assert not set(keys[0]) & set(keys[1]) and len(keys[0]) == len(keys[1]) == 4
    test = [loader(coded, mode="test", batch_size=3, rank=r, world_size=2) for r in (0, 1)]
    seen = [k for ld in test for _, _, ks in ld for k in ks]
    assert sorted(seen) == sorted(loader(coded).data.key(i) for i in range(8))


def test_rank_and_world_size_come_from_torch_distributed(monkeypatch):
    from pipeline.clips.loader import resolve_rank

    assert resolve_rank(None, None) == (0, 1)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    assert resolve_rank(None, None) == (3, 4)
    assert resolve_rank(0, 2) == (0, 2)  # explicit arguments win
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(4, None)


# -- crops and flips ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_crop_box_and_flip_with_label_swap(gradient, backend):
    spec = ClipSpec(frames=2, stride=1, crop_size=32, flip_label_map=((0, 1),))
    ld = loader(gradient, spec, backend, batch_size=1, seed=0)
    flips = set()
    for epoch in range(6):
        ld.set_epoch(epoch)
        for clips, labels, keys in every_batch(ld):
            view = expected_train_view(ld, keys[0], epoch)
            red = to_rgb(clips, spec)[0, 0].mean(dim=0)  # (H, W)
            left, right = red[:, :4].mean(), red[:, -4:].mean()
            assert (left > right) == view.flip  # the ramp runs left to right unless flipped
            meta = ld.data.meta([ld.data.key(i) for i in range(2)].index(keys[0]))
            centre_x = view.box.x + (view.box.w - 1) / 2
            assert abs(red.mean() - 255 * centre_x / (meta["width"] - 1)) < 12
            natural = ld.classes.index(keys[0].split("-")[0])
            assert int(labels[0]) == (1 - natural if view.flip else natural)
            flips.add(view.flip)
    assert flips == {True, False}


def test_three_test_crops_run_along_the_long_side(gradient):
    spec = ClipSpec(frames=2, stride=1, test_clips=1, test_scale=64, test_crop=64, test_flip=True)
    ld = loader(gradient, spec, mode="test", batch_size=1)
    for clips, _, keys in every_batch(ld):
        rgb = to_rgb(clips[0], spec).mean(dim=(2, 3, 4))  # (V, 3)
        along = rgb[:, 0] if keys[0].startswith("wide") else rgb[:, 1]
        across = rgb[:, 1] if keys[0].startswith("wide") else rgb[:, 0]
        # views: (left, flipped left, centre, flipped centre, right, flipped right)
        assert along[0] < along[2] < along[4] and torch.allclose(along[0::2], along[1::2], atol=1)
        assert torch.allclose(across, across[0], atol=2)
        assert clips.shape[-2:] == (64, 64)


def test_full_frame_test_views_keep_the_whole_resized_frame(gradient):
    spec = ClipSpec(frames=2, stride=1, test_clips=2, test_scale=32, test_crops="full")
    shapes = {
        keys[0].split("-")[0]: clips.shape for clips, _, keys in loader(gradient, spec, mode="test", batch_size=1)
    }
    assert shapes == {"wide": (1, 2, 3, 2, 32, 48), "tall": (1, 2, 3, 2, 48, 32)}


def test_colour_jitter_changes_colours_but_not_frames(gradient):
    # Frames: the jittered spec draws the same frames, box and flip as the plain one (jitter is drawn last).
    spec = SMALL.replace(color_jitter=True)
    for i, (n, height, width) in enumerate([(9, 48, 64), (70, 48, 64), (33, 240, 320), (12, 96, 64)]):
        with_jitter, without = (
            sampling.draw_train_view(s, n, height, width, sampling.sample_rng(1, 0, i))
            for s in (spec, spec.replace(color_jitter=False))
        )
        assert with_jitter.jitter is not None and without.jitter is None
        assert np.array_equal(with_jitter.indices, without.indices)
        assert (with_jitter.box, with_jitter.flip) == (without.box, without.flip)
    # Pixels: on the gradient videos (every pixel a different colour), each jittered clip is one colour
    # transform of the plain clip: an affine map of RGB fits every pixel of every frame, so the same
    # frames were cropped and flipped the same way; and that map is not the identity.
    spec = ClipSpec(frames=2, stride=1, crop_size=32, color_jitter=True)
    plain = all_batches(loader(gradient, spec.replace(color_jitter=False), batch_size=1, seed=1))
    jittered = all_batches(loader(gradient, spec, batch_size=1, seed=1))
    for (a, _, ka), (b, _, kb) in zip(plain, jittered, strict=True):
        assert ka == kb and a.shape == b.shape
        x = to_rgb(a[0], spec).reshape(3, -1).T.double()  # (pixels, 3)
        y = to_rgb(b[0], spec).reshape(3, -1).T.double()
        inside = ((y > 8) & (y < 247)).all(dim=1)  # leave out pixels the jitter clipped at 0 or 255
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)[inside]
        fit = torch.linalg.lstsq(design, y[inside]).solution  # (4, 3)
        residual = (design @ fit - y[inside]).abs()
        assert inside.float().mean() > 0.5 and residual.quantile(0.99) < 6, (ka, residual.max())
        assert (y - x).abs().mean() > 3  # the colours did change


# -- bad input ------------------------------------------------------------------------------


def test_bad_shard_arguments_fail_at_construction(tmp_path, coded):
    with pytest.raises(FileNotFoundError, match="does not exist.*pipeline.shard"):
        loader(tmp_path / "nowhere")
    with pytest.raises(ShardReadError, match="empty shard list"):
        loader([])
    video = tmp_path / "x.mp4"  # a video where shards are expected (e.g. tpn.train --train x.mp4)
    video.write_bytes(b"\x00\x00\x00\x18ftypisom")
    with pytest.raises(ShardReadError, match="x.mp4 is not a shard"):
        loader([video])
    with pytest.raises(ShardReadError, match="no shards matching 'val-\\*.tar'"):
        loader(coded, split="val")
    with pytest.raises(ValueError, match="no full batch"):
        loader(coded, batch_size=9)
    with pytest.raises(ValueError, match="test_crop"):
        loader(coded, SMALL.replace(test_crop=64))
    with pytest.raises(ValueError, match="decoder must be one of 'auto', 'nvdec', 'cpu', 'pyav'"):
        loader(coded, decoder="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_gpu_without_a_gpu_says_what_to_use(coded):
    with pytest.raises(RuntimeError, match="no CUDA GPU.*device='cpu'"):
        ClipLoader(coded, SMALL, batch_size=2, device="gpu")


@pytest.mark.parametrize("has_gpu", [False, True])
def test_loader_device_vocabulary(has_gpu, monkeypatch):
    # "cuda" names the same place as "gpu"; what comes back is always "gpu" or "cpu"
    from pipeline.clips import loader

    monkeypatch.setattr(loader.torch.cuda, "is_available", lambda: has_gpu)
    monkeypatch.setattr(loader, "dali_gpu_count", lambda: int(has_gpu))
    assert loader.resolve_loader_device("cpu") == "cpu"
    assert loader.resolve_loader_device("auto") == ("gpu" if has_gpu else "cpu")
    for name in ("gpu", "cuda"):
        if has_gpu:
            assert loader.resolve_loader_device(name) == "gpu"
        else:
            with pytest.raises(RuntimeError, match=f"device='{name}' but torch and DALI see no CUDA GPU"):
                loader.resolve_loader_device(name)
    with pytest.raises(ValueError, match="'auto', 'cpu', 'gpu' or 'cuda'.*got 'cuda:0'"):
        loader.resolve_loader_device("cuda:0")


def copy_shards(src: Path, dst: Path) -> list[Path]:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return sorted(dst.glob("*.tar"))


def test_missing_index_says_how_to_build_it(tmp_path, coded):
    tars = copy_shards(coded, tmp_path / "s")
    tars[1].with_suffix(".idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing DALI index .*wds2idx"):
        loader(tmp_path / "s")


def test_truncated_shard_is_named_at_construction(tmp_path, coded):
    tars = copy_shards(coded, tmp_path / "s")
    tars[0].write_bytes(tars[0].read_bytes()[:3000])
    with pytest.raises(ShardReadError, match=rf"{tars[0].name} is truncated.*pipeline.verify"):
        loader(tmp_path / "s")


def test_h264_shards_with_dalis_cpu_decoder_say_what_to_use(tmp_path):
    out = make_shards(tmp_path, {"a": [("x", coded_frames(10))]}, codec="h264")
    with pytest.raises(ValueError, match=r"H\.264.*decoder='host'.*--codec vp9"):
        loader(out, decoder="cpu")


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_h264_shards_decode_exactly_on_cpu(tmp_path, decoder):
    out = make_shards(tmp_path, {"a": [("a0_23", coded_frames(23)), ("a1_9", coded_frames(9))]}, codec="h264")
    ld = loader(out, decoder=decoder, seed=1)
    assert ld.decoder == ("host" if decoder == "auto" else "pyav")
    batches = 0
    for clips, _, keys in every_batch(ld):
        np.testing.assert_array_equal(
            frame_codes(clips, SMALL), np.stack([expected_train_view(ld, k, 0).indices for k in keys])
        )
        batches += 1
    assert batches == len(ld) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_video_names_shard_and_key_and_does_not_hang(tmp_path, coded, backend):
    """Zero part of one video (or of one JPEG frame) inside its tar: decoding fails; the error must name it."""
    frames, decoder = is_frames(coded), decoder_of(coded, backend)
    tars = copy_shards(coded, tmp_path / "s")
    line = tars[0].with_suffix(".idx").read_text().splitlines()[1].split()
    at = line.index("000000.jpg") if frames else 0  # frame 0 is in every test clip plan below
    offset, size, name = int(line[at + 1]), int(line[at + 2]), line[at + 3]
    blob = bytearray(tars[0].read_bytes())
    # A JPEG loses its start (libjpeg decodes damaged data with warnings only); a video its back two thirds.
    lo, hi = (offset, offset + size // 2) if frames else (offset + size // 3, offset + size)
    blob[lo:hi] = bytes(hi - lo)
    tars[0].write_bytes(bytes(blob))
    script = textwrap.dedent(f"""
        from pipeline import ClipLoader, ClipSpec
        from pipeline import DataError
        spec = ClipSpec(frames=8, stride=8, test_clips=2, test_scale=48, test_crop=48, test_crops="center")
        try:
            for _ in ClipLoader({str(tmp_path / "s")!r}, spec, mode="test", batch_size=3, device="cpu",
                                decoder={decoder!r}):
                pass
        except DataError as err:
            print("ERROR", err)
    """)
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert "ERROR" in run.stdout, run.stdout + run.stderr[-2000:]
    message = run.stdout
    expected = "frame 0" if frames else "DALI could not decode" if decoder == "cpu" else "PyAV could not decode"
    assert expected in message
    assert tars[0].name in message and name.split(".")[0] in message and "pipeline.verify" in message


# -- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "codec, decoder",
    [("vp9", "nvdec"), ("h264", "nvdec"), ("vp9", "cpu"), ("jpeg", "nvjpeg"), ("jpeg", "cpu"), ("jpeg", "host")],
)
def test_gpu_loader_decodes_the_sampled_frames(tmp_path, codec, decoder):
    # NVDEC's smallest VP9 frame is 128x128, so these videos are larger than the CPU fixtures.
    videos = {
        c: [(f"{c}{j}_{n}", coded_frames(n, (192, 144))) for j, n in enumerate(ns)]
        for c, ns in {"a": [70, 9], "b": [40, 23]}.items()
    }
    shards = make_shards(tmp_path, videos, codec=codec)
    train = ClipLoader(shards, SMALL, batch_size=2, device="gpu", decoder=decoder, return_keys=True, seed=2)
    for clips, labels, keys in every_batch(train):
        assert clips.is_cuda and labels.is_cuda and clips.shape == (2, 3, 4, 32, 32)
        want = np.stack([expected_train_view(train, k, 0).indices for k in keys])
        np.testing.assert_array_equal(frame_codes(clips.cpu(), SMALL), want)
    spec = SMALL.replace(test_scale=144, test_crop=144)
    test = ClipLoader(shards, spec, mode="test", batch_size=3, device="gpu", decoder=decoder, return_keys=True)
    for clips, _, keys in every_batch(test):
        assert clips.is_cuda and clips.shape[1:] == (spec.num_test_views, 3, 4, 144, 144)
        for sample, key in zip(frame_codes(clips.cpu(), spec), keys):
            want = sampling.clip_indices(spec, int(key.split("-")[0].split("_")[1]), "test")
            np.testing.assert_array_equal(sample, np.repeat(want, 3, axis=0))


@pytest.mark.gpu
@pytest.mark.parametrize("codec, decoder", [("vp9", "cpu"), ("jpeg", "nvjpeg"), ("jpeg", "host")])
def test_a_gpu_batch_the_caller_keeps_is_never_written_again(tmp_path, codec, decoder):
    videos = {c: [(f"{c}{j}_{n}", coded_frames(n, (192, 144))) for j, n in enumerate(ns)] for c, ns in CODED.items()}
    ld = ClipLoader(make_shards(tmp_path, videos, codec=codec), SMALL, batch_size=1, prefetch=1, device="gpu",
                    decoder=decoder)  # fmt: skip
    kept = None
    for epoch in range(3):
        ld.set_epoch(epoch)
        for clips, _ in every_batch(ld):
            if kept is None:
                kept, expected = clips, clips.clone()
    assert torch.equal(kept, expected)


def test_decoder_choice_per_device_and_codec():
    from pipeline.options import resolve_decoder

    # on a CPU: the host path for every codec; DALI's CPU decoder by name
    assert resolve_decoder("auto", "cpu", "vp9") == "host" and resolve_decoder("auto", "cpu", "h264") == "host"
    assert resolve_decoder("nvdec", "cpu", "vp9") == "cpu" and resolve_decoder("cpu", "cpu", "vp9") == "cpu"
    assert resolve_decoder("host", "gpu", "vp9") == "host" and resolve_decoder("pyav", "cpu", "vp9") == "pyav"
    # on a GPU: VP9 decodes faster on the CPU threads (measured), H.264 needs NVDEC
    assert resolve_decoder("auto", "gpu", "vp9") == "cpu" and resolve_decoder("auto", "gpu", "h264") == "nvdec"
    assert resolve_decoder("nvdec", "gpu", "vp9") == "nvdec" and resolve_decoder("cpu", "gpu", "h264") == "cpu"
    # frame shards: nvJPEG on a GPU, libjpeg-turbo on the CPU threads; video decoders are refused by name
    # frame shards: nvJPEG on a GPU, the host path (libjpeg-turbo + OpenCV) on a CPU, DALI's CPU decoder by name
    assert resolve_decoder("auto", "gpu", "jpeg") == "nvjpeg" and resolve_decoder("auto", "cpu", "jpeg") == "host"
    assert resolve_decoder("cpu", "gpu", "jpeg") == "cpu" and resolve_decoder("nvjpeg", "cpu", "jpeg") == "cpu"
    assert resolve_decoder("host", "gpu", "jpeg") == "host" and resolve_decoder("cpu", "cpu", "jpeg") == "cpu"
    # each kind of shard refuses the other kind's decoders by name
    with pytest.raises(ValueError, match="JPEG frames.*'auto', 'host', 'cpu', 'nvjpeg'"):
        resolve_decoder("nvdec", "gpu", "jpeg")
    with pytest.raises(ValueError, match="nvjpeg.*JPEG frame shards.*'auto', 'host', 'nvdec', 'cpu', 'pyav'"):
        resolve_decoder("nvjpeg", "gpu", "vp9")


# -- who owns a batch -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["train", "test"])
def test_a_batch_the_caller_keeps_is_never_written_again(coded, backend, mode):
    """Every backend yields batches the caller owns: one kept while the loader goes on (three more epochs,
    its memory pools cycling) holds what it held, in train and test mode alike."""
    ld = loader(coded, backend=backend, mode=mode, batch_size=1, prefetch=1)
    kept = None
    for epoch in range(3):
        ld.set_epoch(epoch)
        for clips, _, _ in every_batch(ld):
            if kept is None:  # the first batch of the first epoch, kept through every batch after it
                kept, expected = clips, clips.clone()
                view = kept[0]  # a view keeps the batch as much as the batch itself
    assert torch.equal(kept, expected) and torch.equal(view, expected[0])


def test_the_host_loader_reuses_the_memory_of_batches_let_go(coded):
    """Batches the caller drops give their memory back: the host path does not pay a fresh allocation's page
    faults on every batch."""
    ld = loader(coded, backend="host")
    addresses = []
    for epoch in range(3):
        ld.set_epoch(epoch)
        addresses += [clips.data_ptr() for clips, _, _ in every_batch(ld)]
    assert len(set(addresses)) < len(addresses)


def test_every_name_of_a_split_reads_it(coded, tmp_path):
    """One split vocabulary in every API: `validation` (or `VAL`) is `val`, `all` is every shard."""
    import shutil

    from pipeline.format.discovery import find_shards

    shards = tmp_path / "shards"
    shutil.copytree(coded, shards, ignore=shutil.ignore_patterns(".index"))
    (shards / "train-000000.tar").rename(shards / "val-000000.tar")
    (shards / "train-000000.idx").rename(shards / "val-000000.idx")
    for name in ("val", "validation", "VAL"):
        assert [t.name for t in find_shards(shards, name)] == ["val-000000.tar"]
    assert len(find_shards(shards, "all")) == len(find_shards(shards))
    with ClipLoader(shards, SMALL, batch_size=1, device="cpu", split="validation", mode="test") as ld:
        assert len(ld.data) == 3
