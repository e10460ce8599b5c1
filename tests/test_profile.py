"""Profile-likelihood intervals (MixedFit.confint, pymc_mixvcov.inference.profile).

Reference: tests/reference/profile.json, written by tests/reference/generate_profile.R (R 4.2.2,
lme4 1.1-31). For each case it holds lme4's ``confint(method = "profile")`` and the exact roots of
lme4's own profile zeta (uniroot, tolerance 1e-12, on lme4's deviance minimised over the other
parameters by nlminb with rel.tol 1e-15 at every trial value).

Tolerances.

* Against the exact roots, 1e-6 relative (1e-9 absolute at 0): both sides solve the same
  equations to far better than that (our stopping rule ``|zeta -+ z| < 1e-9`` moves a bound by
  about 1e-9 standard errors; the measured agreement is 3e-9 or better).
* Against lme4's ``confint``, 1e-3 relative (the issue's tolerance): lme4 inverts a spline through a
  grid of zeta values, and its bounds are off the exact roots of its own deviance by up to
  4.8e-5 (sleepstudy), 5.3e-5 (Pastes), 3.8e-5 (Penicillin), 1.7e-4 (Dyestuff) and 1.7e-4
  (Dyestuff2, a singular fit),
  as the R script reports (``max_rel_lme4_vs_exact``).
* cbpp (Laplace): lme4's glmer deviance is not exactly the Laplace approximation (its maximum is
  2.8e-4 below the exact Laplace maximum that this package and glmmTMB find; test_glmm.py), so its
  bounds differ from ours by up to 5.4e-5 relative: 2e-4 relative.
* At a correlation estimated at +1 lme4's own ``confint`` is wrong (its SD intervals are up to 12%
  narrower than the roots of its own deviance): that case is compared with the exact roots only.
  Orthodont (ML): lme4 warns of a non-monotonic profile, and its lower bound of the intercept SD
  (0.0012609) is 1.6% above the exact root (0.0012415), where the profile is nearly flat (zeta is
  -1.9615 at 0): 2e-2 relative there. That root is ill-conditioned (a deviance error of 1e-7
  moves it by 2e-5 relative): R's minimisations had to start from several points, the
  correlation at its bound 1 among them (one start stops up to 2e-3 above the minimum there), and
  the root then agrees with ours to 7e-7.
* Dyestuff2's fixed effect: with the intercept held away from its estimate the batch SD leaves 0
  (a saddle of the constrained problem at the boundary); a single nlminb start from the boundary
  misses this, and so would a solver that held the SD at its bound.
"""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from conftest import REF, reference
from scipy.optimize import minimize
from scipy.stats import norm

import pymc_mixvcov as pmv
from pymc_mixvcov.inference.profile import ProfileLikelihood
from pymc_mixvcov.inference.scales import sd_scale_second

Z95 = norm.ppf(0.975)


@pytest.fixture(scope="module")
def ref():
    return reference("profile")


@pytest.fixture(scope="module")
def sleep_ci(sleep_ml):
    return sleep_ml.confint()


def _bounds(ci: pd.DataFrame, rownames: list[str]) -> np.ndarray:
    return ci.loc[rownames, ["lower", "upper"]].to_numpy()


def _exact(r: dict) -> np.ndarray:
    return np.c_[r["exact_lower"], r["exact_upper"]]


def _lme4(r: dict) -> np.ndarray:
    return np.c_[r["lme4_lower"], r["lme4_upper"]]


