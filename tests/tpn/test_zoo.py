"""The zoo: names, configs, exact parameter counts, shapes, FCN testing, gradients."""

import dataclasses

import pytest
import torch
from torch import nn

import tpn
from pipeline import ClipSpec
from tpn.layers import temporal_shift
from tpn.neck import modulated_time

ZOO = {
    "baseline_r50_f8s8",
    "tpn_r50_f8s8",
    "baseline_r50_f16s4",
    "tpn_r50_f16s4",
    "baseline_r50_f32s2",
    "tpn_r50_f32s2",
    "baseline_r101_f8s8",
    "tpn_r101_f8s8",
    "baseline_r101_f16s4",
    "tpn_r101_f16s4",
    "baseline_r101_f32s2",
    "tpn_r101_f32s2",
    "tpn_r50_f8s8_mmaction",
    "tpn_r101_f8s8_mmaction",
    "tsm50_baseline_sthv1",
    "tsm50_tpn_sthv1",
    "tsm50_baseline_sthv2",
    "tsm50_tpn_sthv2",
}
TINY = tpn.list_models("*tiny*")


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return tpn.create_model(name, **kw)


def n_params(model: nn.Module, skip: str | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if skip is None or not n.startswith(skip))


# ------------------------------------------------------------------ names


def test_zoo_lists_every_seed_row_and_tiny_apart():
    assert set(tpn.list_models()) == ZOO
    assert len(tpn.list_models()) == 18
    assert TINY and all("tiny" in n for n in TINY)
    assert not set(TINY) & ZOO
    families = {(tpn.get_config(n).backbone, tpn.get_config(n).with_tpn) for n in TINY}
    assert families == {("slowonly", False), ("slowonly", True), ("tsm", False), ("tsm", True)}


def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match="tpn_r50_f8s8") as e:
        tpn.get_config("tpn_r50_f8_s8")
    assert "unknown model" in str(e.value)
    with pytest.raises(ValueError):
        tpn.create_model("resnet50")


