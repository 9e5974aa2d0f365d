"""``timm:hf-hub:<org>/<repo>[@<revision>]`` backbones, from a Hugging Face cache the test writes (no network:
HF_HUB_OFFLINE=1), laid out as huggingface_hub lays it out and with the files timm itself saves for the Hub."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import bench, bench_env, one_line_error
from timm.layers import resample_abs_pos_embed
from timm.models._hub import save_for_hf

from bench.errors import UserError
from bench.models import build as builds
from bench.models.build import build_backbone
from bench.models.registry import check_backbone_name, hub_model

REPO_ID = "testorg/tiny-vit"
NAME = f"timm:hf-hub:{REPO_ID}"
MAIN, V1 = "1" * 40, "2" * 40  # commits of the default branch and of the tag v1


def _write_snapshot(hub: Path, commit: str, ref: str, seed: int) -> dict[str, torch.Tensor]:
    """A seeded vit_tiny saved by timm (config.json + model.safetensors) as ``commit``, ``refs/<ref>`` naming it."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    folder = hub / f"models--{REPO_ID.replace('/', '--')}"
    save_for_hf(model, str(folder / "snapshots" / commit), safe_serialization=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A Hugging Face home whose cache holds REPO_ID at two revisions; the saved state dicts by commit."""
    home = tmp_path_factory.mktemp("hf")
    saved = {
        MAIN: _write_snapshot(home / "hub", MAIN, "main", seed=5),
        V1: _write_snapshot(home / "hub", V1, "v1", seed=6),
    }
    return home, saved


@pytest.fixture
def hub(hub_home: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> dict:
    """``hub_home`` as this process's (and its children's) offline Hugging Face cache; the saved state dicts."""
    home, saved = hub_home
    cache = home / "hub"
    for key, value in {"HF_HOME": home, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, str(value))
    # huggingface_hub read the environment when it was imported: point its constants at the test's cache too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    builds._TEMPLATES.clear()
    return saved


def _equal_to(body: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    state = body.state_dict()
    return all(torch.equal(tensor, saved[name]) for name, tensor in state.items())


def test_a_hub_backbone_is_built_from_the_cached_snapshot(hub: dict) -> None:
    check_backbone_name(NAME)
    backbone = build_backbone(NAME, 7)
    assert _equal_to(backbone.body, hub[MAIN]) and backbone.pretrained
    assert backbone.source_head is not None and torch.equal(backbone.source_head.weight, hub[MAIN]["head.weight"])
    assert backbone.weights == f"timm:hf-hub:{REPO_ID}@{MAIN}"  # the revision's commit is part of the weights key
    assert backbone.weights_key.startswith(backbone.weights)
    assert tuple(backbone.mean) == (0.5, 0.5, 0.5)  # the repository's own preprocessing

    tagged = build_backbone(f"{NAME}@v1", 7)
    assert _equal_to(tagged.body, hub[V1]) and tagged.weights == f"timm:hf-hub:{REPO_ID}@{V1}"
    assert tagged.weights_key != backbone.weights_key
    pinned = build_backbone(f"{NAME}@{V1}", 7)
    assert _equal_to(pinned.body, hub[V1])


def test_hub_weights_are_resampled_to_the_trials_size_by_timms_loader(hub: dict) -> None:
    backbone = build_backbone(NAME, 7, img_size=64)
    expected = resample_abs_pos_embed(hub[MAIN]["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    assert torch.equal(backbone.body.pos_embed, expected)
    assert backbone.body(torch.zeros(1, 3, 64, 64)).shape == (1, 192)


def test_a_hub_architecture_with_a_weights_file_or_from_scratch(hub: dict, tmp_path: Path) -> None:
    path = tmp_path / "v1.pth"
    torch.save(hub[V1], path)
    from_file = build_backbone(NAME, 3, weights=str(path))
    assert _equal_to(from_file.body, hub[V1]) and from_file.weights == f"file:{path}"
    torch.manual_seed(0)
    scratch = build_backbone(NAME, 3, pretrained=False)
    assert not _equal_to(scratch.body, hub[MAIN]) and scratch.weights == "random"
    key = builds._template_key("timm", f"hf-hub:{REPO_ID}", NAME, pretrained=False, weights=None, size=None)
    assert key is not None and key[-1] == MAIN  # a template is the snapshot's: a moved branch is a new key


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("timm:hf-hub:testorg/missing", "config.json of Hugging Face repository 'testorg/missing' is not in the local"),
        (f"{NAME}@v9", f"repository '{REPO_ID}' at revision 'v9' is not in the local Hugging Face cache"),
        ("timm:hf-hub:", "has no model id"),
        (f"{NAME}@a@b", "only contain one @"),
        (f"{NAME}@", "nothing after '@'"),
        ("timm:local-dir:/tmp/model", "only hf-hub: models are supported"),
        ("timm:testorg/tiny-vit", "Use 'hf-hub:testorg/tiny-vit'"),
    ],
)
def test_a_bad_or_missing_hub_name_is_one_line(hub: dict, name: str, says: str) -> None:
    with pytest.raises(UserError) as refused:
        check_backbone_name(name)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"backbone '{name}': ") and says in message


def test_validate_accepts_a_cached_hub_name_and_refuses_a_missing_one(hub: dict, tmp_path: Path) -> None:
    assert hub_model(NAME) is not None
    env = bench_env()  # the fixture's HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1
    for backbones, code in [(f'["{NAME}", "{NAME}@v1"]', 0), ('["timm:hf-hub:testorg/missing"]', 2)]:
        suite = tmp_path / "hub.yaml"
        suite.write_text(f"""
name: hub
backbones: {backbones}
datasets: [digits]
grid: {{freeze: [linear_probe], data_fraction: [0.1]}}
train: {{img_size: 32, steps: 1}}
""")
        done = bench("validate", suite, env=env, timeout=300)
        assert done.returncode == code, done.stderr
        if code:
            line = one_line_error(done.stderr)
            assert "backbones[0].name: backbone 'timm:hf-hub:testorg/missing': config.json" in line
