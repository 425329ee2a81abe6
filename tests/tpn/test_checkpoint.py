"""Checkpoint formats: own, original TPN (decisionforce), mmaction2, 2D ImageNet inflation.

Foreign checkpoints are made here by renaming a model's own state dict with
the declarative key maps, then loaded back: the round trip must be exact.
"""

import logging

import pytest
import torch

import tpn
from tpn.checkpoint import (
    MMACTION2_3D,
    MMACTION2_TSM,
    ORIGINAL_TPN,
    TORCHVISION_2D,
    CheckpointError,
    convert_state_dict,
    detect_format,
    map_key,
    save_checkpoint,
)

TINY = tpn.list_models("*tiny*")


def fresh(name: str, seed: int, **kw):
    torch.manual_seed(seed)
    return tpn.create_model(name, **kw).eval()


def randomize_bn_stats(model):
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(11)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def mmaction_map(name):
    return MMACTION2_TSM if tpn.get_config(name).backbone == "tsm" else MMACTION2_3D


# --------------------------------------------------------------- key maps


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("fmt", ["original", "mmaction2"])
def test_foreign_round_trip_is_bit_identical(name, fmt, tmp_path):
    src = fresh(name, 0)
    randomize_bn_stats(src)
    keymap = ORIGINAL_TPN if fmt == "original" else mmaction_map(name)
    foreign = convert_state_dict(src.state_dict(), keymap)
    assert convert_state_dict(foreign, keymap, reverse=True).keys() == src.state_dict().keys()
    path = tmp_path / "foreign.pth"
    torch.save({"meta": {"epoch": 150}, "state_dict": foreign}, path)
    dst = fresh(name, 1)
    report = tpn.load_checkpoint(dst, path)
    assert report.format == fmt or (fmt == "original" and not src.config.with_tpn)
    assert_same_state(src, dst)


