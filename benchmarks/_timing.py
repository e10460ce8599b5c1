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


def crossed_benchmark(title: str, formula: str, load, repeats: int, t0: float) -> int:
    """The crossed-design benchmarks (``insteval*.py``, ``kb07.py``, ``movielens.py``): imports (the
    package, and ``formulae``, which ``pmv.lmm`` imports on first use), data in memory, then
    ``repeats`` times in this process *build model* (``pmv.lmm``), *fit* (ML, which
    evaluates the exact observed information at the optimum) and *vcov* (the full covariance of the
    fixed effects and variance components on the SD scale, ``f.vcov("sd")``).

    Prints the phases of the first repetition (the first fit of the process, with what it loads
    from the compile cache), its ``in-process`` total and the ``repeat`` median of the later
    repetitions (a fitting session), the peak resident memory and the estimates with their SEs.
    Returns the exit status: 0 when every fit converged.
    """
    import resource
    import statistics
    import time

    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd

    from pymc_mixvcov._startup import import_formulae

    import_formulae()  # the formula parser, which pmv.lmm would otherwise import on first use
    phases["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    data = load()
    phases["load data"] = time.perf_counter() - t
    runs, fits = [], []
    for k in range(max(repeats, 1)):
        ph: dict[str, float] = {}
        t = time.perf_counter()
        model = pmv.lmm(formula, data)
        ph["build model"] = time.perf_counter() - t
        t = time.perf_counter()
        f = model.fit()
        ph["fit"] = time.perf_counter() - t
        t = time.perf_counter()
        V = f.vcov("sd")
        ph["vcov"] = time.perf_counter() - t
        runs.append(ph)
        fits.append(f)
        if k == 0:
            phases.update(ph)
    print(title)
    print_report(phases, t0, time.perf_counter(), since_process_start(), fits[0])
    totals = [sum(ph.values()) for ph in runs]
    print("in-process runs  " + "  ".join(f"{v:.3f}" for v in totals))
    if len(totals) > 1:
        print(f"{'repeat':<16} {statistics.median(totals[1:]):7.3f}   (median of the later runs in this process)")
    print(f"engine: {f.engine}   peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    table = pd.DataFrame({"estimate": f.params("sd"), "se": np.sqrt(np.diag(V.to_numpy()))})
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0 if all(fit.converged for fit in fits) else 1
