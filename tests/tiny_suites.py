"""The tiny suite files the Ray tests run: one writer, so every test's suite differs only where it says."""

from __future__ import annotations

from pathlib import Path


def write_suite(folder: Path, *, name: str = "tiny", datasets: str = "[digits]",
                freeze: str = "[linear_probe, full]", sizes: str = "data_fraction: [0.05, 0.1]",
                seeds: str = "[0, 1]", extra_grid: str = "", steps: int = 3, optimizer: str = "adamw",
                concurrent: int = 2, max_failures: int = 1) -> Path:
    """``<folder>/<name>.yaml``: efficientnet_lite0 at 32 px for ``steps`` steps of 16 images on one CPU per
    trial; the grid is ``freeze`` x ``sizes`` x ``seeds`` (plus ``extra_grid`` lines)."""
    path = folder / f"{name}.yaml"
    path.write_text(f"""
name: {name}
backbones: [efficientnet_lite0]
datasets: {datasets}
grid:
  freeze: {freeze}
  {sizes}
  seed: {seeds}
{extra_grid}
train: {{img_size: 32, steps: {steps}, batch_size: 16, lr: 1.0e-3, optimizer: {optimizer}}}
tune:
  resources_per_trial: {{cpu: 1, gpu: 0}}
  max_concurrent_trials: {concurrent}
  max_failures: {max_failures}
""")
    return path