def test_original_tpn_names_and_shapes_follow_the_reference():
    with torch.device("meta"):
        model = tpn.create_model("tpn_r50_f8s8")
    sd = convert_state_dict(model.state_dict(), ORIGINAL_TPN)
    expected = {
        "backbone.conv1.weight": (64, 3, 1, 7, 7),
        "backbone.layer3.0.conv1.weight": (256, 512, 3, 1, 1),
        "backbone.layer2.0.conv1.weight": (128, 256, 1, 1, 1),
        "backbone.layer4.0.downsample.0.weight": (2048, 1024, 1, 1, 1),
        "necks.spatial_modulation.spatial_modulation.0.0.conv.weight": (2048, 1024, 1, 3, 3),
        "necks.temporal_modulation_ops.1.conv.weight": (1024, 64, 3, 1, 1),
        "necks.downsampling_ops.0.conv.weight": (1024, 1024, 3, 1, 1),
        "necks.level_fusion_op2.ops.0.conv.weight": (1024, 32, 1, 1, 1),
        "necks.level_fusion_op.ops.1.norm.running_var": (1024,),
        "necks.level_fusion_op.fusion_conv.0.weight": (2048, 2048, 1, 1, 1),
        "necks.pyramid_fusion_op.0.weight": (2048, 4096, 1, 1, 1),
        "necks.aux_head.convs.conv.weight": (2048, 1024, 1, 3, 3),
        "necks.aux_head.fc.weight": (400, 2048),
        "cls_head.fc_cls.weight": (400, 2048),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert detect_format(sd) == "original"


def test_mmaction2_names_follow_the_reference():
    with torch.device("meta"):
        tsm = tpn.create_model("tsm50_tpn_sthv1")
        slow = tpn.create_model("tpn_r50_f8s8")
    t = convert_state_dict(tsm.state_dict(), MMACTION2_TSM)
    s = convert_state_dict(slow.state_dict(), MMACTION2_3D)
    for k in [
        "backbone.conv1.conv.weight",
        "backbone.conv1.bn.running_mean",
        "backbone.layer1.0.conv1.conv.net.weight",
        "backbone.layer1.0.conv1.bn.weight",
        "backbone.layer1.0.conv2.conv.weight",
        "backbone.layer1.0.downsample.conv.weight",
        "neck.temporal_modulation_ops.0.conv.conv.weight",
        "neck.downsample_ops.0.conv.conv.weight",
        "neck.level_fusion_1.downsamples.0.conv.conv.weight",
        "neck.level_fusion_2.downsamples.1.conv.bn.bias",
        "neck.level_fusion_1.fusion_conv.conv.weight",
        "neck.pyramid_fusion.bn.weight",
        "neck.aux_head.conv.conv.weight",
        "neck.aux_head.fc.bias",
        "cls_head.fc_cls.weight",
    ]:
        assert k in t, k
    assert "backbone.layer3.0.conv1.conv.weight" in s and tuple(s["backbone.layer3.0.conv1.conv.weight"].shape) == (
        256,
        512,
        3,
        1,
        1,
    )
    assert detect_format(t) == detect_format(s) == "mmaction2"


def test_map_key_rejects_unknown_names():
    assert map_key("backbone.layer1.0.conv1.weight", MMACTION2_3D) == "backbone.layer1.0.conv1.conv.weight"
    assert map_key("neck.mystery.weight", ORIGINAL_TPN) is None
    with pytest.raises(CheckpointError, match="no mapping"):
        convert_state_dict({"neck.mystery.weight": torch.zeros(1)}, ORIGINAL_TPN)


# ---------------------------------------------------------- own format


def test_own_checkpoint_round_trip_and_create_model(tmp_path):
    src = fresh("tpn_tiny_f8s4", 0)
    randomize_bn_stats(src)
    path = save_checkpoint(tmp_path / "ckpt.pth", src, epoch=3)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left beside it
    dst = tpn.create_model("tpn_tiny_f8s4", checkpoint=path)
    assert_same_state(src, dst)
    raw = torch.load(path, weights_only=True)
    assert raw["name"] == "tpn_tiny_f8s4" and raw["epoch"] == 3


def test_wrong_model_is_refused_with_both_names(tmp_path):
    path = save_checkpoint(tmp_path / "tsm.pth", fresh("tsm_tiny_tpn", 0))
    with pytest.raises(CheckpointError, match="tsm_tiny_tpn") as e:
        tpn.create_model("tpn_tiny_f8s4", checkpoint=path)
    assert "tpn_tiny_f8s4" in str(e.value)


def test_test_time_checkpoint_without_aux_head_loads(tmp_path):
    src = fresh("tpn_tiny_f8s4", 0)
    sd = {k: v for k, v in convert_state_dict(src.state_dict(), ORIGINAL_TPN).items() if ".aux_head." not in k}
    dst = fresh("tpn_tiny_f8s4", 1)
    report = tpn.load_checkpoint(dst, {"state_dict": sd})
    assert any("auxiliary" in n for n in report.notes)
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_missing_keys_are_listed_when_strict():
    sd = fresh("tpn_tiny_f8s4", 0).state_dict()
    del sd["neck.pyramid_fusion.conv.weight"]
    with pytest.raises(CheckpointError, match="pyramid_fusion.conv.weight"):
        tpn.load_checkpoint(fresh("tpn_tiny_f8s4", 1), sd)
    report = tpn.load_checkpoint(fresh("tpn_tiny_f8s4", 1), sd, strict=False)
    assert "neck.pyramid_fusion.conv.weight" in report.missing


def test_other_class_count_needs_an_explicit_choice():
    sd = fresh("tpn_tiny_f8s4", 0, num_classes=5).state_dict()
    with pytest.raises(CheckpointError, match="num_classes=5"):
        tpn.load_checkpoint(fresh("tpn_tiny_f8s4", 1), sd)
    dst = fresh("tpn_tiny_f8s4", 1)
    before = dst.cls_head.fc_cls.weight.clone()
    report = tpn.load_checkpoint(dst, sd, drop_classifier=True)
    assert "cls_head.fc_cls.weight" in report.dropped
    assert torch.equal(dst.cls_head.fc_cls.weight, before)
    assert torch.equal(dst.backbone.conv1.weight, sd["backbone.conv1.weight"])


def test_mmaction2_tsm_switches_the_shortcut_input(tmp_path, caplog):
    src = fresh("tsm_tiny_tpn", 0)
    foreign = convert_state_dict(src.state_dict(), MMACTION2_TSM)
    dst = fresh("tsm_tiny_tpn", 1)
    with caplog.at_level(logging.INFO, logger="tpn.checkpoint"):
        report = tpn.load_checkpoint(dst, {"state_dict": foreign})
    assert "unshifted" in caplog.text and any("mmaction2" in n for n in report.notes)
    blocks = [m for m in dst.backbone.modules() if hasattr(m, "downsample")]
    assert blocks and not any(b.shift_shortcut for b in blocks)
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        assert not torch.equal(src(x), dst(x))  # same weights, mmaction2's shortcut input
    # Fine-tuned mmaction2 weights saved in our format keep mmaction2's behaviour.
    path = save_checkpoint(tmp_path / "ft.pth", dst)
    again = fresh("tsm_tiny_tpn", 2)
    tpn.load_checkpoint(again, path)
    assert not again.backbone.shift_shortcut
    # The original TPN format switches back to the shifted shortcut.
    tpn.load_checkpoint(dst, {"state_dict": convert_state_dict(src.state_dict(), ORIGINAL_TPN)})
    assert all(b.shift_shortcut for b in blocks)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


# ------------------------------------------------------------- bad files


class NotATensor:
    pass


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        tpn.load_checkpoint(fresh("tpn_tiny_f8s4", 0), path)


def test_bad_files_get_clear_errors(tmp_path):
    model = fresh("tpn_tiny_f8s4", 0)
    with pytest.raises(CheckpointError, match="does not exist"):
        tpn.load_checkpoint(model, tmp_path / "nope.pth")
    path = save_checkpoint(tmp_path / "ok.pth", model)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        tpn.load_checkpoint(model, cut)
    with pytest.raises(CheckpointError, match="unrecognised"):
        tpn.load_checkpoint(model, {"state_dict": {"foo.weight": torch.zeros(1)}})


# ------------------------------------------------------------- what a checkpoint says about its classes


def test_checkpoint_classes_reads_count_and_names_of_own_files(tmp_path):
    model = fresh("tpn_tiny_f8s4", 0, num_classes=3)
    path = save_checkpoint(tmp_path / "ft.pth", model, classes=["walk", "run", "jump"])
    assert tpn.checkpoint_classes(path) == tpn.ClassInfo(num_classes=3, names=["walk", "run", "jump"])
    bare = save_checkpoint(tmp_path / "bare.pth", model)
    assert tpn.checkpoint_classes(str(bare)) == tpn.ClassInfo(num_classes=3, names=None)


@pytest.mark.parametrize(
    "obj, expected",
    [
        ({"state_dict": {}, "num_classes": 7}, (None, None)),  # a count outside this project's format is not trusted
        ({"state_dict": {}, "classes": ("a", "b")}, (None, ["a", "b"])),  # names from any checkpoint dict
        ({"format": "tpn-toolkit", "num_classes": 2, "classes": ["a", 1]}, (2, None)),  # names must be strings
        ({"format": "tpn-toolkit", "num_classes": None}, (None, None)),
    ],
)
def test_checkpoint_classes_of_loaded_dicts(obj, expected):
    info = tpn.checkpoint_classes(obj)
    assert (info.num_classes, info.names) == expected


def test_checkpoint_classes_reads_weights_only_and_explains_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        tpn.checkpoint_classes(tmp_path / "nope.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"format": "tpn-toolkit", "num_classes": 2, "obj": NotATensor()}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        tpn.checkpoint_classes(evil)


# ------------------------------------------------------------- ImageNet


def imagenet_2d_state_dict(seed: int) -> dict:
    """A torchvision-style 2D ResNet state dict of the tiny width (TSM names are torchvision's)."""
    sd = {
        k[len("backbone.") :]: v
        for k, v in fresh("tsm_tiny_baseline", seed).state_dict().items()
        if k.startswith("backbone.")
    }
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 256), torch.zeros(1000)
    return sd


def test_imagenet_inflation_repeats_over_time_and_divides(tmp_path):
    sd2d = imagenet_2d_state_dict(3)
    torch.save(sd2d, tmp_path / "r50.pth")
    model = fresh("tpn_tiny_f8s4", 0)
    neck_before = model.neck.pyramid_fusion.conv.weight.clone()
    report = tpn.init_from_imagenet(model, tmp_path / "r50.pth")
    assert report.loaded == len(sd2d) - 2
    w3 = model.backbone.layer3[0].conv1.weight  # (out, in, 3, 1, 1)
    assert w3.shape[2] == 3
    for t in range(3):
        assert torch.allclose(w3[:, :, t], sd2d["layer3.0.conv1.weight"] / 3)
    assert torch.equal(model.backbone.conv1.weight[:, :, 0], sd2d["conv1.weight"])
    assert torch.equal(model.backbone.layer1[0].bn2.running_var, sd2d["layer1.0.bn2.running_var"])
    assert torch.equal(model.neck.pyramid_fusion.conv.weight, neck_before)
    # A static clip through an inflated 1x1 conv gives the 2D response (away from the time padding).
    x = torch.randn(1, w3.shape[1], 1, 2, 2).expand(1, -1, 5, 2, 2)
    y3 = torch.nn.functional.conv3d(x, w3, padding=(1, 0, 0))[:, :, 2]
    y2 = torch.nn.functional.conv2d(x[:, :, 0], sd2d["layer3.0.conv1.weight"])
    assert torch.allclose(y3, y2, atol=1e-5)


def test_imagenet_init_for_tsm_loads_as_is_and_rejects_video_files():
    sd2d = imagenet_2d_state_dict(4)
    model = fresh("tsm_tiny_tpn", 0)
    tpn.init_from_imagenet(model, sd2d)
    assert torch.equal(model.backbone.layer2[0].conv2.weight, sd2d["layer2.0.conv2.weight"])
    assert map_key("layer1.0.conv1.weight", TORCHVISION_2D, reverse=True) == "backbone.layer1.0.conv1.weight"
    with pytest.raises(CheckpointError, match="2D ImageNet"):
        tpn.load_checkpoint(model, sd2d)
    with pytest.raises(CheckpointError, match="not a torchvision-style"):
        tpn.init_from_imagenet(model, fresh("tsm_tiny_tpn", 1).state_dict())


def test_a_checkpoint_of_another_architecture_is_refused_even_when_every_shape_fits(tmp_path):
    """tpn_tiny_f8s4 and tpn_tiny_pyr_f8s4 hold the same tensor shapes but different necks: their
    outputs differ, so loading one into the other names both models and what differs."""
    src = fresh("tpn_tiny_f8s4", 0)
    path = save_checkpoint(tmp_path / "f8s4.pth", src)
    dst = fresh("tpn_tiny_pyr_f8s4", 1)
    assert {k: v.shape for k, v in src.state_dict().items()} == {k: v.shape for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"'tpn_tiny_f8s4'.*'tpn_tiny_pyr_f8s4'.*neck\.temporal_scales") as e:
        tpn.load_checkpoint(dst, path)
    assert "--allow-other-architecture" in str(e.value) and "aux_head" not in str(e.value)
    report = tpn.load_checkpoint(dst, path, other_architecture=True)  # the explicit way
    assert any("loaded anyway" in n for n in report.notes)
    assert_same_state(src, dst)
    same = fresh("tpn_tiny_f8s4", 2)
    assert not tpn.load_checkpoint(same, path).notes  # its own architecture: no word
    # a checkpoint written before the architecture was recorded keeps the key-based rules (a note)
    old = {k: v for k, v in torch.load(path, weights_only=True).items() if k != "architecture"}
    assert any("saved from tpn_tiny_f8s4" in n for n in tpn.load_checkpoint(fresh("tpn_tiny_pyr_f8s4", 3), old).notes)


def test_a_file_that_is_no_checkpoint_is_told_so(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(64))
    with pytest.raises(CheckpointError, match=r"clip.mp4 is not a PyTorch checkpoint \(it looks like an MP4") as e:
        tpn.read_checkpoint(video)
    assert "arbitrary Python objects" not in str(e.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint \(it starts with b'hello'"):
        tpn.read_checkpoint(text)
    import io
    import tarfile

    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("key.lbl"), io.BytesIO())
    with pytest.raises(CheckpointError, match=r"it looks like a tar archive \(a shard\?\)"):
        tpn.read_checkpoint(shard)