# -- against lme4 -----------------------------------------------------------------------------------------
def test_sleepstudy_ml_against_lme4(sleep_ci, ref):
    r = ref["sleepstudy_ml"]
    got = _bounds(sleep_ci, r["rownames"])
    np.testing.assert_allclose(got, _exact(r), rtol=1e-6)
    np.testing.assert_allclose(got, _lme4(r), rtol=1e-3)
    # the issue's anchors (lme4 1.1-31's printed confint)
    issue = {
        "sd_(Intercept)|Subject": (14.381, 37.716),
        "cor_Days.(Intercept)|Subject": (-0.4815, 0.6850),
        "sd_Days|Subject": (3.801, 8.753),
        "sigma": (22.898, 28.858),
    }
    for label, want in issue.items():
        np.testing.assert_allclose(sleep_ci.loc[label, ["lower", "upper"]].to_numpy(float), want, rtol=1e-3)
    assert list(sleep_ci.columns) == ["estimate", "lower", "upper"]
    assert list(sleep_ci.index) == [
        "(Intercept)",
        "Days",
        "sd_(Intercept)|Subject",
        "cor_Days.(Intercept)|Subject",
        "sd_Days|Subject",
        "sigma",
    ]
    assert sleep_ci.attrs["criterion"] == "ML" and sleep_ci.attrs["at_boundary"] == []


def test_level(sleep_ml, ref):
    r = ref["sleepstudy_ml_90"]
    got = _bounds(sleep_ml.confint(level=0.9), r["rownames"])
    np.testing.assert_allclose(got, _lme4(r), rtol=1e-3)


def test_reml_fit_profiles_its_ml_refit_as_lme4(sleep_reml, sleep_ci, ref):
    r = ref["sleepstudy_reml"]
    ci = sleep_reml.confint()
    np.testing.assert_allclose(_bounds(ci, r["rownames"]), _lme4(r), rtol=1e-3)
    # lme4's profile.merMod calls refitML: the same intervals as the ML fit's
    np.testing.assert_allclose(_bounds(ci, r["rownames"]), _bounds(sleep_ci, r["rownames"]), rtol=1e-6)
    assert ci.attrs["criterion"] == "ML (REML fit refitted by ML)"


CASES = {
    "sleepstudy_ri_ml": ("sleepstudy", "Reaction ~ Days + (1 | Subject)"),
    "pastes_ml": ("pastes", "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
    "penicillin_ml": ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "orthodont_ml": ("orthodont", "distance ~ age * Sex + (age | Subject)"),
    "dyestuff_ml": ("dyestuff", "Yield ~ 1 + (1 | Batch)"),
    "dyestuff2_ml": ("dyestuff2", "Yield ~ 1 + (1 | Batch)"),
    "boundary_cor_ml": ("boundary_cor", "y_pos ~ x + (x | g)"),
}


#: Tolerances against lme4's confint (module docstring); the boundary_cor case is not compared.
LME4_RTOL = {
    "sleepstudy_ri_ml": 1e-3,
    "pastes_ml": 1e-3,
    "penicillin_ml": 1e-3,
    "orthodont_ml": 2e-2,
    "dyestuff_ml": 1e-3,
    "dyestuff2_ml": 1e-3,
}


def _data(name: str) -> pd.DataFrame:
    if name in ("dyestuff2", "boundary_cor"):
        d = pd.read_csv(REF / f"{name}.csv")
        col = "Batch" if name == "dyestuff2" else "g"
        d[col] = d[col].astype(str).astype("category")
        return d
    return pmv.datasets.load(name)


# Orthodont compiles the graphs of a new signature (about a minute on a first run): slow. Penicillin
# uses the session's fit (tests/conftest.py), whose dense graphs other tests compile anyway.
@pytest.mark.filterwarnings("ignore::pymc_mixvcov.SingularFitWarning")
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "orthodont_ml" else c for c in CASES])
def test_cases_against_lme4(case, ref, request):
    name, formula = CASES[case]
    if case == "penicillin_ml":
        fit = request.getfixturevalue("penicillin_ml")
    else:
        fit = pmv.lmm(formula, _data(name)).fit("ML")
    ci = fit.confint()
    r = ref[case]
    got, exact = _bounds(ci, r["rownames"]), _exact(r)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-9)
    if case in LME4_RTOL:  # lme4's own confint is off at boundary fits (module docstring)
        np.testing.assert_allclose(got, _lme4(r), rtol=LME4_RTOL[case], atol=1e-9)
    if case == "penicillin_ml":  # crossed: one cluster of 30 effects, profiled with the blocked engine
        assert fit.engine == "clusters" and fit.structure.largest == 30
    if case == "pastes_ml":  # the batch SD's profile stays within -z down to 0: lower bound 0, as lme4
        assert ci.loc["sd_(Intercept)|batch", "lower"] == 0.0
        assert ci.attrs["at_boundary"] == ["sd_(Intercept)|batch"]
    if case == "dyestuff2_ml":  # the SD estimated at 0
        assert ci.loc["sd_(Intercept)|Batch", "lower"] == 0.0
    if case == "orthodont_ml":  # the correlation's profile stays within z: [-1, 1], and sd_age's lower bound is 0
        np.testing.assert_array_equal(
            ci.loc["cor_age.(Intercept)|Subject", ["lower", "upper"]].to_numpy(float), [-1, 1]
        )
        assert ci.loc["sd_age|Subject", "lower"] == 0.0
    if case == "boundary_cor_ml":  # the correlation estimated at +1
        assert ci.loc["cor_x.(Intercept)|g", "upper"] == 1.0


