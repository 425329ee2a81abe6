"""Training settings: the recipe defaults of a new run and the rules that rebuild a resumed run's settings."""

import logging
from pathlib import Path

import pytest

import tpn
from tpn.train_settings import TrainSettings, read_resume_checkpoint, resolve_settings, resumed_settings

MODEL = "tpn_tiny_f8s4"
CKPT = Path("runs/a/step_00000010.pth")


def saved(**changes) -> dict:
    """What a checkpoint of a run stopped by --max-steps 10 holds as its settings (lists, as JSON gives back)."""
    s = resolve_settings(MODEL, {"train": ["shards"], "out": "runs/a", "max_steps": 10, "lr": 0.1, **changes})
    return s.to_dict()


def test_a_new_run_takes_the_zoo_recipe_under_the_given_settings():
    recipe = tpn.get_config(MODEL).recipe
    s = resolve_settings(MODEL, {"train": ["shards"], "out": "runs/a", "epochs": 3})
    assert (s.epochs, s.batch_size, s.lr_steps, s.clip_grad) == (
        3,
        recipe.batch_size,
        recipe.lr_steps,
        recipe.clip_grad,
    )
    assert s.train == ("shards",) and s.lr is None  # None: the recipe's lr scaled to the global batch


@pytest.mark.parametrize(
    "given, expected",
    [
        ({}, {"out": "runs/a", "max_steps": None, "lr": 0.1}),  # max_steps is the earlier invocation's stop point
        ({"max_steps": 20}, {"max_steps": 20}),
        ({"lr": 0.5, "epochs": 4}, {"lr": 0.5, "epochs": 4}),
        ({"out": "runs/b"}, {"out": "runs/b"}),
        ({"batch_size": 8, "seed": 0}, {"batch_size": 8, "seed": 0}),  # the same values are fine
        ({"loader_device": "cuda", "workers": 3}, {"loader_device": "cuda", "workers": 3}),
        ({}, {"bn_impl": "auto"}),
        ({"bn_impl": "native"}, {"bn_impl": "native"}),  # switching BatchNorm kernels mid-run is allowed
    ],
)
def test_resumed_settings_are_the_saved_ones_under_the_given(given, expected):
    s = resumed_settings(saved(), given, None, CKPT)
    assert {k: getattr(s, k) for k in expected} == expected
    assert s.train == ("shards",) and s.model == MODEL


@pytest.mark.parametrize(
    "given, name, message",
    [
        (
            {"batch_size": 4},
            None,
            "--batch-size 4 differs from the resumed run's 8; an exact resume needs the same data order",
        ),
        ({"seed": 1}, None, "--seed 1 differs from the resumed run's 0"),
        ({}, "tsm_tiny_tpn", "trains 'tpn_tiny_f8s4', not 'tsm_tiny_tpn'"),
        ({"epochs": 0}, None, "--epochs must be >= 1"),
        ({"bn_impl": "reference"}, None, "--bn-impl must be one of auto, native"),
    ],
)
def test_resume_refuses_what_would_break_it(given, name, message):
    with pytest.raises(ValueError, match=message):
        resumed_settings(saved(), given, name, CKPT)


def test_resume_logs_the_changed_settings(caplog):
    with caplog.at_level(logging.INFO, logger="tpn.train"):
        resumed_settings(saved(), {"lr": 0.5, "epochs": 12}, MODEL, CKPT)
    assert "resuming with changed settings: {'lr': 0.5}" in caplog.text  # 12 epochs is the saved value


def test_saved_settings_round_trip_through_a_dict():
    s = resolve_settings(MODEL, {"train": ["a", "b"], "out": "o", "lr_steps": [2, 3]})
    assert TrainSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['colour'\]"):
        TrainSettings.from_dict({**s.to_dict(), "colour": "blue"})


def test_only_a_training_checkpoint_can_be_resumed(tmp_path):
    from tpn.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "step_00000001.pth", tpn.create_model(MODEL))
    with pytest.raises(ValueError, match="not a training checkpoint of tpn.train .* use --checkpoint"):
        read_resume_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint file"):
        read_resume_checkpoint(tmp_path / "elsewhere")
    assert path.exists()


def test_bn_impl_comes_from_the_settings_and_survives_a_saved_run(tmp_path):
    import torch

    from tpn.layers import BatchNorm3d
    from tpn.train import build_parser, settings_from_args
    from tpn.train_setup import build_train_model

    s, _ = settings_from_args(build_parser().parse_args([MODEL, "--train", "x", "--out", "y", "--bn-impl", "native"]))
    assert s.bn_impl == "native" and s.to_dict()["bn_impl"] == "native"  # settings.json and checkpoints keep it
    for impl in ("native", "auto"):
        model = build_train_model(
            TrainSettings.from_dict({**s.to_dict(), "bn_impl": impl}),
            8,
            torch.device("cpu"),
            False,
            initialise=False,
            is_main=True,
        )
        bns = [m for m in model.modules() if isinstance(m, BatchNorm3d)]
        assert bns and {m.impl for m in bns} == {impl}
    old = {k: v for k, v in saved().items() if k != "bn_impl"}  # settings saved before the flag existed
    assert resumed_settings(old, {}, None, CKPT).bn_impl == "auto"
