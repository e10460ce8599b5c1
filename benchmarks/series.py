"""A benchmark series: our times next to the R anchors', measured in one run, interleaved.

The machine's speed drifts (by a quarter within an hour on the 2-core machines these figures
come from), so figures are only compared within one series: each round runs every workload's
script (``benchmarks/<workload>.py``, a fresh process) and then the R anchors on the same rows
(``benchmarks/anchors.R``: lme4 fit + vcov, glmmTMB fit + ``vcov(full = TRUE)``, timed in-process
with ``system.time``), and the table gives medians over the rounds, ranges and ratios.

Usage, from the repository root::

    python benchmarks/series.py [--rounds 5] [--workloads sleepstudy lmm_100k ...]
                                [--baseline PATH] [--no-r]

``--baseline PATH`` also runs each script with ``PYTHONPATH=PATH`` (another checkout of the
package) in the same rounds, so that two revisions are compared on the same machine state.
Our figures are the scripts' own lines: *in-process* (the data in memory to the covariance,
scores and sandwich: what a library call costs), *import* (once per process) and the whole
process (wall time of the subprocess, interpreter start-up and shutdown included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = (
    "sleepstudy",
    "lmm_100k",
    "glmm_100k",
    "verbagg",
    "insteval",
    "insteval_3000",
    "kb07",
    "movielens",
    "insteval_binary",
)
#: parametric bootstraps (``benchmarks/bootstrap.py --once``; anchor: lme4's bootMer): named with
#: ``--workloads``, not run by default
BOOTSTRAP_WORKLOADS = ("bootstrap_sleepstudy", "bootstrap_cbpp")


#: Workloads whose scripts repeat the fit in their process (``--repeat``): their ``repeat`` line
#: is the median of the later fits (a fitting session), ``in-process`` the first fit of the process.
REPEATED = {"insteval", "insteval_3000", "kb07"}

#: BLAS threads of every process of a series (ours and R's), from ``--threads``.
THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_script(workload: str, pythonpath: str | None, threads: int | None = None) -> dict[str, float]:
    """One fresh process of ``benchmarks/<workload>.py``: its in-process, import, repeat and peak
    memory lines and its wall time."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    if threads is not None:
        env.update({k: str(threads) for k in THREADS_ENV})
    if workload in BOOTSTRAP_WORKLOADS:
        cmd = [sys.executable, str(HERE / "bootstrap.py"), "--once", workload.removeprefix("bootstrap_")]
    else:
        cmd = [sys.executable, str(HERE / f"{workload}.py"), *(["--repeat", "3"] if workload in REPEATED else [])]
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"{workload} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    got = {"process": wall}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("in-process", "import", "repeat") and parts[1] != "runs":
            got[parts[0]] = float(parts[1])
        if len(parts) >= 4 and parts[0] == "engine:" and parts[2] == "peak":
            got["peak MB"] = float(parts[3])
    return got


def run_anchors(
    workload: str, csv: Path | None, threads: int | None = None, anchors: list[str] | None = None
) -> dict[str, float]:
    """The R anchors of one workload: ``{"lme4": s, "glmmTMB": s}`` (in-process elapsed seconds;
    ``anchors``: only these)."""
    cmd = ["Rscript", str(HERE / "anchors.R"), workload] + ([str(csv)] if csv is not None else [])
    env = dict(os.environ)
    if threads is not None:
        env.update({k: str(threads) for k in THREADS_ENV})
    if anchors:
        env["PMV_ANCHORS"] = ",".join(anchors)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}


def _load() -> str:
    """The machine's load averages (``/proc/loadavg``): the machine is shared, figures drift with it."""
    try:
        with open("/proc/loadavg") as fh:
            return "load average " + " ".join(fh.read().split()[:3])
    except OSError:
        return "load average unknown"


def write_data(workdir: Path, workloads: list[str]) -> dict[str, Path | None]:
    """CSV files of the simulated workloads for R (bundled data sets are R's own)."""
    sys.path.insert(0, str(HERE))
    import _data

    paths: dict[str, Path | None] = {}
    for w in workloads:
        if hasattr(_data, w):
            paths[w] = workdir / f"{w}.csv"
            getattr(_data, w)().to_csv(paths[w], index=False)
        else:
            paths[w] = None
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS + BOOTSTRAP_WORKLOADS)
    parser.add_argument("--baseline", help="PYTHONPATH of a second revision of the package to time alongside")
    parser.add_argument("--no-r", action="store_true", help="skip the R anchors")
    parser.add_argument("--anchors", nargs="+", choices=("lme4", "glmmTMB"), help="time only these R anchors")
    parser.add_argument("--r-rounds", type=int, default=None, help="time the R anchors in the first N rounds only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads of every process, ours and R's (default 1: R's reference BLAS is single-threaded, "
        "and a multi-threaded BLAS on a shared machine measures the other jobs); 0 leaves the environment as it is",
    )
    args = parser.parse_args(argv)
    threads = args.threads or None
    print(f"load before: {_load()}", flush=True)
    with_r = not args.no_r and shutil.which("Rscript") is not None
    results: dict[tuple[str, str], list[float]] = {}

    def add(workload: str, key: str, value: float | None) -> None:
        if value is not None:
            results.setdefault((workload, key), []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        csvs = write_data(Path(tmp), args.workloads)
        for w in args.workloads:  # warm the compile caches: first-ever runs are not what is compared
            run_script(w, None, threads)
            if args.baseline:
                run_script(w, args.baseline, threads)
        for r in range(args.rounds):
            for w in args.workloads:
                ours = run_script(w, None, threads)
                for key in ("in-process", "repeat", "import", "process", "peak MB"):
                    add(w, key, ours.get(key))
                if args.baseline:
                    base = run_script(w, args.baseline, threads)
                    add(w, "baseline in-process", base.get("in-process"))
                    add(w, "baseline repeat", base.get("repeat"))
                    add(w, "baseline process", base.get("process"))
                if with_r and (args.r_rounds is None or r < args.r_rounds):
                    for anchor, sec in run_anchors(w, csvs[w], threads, args.anchors).items():
                        add(w, anchor, sec)
            print(f"round {r + 1} of {args.rounds} done ({_load()})", file=sys.stderr, flush=True)

    print(f"load after: {_load()}")
    print(f"BLAS threads per process: {threads or 'as the environment says'}")
    print(f"{args.rounds} interleaved rounds; medians (min-max), seconds")
    keys = [
        "in-process",
        "repeat",
        "import",
        "process",
        "peak MB",
        "baseline in-process",
        "baseline repeat",
        "baseline process",
        "lme4",
        "glmmTMB",
        "bootMer",
        "bootMer_2cores",
    ]
    for w in args.workloads:
        print(f"\n{w}")
        for key in keys:
            vals = results.get((w, key))
            if vals:
                print(f"  {key:<20} {statistics.median(vals):8.3f}  ({min(vals):.3f}-{max(vals):.3f})")
        med = {k: statistics.median(results[(w, k)]) for k in keys if (w, k) in results}
        pairs = (
            ("in-process", "baseline in-process"),
            ("in-process", "lme4"),
            ("in-process", "glmmTMB"),
            ("repeat", "lme4"),
            ("repeat", "glmmTMB"),
            ("in-process", "bootMer"),
            ("in-process", "bootMer_2cores"),
        )
        for a, b in pairs:
            if a in med and b in med and med[b] > 0:
                print(f"  ratio {a} / {b}: {med[a] / med[b]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