def test_cbpp_laplace_against_lme4(cbpp_fit, ref):
    r = ref["cbpp_laplace"]
    got = _bounds(cbpp_fit.confint(), r["rownames"])
    np.testing.assert_allclose(got, _lme4(r), rtol=2e-4)
    np.testing.assert_allclose(got, _exact(r), rtol=2e-4)


@pytest.mark.filterwarnings("ignore::pymc_mixvcov.SingularFitWarning")
def test_correlation_whose_profile_stays_within_z(poisson_slope_data):
    """Poisson ``(x | g)`` on 12 clusters: as the slope SD goes to 0 every correlation gives the same
    likelihood, that of ``(1 | g)``, so ``|zeta(cor)| <= sqrt(LRT)`` everywhere; with the
    likelihood-ratio statistic below ``z^2`` the correlation's interval is [-1, 1] and the slope SD's
    lower bound is 0 (lme4 1.1-31's profile fails on this fit: "profiling detected new, lower
    deviance"). At the other bounds the profile deviance is ``z^2``."""
    d = poisson_slope_data
    fit = pmv.glmm("y ~ x + (x | g)", d, family="poisson").fit()
    small = pmv.glmm("y ~ x + (1 | g)", d, family="poisson").fit()
    assert 2 * (fit.loglik - small.loglik) < Z95**2
    ci = fit.confint()
    np.testing.assert_array_equal(ci.loc["cor_x.(Intercept)|g", ["lower", "upper"]].to_numpy(float), [-1.0, 1.0])
    assert ci.loc["sd_x|g", "lower"] == 0.0
    prof = ProfileLikelihood(fit)
    for label in ("(Intercept)", "x", "sd_(Intercept)|g"):
        for side in ("lower", "upper"):
            q = prof.at(label, float(ci.loc[label, side]))
            np.testing.assert_allclose(2 * (prof.loglik - q.loglik), Z95**2, rtol=0, atol=1e-6)


# -- identities -------------------------------------------------------------------------------------------
def test_bounds_solve_the_profile_equations(sleep_ml, sleep_ci):
    """At each bound, a fresh constrained maximisation (not the root finder's path) gives the
    profile deviance ``z^2``; the free gradient is ``lambda a`` (first-order optimality), no feasible
    perturbation increases the log-likelihood, and ``lambda`` is ``d l_p / dt`` (central differences
    of the profile log-likelihood, a test of the envelope theorem)."""
    rng = np.random.default_rng(0)
    for label in sleep_ci.index:
        for side in ("lower", "upper"):
            prof = ProfileLikelihood(sleep_ml)
            t = float(sleep_ci.loc[label, side])
            q = prof.at(label, t)
            np.testing.assert_allclose(2 * (prof.loglik - q.loglik), Z95**2, rtol=0, atol=1e-6)
            np.testing.assert_allclose(q.zeta, -Z95 if side == "lower" else Z95, atol=1e-8)
            f = q.free
            resid = q.grad[f] - q.multiplier * q.constraint_grad[f]
            assert np.max(np.abs(resid)) <= 1e-6 * np.max(np.abs(q.grad[f])), (label, side, resid)
            k = prof.labels.index(label)
            for _ in range(3):
                d = np.where(f, rng.standard_normal(q.nat.size), 0.0) * 1e-3 * (1 + np.abs(q.nat))
                x = prof._project(k, t, q.nat + d, f)
                assert prof._criterion(x)[0] <= q.loglik + 1e-10
            h = 1e-4 * max(abs(t), 1e-2)
            fd = (prof.at(label, t + h).loglik - prof.at(label, t - h).loglik) / (2 * h)
            np.testing.assert_allclose(q.multiplier, fd, rtol=1e-5)


