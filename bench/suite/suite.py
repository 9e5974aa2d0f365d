"""A suite: the validated spec of a suite file and the ``TrialConfig``s it describes.

Counting the trials is arithmetic (``Suite.trial_count``), so a 20,000-trial study validates instantly. A search
that extends itself (``search.extend``) adds points past the edges its cells select (``Suite.search_rounds``): they
depend on the results, so the count leaves them out and ``extension_bound`` states how many there may be.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bench.config import TrialConfig
from bench.errors import UserError
from bench.models.strategies import probes_first
from bench.plugins import load_plugins
from bench.suite.messages import validate_suite
from bench.suite.reading import load_yaml, shorten, type_name
from bench.suite.spec import AnalysisSpec, SuiteSpec, TuneSpec, _freeze_key

# ---------------------------------------------------------------------------------------------------------
# Loading and expanding


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge key by key, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Sample(NamedTuple):
    """One search sample: its cell's config without the point (``base``), the point, and the trial they make."""

    base: TrialConfig
    point: dict[str, Any]
    trial: TrialConfig


@dataclasses.dataclass(frozen=True)
class Suite:
    """A validated suite: its typed spec, the resolved dict to save with results, and its trials."""

    path: Path
    spec: SuiteSpec
    resolved: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def tune(self) -> TuneSpec:
        return self.spec.tune

    @property
    def analysis(self) -> AnalysisSpec:
        return self.spec.analysis

    @property
    def two_stage(self) -> bool:
        """A search on the first seed, then the selected point of each cell on the other seeds."""
        search = self.spec.search
        return search is not None and search.protocol == "two_stage" and len(self.spec.grid.seed) > 1

    def trial_count(self) -> int:
        """The number of trials, by arithmetic: instant for any grid. A search's extensions are not counted
        (``extension_bound``)."""
        grid, search = self.spec.grid, self.spec.search
        per_freeze = sum(search.size(_freeze_key(f)[0]) if search else 1 for f in grid.freeze)
        cells = self._cells_per_seed_and_freeze()
        if self.two_stage:
            return cells * (per_freeze + len(grid.freeze) * (len(grid.seed) - 1))
        return cells * per_freeze * len(grid.seed)

    @property
    def extends(self) -> int:
        """How many rounds the search may extend past its cells' edges (``search.extend``; 0 without)."""
        return self.spec.search.extend if self.spec.search is not None else 0

    def extension_bound(self) -> int:
        """The most trials ``search_rounds`` may add, by arithmetic: per round, one per cell of the first seed and
        grid of numbers its strategy searches (a selection sits on at most one edge of each grid)."""
        grid, search = self.spec.grid, self.spec.search
        if search is None or not search.extend:
            return 0
        grids = sum(len(search.extendable(_freeze_key(f)[0])) for f in grid.freeze)
        cells = self._cells_per_seed_and_freeze()
        return cells * grids * search.extend

    def _cells_per_seed_and_freeze(self) -> int:
        """Datasets x backbones x data sizes x data seeds x swept lr x swept weight decay."""
        grid = self.spec.grid
        sizes = [self.spec.datasets, self.spec.backbones, grid.data_sizes(), grid.data_seed or [None]]
        return math.prod(len(axis) for axis in [*sizes, grid.lr or [None], grid.weight_decay or [None]])

    def trials(self) -> list[TrialConfig]:
        """The trials known before any has run: the grid, expanded (datasets x backbones x freeze x data size x
        seed x data seed x lr x weight decay), each cell crossed with the search's points for its strategy
        (``search:``). With ``protocol: two_stage`` these are the search on the first seed; ``search_rounds``
        adds the extensions past edges, ``confirm_trials`` the other seeds."""
        return [sample.trial for sample in self._samples()]

    def search_rounds(self, val_top1: Mapping[str, float]) -> list[list[TrialConfig]]:
        """The search's trials in rounds: round 0 is ``trials()``; round r (1 to ``search.extend``) holds, for
        each cell whose selection after the rounds before r sits on the lowest or highest value tried of a grid
        of numbers, the selected point with that value replaced by the next one beyond it
        (``bench.analysis.edges.extend`` on the values the cell tried, within ``search.limits`` and what
        ``train:`` accepts). A cell's selection is its best validation top-1 (``val_top1``: trial_id -> score
        of the trials that finished ok), the earlier sample on a tie; a sample without a score counts as tried.
        The rounds end early once no cell gets a point. A function of the suite and ``val_top1`` alone: the
        same rows give the same rounds and trial ids, which is how a resumed run finds what it misses."""
        samples = self._samples()
        rounds = [[sample.trial for sample in samples]]
        cells: dict[str, list[_Sample]] = {}
        for sample in samples:
            cells.setdefault(sample.trial.cell_id, []).append(sample)
        for _ in range(self.extends):
            new = [sample for members in cells.values() for sample in self._beyond_edges(members, val_top1)]
            if not new:
                break
            rounds.append([sample.trial for sample in new])
            for sample in new:
                cells[sample.trial.cell_id].append(sample)
        return rounds

    def confirm_trials(self, val_top1: Mapping[str, float]) -> tuple[list[TrialConfig], list[TrialConfig]]:
        """A two-stage search's second stage: each cell's selected point on every other seed.

        ``val_top1`` maps the ``trial_id`` of each search trial that finished ``ok`` to its validation top-1
        (test metrics never select). A cell's point is the one with the best validation top-1 among its
        samples of every round (``search_rounds``), the earlier on a tie. Returns (trials to run, search
        trials of cells with no finished sample: nothing to select, so their other seeds are not run)."""
        if not self.two_stage:
            return [], []
        selected: dict[str, TrialConfig] = {}
        unselected: dict[str, TrialConfig] = {}
        for config in itertools.chain.from_iterable(self.search_rounds(val_top1)):
            if _better(config, selected.get(config.cell_id), val_top1):
                selected[config.cell_id] = config
            unselected.setdefault(config.cell_id, config)
        first_seed = self.spec.grid.seed[0]
        confirm = []
        for config in self._iter_trials():
            if config.seed == first_seed:
                continue
            chosen = selected.get(dataclasses.replace(config, seed=first_seed).cell_id)
            if chosen is not None:
                confirm.append(dataclasses.replace(chosen, seed=config.seed))
        missing = [config for cell, config in unselected.items() if cell not in selected]
        return confirm, missing

    def _samples(self) -> list[_Sample]:
        """Every search sample known before any has run (``trials()``), with its cell's config and point."""
        search = self.spec.search
        first_seed = self.spec.grid.seed[0]
        points: dict[str, list[dict[str, Any]]] = {}
        samples = []
        for config in self._iter_trials():
            if self.two_stage and config.seed != first_seed:
                continue
            if config.strategy not in points:
                points[config.strategy] = search.points(config.strategy) if search else [{}]
            samples.extend(_Sample(config, point, self._at_point(config, point)) for point in points[config.strategy])
        return samples

    def _beyond_edges(self, members: list[_Sample], val_top1: Mapping[str, float]) -> list[_Sample]:
        """The points one step past each edge the cell's selection sits on (see ``search_rounds``)."""
        from bench.analysis.edges import extend  # pandas: loaded only by a search that extends

        search = self.spec.search
        chosen: _Sample | None = None
        for sample in members:
            if _better(sample.trial, chosen.trial if chosen else None, val_top1):
                chosen = sample
        if search is None or chosen is None:
            return []
        new = []
        for name in search.extendable(chosen.trial.strategy):
            tried = list(dict.fromkeys(sample.point[name] for sample in members))
            limits = search.limits.get(name)
            beyond = extend(tried, chosen.point[name], steps=1, limits=(limits[0], limits[1]) if limits else None)
            if beyond and self.spec.train_refuses(name, beyond[0]) is None:
                point = {**chosen.point, name: beyond[0]}
                new.append(_Sample(chosen.base, point, self._at_point(chosen.base, point)))
        return new

    def _at_point(self, config: TrialConfig, point: dict[str, Any]) -> TrialConfig:
        if "lr" in point and probes_first(config.strategy) and self.spec.train.lr.given("linear_probe") is None:
            point = {"probe_lr": point["lr"], **point}  # the probe phase follows lr, as without a search
        return dataclasses.replace(config, **point)

    def _iter_trials(self) -> Iterator[TrialConfig]:
        spec, grid, train = self.spec, self.spec.grid, self.spec.train
        for dataset, backbone, freeze, (fraction, shots), seed, data_seed, swept_lr, swept_wd in itertools.product(
            spec.datasets,
            spec.backbones,
            grid.freeze,
            grid.data_sizes(),
            grid.seed,
            grid.data_seed or [None],  # None: the subset follows the seed
            grid.lr or [None],
            grid.weight_decay or [None],
        ):
            strategy = _freeze_key(freeze)[0]
            lr = swept_lr if swept_lr is not None else train.lr.for_strategy(strategy)
            assert lr is not None  # guaranteed by SuiteSpec._every_strategy_has_lr
            probe_lr = None
            if probes_first(strategy):
                probe_lr = train.lr.given("linear_probe") or lr
            yield TrialConfig(
                suite=spec.name,
                backbone=backbone.name,
                pretrained=backbone.pretrained,
                weights=backbone.weights,
                dataset=dataset.name,
                dataset_root=dataset.root,
                download=dataset.download,
                freeze=freeze,
                data_fraction=fraction,
                shots=shots,
                seed=seed,
                data_seed=data_seed,
                img_size=train.img_size,
                epochs=train.epochs,
                steps=train.steps,
                batch_size=train.batch_size,
                optimizer=train.optimizer,
                lr=lr,
                probe_lr=probe_lr,
                weight_decay=swept_wd if swept_wd is not None else train.weight_decay,
                momentum=train.momentum,
                warmup_fraction=train.warmup_fraction,
                label_smoothing=train.label_smoothing,
                augment=train.augment,
                val_fraction=train.val_fraction,
                eval_every=train.eval_every,
                eval_every_steps=train.eval_every_steps,
                early_stop_patience=train.early_stop.patience if train.early_stop else None,
                early_stop_min_delta=train.early_stop.min_delta if train.early_stop else 0.0,
                keep_best=train.keep_best,
                probe_solver=train.probe.solver,
                probe_refit=train.probe.refit,
                probe_c_grid=tuple(train.probe.c_grid) if train.probe.c_grid else None,
                padded_depthwise_grad=train.padded_depthwise_grad,
                compile=train.compile,
                shard_format=train.shard_format,
                plugins=tuple(spec.plugins),
                similarity=spec.analysis.similarity,
                similarity_threshold=spec.analysis.similarity_threshold,
                gpu_share=_gpu_share(spec.tune.resources_per_trial.gpu),
            )


