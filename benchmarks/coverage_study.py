"""Coverage of 95% intervals for fixed effects: posterior, MAP (Laplace and sandwich), ML (Wald and sandwich).

Five scenarios, each fitted with the random-intercept model ``y ~ x + (1 | g)`` written by hand
in PyMC (:func:`build_model`); the data come from that model (``*_correct``) or from a model it
misspecifies:

``lmm_correct``
    ``y_ij = 1 + 0.5 x_ij + u_j + e_ij``, ``u_j ~ N(0, 1)``, ``e_ij ~ N(0, 1)``, ``x_ij ~ N(0, 1)``.
``lmm_hetero``
    Residual variance differing by cluster: as ``lmm_correct`` but in every second cluster the
    residual SD is 3 instead of 1, and ``x`` varies as much (``x_ij ~ N(0, s_j^2)``,
    ``e_ij ~ N(0, s_j^2)``, ``s_j`` 1 or 3). The model-based variance of the slope is wrong only
    where the residual variance moves with the within-cluster spread of ``x`` (it is then
    ``sum_j s_j^2 S_j / (sum_j S_j)^2`` with ``S_j`` the within-cluster sum of squares of ``x``,
    against the pooled ``s^2 / sum_j S_j`` that the model assumes); here it does.
``lmm_slope``
    A random slope the fitted model omits: ``y_ij = 1 + (0.5 + v_j) x_ij + u_j + e_ij`` with
    ``v_j ~ N(0, 0.5^2)`` independent of ``u_j ~ N(0, 1)``.
``glmm_correct``
    Logit GLMM, ``y_ij ~ Bernoulli(logistic(-0.5 + x_ij + u_j))``, ``u_j ~ N(0, 1)``.
``glmm_slope``
    Logit GLMM with an omitted random slope: ``logistic(-0.5 + (1 + v_j) x_ij + u_j)``,
    ``v_j ~ N(0, 1)``.

Designs: the LMMs have 40 clusters, the GLMMs 50 (binary responses carry less information per
observation), with sizes drawn once from the integers 5-20 (LMM) or 10-20 (GLMM) and held
fixed over the replicates (``x`` and ``y`` are drawn anew in each), so the data swap into one
compiled model. Priors of the fitted model: ``b ~ N(0, 10)``, ``tau ~ HalfNormal(5)``,
``sigma ~ HalfNormal(5)`` (LMM); ``b ~ N(0, 2.5)``, ``tau ~ HalfNormal(2.5)`` (logit);
non-centred intercepts ``u = tau z``, ``z ~ N(0, 1)``.

Per replicate and fixed effect (``(Intercept)``, ``x``), the 95% intervals of

* ``NUTS``: the equal-tailed posterior interval (2.5% and 97.5% quantiles; nutpie, two chains
  of 500 draws after 500 tuning steps, with its low-rank mass matrix adaptation: with a diagonal
  one the intercept, correlated with the random intercepts' mean, had an effective sample size
  near 100 and R-hat above 1.01 in half the LMM replicates; ``pm.sample`` with the same numbers
  of draws where nutpie is absent);
* ``MAP Laplace``: ``pmv.fit(method="MAP")``, mode of the marginal posterior and
  ``+- 1.96 SE`` from the inverse negative Hessian of the log marginal posterior;
* ``MAP CR1``: the same mode with the MAP sandwich (CR1 by cluster) SE;
* ``ML Wald``: ``pmv.fit(method="ML")`` with the inverse observed information;
* ``ML CR1``: the ML estimate with the CR1 sandwich SE,

the frequentist ones from ``fit.summary(vcov=..., scale="sd")``, the posterior's from the draws
of ``b`` (as :func:`pymc_mixvcov.compare` computes them).
Coverage is the share of replicates whose interval holds the target, with its Monte Carlo
standard error ``sqrt(p (1 - p) / R)``.

Targets. For the LMMs the generating coefficients: generalised least squares is unbiased for
the mean's coefficients whatever the (wrong) covariance it weights with, so the misspecified
fits estimate them too. For the logit GLMMs the random-intercept model's estimand differs from
the generating coefficients when a slope is omitted (and the Laplace estimator has a small bias
even when the model is right), so coverage is also reported against the *pseudo-true* value:
the limit of the ML estimator for this design, estimated by one ML fit of
``PSEUDO_TRUE_COPIES`` copies of the design (:func:`pseudo_true`). A sandwich corrects the
standard error, not the estimand.

Run from the repository root (one core: 41 minutes with nutpie on a 2-core machine shared with
other jobs; without nutpie ``pm.sample`` takes about 8 s per replicate there, over two hours)::

    OMP_NUM_THREADS=1 python benchmarks/coverage_study.py --reps 200 --seed 2026 --out benchmarks/results/coverage.csv

``--from-csv FILE`` prints the figures of a saved study without running it; ``--scenarios``
runs a subset. Replicate ``r`` of scenario ``k`` draws its data from
``SeedSequence([seed, k]).generate_state(reps)[r]``, so the figures depend on ``--seed`` and
``--reps`` only (and, for NUTS, on the sampler). The exit status is 1 when more than 1% of the
replicates of a method failed to give an interval, else 0: the coverages are reported, not
tested against a target.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LEVEL = 0.95
DEFAULT_SEED = 2026
DEFAULT_REPS = 200
#: Methods, in the order of the report.
METHODS = ("NUTS", "MAP Laplace", "MAP CR1", "ML Wald", "ML CR1")
#: Fixed effects of the fitted model (labels of the report).
PARAMETERS = ("(Intercept)", "x")
#: Copies of a GLMM design in the data set whose ML fit gives the pseudo-true values.
PSEUDO_TRUE_COPIES = 400
#: NUTS settings: chains, tuning steps and draws per chain (nutpie; pm.sample uses FALLBACK_DRAWS).
CHAINS, TUNE, DRAWS = 2, 500, 500
FALLBACK_TUNE, FALLBACK_DRAWS = 500, 500
#: Most replicates of a method allowed to fail before the exit status says so.
MAX_FAILED_SHARE = 0.01


# -- designs and scenarios ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Design:
    """Cluster sizes of a scenario family, fixed over the replicates."""

    family: str
    sizes: np.ndarray

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def cluster(self) -> np.ndarray:
        """Cluster index of every observation (clusters are contiguous)."""
        return np.repeat(np.arange(self.n_clusters), self.sizes)

    @property
    def n(self) -> int:
        return int(self.sizes.sum())


#: family -> (clusters, smallest size, largest size)
DESIGNS = {"gaussian": (40, 5, 20), "bernoulli": (50, 10, 20)}


def make_design(family: str, seed: int) -> Design:
    """Cluster sizes drawn uniformly from the family's range, from ``default_rng([seed, family index])``."""
    j, lo, hi = DESIGNS[family]
    rng = np.random.default_rng([seed, list(DESIGNS).index(family)])
    return Design(family, rng.integers(lo, hi + 1, size=j))