def test_zeta_near_the_estimate_is_the_wald_statistic(sleep_ml):
    """``zeta(t_hat) = 0`` and ``d zeta / dt = 1 / se`` there (the curvature of the profile at its
    maximum is the inverse variance): ``zeta(t_hat + e se) = e`` to first order."""
    prof = ProfileLikelihood(sleep_ml)
    se = sleep_ml.se("sd")
    for label in prof.labels:
        t_hat = sleep_ml.params("sd")[label]
        assert prof.at(label, t_hat).zeta == 0.0
        for e in (-1e-3, 1e-3):
            q = prof.at(label, t_hat + e * se[label])
            np.testing.assert_allclose(q.zeta, e, rtol=2e-3)


def test_wald(sleep_ml, sleep_reml):
    for fit in (sleep_ml, sleep_reml):
        ci = fit.confint("wald", level=0.9)
        est, se = fit.params("sd"), np.sqrt(np.diag(fit.vcov("sd").to_numpy()))
        q = norm.ppf(0.95)
        np.testing.assert_allclose(ci["lower"].to_numpy(), est.to_numpy() - q * se, rtol=1e-14)
        np.testing.assert_allclose(ci["upper"].to_numpy(), est.to_numpy() + q * se, rtol=1e-14)
        assert ci.attrs["method"] == "wald"


def test_parm(sleep_ml, sleep_ci):
    ci = sleep_ml.confint(parm=["sigma", "Days"])
    assert list(ci.index) == ["sigma", "Days"]
    np.testing.assert_allclose(ci.to_numpy(), sleep_ci.loc[["sigma", "Days"]].to_numpy(), rtol=1e-9)
    assert list(sleep_ml.confint("wald", parm="sigma").index) == ["sigma"]


def test_invariant_to_the_parameterisation(sleepstudy):
    """A hand-written model with the intercept variance and log sigma as its parameters: the profile
    of the sd-scale parameters is that of the formula-built model (profile likelihoods do not
    depend on the parameterisation), through a model map with non-zero second derivatives."""
    d = sleepstudy
    subj = d["Subject"].cat.codes.to_numpy()
    days, y = d["Days"].to_numpy(float), d["Reaction"].to_numpy(float)
    with pm.Model(coords={"Subject": list(d["Subject"].cat.categories)}) as model:
        b0 = pm.Normal("b0", 0, 100)
        b1 = pm.Normal("b1", 0, 100)
        tau = pm.HalfNormal("tau", 1000.0)
        u = pm.Normal("u", 0.0, pm.math.sqrt(tau), dims="Subject")
        log_sigma = pm.Normal("log_sigma", 0, 10)
        pm.Normal("y", b0 + b1 * days + u[subj], pm.math.exp(log_sigma), observed=y)
    fit = pmv.fit(model, random=["u"])
    ref = pmv.lmm("Reaction ~ Days + (1 | Subject)", d).fit()
    np.testing.assert_allclose(
        fit.confint()[["lower", "upper"]].to_numpy(), ref.confint()[["lower", "upper"]].to_numpy(), rtol=1e-6
    )


