"""BatchNorm folded into convolutions for evaluation (bench.speedups.fold): the model's own outputs, in every state it
passes through while it trains, and nothing folded that is not a conv feeding only its BatchNorm."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from bench.speedups.fold import BatchNormFolded


def _non_trivial_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so a wrong fold cannot hide behind mean 0, var 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(torch.rand(shape, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(shape, generator=generator) - 0.5)
    return model


def _batchnorm_count(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18", "mobilenetv3_small_100"])
def test_the_folded_twin_gives_a_timm_cnns_outputs(arch):
    torch.manual_seed(0)
    model = _non_trivial_statistics(timm.create_model(arch, pretrained=False, num_classes=7)).eval()
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(6, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    folded = BatchNormFolded(model)
    assert folded.n_folded == _batchnorm_count(model)  # every BatchNorm of these nets follows a conv
    with torch.no_grad():
        expected, got = model(images), folded.current()(images)
    twin = folded.current()
    called = [twin.get_submodule(node.target) for node in twin.graph.nodes if node.op == "call_module"]
    assert not any(isinstance(module, nn.BatchNorm2d) for module in called)  # no BatchNorm pass left
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_the_twin_follows_the_live_model_through_training_and_never_writes_into_it():
    torch.manual_seed(0)
    model = _non_trivial_statistics(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=5))
    folded = BatchNormFolded(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.randn(8, 3, 48, 48), torch.arange(8) % 5
    for _ in range(3):  # weights and BatchNorm running statistics move
        model.train()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        before = {name: value.clone() for name, value in model.state_dict().items()}
        twin = folded.current()
        twin.eval()
        with torch.no_grad():
            got = twin(images)
            model.eval()
            expected = model(images)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name
    assert folded.current().get_submodule("classifier") is model.classifier  # unfolded modules are shared


class _Mixed(nn.Module):
    """conv->bn (folds); conv->bn where the conv's output is also added back (does not); pool->bn (does not)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.pool, self.bn3 = nn.AvgPool2d(2), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = self.bn2(y) + y
        return self.bn3(self.pool(x))


def test_only_a_conv_that_feeds_nothing_but_its_batchnorm_is_folded():
    torch.manual_seed(0)
    model = _non_trivial_statistics(_Mixed()).eval()
    folded = BatchNormFolded(model)
    assert folded.n_folded == 1
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded.current()(images), model(images), rtol=1e-5, atol=1e-5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on a tensor's value: torch.fx cannot trace this
            x = -x
        return self.bn(self.conv(x))


def test_a_model_torch_fx_cannot_trace_is_evaluated_as_it_is():
    model = _Untraceable().eval()
    folded = BatchNormFolded(model)
    assert folded.n_folded == 0 and folded.current() is model
