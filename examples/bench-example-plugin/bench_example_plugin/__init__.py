"""A complete bench plug-in: a backbone, a dataset and a strategy, registered when this module is imported.

Installed (``pip install examples/bench-example-plugin``), it is found through its entry points; without
installing, a suite may name it: ``plugins: [bench_example_plugin]`` (the module must be importable on every
node). Then ``bench list backbones|datasets|strategies`` shows its entries with this module as their source.

- ``tiny_convnet``: a three-stage ConvNet trained from scratch (``pretrained: false``), or from a ``weights:``
  file holding its state dict.
- ``glyphs``: the letters A to D drawn in PIL's built-in font at random places, sizes and shades: 4 classes,
  60 training and 20 test images each, generated from a fixed seed (no download).
- ``first_block``: surgical fine-tuning (Lee et al. 2023): the stem and the first block train, with the head.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from bench.data import DatasetEntry, add_dataset
from bench.data.decode import Source
from bench.data.sources import LoadRequest, RawDataset
from bench.errors import UserError
from bench.models import Backbone, freeze_plan, parameter_groups
from bench.models.build import IMAGENET_MEAN, IMAGENET_STD, file_sha256, load_state_dict
from bench.models.registry import BACKBONES, BackboneEntry
from bench.models.strategies import STRATEGIES, Strategy

# ------------------------------------------------------------------------------------------- backbone


class TinyConvNet(nn.Module):
    """Three conv-BN-ReLU stages and a global average pool: images -> [N, 64] features."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()),
            nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(images)))


def build_tiny_convnet(
    name: str, model_name: str, *, pretrained: bool, weights: str | None, img_size: int | None
) -> Backbone:
    body = TinyConvNet()  # random init from torch's global RNG, which the trial seeds
    label, sha256 = "random", None
    if pretrained:
        if weights is None:
            raise UserError(f"backbone '{name}' has no pretrained weights: use pretrained: false or a weights: file")
        body.load_state_dict(load_state_dict(weights))
        label, sha256 = f"file:{weights}", file_sha256(weights)
    return Backbone(
        name=name,
        body=body,
        head=nn.Linear(1, 1),  # replaced by build_backbone with the trial's seeded head
        source_head=None,
        feature_dim=TinyConvNet.num_features,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pretrained=pretrained,
        weights=label,
        weights_sha256=sha256,
    )


BACKBONES.add("tiny_convnet", BackboneEntry(build_tiny_convnet, "a three-stage ConvNet (example plug-in)"))

# -------------------------------------------------------------------------------------------- dataset

LETTERS = ("A", "B", "C", "D")


def _glyph(letter: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (32, 32), int(rng.integers(0, 80)))
    font = ImageFont.load_default(size=int(rng.integers(12, 22)))
    xy = (int(rng.integers(0, 14)), int(rng.integers(0, 12)))
    ImageDraw.Draw(image).text(xy, letter, fill=int(rng.integers(170, 256)), font=font)
    return image


def load_glyphs(request: LoadRequest) -> RawDataset:
    rng = np.random.default_rng(20261201)

    def source(per_class: int, split: str) -> Source:
        items = [(_glyph(letter, rng), label) for label, letter in enumerate(LETTERS) for _ in range(per_class)]
        return Source(len(items), lambda i: items[i], lambda i: f"glyphs/{split}/{i}")

    return RawDataset(classes=list(LETTERS), train=source(60, "train"), test=source(20, "test"))


add_dataset(
    DatasetEntry(
        "glyphs",
        "structured",
        "letters A-D drawn at random places, sizes and shades, 4 classes, 60/20 per class (example plug-in)",
        "generated (bench_example_plugin)",
        "Apache-2.0",
        True,
        load_glyphs,
    )
)

# ------------------------------------------------------------------------------------------- strategy


def first_block(body: nn.Module):  # -> bench.models.FreezePlan
    """Surgical fine-tuning: the body's first two parameter groups (stem, first block) train, the rest is frozen."""
    trains = {name for group in parameter_groups(body)[:2] for name in group}
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(name in trains)
    return freeze_plan(body)


STRATEGIES.add("first_block", Strategy("the stem and first block, and the head (Lee et al. 2023)", apply=first_block))
