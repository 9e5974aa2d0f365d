"""Run many `bench` command lines as real processes without paying the torch import for each one.

Why: `bench validate` on a suite that names a backbone imports torch and timm (5-8 s on a busy 2-core
machine), so 100+ malformed suites x {validate, run} as fresh `python -m bench.cli` processes would take
20 minutes. This script imports what `bench validate` imports anyway (bench.cli, bench.suite.spec, and through
them torch and timm, but NOT Ray), then forks one child per command line. Each child is a real process that
does what `python -m bench.cli ARGS` does after its imports: `sys.exit(main(ARGS))`, an escaping exception
printed by the interpreter's own hook (so a traceback shows up exactly as it would), its own cwd, stdout,
stderr and exit status. The tests also run a sample through genuine `python -m bench.cli` processes and check
that both give the same answer.

Input (stdin): a JSON list of {"argv": [...], "cwd": "..."}. Output (stdout): a JSON list of
{"rc", "stdout", "stderr", "ray_imported", "seconds"}; rc is null when the child ran past the timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

import bench.cli
import bench.data.prepare  # noqa: F401
import bench.models.build  # noqa: F401  (torch, timm: what validating a backbone name imports)
import bench.suite.spec  # noqa: F401

TIMEOUT_S = 30.0


def _child(argv: list[str], cwd: str, out_path: str, err_path: str, flag_path: str) -> None:
    os.chdir(cwd)
    for fd, path in ((1, out_path), (2, err_path)):
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["bench", *argv]
    code: object = 0
    try:
        code = bench.cli.main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    except BaseException:  # what the interpreter does with an escaping exception: traceback, status 1
        sys.excepthook(*sys.exc_info())
        code = 1
    with open(flag_path, "w") as flag:
        flag.write("1" if "ray" in sys.modules else "0")
    sys.stdout.flush()
    sys.stderr.flush()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    os._exit(code)


def run_one(argv: list[str], cwd: str, scratch: str) -> dict[str, object]:
    paths = [os.path.join(scratch, name) for name in ("out", "err", "flag")]
    for path in paths:
        open(path, "w").close()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(argv, cwd, *paths)
        finally:
            os._exit(99)  # never fall back into the parent's loop
    rc: int | None = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() - started > TIMEOUT_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    with open(paths[0]) as out, open(paths[1]) as err, open(paths[2]) as flag:
        return {
            "rc": rc,
            "stdout": out.read(),
            "stderr": err.read(),
            "ray_imported": flag.read() == "1",
            "seconds": round(time.monotonic() - started, 3),
        }


def main() -> None:
    jobs = json.load(sys.stdin)
    with tempfile.TemporaryDirectory(prefix="bench-cli-fork-") as scratch:
        results = [run_one(job["argv"], job["cwd"], scratch) for job in jobs]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
