"""Any image size: a trial's img_size reaches fixed-size timm models (ViTs), CNNs are built as before, and a size a
model cannot take is refused at validation in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from bench.config import TrialConfig
from bench.errors import UserError
from bench.models import build as builds
from bench.models.build import build_backbone
from bench.models.registry import check_backbone_size, size_kwargs
from bench.suite.suite import load_suite
from bench.training.trial import run_trial

VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub
    torch.set_num_threads(2)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("img_size", "freeze"),
    [
        (32, "linear_probe"),
        (32, 0.5),
        (32, "full"),
        (64, "linear_probe"),
        (64, 0.5),
        (64, "full"),
        (224, 0.5),
    ],
)
def test_a_scratch_vit_trains_at_any_size_and_freeze_depth(img_size: int, freeze: str | float) -> None:
    config = TrialConfig(
        backbone=VIT,
        pretrained=False,
        dataset="digits",
        img_size=img_size,
        epochs=None,
        steps=2,
        batch_size=16,
        data_fraction=0.1,
        freeze=freeze,
        similarity=False,
    )
    row = run_trial(config).row
    assert row["status"] == "ok" and row["error"] is None
    assert math.isfinite(row["metric_top1"])
    n_frozen, n_groups = map(int, row["freeze_groups"].split("/"))
    assert n_groups == 13  # stem, then one group per transformer block (the last with the final norm)
    assert n_frozen == round(config.freeze_fraction * n_groups)
    # A partial freeze trains the ViT's later blocks on the stored outputs of its frozen embedding and blocks.
    assert row["frozen_prefix"] == {"linear_probe": "features", "full": "none"}.get(str(freeze), "prefix")


def test_a_vit_is_built_at_the_size_and_the_template_cache_keys_on_it() -> None:
    builds._TEMPLATES.clear()
    bodies = {}
    for size in (32, 64, 32):
        torch.manual_seed(0)
        backbone = build_backbone(VIT, 3, pretrained=False, img_size=size)
        assert backbone.body.pos_embed.shape == (1, 1 + (size // 16) ** 2, 192)
        assert backbone.body(torch.zeros(1, 3, size, size)).shape == (1, 192)
        bodies.setdefault(size, []).append(backbone)
    first, again = bodies[32]
    assert _same_state(first.body, again.body) and first.weights_key == again.weights_key
    assert first.weights_key != bodies[64][0].weights_key
    torch.manual_seed(0)
    native = build_backbone(VIT, 3, pretrained=False, img_size=224)
    torch.manual_seed(0)
    default = build_backbone(VIT, 3, pretrained=False)
    assert _same_state(native.body, default.body)  # its own size: built exactly as timm builds it


@pytest.mark.parametrize(  # (timm's own ImageNet weights for timm:efficientnet_lite0 would need the Hub)
    ("name", "pretrained"),
    [("efficientnet_lite0", True), ("efficientnet_lite0", False), ("timm:efficientnet_lite0", False)],
)
def test_a_cnn_is_built_as_before_whatever_the_size(name: str, pretrained: bool) -> None:
    assert size_kwargs(name, 40) == {}
    builds._TEMPLATES.clear()
    torch.manual_seed(1)
    before = build_backbone(name, 5, pretrained=pretrained)
    builds._TEMPLATES.clear()
    torch.manual_seed(1)
    sized = build_backbone(name, 5, pretrained=pretrained, img_size=40)
    assert _same_state(before.body, sized.body) and before.weights_key == sized.weights_key


def test_a_pretrained_position_embedding_is_resampled_as_timm_resamples_it(tmp_path: Path) -> None:
    torch.manual_seed(11)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "vit_tiny_224.pth"
    torch.save(saved, path)
    backbone = build_backbone(VIT, 4, weights=str(path), img_size=64)
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    assert backbone.body.pos_embed.shape == (1, 17, 192)
    assert torch.equal(backbone.body.pos_embed, expected)
    body = backbone.body.state_dict()
    assert all(torch.equal(body[k], saved[k]) for k in body if k != "pos_embed")  # everything else as saved
    assert backbone.weights == f"file:{path}" and backbone.source_head is not None
    assert torch.equal(backbone.source_head.weight, saved["head.weight"])
    assert backbone.body(torch.zeros(1, 3, 64, 64)).shape == (1, 192)


def test_a_size_a_model_cannot_take_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as refused:
        check_backbone_size(VIT, 40)
    assert str(refused.value) == (
        f"backbone '{VIT}' cannot take img_size 40: its patch size 16 does not divide 40 (try 32 or 48)"
    )
    with pytest.raises(UserError, match=r"^backbone 'tv:vit_b_16' cannot take img_size 64: "):
        check_backbone_size("tv:vit_b_16", 64)  # torchvision's ViT asserts its own size
    for name, size in [(VIT, 48), (VIT, 224), ("efficientnet_lite0", 40), ("tv:resnet18", 40)]:
        check_backbone_size(name, size)

    suite = tmp_path / "vit.yaml"
    suite.write_text(f"""
name: vit
backbones: [efficientnet_lite0, {{name: "{VIT}", pretrained: false}}]
datasets: [digits]
grid: {{freeze: [linear_probe], data_fraction: [0.1]}}
train: {{img_size: 40, steps: 1}}
""")
    with pytest.raises(UserError) as refused:
        load_suite(suite)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{suite}: train.img_size: backbone '{VIT}'")
    assert message.endswith("cannot take img_size 40: its patch size 16 does not divide 40 (try 32 or 48)")
    suite.write_text(suite.read_text().replace("img_size: 40", "img_size: 48"))
    assert len(load_suite(suite).trials()) == 2


@pytest.mark.parametrize("arch", ["timm:mobilenetv3_small_050", "timm:efficientvit_m0"])
def test_the_head_takes_the_bodys_pre_logits_width(arch: str) -> None:
    """timm models with a pre-logits layer (MobileNetV3's conv head) pool to `head_hidden_size`, not to
    `num_features`: the new head is sized from what the body gives."""
    backbone = build_backbone(arch, 3, pretrained=False, img_size=64)
    features = backbone.body(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, backbone.feature_dim) and backbone.head.in_features == backbone.feature_dim
