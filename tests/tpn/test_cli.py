"""One device vocabulary on every command line: tpn.train, tpn.test and the benchmarks share their flags."""

import argparse
import importlib
import typing

import pytest

from pipeline.clips import loader
from pipeline.cli import DECODERS, LOADER_DEVICES

SHARED = ("device", "loader_device", "decoder", "workers")  # dests of --device, --loader-device, --decoder, --workers


def train_parser() -> argparse.ArgumentParser:
    from tpn.train import build_parser

    return build_parser()


def eval_parser() -> argparse.ArgumentParser:
    from tpn.test import build_parser

    return build_parser()


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def test_train_and_test_take_the_same_device_and_loader_flags():
    train, test = actions(train_parser()), actions(eval_parser())
    for dest in SHARED:
        a, b = train[dest], test[dest]
        assert (a.option_strings, a.choices, a.type, a.help) == (b.option_strings, b.choices, b.type, b.help), dest
    assert tuple(train["loader_device"].choices) == LOADER_DEVICES and tuple(train["decoder"].choices) == DECODERS
    argv = ["--device", "cpu", "--loader-device", "cuda", "--decoder", "pyav", "--workers", "3"]
    got_train = vars(train_parser().parse_args(["tpn_tiny_f8s4", "--train", "x", "--out", "y", *argv]))
    got_test = vars(eval_parser().parse_args(["tpn_tiny_f8s4", "--checkpoint", "c", "--shards", "s", *argv]))
    assert (
        {k: got_train[k] for k in SHARED}
        == {k: got_test[k] for k in SHARED}
        == {"device": "cpu", "loader_device": "cuda", "decoder": "pyav", "workers": 3}
    )


def test_unset_flags_stay_out_of_a_training_namespace():
    # how a resumed run tells "not given" (keep the saved value) from "given"
    train = vars(train_parser().parse_args(["--resume", "run"]))
    assert not set(SHARED) & set(train) and "threads" not in train
    test = vars(eval_parser().parse_args(["tpn_tiny_f8s4", "--checkpoint", "c", "--shards", "s"]))
    assert {k: test[k] for k in SHARED} == {
        "device": "auto",
        "loader_device": "auto",
        "decoder": "auto",
        "workers": None,
    }


def test_the_flags_offer_what_the_loader_accepts():
    assert typing.get_args(loader.Device) == LOADER_DEVICES
    assert typing.get_args(loader.Decoder) == DECODERS


@pytest.mark.parametrize("bad", [["--loader-device", "tpu"], ["--decoder", "gpu"]])
def test_values_outside_the_vocabulary_are_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit):
        eval_parser().parse_args(["tpn_tiny_f8s4", "--checkpoint", "c", "--shards", "s", *bad])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, argv, dest, value",
    [
        ("benchmarks.data", ["--device", "cpu"], "loader_device", "cpu"),  # older name of --loader-device
        ("benchmarks.data", ["--loader-device", "cuda"], "loader_device", "cuda"),
        ("benchmarks.feed", ["--threads", "3"], "workers", 3),  # older name of --workers
        ("benchmarks.scale", ["--workers", "3"], "workers", 3),
        ("benchmarks.scale", ["--threads", "3"], "workers", 3),
        ("benchmarks.train", ["--device", "cuda:1"], "device", "cuda:1"),
    ],
)
def test_benchmarks_take_the_shared_flags_and_keep_their_older_names(module, argv, dest, value):
    parser = importlib.import_module(module).build_parser()
    assert getattr(parser.parse_args(argv), dest) == value
    assert actions(parser)[dest].help == actions(eval_parser())[dest].help  # one flag, one help text


def test_split_and_checkpoint_read_alike_in_test_export_and_benchmarks():
    from benchmarks.infer import build_parser as infer_parser
    from export.onnx import build_parser as onnx_parser
    from export.validate import build_parser as validate_parser

    test, gate, infer = actions(eval_parser()), actions(validate_parser()), actions(infer_parser())
    for other in (gate, infer):  # the same rule (pipeline.resolve_split), so the same words, but for the flag named
        assert other["split"].default == test["split"].default == "val"
        assert other["split"].help.replace("--val-shards", "X") == test["split"].help.replace("a --shards folder", "X")
    # --checkpoint: the formats are named once; required or not, and what for, is each tool's
    exported, infer_ckpt = actions(onnx_parser())["checkpoint"], infer["checkpoint"]
    assert test["checkpoint"].required and gate["checkpoint"].required and not exported.required
    assert "random weights, and the tool says so" in exported.help and "random weights" in infer_ckpt.help
    for a in (test["checkpoint"], gate["checkpoint"], exported, infer_ckpt):
        assert "the original TPN's or mmaction2's format" in a.help


def test_train_split_flags_read_like_the_test_split():
    # one rule (pipeline.resolve_split): a missing split is an error, 'all' reads every shard
    train, test = actions(train_parser()), actions(eval_parser())
    rule = test["split"].help.replace("a --shards folder", "X").replace("default: val", "D")
    assert train["train_split"].help.replace("a --train directory", "X").replace("default: train", "D") == rule
    assert train["val_split"].help.replace("a --val directory", "X").replace("default: val", "D") == rule
    for help_text in (train["train"].help, train["val"].help, test["shards"].help):
        assert "if any" not in help_text and "if present" not in help_text and "split" in help_text


def test_python_m_tpn_train_runs_the_trainer_module_once():
    """The command module is only the command line: running it as __main__ imports the trainer once (before,
    tpn/train.py ran as __main__ and was imported again, two copies of NonFiniteLoss and Trainer)."""
    import subprocess
    import sys

    script = (
        "import runpy, sys; sys.argv = ['tpn.train', '--help']\n"
        "try:\n    runpy.run_module('tpn.train', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "import gc\n"
        "copies = [o for o in gc.get_objects() if isinstance(o, type) and o.__name__ == 'NonFiniteLoss']\n"
        "print('tpn.train' in sys.modules, len(copies))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "False 1", run.stdout[-500:] + run.stderr[-2000:]
