"""bench.report.build: the research report from hand-made run folders, and the page opened in headless Chromium."""

from __future__ import annotations

import base64
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_row, require, write_run

from bench.analysis.outcomes import pretraining_gain, rank_correlations, transferability_points
from bench.report import figures as figs
from bench.report.build import report_command, write_report
from bench.results.leaderboard import prepare, select_hparams

T_975_DF2 = 4.302652729749464
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SECTIONS = [
    "1. The regime matrix, measured",
    "2. Learning curves over data size",
    "3. What pretraining buys",
    "4. Freeze-depth profile",
    "5. Backbone leaderboard and cost",
    "6. Transferability estimates against outcomes",
    "7. Suite, environment and failed trials",
]


def study_rows(measured: bool = False) -> list[dict]:
    """Two datasets (natural, specialized) x linear probe / full x pretrained / scratch x 2 sizes x 2 seeds."""
    rows = []
    for dataset, group in (("digits", "natural"), ("pbc", "specialized")):
        for backbone, quality in (("efficientnet_lite0", 0.0), ("efficientnet_lite1", 2.0), ("resnet18", -3.0)):
            for pretrained in (True, False):
                for strategy, frozen in (("linear_probe", 1.0), ("full", 0.0)):
                    for fraction, n_train in ((0.1, 50), (1.0, 500)):
                        for seed in (0, 1):
                            top1 = 50 + 20 * pretrained + 10 * (fraction == 1.0) + quality + seed
                            rows.append(
                                make_row(
                                    dataset=dataset,
                                    dataset_group=group,
                                    backbone=backbone,
                                    pretrained=pretrained,
                                    strategy=strategy,
                                    frozen_param_fraction=frozen,
                                    data_fraction=fraction,
                                    n_train=n_train,
                                    seed=seed,
                                    metric_top1=top1,
                                    metric_val_top1=top1,
                                    train_seconds=2.0 if strategy == "linear_probe" else 20.0 + quality,
                                    transferability=(1.0 + quality / 10) if measured else None,
                                    similarity_score=(0.9 if group == "natural" else 0.2) if measured else None,
                                )
                            )
    rows.append(
        make_row(trial_id="broken-trial", status="failed", error="RuntimeError: CUDA out of memory", metric_top1=None)
    )
    return rows


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = write_run(tmp_path_factory.mktemp("runs") / "handmade" / "20250101T000000Z", study_rows())
    html = report_command([run])
    assert html == run / "report" / "report.html"
    return html.parent