Simulator = Callable[[Design, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _lmm_correct(d: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    g = d.cluster
    x = rng.normal(size=d.n)
    u = rng.normal(0.0, 1.0, d.n_clusters)
    return x, 1.0 + 0.5 * x + u[g] + rng.normal(0.0, 1.0, d.n)


def _lmm_hetero(d: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    g = d.cluster
    s = np.where(np.arange(d.n_clusters) % 2 == 1, 3.0, 1.0)[g]  # every second cluster: SD 3
    x = rng.normal(size=d.n) * s
    u = rng.normal(0.0, 1.0, d.n_clusters)
    return x, 1.0 + 0.5 * x + u[g] + rng.normal(size=d.n) * s


def _lmm_slope(d: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    g = d.cluster
    x = rng.normal(size=d.n)
    u = rng.normal(0.0, 1.0, d.n_clusters)
    v = rng.normal(0.0, 0.5, d.n_clusters)
    return x, 1.0 + (0.5 + v[g]) * x + u[g] + rng.normal(0.0, 1.0, d.n)


def _logit(slope_sd: float) -> Simulator:
    def simulate(d: Design, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        g = d.cluster
        x = rng.normal(size=d.n)
        u = rng.normal(0.0, 1.0, d.n_clusters)
        v = rng.normal(0.0, slope_sd, d.n_clusters) if slope_sd > 0 else np.zeros(d.n_clusters)
        eta = -0.5 + (1.0 + v[g]) * x + u[g]
        return x, (rng.random(d.n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)

    return simulate


@dataclass(frozen=True)
class Scenario:
    """A data-generating process; the fitted model is always the family's random-intercept model."""

    name: str
    family: str
    truth: tuple[float, float]
    simulate: Simulator
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("lmm_correct", "gaussian", (1.0, 0.5), _lmm_correct, "LMM, correctly specified"),
        Scenario(
            "lmm_hetero", "gaussian", (1.0, 0.5), _lmm_hetero, "LMM, residual SD 1 or 3 by cluster (x's spread alike)"
        ),
        Scenario("lmm_slope", "gaussian", (1.0, 0.5), _lmm_slope, "LMM, omitted random slope (SD 0.5)"),
        Scenario("glmm_correct", "bernoulli", (-0.5, 1.0), _logit(0.0), "logit GLMM, correctly specified"),
        Scenario("glmm_slope", "bernoulli", (-0.5, 1.0), _logit(1.0), "logit GLMM, omitted random slope (SD 1)"),
    )
}


# -- the fitted model --------------------------------------------------------------------------------
def build_model(design: Design, x: np.ndarray, y: np.ndarray):
    """The fitted random-intercept model, with ``x`` and ``y`` in ``pm.Data`` containers to swap.

    Gaussian: ``y ~ N(b0 + b1 x + tau z_g, sigma)``; Bernoulli: ``logit P(y = 1) = b0 + b1 x + tau z_g``;
    ``z ~ N(0, 1)`` (non-centred), priors as in the module docstring.
    """
    import pymc as pm

    g = design.cluster
    coords = {"g": np.arange(design.n_clusters), "fixed": list(PARAMETERS), "obs": np.arange(design.n)}
    with pm.Model(coords=coords) as model:
        xd = pm.Data("x", x, dims="obs")
        yd = pm.Data("y_obs", y, dims="obs")
        scale = 10.0 if design.family == "gaussian" else 2.5
        b = pm.Normal("b", 0.0, scale, dims="fixed")
        tau = pm.HalfNormal("tau", 5.0 if design.family == "gaussian" else 2.5)
        z = pm.Normal("z", 0.0, 1.0, dims="g")
        u = pm.Deterministic("u", z * tau, dims="g")
        eta = b[0] + b[1] * xd + u[g]
        if design.family == "gaussian":
            sigma = pm.HalfNormal("sigma", 5.0)
            pm.Normal("y", eta, sigma, observed=yd, dims="obs")
        else:
            pm.Bernoulli("y", logit_p=eta, observed=yd, dims="obs")
    return model


class Sampler:
    """NUTS on the model with the data swapped: nutpie compiled once, or ``pm.sample`` without nutpie."""

    def __init__(self, model, use_nutpie: bool | None = None):
        self.model = model
        if use_nutpie is None:
            try:
                import nutpie  # noqa: F401

                use_nutpie = True
            except ImportError:
                use_nutpie = False
        self.kind = "nutpie" if use_nutpie else "pm.sample"
        self.compiled = None
        if use_nutpie:
            import nutpie

            keep = [v.name for v in model.free_RVs if v.name != "z"]  # the draws of z are not needed
            self.compiled = nutpie.compile_pymc_model(model, var_names=keep)

    def sample(self, x: np.ndarray, y: np.ndarray, seed: int):
        """Posterior draws (an ArviZ DataTree) for the data ``x``, ``y``."""
        if self.compiled is not None:
            import nutpie

            return nutpie.sample(
                self.compiled.with_data(x=x, y_obs=y),
                draws=DRAWS,
                tune=TUNE,
                chains=CHAINS,
                cores=1,
                seed=seed,
                adaptation="low_rank",
                save_warmup=False,
                progress_bar=False,
            )
        import pymc as pm

        with self.model:
            pm.set_data({"x": x, "y_obs": y})
            return pm.sample(
                nuts_sampler="pymc",
                draws=FALLBACK_DRAWS,
                tune=FALLBACK_TUNE,
                chains=CHAINS,
                cores=1,
                random_seed=seed,
                progressbar=False,
                compute_convergence_checks=False,
            )


def _diagnostics(trace) -> tuple[int, float]:
    """Divergent transitions and the largest rank-normalised split R-hat of ``b``."""
    from arviz_stats.base import array_stats

    div = int(np.asarray(trace["sample_stats"]["diverging"]).sum())
    b = trace["posterior"]["b"].transpose("chain", "draw", "fixed").values
    return div, float(np.max(array_stats.rhat(b, chain_axis=0, draw_axis=1)))


# -- one replicate -----------------------------------------------------------------------------------
def _interval_row(stem: dict, method: str, param: str, est, se, lo, hi) -> dict:
    return {**stem, "method": method, "parameter": param, "estimate": est, "se": se, "lower": lo, "upper": hi}


def _fit_intervals(fit, name: str, stem: dict) -> list[dict]:
    """Model-based and CR1 intervals of the fixed effects, from ``fit.summary`` (``name``: "MAP" or "ML")."""
    kinds = {"MAP": ("MAP Laplace", "MAP CR1"), "ML": ("ML Wald", "ML CR1")}[name]
    rows = []
    for method, vcov in zip(kinds, ("model", "CR1"), strict=True):
        table = fit.summary(vcov=vcov, scale="sd", level=LEVEL).iloc[: len(PARAMETERS)]
        for param, (_, r) in zip(PARAMETERS, table.iterrows(), strict=True):
            rows.append(_interval_row(stem, method, param, r.iloc[0], r.iloc[1], r.iloc[4], r.iloc[5]))
    return rows


def _posterior_intervals(trace, stem: dict) -> list[dict]:
    """Posterior mean, SD and equal-tailed interval of the fixed effects ``b``.

    The columns ``posterior_mean``, ``posterior_sd``, ``posterior_lower`` and ``posterior_upper`` of
    ``pmv.compare(fit, trace, scale="sd")`` for the fixed effects (on every scale the draws of ``b``
    themselves), computed here from the draws directly: ``compare`` maps all parameters through a
    graph built for each fit, which would cost more than the sampling.
    """
    b = trace["posterior"]["b"].transpose("chain", "draw", "fixed")
    draws = b.values.reshape(-1, b.sizes["fixed"])
    order = [list(map(str, b["fixed"].values)).index(p) for p in PARAMETERS]
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    mean, sd = draws.mean(axis=0), draws.std(axis=0, ddof=1)
    return [
        _interval_row(stem, "NUTS", p, mean[k], sd[k], lo[k], hi[k]) for p, k in zip(PARAMETERS, order, strict=True)
    ]


def run_replicate(scenario: Scenario, design: Design, model, sampler: Sampler, seed: int, rep: int) -> list[dict]:
    """Simulate one data set, sample, fit MAP and ML, and return one row per method and fixed effect.

    Rows hold ``scenario``, ``rep``, ``seed``, ``method``, ``parameter``, ``estimate`` (posterior mean
    for NUTS), ``se`` (posterior SD for NUTS), ``lower``, ``upper``, ``error`` (the message where a
    step failed: the row's interval is then NaN), ``converged`` (the fit's; for NUTS: no
    divergences and R-hat below 1.01), ``divergences``, ``rhat``, ``warnings`` (pymc_mixvcov
    warnings of the fit) and ``seconds`` (the replicate's time).
    """
    import pymc as pm

    import pymc_mixvcov as pmv

    t0 = time.perf_counter()
    x, y = scenario.simulate(design, np.random.default_rng(seed))
    stem = {"scenario": scenario.name, "rep": rep, "seed": seed}
    rows: list[dict] = []
    with model:
        pm.set_data({"x": x, "y_obs": y})
    for name in ("MAP", "ML"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit, err, got = None, "", []
            try:
                fit = pmv.fit(model, random=["z"], method=name)
                got = _fit_intervals(fit, name, stem)
            except Exception as exc:  # a failed step is a result, not a crash of the study
                err = f"{name}: {type(exc).__name__}: {exc}"
        ours = " | ".join(
            f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, pmv.MixVcovWarning)
        )
        if not got:
            kinds = {"MAP": ("MAP Laplace", "MAP CR1"), "ML": ("ML Wald", "ML CR1")}[name]
            got = [_interval_row(stem, m, p, np.nan, np.nan, np.nan, np.nan) for m in kinds for p in PARAMETERS]
        for r in got:
            r.update(error=err, converged=bool(fit is not None and fit.converged), warnings=ours)
        rows += got
    div, rhat, err, got = -1, np.nan, "", []
    try:
        trace = sampler.sample(x, y, int(seed % 2**31))
        div, rhat = _diagnostics(trace)
        got = _posterior_intervals(trace, stem)
    except Exception as exc:
        err = f"NUTS: {type(exc).__name__}: {exc}"
    if not got:
        got = [_interval_row(stem, "NUTS", p, np.nan, np.nan, np.nan, np.nan) for p in PARAMETERS]
    for r in got:
        r.update(error=err, converged=div == 0 and rhat < 1.01, warnings="")
    rows = got + rows
    seconds = time.perf_counter() - t0
    for r in rows:
        r.update(divergences=div, rhat=rhat, seconds=seconds)
    return rows


# -- targets -----------------------------------------------------------------------------------------
def pseudo_true(scenario: Scenario, design: Design, seed: int, copies: int = PSEUDO_TRUE_COPIES) -> dict:
    """ML estimates and CR1 SEs of the fitted model on ``copies`` copies of the design in one data set.

    The fixed effects of the random-intercept model fitted to a very large sample from the
    scenario: the limit of the ML estimator (Laplace, as every replicate's fit) for this
    design, to within the reported SE. Returns ``{"(Intercept)": (estimate, se), "x": ...}``.
    """
    import pymc_mixvcov as pmv

    big = Design(design.family, np.tile(design.sizes, copies))
    x, y = scenario.simulate(big, np.random.default_rng([seed, 99, list(SCENARIOS).index(scenario.name)]))
    data = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(big.cluster)})
    fit = pmv.glmm("y ~ x + (1 | g)", data, family="binomial").fit()
    est = fit.params("sd").to_numpy()[:2]
    se = np.sqrt(np.diag(fit.sandwich("sd", adjust="CR1").to_numpy()))[:2]
    return {p: (float(e), float(s)) for p, e, s in zip(PARAMETERS, est, se, strict=True)}


# -- the study ---------------------------------------------------------------------------------------
def replicate_seeds(seed: int, index: int, reps: int) -> np.ndarray:
    """One 64-bit seed per replicate of scenario ``index``, from ``SeedSequence([seed, index])``."""
    return np.random.SeedSequence([seed, index]).generate_state(reps, dtype=np.uint64)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_study(
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    scenarios: list[str] | None = None,
    progress: bool = False,
    use_nutpie: bool | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Run ``reps`` replicates of each scenario.

    Returns
    -------
    results : pandas.DataFrame
        One row per scenario, replicate, method and fixed effect (see :func:`run_replicate`),
        with ``truth`` and ``pseudo_true`` (equal to ``truth`` for the LMMs) and the covering flags.
    info : dict
        ``sampler``, ``seconds`` per scenario (compilation included), ``compile_seconds``, and
        ``pseudo_true``: per GLMM scenario the pseudo-true values and their SEs.
    """
    names = list(SCENARIOS) if scenarios is None else scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; valid: {list(SCENARIOS)}")
    frames, info = [], {"seconds": {}, "compile_seconds": {}, "pseudo_true": {}}
    models: dict[str, tuple] = {}
    for name in names:
        sc = SCENARIOS[name]
        k = list(SCENARIOS).index(name)
        t0 = time.perf_counter()
        if sc.family not in models:  # one compiled model per family: the scenarios swap their data in
            design = make_design(sc.family, seed)
            x0, y0 = sc.simulate(design, np.random.default_rng([seed, 98]))
            model = build_model(design, x0, y0)
            sampler = Sampler(model, use_nutpie)
            models[sc.family] = (design, model, sampler)
            info["compile_seconds"][sc.family] = time.perf_counter() - t0
            info["sampler"] = sampler.kind
            if progress:
                log(f"{sc.family}: {design.n_clusters} clusters, n = {design.n}; {sampler.kind} compiled")
        design, model, sampler = models[sc.family]
        targets = {p: (t, np.nan) for p, t in zip(PARAMETERS, sc.truth, strict=True)}
        if sc.family == "bernoulli":
            targets = pseudo_true(sc, design, seed)
            info["pseudo_true"][name] = targets
            if progress:
                log(f"{name}: pseudo-true values {targets}")
        rows = []
        for r, s in enumerate(replicate_seeds(seed, k, reps)):
            rows += run_replicate(sc, design, model, sampler, int(s), r)
            if progress and ((r + 1) % 10 == 0 or r + 1 == reps):
                log(f"{name}: {r + 1}/{reps} replicates, {time.perf_counter() - t0:.0f} s")
        df = pd.DataFrame(rows)
        df["truth"] = df["parameter"].map(dict(zip(PARAMETERS, sc.truth, strict=True)))
        df["pseudo_true"] = df["parameter"].map({p: v[0] for p, v in targets.items()})
        frames.append(df)
        info["seconds"][name] = time.perf_counter() - t0
    results = pd.DataFrame(pd.concat(frames, ignore_index=True))
    return add_covers(results), info


def add_covers(results: pd.DataFrame) -> pd.DataFrame:
    """Add ``covers_truth`` and ``covers_pseudo``: ``lower <= target <= upper`` (NaN where no interval)."""
    out = results.copy()
    ok = np.isfinite(out["lower"].to_numpy(float)) & np.isfinite(out["upper"].to_numpy(float))
    for target, col in (("truth", "covers_truth"), ("pseudo_true", "covers_pseudo")):
        t = out[target].to_numpy(float)
        covers = (out["lower"].to_numpy(float) <= t) & (t <= out["upper"].to_numpy(float))
        out[col] = np.where(ok, covers.astype(float), np.nan)
    return out


def coverage(covers: np.ndarray) -> tuple[float, float, int]:
    """Share ``p`` of true entries among the finite ones, its Monte Carlo SE ``sqrt(p (1 - p) / R)``, and ``R``."""
    c = np.asarray(covers, float)
    c = c[np.isfinite(c)]
    n = c.size
    if n == 0:
        return np.nan, np.nan, 0
    p = float(c.mean())
    return p, float(np.sqrt(p * (1 - p) / n)), n


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Coverage table: one row per scenario, fixed effect and method.

    Columns ``coverage`` (of the generating value) and ``mc_se``, ``coverage_pseudo`` and
    ``mc_se_pseudo`` (of the pseudo-true value; the same for the LMMs), ``n`` (replicates with an
    interval), ``mean_estimate``, ``emp_sd`` (SD of the estimates over replicates), ``mean_se``
    (mean of the reported SEs; posterior SD for NUTS), ``se_ratio`` (``mean_se / emp_sd``),
    ``failed`` (replicates without an interval) and ``not_converged``.
    """
    rows = []
    order = {m: k for k, m in enumerate(METHODS)}
    for (sc, par, method), g in results.groupby(["scenario", "parameter", "method"], sort=False):
        p, se, n = coverage(g["covers_truth"].to_numpy(float))
        pp, sep, _ = coverage(g["covers_pseudo"].to_numpy(float))
        est = g["estimate"].to_numpy(float)
        est = est[np.isfinite(est)]
        ses = g["se"].to_numpy(float)
        ses = ses[np.isfinite(ses)]
        emp = float(est.std(ddof=1)) if est.size > 1 else np.nan
        rows.append(
            {
                "scenario": sc,
                "parameter": par,
                "method": method,
                "coverage": p,
                "mc_se": se,
                "coverage_pseudo": pp,
                "mc_se_pseudo": sep,
                "n": n,
                "truth": float(g["truth"].iloc[0]),
                "pseudo_true": float(g["pseudo_true"].iloc[0]),
                "mean_estimate": float(est.mean()) if est.size else np.nan,
                "emp_sd": emp,
                "mean_se": float(ses.mean()) if ses.size else np.nan,
                "se_ratio": float(ses.mean()) / emp if ses.size and emp > 0 else np.nan,
                "failed": int(len(g) - n),
                "not_converged": int((~g["converged"].astype(bool)).sum()),
            }
        )
    table = pd.DataFrame(rows)
    table["_s"] = table["scenario"].map({s: k for k, s in enumerate(SCENARIOS)})
    table["_m"] = table["method"].map(order)
    return table.sort_values(["_s", "parameter", "_m"]).drop(columns=["_s", "_m"]).reset_index(drop=True)


def coverage_grid(table: pd.DataFrame, pseudo: bool = False) -> pd.DataFrame:
    """``coverage (MC SE)`` strings, one row per scenario and fixed effect, one column per method."""
    c, s = ("coverage_pseudo", "mc_se_pseudo") if pseudo else ("coverage", "mc_se")
    cell = table.assign(cell=[f"{p:.3f} ({e:.3f})" for p, e in zip(table[c], table[s], strict=True)])
    grid = cell.pivot(index=["scenario", "parameter"], columns="method", values="cell")
    grid = grid[[m for m in METHODS if m in grid.columns]]
    order = [(sc, p) for sc in SCENARIOS for p in PARAMETERS if (sc, p) in grid.index]
    return grid.loc[order]


def read_results(path: Path) -> pd.DataFrame:
    """A study written by ``--out``, as :func:`run_study` returned it."""
    results = pd.read_csv(path, keep_default_na=False, dtype=str)
    numeric = ["rep", "divergences", "estimate", "se", "lower", "upper", "rhat", "seconds", "truth", "pseudo_true"]
    for col in [*numeric, "covers_truth", "covers_pseudo"]:
        results[col] = pd.to_numeric(results[col].replace("", np.nan))
    results["seed"] = results["seed"].astype(np.uint64)
    results["converged"] = results["converged"].eq("True")
    return results


def report(results: pd.DataFrame, info: dict | None, seed: int | None, wall: float | None) -> pd.DataFrame:
    """Print the coverage tables and diagnostics; return :func:`summarise`'s table."""
    table = summarise(results)
    reps = results.groupby("scenario")["rep"].nunique()
    print(
        f"coverage of {LEVEL:.0%} intervals for the fixed effects; replicates per scenario: "
        f"{ {k: int(v) for k, v in reps.items()} }{'' if seed is None else f', seed {seed}'}"
        + ("" if info is None else f"; NUTS by {info.get('sampler', '?')}")
    )
    for name, sc in SCENARIOS.items():
        if name in reps.index:
            print(f"  {name}: {sc.description}; truth {dict(zip(PARAMETERS, sc.truth, strict=True))}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print("\ncoverage of the generating value (Monte Carlo SE):")
        print(coverage_grid(table).to_string())
        glmm = table[table["scenario"].str.startswith("glmm")]
        if len(glmm):
            print("\nlogit GLMMs, coverage of the pseudo-true value (the random-intercept model's ML limit):")
            print(coverage_grid(glmm, pseudo=True).to_string())
            pt = glmm.drop_duplicates(["scenario", "parameter"])[["scenario", "parameter", "truth", "pseudo_true"]]
            print(pt.to_string(index=False))
        print("\nmean SE over the SD of the estimates across replicates (1 when the SE is right on average):")
        print(
            table.pivot(index=["scenario", "parameter"], columns="method", values="se_ratio")[list(METHODS)]
            .loc[coverage_grid(table).index]
            .to_string(float_format=lambda v: f"{v:.3f}")
        )
    failed = table[table["failed"] > 0]
    if len(failed):
        print("\nreplicates without an interval:")
        print(failed[["scenario", "parameter", "method", "failed"]].to_string(index=False))
    first = results["parameter"] == PARAMETERS[0]
    nuts = results[(results["method"] == "NUTS") & first]
    fits = results[results["method"].isin(["MAP Laplace", "ML Wald"]) & first]
    bad = {
        k: int((~fits.loc[fits["method"] == m, "converged"]).sum())
        for k, m in (("MAP", "MAP Laplace"), ("ML", "ML Wald"))
    }
    print(
        f"\nNUTS: replicates with divergences {int((nuts['divergences'] > 0).sum())}, "
        f"with R-hat of b >= 1.01 {int((nuts['rhat'] >= 1.01).sum())} (of {len(nuts)}; largest "
        f"{nuts['rhat'].max():.3f}); fits not converged: MAP {bad['MAP']}, ML {bad['ML']} (of {len(nuts)})"
    )
    warned = results.loc[(results["warnings"] != "") & (results["parameter"] == PARAMETERS[0])]
    if len(warned):
        print(f"fits with pymc_mixvcov warnings: {len(warned.drop_duplicates(['scenario', 'rep', 'method']))}")
        for w in warned.drop_duplicates(["scenario", "rep"]).head(10).itertuples(index=False):
            print(f"  {w.scenario} replicate {w.rep} ({w.method}): {w.warnings[:200]}")
    for e in results.loc[results["error"] != ""].drop_duplicates(["scenario", "rep", "error"]).head(10).itertuples():
        print(f"  {e.scenario} replicate {e.rep} failed: {e.error[:300]}")
    per = results.drop_duplicates(["scenario", "rep"]).groupby("scenario", sort=False)["seconds"]
    print(
        "\nseconds per replicate (sampling, two fits, intervals): mean "
        + ", ".join(f"{k} {v:.2f}" for k, v in per.mean().items())
    )
    if info is not None:
        print(
            "seconds per scenario (compilation included): "
            + ", ".join(f"{k} {v:.0f}" for k, v in info["seconds"].items())
        )
    if wall is not None:
        print(f"whole study: {wall:.0f} s")
    return table


def failed_too_often(table: pd.DataFrame) -> bool:
    """More than ``MAX_FAILED_SHARE`` of the replicates of some method gave no interval."""
    return bool((table["failed"] > MAX_FAILED_SHARE * (table["n"] + table["failed"])).any())


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study, print its figures, optionally write the replicates to CSV."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="replicates per scenario (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the study (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="write one row per replicate, method and effect")
    parser.add_argument("--scenarios", nargs="+", default=None, choices=list(SCENARIOS), help="run only these")
    parser.add_argument("--from-csv", type=Path, default=None, help="summarise a study written by --out")
    args = parser.parse_args(argv)
    if args.from_csv is not None:
        return int(failed_too_often(report(read_results(args.from_csv), None, None, None)))
    warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
    t0 = time.perf_counter()
    results, info = run_study(args.reps, args.seed, args.scenarios, progress=True)
    wall = time.perf_counter() - t0
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out, index=False, float_format="%.10g")
    table = report(results, info, args.seed, wall)
    return int(failed_too_often(table))


if __name__ == "__main__":
    sys.exit(main())
