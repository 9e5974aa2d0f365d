"""The ``bench`` command: parse, set up, run, clean up (docs/design.md, "Command line").

Exit codes: 0 every trial finished; 1 the run finished but some trials failed; 2 bad input (nothing was run,
one line on stderr, no traceback); 3 the output could not be written (disk full, permissions: one line
naming the path; finished rows are kept); anything else is an internal error and keeps its traceback.
Heavy imports (torch, Ray) happen inside the commands, so ``bench validate`` answers instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.config import TRACKERS
from bench.errors import StorageError, UserError
from bench.shipped import default_suite

# The shipped suites/smoke.yaml: package data, found in a checkout, an editable install and a wheel (bench.shipped).
EMBEDDED_DEFAULT = default_suite()


def _run(args: argparse.Namespace) -> int:
    from bench.suite import load_suite

    suite = load_suite(args.suite, smoke=args.smoke)
    from bench.runner import tune  # imports Ray: only once the suite is known to be valid
    from bench.utils.memory import PeakMemory

    with PeakMemory() as peak:
        summary = tune.run_suite(
            suite,
            out=args.out,  # a folder or a URI (s3://bucket/prefix): run_suite tells them apart
            address=args.address,
            resume=args.resume,
            num_cpus=args.num_cpus,
            cache_dir=args.cache_dir,  # a folder or a URI (shards in object storage)
            trackers=args.tracker,
        )
    _print_leaderboard(summary.location or str(summary.run_dir))
    stopped = f"{summary.stopped} stopped early, " if summary.stopped else ""
    print(
        f"bench: {summary.ok} ok, {summary.diverged} diverged, {summary.failed} failed, {stopped}"
        f"{summary.skipped} already done; {summary.seconds:.0f} s; nodes: {', '.join(sorted(summary.nodes)) or '-'}"
    )
    if peak.peak_bytes:
        print(f"bench: peak memory on this machine: {peak.gib:.2f} GiB (PSS of bench and the processes it started)")
    print(f"bench: run folder: {summary.location or summary.run_dir}")
    return summary.exit_code


def _print_leaderboard(run_dir: str) -> None:
    from bench.analysis import Analysis
    from bench.results import remote
    from bench.results import store as results

    if remote.is_uri(run_dir):  # read back from the store: what a reader of the run sees
        try:
            data = results.load_runs([run_dir])
        except UserError:  # no row uploaded (every trial already done elsewhere, or none finished)
            return
    elif not (Path(run_dir) / results.TRIALS_FILE).exists():
        return
    else:
        data = results.load_runs([run_dir])
    analysis = Analysis.of(data.trials)
    print(analysis.summary())
    verdicts = analysis.verdict_summary()
    if verdicts:
        print(f"Regime verdicts (paired over seeds, Holm-corrected; `bench report {run_dir}` explains them):")
        print(verdicts)


def _validate(args: argparse.Namespace) -> int:
    from bench.suite import load_suite

    suite = load_suite(args.suite, smoke=args.smoke)
    extra = suite.extension_bound()
    more = f", and up to {extra} more past the search's edges" if extra else ""
    print(f"{args.suite}: suite '{suite.name}' is valid: {suite.trial_count()} trials{more}")
    from bench.plugins import loaded_plugins

    if loaded_plugins():  # their code ran here, and runs in every worker: read a shared suite's plug-ins first
        print(f"plug-ins imported (their code ran, and runs in every worker): {', '.join(loaded_plugins())}")
    if args.plan or args.plan_json:  # what it needs in disk and memory, from the suite alone (bench.suite.plan)
        import json

        from bench.suite.plan import format_plan, plan_suite

        for option, value in (("--node-memory-gb", args.node_memory_gb), ("--node-cpus", args.node_cpus)):
            if value is not None and not 0 < value < float("inf"):
                raise UserError(f"{option}: expected a number > 0, got {value:g}")
        memory = None if args.node_memory_gb is None else int(args.node_memory_gb * 2**30)
        cache = _local_cache(args.cache_dir, "validate --plan")
        plan = plan_suite(suite, cache_dir=cache, node_memory=memory, node_cpus=args.node_cpus)
        print(f"\n{format_plan(plan)}")
        if args.plan_json:
            try:
                Path(args.plan_json).write_text(json.dumps(plan.as_dict(), indent=1) + "\n")
            except OSError as error:
                raise StorageError(f"cannot write {args.plan_json}: {error.strerror or error}") from None
    return 0


def _local_cache(cache_dir: str | None, command: str) -> Path | None:
    """``--cache-dir`` of a command that reads the cache folder itself: a URI is refused in one line."""
    from bench.results.remote import is_uri

    if cache_dir is not None and is_uri(cache_dir):
        where = cache_dir.split("?")[0]
        raise UserError(f"--cache-dir {where}: bench {command} needs a local folder (a URI is for bench run)")
    return Path(cache_dir) if cache_dir else None


def _similarity(args: argparse.Namespace) -> int:
    from bench.similarity.table import format_similarity_table, similarity_table
    from bench.suite import load_suite

    suite = load_suite(args.suite, smoke=args.smoke)
    table = similarity_table(suite, cache_dir=_local_cache(args.cache_dir, "similarity"))
    print(format_similarity_table(table, args.format))
    return 1 if table["error"].notna().any() else 0


def _leaderboard(args: argparse.Namespace) -> int:
    print(leaderboard_text(args.run_dirs, by=args.by, fmt=args.format))
    return 0


def leaderboard_text(run_dirs: Sequence[str | Path], by: str = "dataset", fmt: str = "md") -> str:
    """What `bench leaderboard` prints: the ranked table and, in md, the overall ranking (``by="dataset"``) or
    the regime matrix (``by="regime"``).

    Problems met while loading (a truncated file, a missing column) go to stderr, one line each, so CSV on
    stdout stays clean.

    Raises:
        UserError: ``by`` or ``fmt`` is not a choice of the command, or the runs cannot be read.
    """
    from bench.analysis import Analysis
    from bench.analysis.tables import display_leaderboard, display_overall
    from bench.analysis.verdicts import display_matrix
    from bench.results.store import load_runs
    from bench.utils.tables import format_table

    if by not in ("dataset", "regime"):
        raise UserError(f"--by: expected 'dataset' or 'regime', got {by!r}")
    if fmt not in ("md", "csv"):
        raise UserError(f"--format: expected 'md' or 'csv', got {fmt!r}")
    data = load_runs(run_dirs)
    for problem in data.problems:
        print(f"warning: {problem}", file=sys.stderr)
    analysis = Analysis.of(data.trials)
    board = analysis.leaderboard(by)
    if fmt == "csv":
        return format_table(board, "csv")
    parts = [
        f"## Leaderboard by {by} (test top-1, mean over seeds, 95% Student-t interval; '=k' = tied)\n",
        format_table(display_leaderboard(board)),
    ]
    if by == "dataset":
        parts += [
            "\n## Overall ranking (mean rank across datasets; mean top-1 in logit space)\n",
            format_table(display_overall(analysis.overall())),
        ]
    else:
        parts += [
            "\n## Regime matrix, measured vs textbook\n",
            format_table(display_matrix(analysis.matrix(), analysis.leaderboard("regime"))),
        ]
    if not analysis.excluded.empty:
        parts.append(f"\n{len(analysis.excluded)} trial(s) failed or diverged and are left out of these statistics.\n")
    return "".join(parts)


def _report(args: argparse.Namespace) -> int:
    from bench.report import build as report

    path = report.report_command(args.run_dirs, out=Path(args.out) if args.out else None)
    print(f"bench: report written to {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.what == "suites":
        from fnmatch import fnmatch

        from bench.shipped import shipped_suites

        for suite in shipped_suites():
            if fnmatch(suite.name, args.pattern):
                print(f"{suite.name:24s} {suite.path}\n{'':24s} {suite.description}")
        return 0
    from bench.plugins import load_plugins

    load_plugins()  # installed plug-ins' entries are listed with where they come from
    if args.what == "backbones":
        from bench.models.registry import list_backbones

        for row in list_backbones(args.pattern, all_timm=args.all):
            offline = "offline" if row.offline else "download"
            print(f"{row.name:48s} {row.family:12s} {offline:9s} {row.source:16s} {row.note}")
    elif args.what == "strategies":
        from fnmatch import fnmatch

        from bench.models.strategies import STRATEGIES

        for name in STRATEGIES:
            if fnmatch(name, args.pattern):
                entry = STRATEGIES[name]
                depth = "-" if entry.depth is None else f"{entry.depth:g}"
                print(f"{name:16s} depth {depth:5s} {STRATEGIES.source(name):16s} {entry.description}")
    else:
        from bench.data import DATASETS, list_datasets

        for entry in list_datasets(args.pattern):
            offline = "offline" if entry.offline else "download"
            print(
                f"{entry.name:16s} {entry.group:12s} {offline:9s} {DATASETS.source(entry.name):16s} {entry.description}"
            )
    return 0


class _VersionAction(argparse.Action):
    """``--version``: like argparse's own, but the text is read only when asked for (bench.versions)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from bench.versions import version_text

        print(version_text())  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Transfer-learning benchmarks on Ray Tune.")
    parser.add_argument(
        "--version", action=_VersionAction, help="print bench's version and those of torch, torchvision, timm, Ray"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a suite on a local Ray or an existing cluster")
    run.add_argument("suite", nargs="?", default=str(EMBEDDED_DEFAULT), help="suite file (default: smoke.yaml)")
    run.add_argument(
        "--out", default="results", help="output folder or URI, e.g. s3://bucket/prefix (default: results/)"
    )
    run.add_argument("--smoke", action="store_true", help="merge the suite's smoke: block over it")
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (auto, ray://host:10001); default: RAY_ADDRESS or a local Ray",
    )
    run.add_argument("--resume", action="store_true", help="finish the newest run of this suite under --out")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    run.add_argument(
        "--cache-dir",
        default=None,
        help="prepared datasets and features (default: OUT/.cache; ./.bench_cache for a URI --out); a URI "
        "(s3://bucket/cache) keeps the prepared datasets in object storage, each node caching what it reads",
    )
    run.add_argument(
        "--tracker",
        action="append",
        choices=TRACKERS,
        default=[],
        help="mirror the trials to an experiment tracker (repeatable; settings: the suite's tracking: block)",
    )
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a suite file and print its trial count")
    validate.add_argument("suite")
    validate.add_argument("--smoke", action="store_true")
    validate.add_argument(
        "--plan", action="store_true", help="also print the disk and memory it needs (nothing is run or decoded)"
    )
    validate.add_argument(
        "--plan-json", metavar="FILE", default=None, help="write the plan as JSON too (implies --plan)"
    )
    validate.add_argument(
        "--cache-dir",
        default=str(Path("results") / ".cache"),
        help="where prepared datasets are looked for (default: results/.cache, as bench run)",
    )
    validate.add_argument(
        "--node-memory-gb", type=float, default=None, help="memory of a worker node, GiB (default: this machine's)"
    )
    validate.add_argument(
        "--node-cpus", type=float, default=None, help="CPUs of a worker node (default: this machine's)"
    )
    validate.set_defaults(handler=_validate)

    measure = commands.add_parser(
        "similarity", help="similarity and transferability per (backbone, dataset); trains nothing"
    )
    measure.add_argument("suite")
    measure.add_argument("--smoke", action="store_true")
    measure.add_argument(
        "--cache-dir",
        default=str(Path("results") / ".cache"),
        help="prepared datasets, features and scores (default: results/.cache, as bench run)",
    )
    measure.add_argument("--format", choices=("md", "csv"), default="md")
    measure.set_defaults(handler=_similarity)

    board = commands.add_parser("leaderboard", help="ranked tables, mean and 95%% CI over seeds")
    board.add_argument("run_dirs", nargs="+")
    board.add_argument("--by", choices=("dataset", "regime"), default="dataset")
    board.add_argument("--format", choices=("md", "csv"), default="md")
    board.set_defaults(handler=_leaderboard)

    report = commands.add_parser("report", help="write report/report.html, report.md and figures")
    report.add_argument("run_dirs", nargs="+")
    report.add_argument(
        "--out", default=None, help="report folder (default: <first run>/report; ./bench-report for a URI)"
    )
    report.set_defaults(handler=_report)

    listing = commands.add_parser("list", help="what the registries hold, and the suites bench ships")
    listing.add_argument("what", choices=("backbones", "datasets", "strategies", "suites"))
    listing.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'timm:resnet*'")
    listing.add_argument("--all", action="store_true", help="every timm/torchvision model, not only cached ones")
    listing.set_defaults(handler=_list)

    # `bench perf ARGS` is handed to bench.perf's own parser by `main`; listed here for --help.
    commands.add_parser("perf", help="plain vs optimised trials: wall time, throughput, metric equality")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["perf"]:  # its own parser, its own --help
        from bench.perf import main as perf

        return perf.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 3
    except OSError as error:
        if isinstance(error, BrokenPipeError):  # `bench list ... | head`: the reader left, nothing is wrong
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- keeps the interpreter's final flush quiet
            return 0
        where = f" ({error.filename})" if error.filename else ""
        print(
            f"bench: error: {error.strerror or error}{where}; finished trials are kept (bench run --resume to go on)",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print(
            "bench: interrupted; finished trials are in the run folder (bench run --resume to go on)", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