def _better(config: TrialConfig, best: TrialConfig | None, val_top1: Mapping[str, float]) -> bool:
    """Whether ``config`` has a finite validation top-1 above ``best``'s (any, when there is no ``best``)."""
    score = val_top1.get(config.trial_id)
    return score is not None and math.isfinite(score) and (best is None or score > val_top1[best.trial_id])


def _gpu_share(gpu: float) -> float:
    """A fractional GPU request is the share of one card a trial may fill; whole cards (or none) mean all of it."""
    return gpu if 0 < gpu < 1 else 1.0


def _load_plugins(label: str, modules: Any) -> None:
    """Import installed plug-ins and the suite's ``plugins:`` modules (a UserError naming a failing one)."""
    if modules is not None and (
        not isinstance(modules, list) or not all(isinstance(m, str) and m.strip() for m in modules)
    ):
        raise UserError(
            f"{label}: plugins: expected a list of module names, got {type_name(modules)} {shorten(modules)}"
        )
    try:
        load_plugins(modules or [])
    except UserError as error:
        raise UserError(f"{label}: plugins: {error}") from None


def load_suite(path: str | Path, *, smoke: bool = False) -> Suite:
    """Read, validate and resolve a suite file; with `smoke`, its `smoke:` block is deep-merged over it.

    The smoke block is validated (merged over the suite) whether or not `smoke` is asked for, so a broken
    smoke variant is caught by `bench validate`. Raises UserError, one line, for every problem.
    """
    path = Path(path)
    label = str(path)
    raw = load_yaml(path)
    _load_plugins(label, raw.get("plugins"))  # before validation: they may add backbones, datasets, strategies
    base = {key: value for key, value in raw.items() if key != "smoke"}
    spec = validate_suite(label, base)

    smoke_block = raw.get("smoke")
    if smoke_block is not None:
        if not isinstance(smoke_block, dict):
            raise UserError(
                f"{label}: smoke: expected a mapping (a partial suite merged over the suite with "
                f"--smoke), got {type_name(smoke_block)} {shorten(smoke_block)}"
            )
        if "smoke" in smoke_block:
            raise UserError(f"{label}: smoke.smoke: expected no smoke block inside the smoke block, got one")
        smoke_spec = validate_suite(label, deep_merge(base, smoke_block), smoke_block)
        if smoke:
            spec = smoke_spec
    elif smoke:
        raise UserError(f"{label}: smoke: expected a smoke block for --smoke, got a suite without one")

    # Trackers mirror results and change none: they stay out of the saved suite, which --resume compares.
    resolved = spec.model_dump(mode="json", exclude_none=True, exclude={"tracking"})
    if smoke_block is not None and not smoke:
        resolved["smoke"] = smoke_block
    return Suite(path=path, spec=spec, resolved=resolved)