def test_reml_criterion(sleep_reml):
    """criterion="REML": the REML criterion's profile, variance parameters only. Checked at the bounds
    of sigma and of the intercept SD (coordinates of the formula model's parameters) by maximising
    the REML criterion over the other variance parameters with scipy's L-BFGS-B."""
    ci = sleep_reml.confint(criterion="REML")
    assert list(ci.index) == sleep_reml.labels("sd")[2:]
    fns, spec = sleep_reml._functions, sleep_reml.spec
    vi = spec.variance_index
    v_hat = sleep_reml.params("natural").to_numpy()[vi]
    l_hat = fns.profile(v_hat)[0]
    np.testing.assert_allclose(l_hat, sleep_reml.loglik, rtol=0, atol=1e-8)
    for label, pos in (("sigma", 3), ("sd_(Intercept)|Subject", 0)):
        for side in ("lower", "upper"):
            t = float(ci.loc[label, side])
            others = [i for i in range(vi.size) if i != pos]

            def negative(w, t=t, pos=pos, others=others):
                v = v_hat.copy()
                v[pos], v[others] = t, w
                f, g, _ = fns.profile(v)
                return -f, -g[others]

            bounds = [(0, None) if spec.lower[vi[i]] == 0 else (None, None) for i in others]
            res = minimize(
                negative,
                v_hat[others],
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 1000},
            )
            np.testing.assert_allclose(2 * (l_hat + res.fun), Z95**2, rtol=0, atol=1e-5)
    with pytest.raises(pmv.MixVcovError, match="REML criterion does not involve"):
        sleep_reml.confint(parm="Days", criterion="REML")


def test_sd_scale_second_derivatives(sleep_ml):
    """The closed-form sd map: values from ``G = L L^T`` directly, the Jacobian against central
    differences of the values and the Hessians against central differences of the Jacobian (terms
    of sizes 3, 1 and 2 and a residual SD); and against the compiled scale graph of a fit (whose
    model map is the identity on ``phi[p:]``)."""
    rng = np.random.default_rng(1)
    r = (3, 1, 2)
    ts = rng.standard_normal(sum(k * (k + 1) // 2 for k in r) + 1)
    s, J, H = sd_scale_second(ts, r)
    want, off = [], 0
    for k in r:
        L = np.zeros((k, k))
        pairs = [(i, j) for j in range(k) for i in range(j, k)]
        for n, (i, j) in enumerate(pairs):
            L[i, j] = ts[off + n]
        G = L @ L.T
        sd = np.sqrt(np.diag(G))
        want += [sd[i] if i == j else G[i, j] / (sd[i] * sd[j]) for i, j in pairs]
        off += len(pairs)
    want.append(ts[-1])
    np.testing.assert_allclose(s, want, rtol=1e-14)
    h = 1e-6
    steps = np.eye(ts.size) * h
    fd_J = np.stack([(sd_scale_second(ts + e, r)[0] - sd_scale_second(ts - e, r)[0]) / (2 * h) for e in steps], axis=1)
    np.testing.assert_allclose(J, fd_J, rtol=0, atol=1e-8)
    fd_H = np.stack([(sd_scale_second(ts + e, r)[1] - sd_scale_second(ts - e, r)[1]) / (2 * h) for e in steps], axis=2)
    np.testing.assert_allclose(H, fd_H, rtol=0, atol=1e-8)
    p = 2
    nat = sleep_ml.params("natural").to_numpy()
    s2, J2, _ = sd_scale_second(nat[p:], (2,))
    np.testing.assert_allclose(s2, sleep_ml.params("sd").to_numpy()[p:], rtol=1e-13)
    np.testing.assert_allclose(J2, sleep_ml._opt["jac_sd"][p:, p:], rtol=1e-12, atol=1e-15)


# -- bad input --------------------------------------------------------------------------------------------
def test_bad_input(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="unknown method 'boot'"):
        sleep_ml.confint("boot")
    with pytest.raises(pmv.MixVcovError, match="level must be a number between 0 and 1"):
        sleep_ml.confint(level=95)
    with pytest.raises(pmv.MixVcovError, match="unknown parameter 'sd_Days' \\(closest: .*'sd_Days\\|Subject'"):
        sleep_ml.confint(parm="sd_Days")
    with pytest.raises(pmv.MixVcovError, match="criterion='REML' profiles the REML criterion of a REML fit"):
        sleep_ml.confint(criterion="REML")
    with pytest.raises(pmv.MixVcovError, match="unknown criterion"):
        sleep_ml.confint(criterion="reml")
    with pytest.raises(pmv.MixVcovError, match="need a likelihood.*method='MAP'"):
        ProfileLikelihood(types.SimpleNamespace(method="MAP"))
