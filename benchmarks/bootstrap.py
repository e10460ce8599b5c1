"""Benchmark: parametric bootstrap replicates, ours next to lme4's ``bootMer``, timed in one run.

Workloads (each a fitted model, then its bootstrap; the fit is not timed):

* ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)``, ML, 1,000 replicates;
* ``cbpp``: ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial (Laplace), 500
  replicates.

Each replicate simulates a response from the fitted model, refits it and keeps the estimates on the
sd scale (fixed effects, SDs, correlations, sigma). Ours: ``fit.bootstrap(n, seed=1)`` with its
defaults (one process per CPU, joblib's loky backend), in a fresh Python process per round, so the
time includes starting the worker processes and sending them the model. The anchor:
``lme4::bootMer(fit, FUN, nsim, type = "parametric", use.u = FALSE)`` (``benchmarks/anchors.R``,
workloads ``bootstrap_<name>``), serially as by default and with ``parallel = "multicore", ncpus = 2``.

Usage, from the repository root::

    python benchmarks/bootstrap.py [--rounds 3] [--workloads sleepstudy cbpp] [--no-r]
    python benchmarks/bootstrap.py --once sleepstudy      # one timing, as series.py runs it

Rounds are interleaved (ours, then R, per workload); medians over rounds, ranges and the ratios are
printed with the machine's load average (``os.getloadavg``) before and after, since other jobs on a
shared machine slow both sides. Besides wall-clock seconds, both sides report CPU seconds (user +
system, of the process and of its worker processes: ``getrusage``, R's ``system.time`` with its
child times), which other jobs on the machine inflate much less.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {"sleepstudy": 1000, "cbpp": 500}


def once(workload: str, n_jobs: int | None) -> int:
    """One timing in this process: prints ``import``, ``fit`` and ``in-process`` (the bootstrap) lines."""
    t = time.perf_counter()
    import pymc_mixvcov as pmv

    imported = time.perf_counter() - t
    if workload == "sleepstudy":
        model = pmv.lmm("Reaction ~ Days + (Days | Subject)", pmv.datasets.load("sleepstudy"))
        t = time.perf_counter()
        fit = model.fit(method="ML")
    else:
        data = pmv.datasets.load("cbpp")
        model = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, family="binomial")
        t = time.perf_counter()
        fit = model.fit()
    fitted = time.perf_counter() - t
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t = time.perf_counter()
    res = fit.bootstrap(WORKLOADS[workload], seed=1, n_jobs=n_jobs, progress=False)
    boot = time.perf_counter() - t
    if n_jobs != 1:  # the worker processes' CPU time is counted once they have exited
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True))
    print(f"import {imported:.3f}")
    print(f"fit {fitted:.3f}")
    print(f"in-process {boot:.3f}")
    print(f"cpu {cpu:.3f}")
    print(f"converged {int(res.converged.sum())} of {res.n}")
    print(res.summary().to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def run_ours(workload: str, n_jobs: int | None) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--once", workload]
    if n_jobs is not None:
        cmd += ["--n-jobs", str(n_jobs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    got = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("import", "fit", "in-process", "cpu"):
            got[parts[0]] = float(parts[1])
        if parts[:1] == ["converged"]:
            got["converged"] = float(parts[1])
    return got


def run_r(workload: str) -> dict[str, float]:
    cmd = ["Rscript", str(HERE / "anchors.R"), f"bootstrap_{workload}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-r", action="store_true", help="skip lme4's bootMer")
    parser.add_argument("--n-jobs", type=int, default=None, help="fit.bootstrap's n_jobs (default: one per CPU)")
    parser.add_argument("--once", choices=list(WORKLOADS), help="time one workload in this process")
    args = parser.parse_args(argv)
    if args.once:
        return once(args.once, args.n_jobs)
    with_r = not args.no_r and shutil.which("Rscript") is not None
    load_before = os.getloadavg()
    results: dict[tuple[str, str], list[float]] = {}
    for w in args.workloads:  # warm the compile cache: first-ever runs are not what is compared
        run_ours(w, args.n_jobs)
    for r in range(args.rounds):
        for w in args.workloads:
            for key, val in run_ours(w, args.n_jobs).items():
                results.setdefault((w, key), []).append(val)
            if with_r:
                for key, val in run_r(w).items():
                    results.setdefault((w, key), []).append(val)
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"{args.rounds} interleaved rounds; medians (min-max), seconds; {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}")
    for w in args.workloads:
        print(f"\n{w}: {WORKLOADS[w]} replicates")
        med = {}
        keys = ("in-process", "cpu", "fit", "import", "converged", "bootMer", "bootMer_cpu", "bootMer_2cores")
        for key in (*keys, "bootMer_2cores_cpu"):
            vals = results.get((w, key))
            if vals:
                med[key] = statistics.median(vals)
                print(f"  {key:<16} {med[key]:9.3f}  ({min(vals):.3f}-{max(vals):.3f})")
        for anchor in ("bootMer", "bootMer_2cores"):
            if anchor in med and med["in-process"] > 0:
                print(f"  ratio {anchor} / ours, wall: {med[anchor] / med['in-process']:.2f}")
            if f"{anchor}_cpu" in med and med.get("cpu", 0) > 0:
                print(f"  ratio {anchor} / ours, CPU:  {med[anchor + '_cpu'] / med['cpu']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