@pytest.mark.slow
def test_report_files_sections_and_figures(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    pngs = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert pngs == [
        "cost.png",
        "freeze_profile.png",
        "learning_curves.png",
        "pretraining_gain.png",
        "regime_matrix.png",
    ]
    for section in SECTIONS:
        assert f"## {section}" in md
        assert section in html
    # Markdown references every figure by a relative path that exists.
    referenced = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert sorted(Path(r).name for r in referenced) == pngs
    # HTML embeds every figure as a PNG, and nothing is fetched from a network.
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    # Section 6 says why it is empty; section 7 lists the failed trial with its error.
    assert "Similarity and transferability were not measured" in md
    assert "broken-trial" in md and "CUDA out of memory" in html
    # The regime matrix: digits is natural (declared high), pbc specialized (declared low), 10% = 5/class.
    assert "Similarity regime: not measured for `digits`, `pbc`" in md


@pytest.mark.slow
def test_report_numbers_come_from_the_leaderboard(report_dir: Path) -> None:
    from scipy import stats

    from bench.results.leaderboard import leaderboard

    md = (report_dir / "report.md").read_text()
    # One entry of one cell: resnet18 from scratch, fully fine-tuned, on pbc at 100%. Its seeds' rows give the
    # mean and the half-width t(0.975, n-1) * sd / sqrt(n); the leaderboard must agree, and so must the report's
    # row of that entry in the per-dataset table (the only row with these keys).
    rows = pd.DataFrame(study_rows())
    seeds = rows[
        (rows["dataset"] == "pbc")
        & (rows["data_fraction"] == 1.0)
        & (rows["backbone"] == "resnet18")
        & ~rows["pretrained"].astype(bool)
        & (rows["strategy"] == "full")
        & (rows["status"] == "ok")
    ]
    n, mean, sd = len(seeds), seeds["metric_top1"].mean(), seeds["metric_top1"].std(ddof=1)
    board = leaderboard(rows, by="dataset")
    (entry,) = board[
        (board["dataset"] == "pbc") & (board["data"] == "100%") & (board["entry"] == "resnet18 scratch / full")
    ].itertuples()
    assert n == 2 and entry.n_seeds == n and entry.mean == pytest.approx(mean)
    assert entry.ci95 == pytest.approx(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    keys = "| pbc | 100% | "
    lines = [line for line in md.splitlines() if line.startswith(keys) and "| resnet18 scratch / full |" in line]
    assert lines == [
        f"{keys}{entry.rank} | resnet18 scratch / full | {entry.mean:.1f} ± {entry.ci95:.1f} | "
        f"{entry.macro_f1_mean:.1f} ± {entry.macro_f1_ci95:.1f} | {n} |  | "
        f"{entry.train_seconds_mean:.1f} |"
    ], lines


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_every_figure_loaded(report_dir: Path, tmp_path: Path) -> None:

    require(CHROMIUM is not None, "chromium not installed (apt-get install -y chromium)")  # fails under CI=true
    page = (report_dir / "report.html").read_text()
    expected = page.count("<img ")
    assert expected == len(list((report_dir / "figures").glob("*.png")))  # every figure written is on the page
    loaded, total = _chromium_image_count(page, tmp_path / "ok")
    assert (loaded, total) == (expected, expected)
    # The check can fail: one corrupted figure is reported as not loaded.
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    assert _chromium_image_count(broken, tmp_path / "broken") == (expected - 1, expected)


def _chromium_image_count(page: str, folder: Path) -> tuple[int, int]:
    """Open `page` in headless Chromium; a probe script appended to a copy counts images that decoded."""
    folder.mkdir()
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var imgs = Array.prototype.slice.call(document.images);"
        "document.body.setAttribute('data-images', imgs.length);"
        "document.body.setAttribute('data-loaded', imgs.filter(function (i) {"
        "return i.complete && i.naturalWidth > 0; }).length); });</script>"
    )
    copy = folder / "report.html"
    copy.write_text(page.replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={folder / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            copy.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    body = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-loaded="(\d+)"', result.stdout)
    assert body, f"chromium gave no DOM (rc {result.returncode}): {result.stderr[-500:]}"
    return int(body.group(2)), int(body.group(1))


@pytest.mark.slow
def test_report_with_transferability_measured(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", study_rows(measured=True))
    html = write_report([run], tmp_path / "out")
    md = (html.parent / "report.md").read_text()
    assert "were not measured" not in md
    assert (html.parent / "figures" / "transferability.png").exists()
    assert (html.parent / "figures" / "similarity_gain.png").exists()
    points = transferability_points(
        prepare(pd.read_parquet(run / "trials.parquet")),
        select_hparams(prepare(pd.read_parquet(run / "trials.parquet"))),
    )
    correlations = rank_correlations(points).set_index(["estimate", "outcome", "scope"])
    # Transferability follows backbone quality exactly, and so does accuracy: tau = rho = 1 on each dataset.
    assert correlations.loc[("transferability", "best_top1", "digits"), "kendall tau"] == 1.0
    assert correlations.loc[("transferability", "best_top1", "digits"), "spearman rho"] == 1.0
    assert correlations.loc[("transferability", "best_top1", "digits"), "n"] == 3


def test_report_of_partial_runs_lists_problems_and_reports_the_rest(tmp_path: Path) -> None:
    good = write_run(tmp_path / "runs" / "good", study_rows()[:16])
    bad = write_run(tmp_path / "runs" / "bad", study_rows()[:4])
    content = (bad / "trials.parquet").read_bytes()
    (bad / "trials.parquet").write_bytes(content[: len(content) // 3])
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    (empty / "suite.yaml").write_text("name: empty\n")
    html = write_report([tmp_path / "runs"], tmp_path / "report")
    md = (html.parent / "report.md").read_text()
    assert f"{bad / 'trials.parquet'}: not a readable Parquet file" in md
    assert f"{empty / 'trials.parquet'}: missing (empty run" in md
    assert "16 trials (16 ok, 0 failed, 0 diverged) from 3 run folder(s)" in md
    assert str(good) in md


def test_pretraining_gain_is_paired_by_seed() -> None:
    rows = [make_row(pretrained=True, seed=s, metric_top1=v) for s, v in enumerate([80.0, 82.0, 84.0])]
    rows += [make_row(pretrained=False, seed=s, metric_top1=v) for s, v in enumerate([60.0, 61.0, 62.0])]
    gains = pretraining_gain(select_hparams(prepare(pd.DataFrame(rows))))
    (gain,) = gains.to_dict("records")
    assert gain["mean"] == pytest.approx(21.0) and gain["n_seeds"] == 3
    assert gain["ci95"] == pytest.approx(T_975_DF2 * 1.0 / math.sqrt(3))  # per-seed gains 20, 21, 22


def test_pareto_front() -> None:
    seconds = pd.Series([1.0, 2.0, 3.0, 4.0, 2.0])
    accuracy = pd.Series([50.0, 70.0, 60.0, 80.0, 65.0])
    assert list(figs.pareto_front(seconds, accuracy)) == [True, True, False, True, False]


def test_a_searched_run_reports_its_selected_hyperparameters_and_sensitivity(tmp_path: Path) -> None:
    # Per seed, lr 1e-2 wins on validation and loses on test, lr 1e-3 the other way; one sample was stopped.
    rows = []
    for seed in (0, 1, 2):
        rows.append(make_row(seed=seed, hp_lr=1e-2, metric_val_top1=90.0 + seed, metric_top1=60.0 + seed))
        rows.append(make_row(seed=seed, hp_lr=1e-3, metric_val_top1=70.0 + seed, metric_top1=95.0))
        rows.append(make_row(seed=seed, hp_lr=1e-5, status="stopped", metric_val_top1=10.0, metric_top1=None))
    html = write_report([write_run(tmp_path / "run", rows)], tmp_path / "out")
    md = (html.parent / "report.md").read_text()
    section = md.split("### Hyperparameters: selected on validation, and sensitivity")[1]
    assert "| digits | 100% | efficientnet_lite0 / linear_probe | hp_lr=0.01 | 3 | 91 | 61 |" in section  # 3 tried
    assert (html.parent / "figures" / "sensitivity.png").is_file()
    assert "3 stopped" in md.split("\n\n")[1]  # the overview counts the stopped samples


def test_a_report_over_a_fixed_and_a_tuned_run_says_which_verdicts_tuning_changed(tmp_path: Path) -> None:
    def rows(run_id: str, settings: dict[float, dict[str, float]]) -> list[dict]:
        return [
            make_row(run_id=run_id, dataset="pbc", dataset_group="specialized", n_train=2000, strategy=strategy,
                     seed=seed, hp_lr=lr, metric_top1=top1 + seed, metric_val_top1=top1 + seed, train_seconds=4.0)
            for lr, by_strategy in settings.items()
            for strategy, top1 in by_strategy.items()
            for seed in (0, 1, 2)
        ]  # fmt: skip

    fixed = write_run(tmp_path / "fixed", rows("fixed", {1e-3: {"linear_probe": 90.0, "full": 60.0}}))
    tuned = rows("tuned", {1e-3: {"linear_probe": 90.0, "full": 60.0}, 1e-2: {"linear_probe": 85.0, "full": 97.0}})
    html = write_report([fixed, write_run(tmp_path / "tuned", tuned)], tmp_path / "out")
    md = (html.parent / "report.md").read_text()
    matrix = md.split("## 1. The regime matrix, measured")[1].split("## 2.")[0]
    assert "Tuning changed 1 verdict(s): low similarity, sufficient data: refuted -> confirmed." in matrix
    # Tuned: full at 1e-2 (97 + seed) against the probe at 1e-3 (90 + seed, it wins on validation): 7 points on
    # each of 3 seeds, no spread, so p = 0; 3 seeds are fewer than 5. Each selection is an edge of its 2 values.
    assert "| low | sufficient | full fine-tune | full vs linear_probe | +7.0 [+7.0, +7.0] | 0 | 3 | confirmed |" in (
        matrix
    )
    assert "3 paired seeds (fewer than 5: weak evidence) | efficientnet_lite0 / full | 98.0 ± 2.5 | tuned |" in matrix
    assert "| 12 trials (0 stopped), 48 s | 2 | refuted (efficientnet_lite0 / linear_probe) | yes |" in matrix
    assert "The verdicts rest on 3 paired seeds (one compared cell). Fewer than 5 (weak evidence): low" in matrix
    cost = md.split("## 5. Backbone leaderboard and cost")[1].split("## 6.")[0]
    assert "Total compute of these runs: 48 training seconds over 12 trials." in cost  # fixed's 6 trials: tuned's too


# --------------------------------------------------------------------------------------------------------------
# a searched study: paired verdicts, edges of the search, tuning curves and convergence, checked by hand

DIGITS_PROBE = {1e-2: (90.0, 85.0), 1e-3: (80.0, 88.0), 1e-4: (70.0, 60.0)}  # lr: (validation, test), every seed
DIGITS_FULL = [80.0, 83.0, 81.0, 84.0, 82.0]  # per seed, at the fixed lr 1e-3
PBC_PROBE = [75.0, 77.0, 76.0, 77.0, 76.0]  # per seed, at the fixed lr 1e-3; seed 0 did not converge
PBC_FULL = {1e-3: (85.0, [78.0, 75.0, 80.0, 76.0, 77.0]), 1e-2: (70.0, [70.0] * 5), 1e-4: (60.0, [60.0] * 5)}


def searched_rows() -> list[dict]:
    """Five seeds, two cells at 100 images per class. digits (natural: high similarity): the linear probe searches
    lr over 1e-4, 1e-3, 1e-2 and selects 1e-2 (best validation), the highest value tried; full runs at 1e-3.
    pbc (specialized: low similarity): full searches the same lrs and selects 1e-3 (interior); the probe runs at
    1e-3. Only the probe's rows carry ``converged``: on digits only the selected lr converged, on pbc all but
    seed 0."""
    rows = []
    pbc = {"dataset": "pbc", "dataset_group": "specialized"}
    for seed in range(5):
        for lr, (val, test) in DIGITS_PROBE.items():
            rows.append(make_row(seed=seed, hp_lr=lr, metric_val_top1=val, metric_top1=test, converged=lr == 1e-2))
        top1 = DIGITS_FULL[seed]
        rows.append(make_row(seed=seed, strategy="full", metric_val_top1=top1, metric_top1=top1, converged=None))
        top1 = PBC_PROBE[seed]
        rows.append(make_row(**pbc, seed=seed, metric_val_top1=top1, metric_top1=top1, converged=seed != 0))
        for lr, (val, tests) in PBC_FULL.items():
            rows.append(
                make_row(
                    **pbc, seed=seed, strategy="full", hp_lr=lr, metric_val_top1=val, metric_top1=tests[seed],
                    converged=None,
                )
            )  # fmt: skip
    return rows


def paired_by_hand(differences: list[float]) -> tuple[float, float, float, float]:
    """(mean, 95% low, 95% high, two-sided p) of the paired t-test on per-seed differences."""
    from scipy import stats

    d = pd.Series(differences)
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, 2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run folder, report.md) of ``searched_rows``."""
    folder = tmp_path_factory.mktemp("searched")
    run = write_run(folder / "run", searched_rows())
    html = write_report([run], folder / "out")
    return run, (html.parent / "report.md").read_text()


def test_the_matrix_shows_paired_verdicts_with_holm_p_edges_and_convergence(searched: tuple[Path, str]) -> None:
    _, md = searched
    matrix = md.split("## 1. The regime matrix, measured")[1].split("## 2.")[0]
    # high: probe at 1e-2 (85 on every seed) minus full; low: full at 1e-3 minus the probe. Holm over the two.
    high = paired_by_hand([85.0 - v for v in DIGITS_FULL])
    low = paired_by_hand([f - p for f, p in zip(PBC_FULL[1e-3][1], PBC_PROBE)])
    first, second = sorted([high[3], low[3]])
    holm = {first: 2 * first, second: max(2 * first, second)}
    assert holm[high[3]] < 0.05 < holm[low[3]]  # the design: one confirmed, one inconclusive
    assert (
        f"| high | sufficient | linear probe (feature extraction) | linear_probe vs full | +3.0 [{high[1]:+.1f}, "
        f"{high[2]:+.1f}] | {holm[high[3]]:.3g} | 5 | confirmed | linear_probe vs full: +3.0 pts"
    ) in matrix
    # The best strategy, its top-1, what tuning cost (3 lrs x 5 seeds + 5), 1 edge selection, 100% converged.
    assert "/ linear_probe | 85.0 ± 0.0 | partly tuned | 20 trials (0 stopped), 200 s | 1 | 100% |" in matrix
    assert (
        f"| low | sufficient | full fine-tune | full vs linear_probe | +1.0 [{low[1]:+.1f}, {low[2]:+.1f}] | "
        f"{holm[low[3]]:.3g} | 5 | inconclusive |"
    ) in matrix
    # 4 of the probe's 5 pbc trials converged: below 90%, so the verdict is marked; full's selection is interior.
    assert "5 paired seeds; rests on unconverged trials | efficientnet_lite0 / full |" in matrix
    assert "| 20 trials (0 stopped), 200 s | 0 | 80% |" in matrix
    assert "The verdicts rest on 5 paired seeds in each of the 2 compared regime cells." in matrix
    assert "kept as the matrix's `interval_verdict` column" in matrix
    # Selected trials with a flag: digits' probe at 1e-2 (5, converged), pbc's probe (4 of 5); the probe's other
    # digits lrs (not converged) are not selected, so they do not count.
    assert (
        "Convergence: 9 of the 10 selected trials that record it (the `converged` column) converged (90%). "
        "Verdicts resting on entries with fewer than 90% of their selected trials converged (marked in the 'why' "
        "column): low similarity, sufficient data."
    ) in matrix
    # The per-dataset leaderboard: the edge count (blank when 0) and the converged share.
    board = md.split("### Per dataset and data size")[1]
    cost = "15 trials (0 stopped), 150 s"
    assert f"/ linear_probe | 85.0 ± 0.0 | 79.0 ± 0.0 | 5 | hp_lr=0.01 | 10.0 | 1 | 100% | {cost} |" in board
    assert f"/ full | 77.2 ± 2.4 | 79.0 ± 0.0 | 5 | hp_lr=0.001 | 10.0 |  |  | {cost} |" in board


def test_the_report_says_which_selections_sit_on_an_edge_of_the_search(searched: tuple[Path, str]) -> None:
    _, md = searched
    section = md.split("### Did the search find its optimum?")[1].split("## 6.")[0]
    # The probe's 1e-2 on digits is the highest lr tried; full's 1e-3 on pbc lies between 1e-4 and 1e-2.
    assert "| strategy | interior | lower edge | upper edge | total |" in section
    assert "| full | 1 | 0 | 0 | 1 |" in section and "| linear_probe | 0 | 0 | 1 | 1 |" in section
    assert (
        "Selections on an edge of what was tried: digits 100%, efficientnet_lite0 / linear_probe: lr = 0.01 "
        "(upper edge of 3 values tried)."
    ) in section


def test_the_tuning_curves_figure_draws_the_expected_maximum_by_hand(searched: tuple[Path, str]) -> None:
    from bench.analysis import Analysis
    from bench.results.store import load_runs

    run, md = searched
    assert "![" in md.split("### Did the search find its optimum?")[1] and "(figures/tuning_curves.png)" in md
    assert (run.parent / "out" / "figures" / "tuning_curves.png").is_file()
    fig = figs.tuning_curves_figure(Analysis.of(load_runs([run]).trials).tuning_curves())
    (ax,) = [a for a in fig.axes if a.get_title() == "high similarity, sufficient data"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    # The probe's digits search, validation 70 < 80 < 90 (tests 60, 88, 85): the best of n draws with
    # replacement is the i-th lowest with probability (i/3)^n - ((i-1)/3)^n.
    probability = {n: [(i / 3) ** n - ((i - 1) / 3) ** n for i in (1, 2, 3)] for n in (1, 2, 3)}
    val = [sum(p * v for p, v in zip(probability[n], (70.0, 80.0, 90.0))) for n in (1, 2, 3)]
    test = [sum(p * v for p, v in zip(probability[n], (60.0, 88.0, 85.0))) for n in (1, 2, 3)]
    assert val == pytest.approx([80.0, 760 / 9, 2340 / 27]) and test == pytest.approx([233 / 3, 749 / 9, 2291 / 27])
    entry = "efficientnet_lite0 / linear_probe"
    assert list(lines[f"{entry} (validation)"].get_xdata()) == [1, 2, 3]
    assert list(lines[f"{entry} (validation)"].get_ydata()) == pytest.approx(val)
    assert list(lines[f"{entry} (test of the selection)"].get_ydata()) == pytest.approx(test)
    assert lines[f"{entry} (test of the selection)"].get_linestyle() == "--"
    # full ran one setting there: a lone point at n = 1.
    assert list(lines["efficientnet_lite0 / full (validation)"].get_xdata()) == [1]
    # Without a search there is no figure.
    assert figs.tuning_curves_figure(Analysis.of(pd.DataFrame(study_rows())).tuning_curves()) is None


def test_the_regime_matrix_figure_colours_each_box_by_its_paired_verdict(searched: tuple[Path, str]) -> None:
    from matplotlib.colors import to_rgb

    from bench.analysis import Analysis
    from bench.results.store import load_runs

    run, _ = searched
    fig = figs.regime_matrix_figure(Analysis.of(load_runs([run]).trials).matrix())
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["confirmed", "refuted", "inconclusive", "not measured"]
    (ax,) = fig.axes
    # Boxes in the matrix's order: high x (scarce, limited, sufficient), then low.
    colours = [patch.get_facecolor()[:3] for patch in ax.patches]
    grey, green, yellow = to_rgb("#DDDDDD"), to_rgb("#009E73"), to_rgb("#F0E442")
    assert colours == [pytest.approx(c) for c in (grey, grey, green, grey, grey, yellow)]
    (box,) = [t.get_text() for t in ax.texts if "verdict: confirmed" in t.get_text()]
    high = paired_by_hand([85.0 - v for v in DIGITS_FULL])
    assert f"effect +3.0 [{high[1]:+.1f}, {high[2]:+.1f}] pts" in box and "5 paired seeds" in box
