"""Frozen-prefix split and cache: suffix(prefix(x)) is body(x), in eval and in train mode, and the cache misses
whenever anything the prefix outputs depend on changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

from bench.models import Normalize
from bench.models.build import TransferModel, build_backbone, new_head
from bench.models.freeze import apply_freeze, parameter_groups, set_train_mode
from bench.speedups import features, prefix


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    features.clear_memory_cache()
    yield
    features.clear_memory_cache()


def _timm_body(arch: str) -> nn.Module:
    torch.manual_seed(0)
    body = timm.create_model(arch, pretrained=False)
    body.reset_classifier(0)
    return body.eval()


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return _timm_body("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _timm_body("resnet18")


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["lite0", "resnet18"])
def test_suffix_of_prefix_is_the_body_at_every_freeze_depth(arch, request):
    body = request.getfixturevalue(arch).eval()
    x = _images()
    with torch.no_grad():
        expected = body(x)
        n_groups = len(parameter_groups(body))
        for n_frozen in range(n_groups + 1):
            split = prefix.split_frozen_prefix(body, n_frozen)
            assert split is not None, n_frozen
            front, back = split
            front.eval(), back.eval()
            torch.testing.assert_close(back(front(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["lite0", "resnet18"])
def test_prefix_holds_exactly_the_frozen_groups(arch, request):
    body = request.getfixturevalue(arch)
    groups = parameter_groups(body)
    params = dict(body.named_parameters())
    for n_frozen in (0, 1, len(groups) // 2, len(groups) - 1, len(groups)):
        front, back = prefix.split_frozen_prefix(body, n_frozen)
        expected = {id(params[name]) for group in groups[:n_frozen] for name in group}
        assert {id(p) for p in front.parameters()} == expected
        assert {id(p) for p in back.parameters()} == {id(p) for p in body.parameters()} - expected
    front, back = prefix.split_frozen_prefix(body, 0)
    assert front.stage_names == () and len(list(front.parameters())) == 0
    front, back = prefix.split_frozen_prefix(body, len(groups))
    assert len(list(back.parameters())) == 0  # all frozen: the suffix is the identity
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(back(x), x)


def test_resnet_prefix_takes_the_max_pool_along():
    body = _timm_body("resnet18")
    front, back = prefix.split_frozen_prefix(body, 1)  # group 0 = conv1 + bn1
    assert front.stage_names == ("conv1", "bn1", "act1", "maxpool")
    assert back.stage_names[0] == "layer1"


def test_training_on_the_suffix_matches_training_the_partially_frozen_body():
    """Train mode: frozen BatchNorm in eval, trainable BatchNorm on batch statistics, timm's pooled-feature
    dropout (drop_rate 0.2 in efficientnet_lite0) drawn from the same RNG: same logits, same gradients."""
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, drop_rate=0.2)
    model.reset_classifier(0)
    assert model.drop_rate > 0
    x = _images(4)
    plain_body, cached_body = model, copy.deepcopy(model)
    plans = [apply_freeze(body, 0.5) for body in (plain_body, cached_body)]
    n_frozen = plans[0].n_frozen_groups
    assert 0 < n_frozen < plans[0].n_groups
    plain = TransferModel(plain_body, new_head(model.num_features, 5, seed=0))
    front, back = prefix.split_frozen_prefix(cached_body, n_frozen)
    cached = TransferModel(back, new_head(model.num_features, 5, seed=0))
    with torch.no_grad():
        stored = front.eval()(x)  # what the cache holds
    set_train_mode(plain), set_train_mode(cached)
    torch.manual_seed(7)
    plain_logits = plain(x)
    torch.manual_seed(7)
    cached_logits = cached(stored)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=1e-5, atol=1e-5)
    plain_logits.square().sum().backward()
    cached_logits.square().sum().backward()
    plain_grads = {n: p.grad for n, p in plain_body.named_parameters() if p.requires_grad}
    cached_grads = {n: p.grad for n, p in cached_body.named_parameters() if p.requires_grad}
    assert plain_grads.keys() == cached_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(cached_grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert all(p.grad is None for p in front.parameters())
    # running statistics of the trainable BatchNorms moved the same way
    for (name, a), (_, b) in zip(plain_body.named_buffers(), cached_body.named_buffers()):
        torch.testing.assert_close(b, a, msg=name)


def test_plain_sequential_bodies_split_between_children():
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
        nn.Conv2d(4, 6, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    x = _images(2, 12)
    n_groups = len(parameter_groups(body))
    with torch.no_grad():
        for n_frozen in range(n_groups + 1):
            front, back = prefix.split_frozen_prefix(body, n_frozen)
            torch.testing.assert_close(back(front(x)), body(x))


def test_a_vit_splits_after_its_embedding_and_each_block():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    n_groups = len(parameter_groups(vit))
    assert n_groups == 13
    for n_frozen in range(n_groups + 1):
        front, back = prefix.split_frozen_prefix(vit, n_frozen)
        assert torch.equal(back(front(x)), vit(x))  # the same modules in the same order: bit for bit
    front, _ = prefix.split_frozen_prefix(vit, 3)
    assert front.stage_names == ("embed", "blocks.0", "blocks.1")
    assert {id(p) for p in front.parameters()} == {
        id(p)
        for name, p in vit.named_parameters()
        if name.startswith(("patch_embed", "cls_token", "pos_embed", "blocks.0.", "blocks.1."))
    }


def test_unsupported_bodies_and_impossible_cuts_give_none():
    tv = build_backbone("tv:resnet18", 3, pretrained=False).body  # torchvision: forward not a known chain
    assert prefix.split_frozen_prefix(tv, 2) is None
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0, pos_drop_rate=0.1)
    assert prefix.split_frozen_prefix(vit, 1) is None  # a train-mode token dropout in the embedding
    # a train-mode dropout between two frozen convolutions cannot be computed once
    with_dropout = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1))
    assert len(parameter_groups(with_dropout)) == 3
    assert prefix.split_frozen_prefix(with_dropout, 1) is not None
    assert prefix.split_frozen_prefix(with_dropout, 2) is None
    assert prefix.split_frozen_prefix(with_dropout, 3) is not None  # all frozen: the plain path is all eval


def test_cache_key_changes_with_every_part():
    base = dict(
        arch="efficientnet_lite0",
        weights_key="a" * 64,
        dataset_fingerprint="digits-fp",
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        img_size=64,
        n_frozen_groups=8,
        stage_names=("conv_stem", "bn1", "blocks.3.1"),
    )
    key = prefix.prefix_cache_key(**base)
    assert key == prefix.prefix_cache_key(**base)
    changes = dict(
        weights_key="b" * 64,
        img_size=32,
        n_frozen_groups=9,
        dataset_fingerprint="other",
        mean=(0.4,) * 3,
        arch="efficientnet_lite1",
        stage_names=("conv_stem", "bn1"),
        device_type="cuda",
    )
    keys = {prefix.prefix_cache_key(**{**base, name: value}) for name, value in changes.items()}
    assert key not in keys and len(keys) == len(changes)
    pooled = features.feature_key(
        **{k: base[k] for k in ("arch", "weights_key", "dataset_fingerprint", "mean", "std", "img_size")}
    )
    assert key != pooled


def test_cached_prefix_outputs_equal_a_direct_pass_from_memory_and_disk(tmp_path, lite0):
    body = copy.deepcopy(lite0)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    val_idx = np.array([4, 1])
    front, _ = prefix.split_frozen_prefix(body, 8)
    key = prefix.prefix_cache_key(
        arch="efficientnet_lite0",
        weights_key="random",
        dataset_fingerprint="fp",
        mean=normalize.mean.flatten().tolist(),
        std=normalize.std.flatten().tolist(),
        img_size=32,
        n_frozen_groups=8,
        stage_names=front.stage_names,
    )
    device = torch.device("cpu")
    batching = dict(train_batch=4, eval_batch=2)

    def cached(**changes):
        return prefix.cached_prefix_outputs(
            key,
            front,
            x_train,
            x_test,
            val_idx,
            normalize,
            device=device,
            cache_dir=str(tmp_path),
            **{**batching, **changes},
        )

    computed = cached()
    with torch.no_grad():
        direct = front.eval()(normalize(torch.from_numpy(x_train)))
    assert computed.train.shape == direct.shape and computed.train.dim() == 4
    torch.testing.assert_close(computed.train, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(computed.val, direct[val_idx], rtol=1e-5, atol=1e-5)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 3  # train, val, test rows
    assert features.STATS["misses"] == 3
    again = cached()
    assert again.train is computed.train and features.STATS["hits"] == 3
    features.clear_memory_cache()
    from_disk = cached()
    assert features.STATS["disk_hits"] == 3 and features.STATS["misses"] == 0
    torch.testing.assert_close(from_disk.test, computed.test, rtol=0, atol=0)
    cached(train_batch=2)  # another batching: other training rows (the evaluation rows are the same)
    assert features.STATS["misses"] == 1 and features.STATS["hits"] == 2
    torch.set_num_threads(2)  # another thread count can pick other kernels: all three miss
    try:
        cached()
    finally:
        torch.set_num_threads(1)
    assert features.STATS["misses"] == 4
    size = prefix.prefix_output_bytes(front, 32, 5 + 2 + 3, normalize, device=device)
    assert size == computed.nbytes
    assert (
        prefix.cached_prefix_outputs(
            "other",
            front,
            x_train,
            x_test,
            val_idx,
            normalize,
            device=device,
            cache_dir=None,
            max_bytes=size - 1,
            **batching,
        )
        is None
    )


def test_padded_rows_are_computed_in_full_batches_bit_for_bit(lite0):
    """``pad=True``: every row is what a batch of exactly ``batch_size`` images computes for it, the last
    short batch filled up with the images before it (repeated when the images are fewer than a batch)."""
    front, _ = prefix.split_frozen_prefix(copy.deepcopy(lite0), 8)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = np.random.default_rng(0).integers(0, 256, (34, 3, 32, 32), dtype=np.uint8)
    device = torch.device("cpu")
    rows = features.compute_features(front, images, normalize, device=device, batch_size=32, pad=True)
    assert rows.shape[0] == 34
    in_full_batches = torch.cat(
        [
            features.compute_features(front, images[:32], normalize, device=device, batch_size=32),
            features.compute_features(front, images[2:], normalize, device=device, batch_size=32)[-2:],
        ]
    )
    assert torch.equal(rows, in_full_batches)
    few = features.compute_features(front, images[:5], normalize, device=device, batch_size=8, pad=True)
    repeated = features.compute_features(
        front, images[[2, 3, 4, 0, 1, 2, 3, 4]], normalize, device=device, batch_size=8
    )
    assert torch.equal(few, repeated[-5:])


def test_short_batch_rows_are_computed_at_their_size_once_and_read_back_bit_for_bit(lite0):
    from bench.training import ShortBatchRows

    front, _ = prefix.split_frozen_prefix(copy.deepcopy(lite0), 8)
    normalize = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8))
    device = torch.device("cpu")
    rows = ShortBatchRows(front, images, normalize, device)
    first = rows(torch.tensor([3, 7, 1, 9]))
    assert torch.equal(first, features.compute_features(front, images[[3, 7, 1, 9]], normalize, device=device))
    again = rows(torch.tensor([9, 1, 3, 7]))  # the same images at the same batch size, another order: read back
    assert rows.computed == 1 and torch.equal(again, first[[3, 2, 0, 1]])
    new = rows(torch.tensor([9, 1, 3, 5]))  # an image not seen at this size: the batch is computed
    assert rows.computed == 2
    assert torch.equal(new, features.compute_features(front, images[[9, 1, 3, 5]], normalize, device=device))
    rows(torch.tensor([9, 1, 3]))  # another size: computed at that size
    assert rows.computed == 3 and set(rows.kept) == {3, 4}
