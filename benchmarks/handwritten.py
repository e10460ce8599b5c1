"""Benchmark: hand-written PyMC models through ``pmv.fit``, against the formula path.

Usage::

    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/handwritten.py sleepstudy
    /usr/bin/time -f "%e s %M KB" .venv/bin/python benchmarks/handwritten.py lmm_100k

Each run is one fresh process doing what ``benchmarks/sleepstudy.py`` and
``benchmarks/lmm_100k.py`` do through ``pmv.lmm`` (the same data, seed and phases: ML fit, full
covariance on the variance scale, cluster scores, CR1 sandwich), but with the model written by
hand in PyMC: fixed effects as a vector ``beta``, a correlated random intercept and slope per
group from ``pm.LKJCholeskyCov`` and ``pm.MvNormal``, and a HalfNormal residual SD. The target
is a whole-process time within twice the formula path's.
"""

import time

T0 = time.perf_counter()

import sys  # noqa: E402

from _timing import since_process_start, time_workflow  # noqa: E402


def main(case: str) -> int:
    phases: dict[str, float] = {}
    t = time.perf_counter()
    # pymc_mixvcov first: it imports its dependencies with the garbage collector paused
    import pymc_mixvcov as pmv  # noqa: I001

    import numpy as np
    import pandas as pd
    import pymc as pm

    phases["imports"] = time.perf_counter() - t

    t = time.perf_counter()
    if case == "sleepstudy":
        df = pmv.datasets.load("sleepstudy")
        g, x, y = df["Subject"], df["Days"].to_numpy(float), df["Reaction"].to_numpy(float)
        levels = list(g.cat.categories)
        codes = g.cat.codes.to_numpy()
    elif case == "lmm_100k":
        n_clusters, size = 2_000, 50
        rng = np.random.default_rng(2026)
        sd = np.array([1.0, 0.5])
        cov = np.array([[sd[0] ** 2, 0.3 * sd[0] * sd[1]], [0.3 * sd[0] * sd[1], sd[1] ** 2]])
        b = rng.multivariate_normal(np.zeros(2), cov, size=n_clusters)
        codes = np.repeat(np.arange(n_clusters), size)
        x = rng.standard_normal(n_clusters * size)
        e = rng.standard_normal(n_clusters * size)
        y = 1.0 + 0.5 * x + b[codes, 0] + b[codes, 1] * x + e
        levels = [f"g{i:04d}" for i in range(n_clusters)]
    else:
        raise SystemExit(f"unknown case {case!r}; use 'sleepstudy' or 'lmm_100k'")
    phases["data"] = time.perf_counter() - t

    t = time.perf_counter()
    coords = {"group": levels, "effect": ["(Intercept)", "slope"], "fixed": ["(Intercept)", "slope"]}
    sy = float(np.std(y))
    with pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", 0.0, 10 * sy, dims="fixed")
        chol, _, _ = pm.LKJCholeskyCov("chol", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(2.5 * sy, shape=2))
        u = pm.MvNormal("u", mu=np.zeros(2), chol=chol, dims=("group", "effect"))
        sigma = pm.HalfNormal("sigma", 2.5 * sy)
        mu = beta[0] + beta[1] * x + u[codes, 0] + u[codes, 1] * x
        pm.Normal("y", mu, sigma, observed=y)
    phases["build model"] = time.perf_counter() - t

    f, V, S, W = time_workflow(lambda: pmv.fit(model, random=["u"], method="ML"), phases)
    since_start = since_process_start()

    print(f"handwritten {case}: n = {y.size:,}, {len(levels):,} groups, ML")
    for name, sec in phases.items():
        print(f"{name:<16} {sec:7.3f}")
    print(f"{'script total':<16} {time.perf_counter() - T0:7.3f}")
    if since_start is not None:
        print(f"{'process total':<16} {since_start:7.2f}   (from process start)")
    table = pd.DataFrame(
        {
            "estimate": f.params("var"),
            "se": np.sqrt(np.diag(V.to_numpy())),
            "se CR1": np.sqrt(np.diag(W.to_numpy())),
        }
    )
    print(f"converged: {f.converged}; loglik {f.loglik:.4f}; scores {S.shape}")
    print(table.to_string(float_format=lambda v: f"{v:.6g}"))
    return 0 if f.converged else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "sleepstudy"))
