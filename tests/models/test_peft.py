"""bench.models.peft: BitFit, norm-only and LoRA on efficientnet_lite0 (pretrained) and a scratch ViT-Tiny at 32 px."""

from __future__ import annotations

import copy
import functools

import pytest
import timm
import torch
import torchvision
from timm.layers import BatchNormAct2d
from torch import nn

from bench.models.build import TransferModel, build_backbone
from bench.models.freeze import frozen_modules, parameter_groups, set_train_mode
from bench.models.peft import LoRA, apply_bitfit, apply_lora, apply_norm, trainable_summary
from bench.speedups.prefix import split_frozen_prefix

torch.set_num_threads(1)
IMG = 32


@functools.cache
def _template(arch: str) -> nn.Module:
    if arch == "lite0":
        return build_backbone("efficientnet_lite0", 10, pretrained=True).body
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=IMG)


def fresh(arch: str) -> nn.Module:
    return copy.deepcopy(_template(arch))


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def trainable(body: nn.Module) -> set[str]:
    return {name for name, p in body.named_parameters() if p.requires_grad}


def sgd_step(body: nn.Module) -> set[str]:
    """One SGD step on body + a new head; the names of the body's parameters that changed."""
    torch.manual_seed(0)
    model = TransferModel(body, nn.Linear(body.num_features, 10))
    before = {name: p.detach().clone() for name, p in body.named_parameters()}
    set_train_mode(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(images(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    return {name for name, p in body.named_parameters() if not torch.equal(p, before[name])}


ARCHS = ["lite0", "vit"]


def test_timm_norm_layers_are_torch_norm_subclasses():
    assert issubclass(BatchNormAct2d, nn.BatchNorm2d)
    assert issubclass(timm.layers.LayerNorm2d, nn.LayerNorm)


# ---------------------------------------------------------------------------------------------------------
# BitFit and norm-only


@pytest.mark.parametrize("arch", ARCHS)
def test_bitfit_trains_only_biases(arch):
    body = fresh(arch)
    plan = apply_bitfit(body)
    names = [name for name, _ in body.named_parameters()]
    expected = {name for name in names if name.split(".")[-1] == "bias"}
    assert trainable(body) == expected
    n_bias = sum(p.numel() for name, p in body.named_parameters() if name in expected)
    total = sum(p.numel() for p in body.parameters())
    assert trainable_summary(body)["trainable"] == n_bias
    assert (plan.frozen_params, plan.backbone_params) == (total - n_bias, total)
    assert plan.n_groups == len(parameter_groups(_template(arch)))
    if arch == "lite0":  # convolutions have no bias: only the BatchNorm biases, stem BN included
        bn = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
        assert n_bias == sum(m.num_features for m in bn)
        assert "bn1.bias" in expected and plan.n_frozen_groups == 0
    else:  # qkv, proj, fc1, fc2, the norms and the patch embedding
        assert {"blocks.0.attn.qkv.bias", "blocks.0.mlp.fc2.bias", "patch_embed.proj.bias", "norm.bias"} <= expected
    assert sgd_step(body) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_trains_only_norm_affine_parameters(arch):
    body = fresh(arch)
    plan = apply_norm(body)
    kind = nn.BatchNorm2d if arch == "lite0" else nn.LayerNorm
    norms = {name: m for name, m in body.named_modules() if isinstance(m, kind)}
    assert norms and all(type(m).__name__ in ("BatchNormAct2d", "LayerNorm") for m in norms.values())
    expected = {f"{name}.{p}" for name in norms for p in ("weight", "bias")}
    assert trainable(body) == expected
    size = sum(2 * (m.num_features if arch == "lite0" else m.normalized_shape[0]) for m in norms.values())
    total = sum(p.numel() for p in body.parameters())
    assert trainable_summary(body)["trainable"] == size
    assert (plan.frozen_params, plan.backbone_params) == (total - size, total)
    assert plan.n_frozen_groups == (0 if arch == "lite0" else 1)  # the ViT stem (patch embed, pos embed) has none
    assert sgd_step(body) == expected


# ---------------------------------------------------------------------------------------------------------
# LoRA


def lora_targets(body: nn.Module) -> dict[str, tuple[int, int]]:
    """Independently of the module: (in, out) of every Linear and point-wise Conv2d."""
    targets = {}
    for name, m in body.named_modules():
        if type(m) is nn.Linear:
            targets[name] = (m.in_features, m.out_features)
        elif type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1:
            targets[name] = (m.in_channels, m.out_channels)
    return targets


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_preserves_the_function_at_init(arch):
    reference, body = fresh(arch), fresh(arch)
    apply_lora(body, rank=4)
    x = images(3)
    for mode in ("eval", "train"):
        getattr(reference, mode)()
        getattr(body, mode)()
        torch.manual_seed(5)
        expected = reference(x)
        torch.manual_seed(5)
        assert torch.equal(body(x), expected), mode
    for name, buffer in body.named_buffers():  # train mode updated the same BatchNorm statistics
        assert torch.equal(buffer, reference.get_buffer(name.replace(".base.", ".")))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rank", [1, 8])
def test_lora_trains_only_adapters(arch, rank):
    targets = lora_targets(_template(arch))
    body = fresh(arch)
    plan = apply_lora(body, rank=rank)
    wrapped = {name for name, m in body.named_modules() if isinstance(m, LoRA)}
    assert wrapped == set(targets)
    if arch == "vit":  # every block's attention and MLP; the 16x16 patch embedding is no 1x1 conv
        assert {name.rsplit(".", 1)[1] for name in wrapped} == {"qkv", "proj", "fc1", "fc2"}
        assert len(wrapped) == 4 * len(body.blocks)
    else:
        assert "conv_head" in wrapped and "conv_stem" not in wrapped
    assert trainable(body) == {f"{name}.{f}.weight" for name in wrapped for f in ("down", "up")}
    size = sum(rank * (n_in + n_out) for n_in, n_out in targets.values())
    total = sum(p.numel() for p in body.parameters())
    assert trainable_summary(body)["trainable"] == size
    assert plan.backbone_params == total == size + sum(p.numel() for p in _template(arch).parameters())
    assert plan.frozen_params == total - size
    assert plan.n_frozen_groups >= 1


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_keeps_the_timm_groups(arch):
    before = parameter_groups(_template(arch))
    body = fresh(arch)
    plan = apply_lora(body)
    after = parameter_groups(body)
    assert plan.n_groups == len(after) == len(before)
    for group_before, group_after in zip(before, after):  # a wrapped layer's tensors stay in its group
        strip = {name.replace(".base.", ".") for name in group_after if ".down." not in name and ".up." not in name}
        assert strip == set(group_before)
        adapters = {name.rsplit(".", 2)[0] for name in group_after if ".down." in name or ".up." in name}
        assert all(f"{prefix}.base.weight" in group_after for prefix in adapters)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_step_changes_the_output(arch):
    body = fresh(arch)
    apply_lora(body, rank=4)
    adapters = trainable(body)
    x = images(2)
    body.eval()
    with torch.no_grad():
        before = body(x)
    buffers = {name: b.clone() for name, b in body.named_buffers()}
    assert sgd_step(body) == {name for name in adapters if ".up." in name}  # down's gradient is 0 while up is 0
    assert any(m.up.weight.abs().sum() > 0 for m in body.modules() if isinstance(m, LoRA))
    for name, buffer in body.named_buffers():  # every BatchNorm is frozen, so in eval mode: statistics unchanged
        assert torch.equal(buffer, buffers[name])
    body.eval()
    with torch.no_grad():
        assert not torch.allclose(body(x), before)


def test_lora_scale_seed_and_rank():
    body = fresh("vit")
    apply_lora(body, rank=4, alpha=8)
    assert body.blocks[0].attn.qkv.scale == 2.0
    with pytest.raises(ValueError, match="rank"):
        apply_lora(fresh("vit"), rank=0)
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        lite = fresh("lite0")
        apply_lora(lite)
        states.append(lite.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["conv_head.down.weight"], states[2]["conv_head.down.weight"])


def test_lora_channels_last():
    body = fresh("lite0")
    apply_lora(body)
    for m in body.modules():
        if isinstance(m, LoRA):
            nn.init.normal_(m.up.weight, std=0.01)  # a trained adapter, so that its branch counts
    body.eval()
    x = images(2)
    with torch.no_grad():
        expected = body(x)
        body.to(memory_format=torch.channels_last)
        seen = []
        body.conv_head.register_forward_hook(lambda _m, _i, out: seen.append(out))
        out = body(x.to(memory_format=torch.channels_last))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)


def test_lora_leaves_a_frozen_prefix_on_lite0():
    body = fresh("lite0")
    plan = apply_lora(body)
    assert plan.n_frozen_groups >= 1
    frozen = {id(m) for m in frozen_modules(body)}
    assert id(body.conv_stem) in frozen and id(body.bn1) in frozen
    assert all(id(m) in frozen for m in body.modules() if isinstance(m, nn.BatchNorm2d))
    set_train_mode(body)
    assert not body.bn1.training and body.blocks.training
    split = split_frozen_prefix(body, plan.n_frozen_groups)
    assert split is not None
    prefix, suffix = split
    assert prefix.stage_names == ("conv_stem", "bn1")
    for m in body.modules():
        if isinstance(m, LoRA):
            nn.init.normal_(m.up.weight, std=0.01)
    x = images(2)
    with torch.no_grad():
        assert torch.allclose(suffix(prefix(x)), body(x), atol=1e-6)


def test_lora_on_a_torchvision_body():
    """Strided 1x1 convolutions (ResNet downsample) and the prefix-rule groups of a non-timm body."""
    torch.manual_seed(0)
    body = torchvision.models.resnet18(weights=None)
    body.fc = nn.Identity()
    reference = copy.deepcopy(body)
    plan = apply_lora(body, rank=2)
    assert {n for n, m in body.named_modules() if isinstance(m, LoRA)} == {
        f"layer{i}.0.downsample.0" for i in (2, 3, 4)
    }
    assert plan.n_groups == len(parameter_groups(reference))
    assert plan.n_frozen_groups == 4  # conv1, bn1, layer1.0, layer1.1: no 1x1 convolution before layer2
    body.eval()
    reference.eval()
    x = images(2)
    assert torch.equal(body(x), reference(x))
