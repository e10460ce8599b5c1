"""Timing helper shared by the benchmark scripts."""

import os


def since_process_start() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where unavailable."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


#: The phase that imports the package (reported on its own line).
IMPORT_PHASE = "imports"

#: Phases that load or simulate the data: before "the data in memory".
DATA_PHASES = frozenset({"load data", "simulate", "data"})


def in_process(phases: dict[str, float]) -> float:
    """Seconds of library use in a running process: every phase but the import and the data."""
    return sum(v for k, v in phases.items() if k != IMPORT_PHASE and k not in DATA_PHASES)


def time_workflow(fit_call, phases: dict[str, float]):
    """Fit, then full covariance (var scale), cluster scores and CR1 sandwich, timing each phase.

    Returns ``(fit, vcov, scores, sandwich)``; warnings during the fit are recorded, not shown,
    and returned as the fit's ``caught_warnings`` attribute.
    """
    import time
    import warnings

    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = fit_call()
    phases["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    V = f.vcov(scale="var")
    phases["vcov"] = time.perf_counter() - t
    t = time.perf_counter()
    S = f.scores(level="cluster", scale="var")
    phases["cluster scores"] = time.perf_counter() - t
    t = time.perf_counter()
    W = f.sandwich(scale="var", adjust="CR1")
    phases["CR1 sandwich"] = time.perf_counter() - t
    f.caught_warnings = caught
    return f, V, S, W


def print_report(phases: dict[str, float], t0: float, end: float, since_start: float | None, fit, scores=None) -> None:
    """Versions, the phase table, the totals and the fit's convergence, as the benchmarks print them
    (``scores``: the cluster scores, summarised when given)."""
    import os
    import sys

    import numpy as np

    import pymc_mixvcov as pmv

    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, pymc_mixvcov {pmv.__version__}, "
        f"PYMC_MIXVCOV_MODE={os.environ.get('PYMC_MIXVCOV_MODE', 'PY (default)')}"
    )
    print()
    print("phase            wall s")
    for name, sec in phases.items():
        print(f"{name:<16} {sec:7.3f}")
    print(f"{'sum of phases':<16} {sum(phases.values()):7.3f}")
    print()
    # library use: in-process, from the data in memory to the results; the import on its own line
    print(f"{'import':<16} {phases.get(IMPORT_PHASE, float('nan')):7.3f}   (importing the package, once per process)")
    print(
        f"{'in-process':<16} {in_process(phases):7.3f}   (data in memory -> covariance: "
        f"{', '.join(k for k in phases if k != IMPORT_PHASE and k not in DATA_PHASES)})"
    )
    # the command line's view: the whole process
    print(f"{'script total':<16} {end - t0:7.3f}   (from the first line of this script)")
    if since_start is not None:
        print(
            f"{'process total':<16} {since_start:7.2f}   (from process start, incl. interpreter "
            "start-up; 10 ms resolution)"
        )
    print(
        "(time the process externally, e.g. /usr/bin/time -f '%e s %M KB', to include "
        "interpreter start-up and shutdown)"
    )
    print()
    print(f"converged: {fit.converged}  ({fit.message}; iterations {fit.iterations})")
    if scores is None:
        print(f"loglik: {fit.loglik:.4f}")
    else:
        print(
            f"loglik: {fit.loglik:.4f}   cluster scores: {scores.shape[0]} x {scores.shape[1]}, column sums max |.| "
            f"{np.max(np.abs(scores.sum().to_numpy())):.2g}"
        )
