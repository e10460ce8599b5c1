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


def movielens() -> pd.DataFrame:
    """A MovieLens-1M-shaped crossed design: 1,000,209 ratings of 3,706 items by 6,040 users, each
    user at least 20 ratings and each item at least one, at most one rating per (user, item) pair.
    Counts per user are heavy tailed (20 plus a log-normal share of the rest, at most 2,314, as in
    MovieLens-1M); each user rates items drawn without replacement with log-normal popularity
    weights, so counts per item are heavy tailed too. ``y = 3.6 + 0.3 x + u_user + v_item + e`` with
    SDs 0.45, 0.55 and 0.9, ``x ~ N(0, 1)``; seed 2026."""
    rng = np.random.default_rng(SEED)
    n_users, n_items, n = 6_040, 3_706, 1_000_209
    share = rng.lognormal(0.0, 1.0, n_users)
    counts = np.minimum(20 + np.floor(share / share.sum() * (n - 20 * n_users)).astype(int), 2_314)
    while counts.sum() < n:  # hand out the remainder one rating at a time, below the cap
        room = np.flatnonzero(counts < 2_314)
        counts[rng.choice(room, min(n - counts.sum(), room.size), replace=False)] += 1
    log_pop = rng.normal(0.0, 1.2, n_items)
    users, items = [], []
    for u in range(n_users):  # Gumbel top-k: sampling without replacement, weights exp(log_pop)
        keys = log_pop + rng.gumbel(size=n_items)
        items.append(np.argpartition(-keys, counts[u] - 1)[: counts[u]])
        users.append(np.full(counts[u], u))
    user, item = np.concatenate(users), np.concatenate(items)
    # every item rated at least once: an unrated item replaces one rating of a frequently rated item
    seen = np.bincount(item, minlength=n_items)
    for it in np.flatnonzero(seen == 0):
        k = rng.choice(np.flatnonzero(seen[item] > 50))
        while np.any((user == user[k]) & (item == it)):
            k = rng.choice(np.flatnonzero(seen[item] > 50))
        seen[item[k]] -= 1
        item[k] = it
        seen[it] += 1
    x = rng.standard_normal(n)
    y = 3.6 + 0.3 * x + 0.45 * rng.standard_normal(n_users)[user] + 0.55 * rng.standard_normal(n_items)[item]
    y = y + 0.9 * rng.standard_normal(n)
    return pd.DataFrame(
        {
            "y": y,
            "x": x,
            "user": pd.Categorical.from_codes(user, [f"u{i:04d}" for i in range(n_users)]),
            "item": pd.Categorical.from_codes(item, [f"i{i:04d}" for i in range(n_items)]),
        }
    )


def kb07() -> pd.DataFrame:
    """A kb07-shaped crossed design (Kronmueller and Barr, 2007): 56 subjects by 32 items, each subject
    sees each item once in one of eight conditions (a Latin square over the 2 x 2 x 2 design of the
    +-1 contrasts ``S``, ``T``, ``U``), three cells dropped: 1,789 rows. Random intercepts and slopes
    of all three contrasts for subjects and for items, correlated 4 x 4 terms:
    ``rt = 2180 + 68 S - 333 T + 79 U + (subject) + (item) + e``, subject SDs (300, 150, 200, 120),
    item SDs (350, 150, 250, 150), residual SD 500, correlations from one draw of an LKJ(2)-like
    construction; seed 2026."""
    rng = np.random.default_rng(SEED)
    n_subj, n_item = 56, 32
    subj = np.repeat(np.arange(n_subj), n_item)
    item = np.tile(np.arange(n_item), n_subj)
    cond = (subj + item) % 8
    S, T, U = (2 * ((cond >> b) & 1) - 1 for b in (0, 1, 2))

    def cov(sd):
        A = rng.standard_normal((4, 6))
        C = A @ A.T
        C = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
        return C * np.outer(sd, sd)

    bs = rng.multivariate_normal(np.zeros(4), cov(np.array([300.0, 150.0, 200.0, 120.0])), size=n_subj)
    bi = rng.multivariate_normal(np.zeros(4), cov(np.array([350.0, 150.0, 250.0, 150.0])), size=n_item)
    Zr = np.stack([np.ones(subj.size), S, T, U], axis=1)
    rt = Zr @ np.array([2180.0, 68.0, -333.0, 79.0]) + np.sum(Zr * bs[subj], 1) + np.sum(Zr * bi[item], 1)
    rt = rt + 500.0 * rng.standard_normal(subj.size)
    keep = np.ones(subj.size, bool)
    keep[rng.choice(subj.size, 3, replace=False)] = False
    return pd.DataFrame(
        {
            "rt": rt[keep],
            "S": S[keep].astype(float),
            "T": T[keep].astype(float),
            "U": U[keep].astype(float),
            "subj": pd.Categorical.from_codes(subj[keep], [f"S{i:02d}" for i in range(n_subj)]),
            "item": pd.Categorical.from_codes(item[keep], [f"I{i:02d}" for i in range(n_item)]),
        }
    )