def test_configs_carry_the_seed_facts():
    c = tpn.get_config("tpn_r101_f16s4")
    assert (c.clip.frames, c.clip.stride, c.clip.sampling) == (16, 4, "dense")
    assert c.top1 == 78.1 and c.num_classes == 400 and c.with_cp
    assert c.neck.temporal_scales == (8, 16) and c.neck.downsample_scale == (2, 1, 1)
    assert c.recipe.weight_decay == 1e-4 and c.recipe.clip_grad == 40
    s = tpn.get_config("tsm50_tpn_sthv2")
    assert (s.clip.sampling, s.clip.frames, s.clip.twice_sample) == ("segments", 8, True)
    assert s.clip.num_test_views == 6 and s.top1 == 64.7 and s.num_classes == 174
    assert s.recipe.weight_decay == 5e-4 and s.recipe.clip_grad == 20
    k = tpn.get_config("baseline_r50_f8s8")
    assert k.clip.num_test_views == 30 and not k.with_tpn and k.top1 == 74.9
    assert tpn.get_config("tpn_r50_f8s8").neck.flow == "cascade"
    assert isinstance(k.clip, ClipSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.depth = 101  # frozen


def test_overrides_reach_the_neck_and_reject_unknown_fields():
    m = meta_model("tpn_tiny_f8s4", flow="parallel", num_classes=5)
    assert m.config.neck.flow == "parallel" and m.num_classes == 5
    assert tpn.get_config("tpn_tiny_f8s4").neck.flow == "cascade"  # registry untouched
    with pytest.raises(TypeError, match="colour"):
        tpn.create_model("tpn_tiny_f8s4", colour="red")
    with pytest.raises(ValueError, match="no TPN neck"):
        tpn.create_model("baseline_tiny_f8s4", flow="parallel")


# ------------------------------------------------------------ parameters


def bottleneck_params(c_in: int, planes: int, k1: int, kernel2: int, downsample: bool) -> int:
    out = 4 * planes
    convs = c_in * planes * k1 + planes * planes * kernel2 + planes * out
    bns = 2 * (planes + planes + out)
    ds = c_in * out + 2 * out if downsample else 0
    return convs + bns + ds


def backbone_params(depth: int, temporal: bool) -> int:
    """Arithmetic count of a SlowOnly (temporal=True) or TSM/2D ResNet backbone."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    total, c_in = 3 * 64 * 49 + 2 * 64, 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        k1 = 3 if temporal and stage >= 2 else 1
        for b in range(n):
            total += bottleneck_params(c_in, planes, k1, 9, b == 0)
            c_in = 4 * planes
    return total


def neck_params(classes: int) -> tuple[int, int]:
    """(neck without aux head, aux head) for res4=1024, res5=2048."""
    spatial = 1024 * 2048 * 9 + 2 * 2048
    temporal = 2 * 1024 * (2048 // 32) * 3
    fusion = 2 * (1024 * 32 + 2 * 1024) + 2048 * 2048 + 2 * 2048
    down = 1024 * 1024 * 3
    pyramid = 4096 * 2048 + 2 * 2048
    aux = 1024 * 2048 * 9 + 2 * 2048 + 2048 * classes + classes
    return spatial + temporal + 2 * fusion + down + pyramid, aux


@pytest.mark.parametrize("name", sorted(ZOO))
def test_parameter_count_matches_arithmetic(name):
    cfg = tpn.get_config(name)
    expected = backbone_params(cfg.depth, cfg.backbone == "slowonly") + 2048 * cfg.num_classes + cfg.num_classes
    if cfg.with_tpn:
        expected += sum(neck_params(cfg.num_classes))
    assert n_params(meta_model(name)) == expected


def test_parameter_counts_equal_the_published_reference_counts():
    # mmaction2 metafile: 91.50M / 82.45M aux head included.
    assert n_params(meta_model("tpn_r50_f8s8")) == 91_498_336
    assert n_params(meta_model("tsm50_tpn_sthv1")) == 82_445_724
    # Inference-only counts drop the auxiliary head.
    assert round(n_params(meta_model("tpn_r50_f8s8"), skip="neck.aux_head") / 1e6, 2) == 71.80
    assert round(n_params(meta_model("tsm50_tpn_sthv1"), skip="neck.aux_head") / 1e6, 2) == 63.21


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes_train_and_fully_convolutional(name):
    torch.manual_seed(0)
    cfg = tpn.get_config(name)
    model = tpn.create_model(name).eval()
    t = cfg.clip.frames
    with torch.no_grad():
        for hw in [(112, 112), (128, 128), (128, 160)]:
            assert model(torch.randn(2, 3, t, *hw)).shape == (2, cfg.num_classes)
    model.train()
    logits, aux = model.forward_train(torch.randn(2, 3, t, 112, 112))
    assert logits.shape == (2, cfg.num_classes)
    assert (aux is None) == (not cfg.with_tpn)
    if aux is not None:
        assert aux.shape == (2, cfg.num_classes)


def test_a_recognizer_built_from_parts_round_trips_a_checkpoint(tmp_path):
    # the zoo's builder is one way to make a Recognizer; one assembled by hand carries its config too
    from tpn.checkpoint import save_checkpoint
    from tpn.model import Recognizer
    from tpn.neck import TPNNeck
    from tpn.resnet3d import SlowOnly

    cfg = dataclasses.replace(tpn.get_config("tpn_tiny_f8s4"), name="hand_built", num_classes=5)

    def build(seed: int) -> Recognizer:
        torch.manual_seed(seed)
        backbone = SlowOnly(width=8, blocks=(1, 1, 1, 1))
        return Recognizer(backbone, TPNNeck(backbone.channels[2:], 5, cfg.neck), cfg).eval()

    src, dst = build(0), build(1)
    assert src.config is cfg and src.num_classes == 5 and src.cls_head.fc_cls.out_features == 5
    path = save_checkpoint(tmp_path / "hand_built.pth", src)
    report = tpn.load_checkpoint(dst, path)
    assert report.format == "own" and report.missing == [] and report.notes == []
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert torch.load(path, weights_only=True)["name"] == "hand_built"


@pytest.mark.slow
def test_full_size_tpn_r50_forward_shapes():
    torch.manual_seed(0)
    model = tpn.create_model("tpn_r50_f8s8").eval()
    x = torch.randn(1, 3, 8, 224, 224)
    with torch.no_grad():
        res4, res5 = model.backbone(x)
        assert res4.shape == (1, 1024, 8, 14, 14) and res5.shape == (1, 2048, 8, 7, 7)
        feat = model.neck(res4, res5)
        assert feat.shape == (1, 2048, 1, 7, 7)
        logits = model.forward_head(feat)
        assert logits.shape == (1, 400) and torch.isfinite(logits).all()


def test_r101_pyramid_levels_broadcast_in_time():
    # tiny entry with the R101 neck settings: level 0 pooled to T=2, level 1 to T=1.
    model = tpn.create_model("tpn_tiny_pyr_f8s4").eval()
    neck = model.neck
    res4, res5 = model.backbone(torch.randn(1, 3, 8, 112, 112))
    feats = [sm(f) for sm, f in zip(neck.spatial_modulation, (res4, res5))]
    t = [tm(f).shape[2] for tm, f in zip(neck.temporal_modulation, feats)]
    assert t == [2, 1]
    assert neck(res4, res5).shape[2] == 1


@pytest.mark.parametrize(
    "frames,scale,expected", [(8, 8, 1), (8, 4, 2), (16, 8, 2), (32, 16, 2), (32, 32, 1), (12, 8, 2), (7, 4, 2)]
)
def test_modulated_time(frames, scale, expected):
    assert modulated_time(frames, scale) == expected
    pool = nn.MaxPool3d((scale, 1, 1), (scale, 1, 1), 0, ceil_mode=True)
    assert pool(torch.zeros(1, 1, frames, 1, 1)).shape[2] == expected


def test_fcn_head_averages_class_scores_over_every_position():
    torch.manual_seed(0)
    model = tpn.create_model("tpn_tiny_f8s4").eval()
    x = torch.randn(2, 3, 8, 128, 160)
    with torch.no_grad():
        feat, _ = model.forward_features(x)
        assert feat.shape[3:] == (4, 5)
        fc = model.cls_head.fc_cls
        per_position = torch.einsum("ncthw,kc->nkthw", feat, fc.weight) + fc.bias[:, None, None, None]
        assert torch.allclose(model(x), per_position.mean(dim=(2, 3, 4)), atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = tpn.create_model(name).train()
    cfg = model.config
    x = torch.randn(2, 3, cfg.clip.frames, 112, 112)
    y = torch.tensor([0, 1])
    logits, aux = model.forward_train(x)
    loss = nn.functional.cross_entropy(logits, y)
    if aux is not None:
        loss = loss + cfg.recipe.aux_weight * nn.functional.cross_entropy(aux, y)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_cascade_and_parallel_flows_differ_with_same_weights():
    torch.manual_seed(0)
    cascade = tpn.create_model("tpn_tiny_f8s4").eval()
    parallel = tpn.create_model("tpn_tiny_f8s4", flow="parallel").eval()
    parallel.load_state_dict(cascade.state_dict())
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        assert not torch.allclose(cascade(x), parallel(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = tpn.create_model("tpn_tiny_f8s4").train()
    b = tpn.create_model("tpn_tiny_f8s4", with_cp=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 112, 112)
    for m in (a, b):
        torch.manual_seed(1)  # same dropout masks
        logits, aux = m.forward_train(x)
        (logits.sum() + aux.sum()).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


# ------------------------------------------------------------------- TSM


def reference_shift(x: torch.Tensor, t: int) -> torch.Tensor:
    """Frame-by-frame statement of the TSM shift (channels [0,f) from t+1, [f,2f) from t-1)."""
    nt, c, h, w = x.shape
    v = x.view(nt // t, t, c, h, w)
    out = torch.zeros_like(v)
    f = c // 8
    for i in range(t):
        if i + 1 < t:
            out[:, i, :f] = v[:, i + 1, :f]
        if i > 0:
            out[:, i, f : 2 * f] = v[:, i - 1, f : 2 * f]
        out[:, i, 2 * f :] = v[:, i, 2 * f :]
    return out.view(nt, c, h, w)


@pytest.mark.parametrize("channels", [8, 16, 64, 20])
def test_temporal_shift_matches_its_definition(channels):
    x = torch.randn(2 * 8, channels, 3, 3)
    assert torch.equal(temporal_shift(x, 8), reference_shift(x, 8))


def test_tsm_requires_its_segment_count_and_folds_time():
    model = tpn.create_model("tsm_tiny_baseline").eval()
    with pytest.raises(ValueError, match="T=8"):
        model(torch.randn(1, 3, 4, 112, 112))
    res4, res5 = model.backbone(torch.randn(2, 3, 8, 112, 112))
    assert res4.shape == (2, 128, 8, 7, 7) and res5.shape == (2, 256, 8, 4, 4)


def test_tsm_shortcut_variants_differ_only_where_the_references_differ():
    torch.manual_seed(0)
    model = tpn.create_model("tsm_tiny_baseline").eval()
    x = torch.randn(1, 3, 8, 112, 112)
    with torch.no_grad():
        original = model(x)
        model.backbone.set_shift_shortcut(False)
        mmaction = model(x)
    assert not torch.allclose(original, mmaction)


def test_zoo_cli_prints_every_row_with_its_parameters(capsys):
    from tpn.__main__ import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"`{n}`" in out for n in ZOO)
    assert "| `tpn_r50_f8s8` | 8 x 8 | SlowOnly R50 | yes | 91.50M / 71.80M | kinetics400 | 76.1 |" in out
    assert main(["no_such_*"]) == 1
