"""The CPU path needs no DALI: with DALI unimportable, the host loader loads clips and `export.predict`
classifies a video, and only a DALI decoder asked for by name says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.format.shardset import ShardSet
from tests.clipdata import coded_shards

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["nvidia"] = None  # no DALI: any `import nvidia...` fails as if it were not installed

    import torch
    import tpn
    from pipeline import ClipLoader
    from tpn.checkpoint import save_checkpoint
    from export.predict import main as predict
    from tests.clipdata import SMALL

    shards, video, work = sys.argv[1:4]
    with ClipLoader(shards, SMALL, batch_size=2, device="auto") as loader:
        clips, labels = next(iter(loader))
    print("DEVICE", loader.device, "DECODER", loader.decoder, "CLIPS", tuple(clips.shape))
    try:
        ClipLoader(shards, SMALL, batch_size=2, decoder="cpu")
    except ImportError as err:
        print("DALI DECODER:", err)
    torch.manual_seed(0)
    ckpt = save_checkpoint(f"{work}/tiny.pth", tpn.create_model("tpn_tiny_f8s4", num_classes=3))
    print("PREDICT", predict([str(ckpt), video, "--model", "tpn_tiny_f8s4"]))
    print("DALI LOADED", sorted(m for m in sys.modules if m.startswith("nvidia") and sys.modules[m] is not None))
""")


def test_host_clips_and_predict_run_without_dali(tmp_path):
    shards = coded_shards(tmp_path / "shards")
    video = tmp_path / "clip.webm"
    with ShardSet.open(shards) as data:
        video.write_bytes(bytes(data.member(0, "video")))
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(shards), str(video), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    assert "DEVICE cpu DECODER host CLIPS (2, 3, " in out
    assert "DALI DECODER: decoders 'cpu', 'nvjpeg', 'nvdec', 'pyav' run NVIDIA DALI, which is not installed" in out
    assert "[gpu]" in out and "PREDICT 0" in out and "DALI LOADED []" in out
