"""Benchmark: per-cluster pieces of a model of many clusters on the blocked engines.

Simulated (seed 2026): 1,000 small clusters (a level of ``a`` with two levels of ``b`` of its own,
three rows each: 3 random effects, 6 rows) and one crossed component (300 levels of ``a`` x 100 of
``b``, 6,000 rows: 400 effects), 12,000 rows and 1,001 clusters; ``engine="auto"`` picks the
blocked engine (a cluster above 64 effects). Models ``y ~ x + (1 | a) + (1 | b)`` (Gaussian, ML)
and the same with a binary response (binomial, Laplace).

For each model: the fit, then (medians of ``--repeat`` runs) the per-cluster pieces that cluster
scores, ``loglik_contributions`` and the CR0-CR3 sandwiches need, computed from scratch (the design
work of ``engines/blocked_clusters.py`` included: sub-models, their statistics and layouts; the
totals are the fit's), and the pieces alone at other points with that work kept; next to them, as
the anchor timed in the same run, one evaluation of the whole model's information (Gaussian:
log-likelihood, gradient, observed and expected information; binomial: Laplace value, gradient
and Hessian at the modes). lme4/merDeriv
has no anchor: ``estfun.lmerMod`` gives no scores by connected component of crossed factors.
``--all-blocked`` also times the pieces with every cluster's sub-model on the blocked engine
(``DENSE_MAX = 0``), the cost that batching the small clusters avoids::

    python benchmarks/blocked_clusters.py [--repeat 3] [--all-blocked]
"""

import argparse
import statistics
import time
import warnings

import numpy as np
import pandas as pd


def simulate(seed: int = 2026) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    small_a = np.repeat(np.arange(1000), 6)
    small_b = 2 * small_a + np.tile(np.repeat([0, 1], 3), 1000)
    big_a = 1000 + rng.integers(0, 300, 6000)
    big_b = 2000 + rng.integers(0, 100, 6000)
    a, b = np.r_[small_a, big_a], np.r_[small_b, big_b]
    x = rng.normal(size=a.size)
    eta = 0.2 + 0.5 * x + 0.7 * rng.normal(size=1300)[a] + 0.5 * rng.normal(size=2100)[b]
    return pd.DataFrame(
        {
            "y": eta + rng.normal(size=a.size),
            "yb": rng.binomial(1, 1.0 / (1.0 + np.exp(-eta))),
            "x": x,
            "a": a.astype(str),
            "b": b.astype(str),
        }
    )


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench(fit, kind: str, repeat: int, all_blocked: bool) -> None:
    """Time one fit's per-cluster pieces against its whole-model information (module docstring)."""
    from pymc_mixvcov.engines import blocked_clusters
    from pymc_mixvcov.engines.blocked import ml_derivatives

    fns, nat = fit._functions, fit._opt["nat"]
    phi, _, _ = fns.map(nat)
    # the pieces with the design work kept, at a new point each run (no factor reused)
    others = [fns.map(nat * (1.0 + 0.01 * (k + 1)))[0] for k in range(repeat)]
    if kind == "gaussian":

        def whole():
            fns.data.cache.clear()  # the last factor built
            return ml_derivatives(fns.data, phi, expected=True)

        def pieces():  # what scores, loglik_contributions and the sandwiches ask for
            return fns.clusters(nat), fns.clusters_expected(nat)

        def kept():
            return fns._cluster_pieces()(others.pop())

    else:
        v = fns.modes(phi)
        for ph in others:
            fns.modes(ph)  # the inner modes, outside the timing (kept per point by the engine below)
        modes = {ph.tobytes(): fns.modes(ph).copy() for ph in others}

        def whole():
            fns.jet._mode_factor = None
            return fns.jet.evaluate(phi, v, 2)

        def pieces():
            return fns.clusters(nat), fns.cluster_observed(nat)

        def kept():
            ph = others.pop()
            return fns._per_cluster(ph, modes[ph.tobytes()], 2)

    def fresh():
        fns._per_cluster = None
        return pieces()

    t_whole, _ = timed(whole, repeat)
    t_fresh, (c, _) = timed(fresh, repeat)
    t_kept, _ = timed(kept, repeat)
    total = c["loglik"].sum() + c.get("loglik_free", 0.0)
    print(f"  whole-model information (anchor)        {t_whole:8.3f} s")
    print(
        f"  per-cluster pieces, from scratch        {t_fresh:8.3f} s   ({t_fresh / t_whole:.2f} x the anchor; "
        f"sum of cluster logliks - loglik = {total - c['loglik_total']:.1e})"
    )
    print(f"  per-cluster pieces, design work kept    {t_kept:8.3f} s   ({t_kept / t_whole:.2f} x the anchor)")
    if all_blocked:
        keep = blocked_clusters.DENSE_MAX
        blocked_clusters.DENSE_MAX = 0
        try:
            t_all, _ = timed(fresh, 1)
        finally:
            blocked_clusters.DENSE_MAX = keep
        print(f"  every cluster on the blocked engine     {t_all:8.3f} s   (one run, from scratch)")


def main(repeat: int, all_blocked: bool) -> int:
    import pymc_mixvcov as pmv

    data = simulate()
    status = 0
    for kind in ("gaussian", "binomial"):
        if kind == "gaussian":
            model = pmv.lmm("y ~ x + (1 | a) + (1 | b)", data)
        else:
            model = pmv.glmm("yb ~ x + (1 | a) + (1 | b)", data, family="binomial")
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = model.fit()
        t_fit = time.perf_counter() - t
        status |= int(not fit.converged)
        st = fit.structure
        print(
            f"{kind}: {fit.nobs} rows, {st.n_clusters} clusters (largest {st.sizes.max()} effects), "
            f"engine {fit.engine}, converged {fit.converged}; fit {t_fit:.2f} s"
        )
        bench(fit, kind, repeat, all_blocked)
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--all-blocked", action="store_true")
    args = parser.parse_args()
    raise SystemExit(main(args.repeat, args.all_blocked))
