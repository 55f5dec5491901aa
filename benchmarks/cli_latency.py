"""Time from starting ``medclass`` to its first error line, for commands given a wrong path or key.

Each case starts a fresh ``python -m medclass ...`` process (what a user's shell does) and measures
the wall time until the first line arrives on stderr (``error: ...``), then waits for the exit.
``--repeats`` runs per case, interleaved across cases; the median and the maximum are reported.
The process start and Python's own start-up are included: this is what a user waits for.

    python benchmarks/cli_latency.py --repeats 5 [--out benchmarks/results/cli_latency.json]

Prints a Markdown table on stdout and writes a JSON record (``_common.run_metadata`` plus the
per-case seconds). Not a test: nothing asserts a speed (``tests/test_cli_errors.py`` checks,
behaviourally, that no heavy library is imported before these errors).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, markdown_table, run_metadata, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cases(tmp: Path) -> dict[str, list[str]]:
    """Command lines (after ``medclass``) that each end in a user error."""
    return {
        "train missing folder": ["train", str(tmp / "no-such-folder")],
        "train bad --set": ["train", "--set", "train.epoch=3"],
        "train missing config": ["train", "--config", str(tmp / "none.yaml")],
        "evaluate missing run": ["evaluate", str(tmp / "no-run")],
        "predict missing run": ["predict", str(tmp / "no-run"), str(tmp / "x.png")],
        "export missing run": ["export", str(tmp / "no-run")],
        "serve missing run": ["serve", str(tmp / "no-run")],
    }


def time_to_first_error(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds to the first stderr line, seconds to exit, that line) of one ``python -m medclass`` run.

    Raises:
        RuntimeError: the command exited with 0 (the case is not an error).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medclass", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stderr.readline()
    first = time.perf_counter() - t0
    proc.stderr.read()
    code = proc.wait()
    total = time.perf_counter() - t0
    if code == 0:
        raise RuntimeError(f"medclass {' '.join(args)} succeeded; expected an error")
    return first, total, line.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="runs per case (interleaved)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_latency.json")
    a = ap.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        todo = cases(Path(tmp))
        firsts: dict[str, list[float]] = {k: [] for k in todo}
        totals: dict[str, list[float]] = {k: [] for k in todo}
        lines: dict[str, str] = {}
        for r in range(a.repeats):
            for name, args in todo.items():
                first, total, line = time_to_first_error(args, env)
                firsts[name].append(first)
                totals[name].append(total)
                lines[name] = line
            log(f"round {r + 1}/{a.repeats} done")
    rows = [(name, statistics.median(firsts[name]), max(firsts[name]), statistics.median(totals[name]),
             lines[name][:70]) for name in todo]
    print(markdown_table(["case", "first error line, median s", "max s", "exit, median s", "error line"], rows))
    record = {**run_metadata(), "settings": {"repeats": a.repeats},
              "results": {name: {"first_error_seconds": firsts[name], "exit_seconds": totals[name],
                                 "line": lines[name]} for name in todo},
              "notes": "wall time from process start to the first stderr line, Python start-up included"}
    print(f"written to {write_json(a.out, record)}", file=sys.stderr)


if __name__ == "__main__":
    main()
