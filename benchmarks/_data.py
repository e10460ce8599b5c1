"""The simulated data sets of the benchmarks, shared by the Python scripts and ``series.py``
(which writes them to CSV for the R anchors, so that both sides fit the same rows)."""

import numpy as np
import pandas as pd

SEED = 2026
N_CLUSTERS = 2_000
CLUSTER_SIZE = 50


def lmm_100k() -> pd.DataFrame:
    """``y = 1 + 0.5 x + b0_g + b1_g x + e``: 2,000 clusters of 50, ``(b0, b1)`` with SDs 1 and
    0.5 and correlation 0.3, ``e ~ N(0, 1)``; seed 2026."""
    rng = np.random.default_rng(SEED)
    n = N_CLUSTERS * CLUSTER_SIZE
    sd = np.array([1.0, 0.5])
    corr = 0.3
    cov = np.array([[sd[0] ** 2, corr * sd[0] * sd[1]], [corr * sd[0] * sd[1], sd[1] ** 2]])
    b = rng.multivariate_normal(np.zeros(2), cov, size=N_CLUSTERS)
    g = np.repeat(np.arange(N_CLUSTERS), CLUSTER_SIZE)
    x = rng.standard_normal(n)
    e = rng.standard_normal(n)
    y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + e
    return pd.DataFrame({"y": y, "x": x, "g": _factor(g)})


def glmm_100k() -> pd.DataFrame:
    """Logit ``P(y = 1) = expit(-0.5 + 0.8 x + b0_g + b1_g x)``, the same cluster layout and
    random-effect covariance as :func:`lmm_100k`; seed 2026."""
    rng = np.random.default_rng(SEED)
    G, m = N_CLUSTERS, CLUSTER_SIZE
    cov = np.array([[1.0, 0.3 * 0.5], [0.3 * 0.5, 0.25]])
    b = rng.multivariate_normal(np.zeros(2), cov, size=G)
    g = np.repeat(np.arange(G), m)
    x = rng.standard_normal(G * m)
    eta = -0.5 + 0.8 * x + b[g, 0] + b[g, 1] * x
    y = (rng.uniform(size=G * m) < 1 / (1 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "g": _factor(g)})


def _factor(g: np.ndarray) -> pd.Categorical:
    return pd.Categorical.from_codes(g, [f"g{i:04d}" for i in range(int(g.max()) + 1)])
