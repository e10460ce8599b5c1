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
