"""ArviZ output: DataTree groups, netCDF round trip, posterior comparison, normal draws, plot.

Posteriors are simulated with NumPy from known normal distributions and laid out as
``pm.sample`` lays them out (``arviz_base.from_dict``), so that every posterior summary has an
exact expected value: the same statistic of the simulated draws, mapped to the scale by an
independent NumPy formula. Only the test marked ``slow`` runs ``pm.sample``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pymc as pm
import pytest
import xarray as xr
from arviz_base import from_dict

import pymc_mixvcov as pmv
from pymc_mixvcov.output.datatree import GROUPS

#: Round-off of the maps from simulated draws to a scale (square roots and products of a few
#: floating-point numbers): the mapped statistics agree with the simulated ones to ~1e-15
#: relative; 1e-10 leaves room for summing 4000 terms.
RTOL_MAP = 1e-10

#: SDs of the known normal from which the sd-scale posterior of sleepstudy is simulated:
#: (Intercept), Days, sd_(Intercept), cor, sd_Days, sigma. Each mean is at least 5.7 of these
#: SDs inside its parameter space, so no simulated draw leaves it.
SIM_SD = np.array([5.0, 1.0, 3.0, 0.1, 1.0, 2.0])


def simulate_sleep_posterior(fit, chains: int = 4, draws: int = 1000, seed: int = 3):
    """Draws of the formula model's variables, simulated on the sd scale from N(estimate, SIM_SD^2).

    Returns the sd-scale draws ``(chains, draws, 6)`` and a DataTree laid out as pm.sample's:
    ``beta`` (dim ``fixed``), ``chol_Subject`` (PyMC's packed lower triangle, row-major:
    ``L00, L10, L11``), ``sigma``, the random effects and PyMC's derived ``chol_Subject_stds``.
    """
    rng = np.random.default_rng(seed)
    x = fit.params("sd").to_numpy() + SIM_SD * rng.standard_normal((chains, draws, 6))
    s0, rho, s1 = x[..., 2], x[..., 3], x[..., 4]
    chol = np.stack([s0, s1 * rho, s1 * np.sqrt(1 - rho**2)], axis=-1)
    posterior = {
        "beta": x[..., :2],
        "chol_Subject": chol,
        "sigma": x[..., 5],
        "u_Subject": rng.standard_normal((chains, draws, 18, 2)),
        "chol_Subject_stds": np.stack([s0, s1], axis=-1),
    }
    tree = from_dict(
        {"posterior": posterior},
        dims={"beta": ["fixed"], "u_Subject": ["Subject", "Subject_effect"]},
        coords={"fixed": ["(Intercept)", "Days"]},
    )
    return x, tree


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


# -- to_datatree ----------------------------------------------------------------------------------
def test_datatree_holds_what_the_fit_reports(sleep_ml):
    tree = sleep_ml.to_datatree()
    assert [g.lstrip("/") for g in tree.groups[1:]] == list(GROUPS)
    for scale in ("sd", "var", "cholesky", "natural", "unconstrained"):
        dim = f"param_{scale}"
        est = tree["estimates"][scale]
        assert est.dims == (dim,) and list(est[dim].values) == sleep_ml.labels(scale)
        np.testing.assert_array_equal(est.values, sleep_ml.params(scale).to_numpy())
        group = tree[f"vcov_{scale}"]
        assert group["observed"].dims == (dim, f"{dim}_2")
        np.testing.assert_array_equal(group["observed"].values, sleep_ml.vcov(scale).to_numpy())
        np.testing.assert_array_equal(group["expected"].values, sleep_ml.vcov(scale, "expected").to_numpy())
        for adjust in ("CR0", "CR1", "CR3"):
            np.testing.assert_array_equal(group[adjust].values, sleep_ml.sandwich(scale, adjust=adjust).to_numpy())
        np.testing.assert_array_equal(
            tree["scores"][f"scores_{scale}"].values, sleep_ml.scores("cluster", scale).to_numpy()
        )
    assert tree["scores"]["scores_sd"].dims == ("Subject", "param_sd")
    assert list(tree["scores"]["Subject"].values) == list(sleep_ml.scores().index)
    stats = tree["optimizer_stats"]
    assert bool(stats["converged"]) and int(stats["iterations"]) == sleep_ml.iterations
    assert float(stats["grad_norm"]) == sleep_ml.grad_norm
    for info in ("observed", "expected"):
        # smallest eigenvalue of the natural-scale information (no parameter at a bound here)
        want = np.linalg.eigvalsh(sleep_ml.information(info).to_numpy())[0]
        np.testing.assert_allclose(float(stats["min_eigenvalue"].sel(information=info)), want, rtol=1e-12)
    np.testing.assert_array_equal(tree["observed_data"]["Reaction"].values, sleep_ml.data["Reaction"].to_numpy())
    for node in tree.subtree:
        attrs = node.attrs
        assert attrs["method"] == "ML" and attrs["information"] == "observed" and attrs["nAGQ"] == 1
        assert attrs["pymc_mixvcov_version"] == pmv.__version__


def test_datatree_round_trips_to_netcdf(sleep_ml, tmp_path):
    tree = sleep_ml.to_datatree()
    path = tmp_path / "sleepstudy_fit.nc"
    tree.to_netcdf(path)
    back = xr.open_datatree(path)
    try:
        xr.testing.assert_equal(back, tree)
        for group in GROUPS:
            for key in ("method", "information", "nAGQ", "pymc_mixvcov_version"):
                assert back[group].attrs[key] == tree[group].attrs[key]
        assert back["optimizer_stats"]["converged"].dtype == bool
    finally:
        back.close()


def test_datatree_joins_the_tree_of_pm_sample(sleep_ml):
    """The documented one-liner: ``idata.update(fit.to_datatree())``."""
    _, idata = simulate_sleep_posterior(sleep_ml, draws=50)
    with sleep_ml.spec.model:  # pm.sample's observed_data group, without sampling
        prior = pm.sample_prior_predictive(draws=1, random_seed=0)
    idata["observed_data"] = prior["observed_data"]
    posterior = idata["posterior"].to_dataset()
    observed = idata["observed_data"].to_dataset()
    idata.update(sleep_ml.to_datatree())
    assert set(GROUPS) | {"posterior"} == set(idata.children)
    xr.testing.assert_identical(idata["posterior"].to_dataset(), posterior)
    xr.testing.assert_equal(idata["observed_data"].to_dataset(), observed)
    assert idata["vcov_sd"].attrs["method"] == "ML"


def test_datatree_with_some_sandwiches(sleep_ml):
    tree = sleep_ml.to_datatree(adjust=["CR1"], information="expected")
    assert set(tree["vcov_var"].data_vars) == {"observed", "expected", "CR1"}
    np.testing.assert_array_equal(
        tree["vcov_var"]["CR1"].values, sleep_ml.sandwich("var", "expected", adjust="CR1").to_numpy()
    )
    assert tree["vcov_var"].attrs["information"] == "expected"
    with pytest.raises(pmv.MixVcovError, match="unknown adjust 'HC1'"):
        sleep_ml.to_datatree(adjust=["HC1"])
    with pytest.raises(pmv.MixVcovError, match="unknown information 'fisher'"):
        sleep_ml.to_datatree(information="fisher")


def test_datatree_of_a_reml_fit_says_what_is_missing(sleep_reml):
    tree = sleep_reml.to_datatree()
    assert set(tree["vcov_sd"].data_vars) == {"observed", "expected"}
    assert "method='ML'" in tree["vcov_sd"].attrs["unavailable_CR1"]
    assert not tree["scores"].data_vars and "REML" in tree["scores"].attrs["unavailable"]
    assert tree.attrs["method"] == "REML"


# -- compare --------------------------------------------------------------------------------------
def test_compare_formula_model_recovers_the_simulated_posterior(sleep_ml):
    x, tree = simulate_sleep_posterior(sleep_ml)
    table = pmv.compare(sleep_ml, tree, scale="sd", prob=0.9, vcov="CR1")
    assert list(table.index) == sleep_ml.labels("sd") == list(sleep_ml.vcov("sd").index)
    assert list(table.columns) == [
        "estimate",
        "se_model",
        "se_sandwich",
        "wald_lower",
        "wald_upper",
        "sandwich_lower",
        "sandwich_upper",
        "posterior_mean",
        "posterior_sd",
        "posterior_lower",
        "posterior_upper",
    ]
    flat = _flat(x)
    # the draws came from a known normal on the sd scale: the chol factor maps back to them
    np.testing.assert_allclose(table["posterior_mean"], flat.mean(0), rtol=RTOL_MAP)
    np.testing.assert_allclose(table["posterior_sd"], flat.std(0, ddof=1), rtol=RTOL_MAP)
    np.testing.assert_allclose(table["posterior_sd"], SIM_SD, rtol=0.05)  # 4000 draws: sd of an SD ~1.1%
    lo, hi = np.quantile(flat, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(table["posterior_lower"], lo, rtol=RTOL_MAP)
    np.testing.assert_allclose(table["posterior_upper"], hi, rtol=RTOL_MAP)
    # the frequentist columns are the fit's own
    model = sleep_ml.summary(vcov="model", scale="sd", level=0.9)
    robust = sleep_ml.summary(vcov="CR1", scale="sd", level=0.9)
    np.testing.assert_array_equal(table["estimate"], sleep_ml.params("sd").to_numpy())
    np.testing.assert_array_equal(table["se_model"], sleep_ml.se("sd").to_numpy())
    np.testing.assert_allclose(
        table["se_sandwich"], np.sqrt(np.diag(sleep_ml.sandwich("sd", adjust="CR1").to_numpy())), rtol=1e-15
    )
    np.testing.assert_array_equal(table[["wald_lower", "wald_upper"]], model.iloc[:, 4:6])
    np.testing.assert_array_equal(table[["sandwich_lower", "sandwich_upper"]], robust.iloc[:, 4:6])


def test_compare_formula_model_on_the_var_scale(sleep_ml):
    x, tree = simulate_sleep_posterior(sleep_ml)
    table = pmv.compare(sleep_ml, tree, scale="var")
    s0, rho, s1, sigma = x[..., 2], x[..., 3], x[..., 4], x[..., 5]
    # lme4 / merDeriv "var" order: fixed effects, var(Intercept), cov, var(Days), residual variance
    want = _flat(np.stack([x[..., 0], x[..., 1], s0**2, rho * s0 * s1, s1**2, sigma**2], axis=-1))
    assert list(table.index) == list(sleep_ml.vcov("var").index)
    np.testing.assert_allclose(table["posterior_mean"], want.mean(0), rtol=RTOL_MAP)
    np.testing.assert_allclose(table["posterior_sd"], want.std(0, ddof=1), rtol=RTOL_MAP)


def test_compare_cholesky_and_natural_scales(sleep_ml):
    x, tree = simulate_sleep_posterior(sleep_ml, draws=200)
    nat = _flat(
        np.concatenate([tree["posterior"][v].values.reshape(4, 200, -1) for v in ("beta", "chol_Subject", "sigma")], -1)
    )
    table = pmv.compare(sleep_ml, tree, scale="natural")
    np.testing.assert_allclose(table["posterior_mean"], nat.mean(0), rtol=RTOL_MAP)
    # lme4's theta: the Cholesky factor relative to sigma
    theta = _flat(np.concatenate([x[..., :2], tree["posterior"]["chol_Subject"].values / x[..., 5:6], x[..., 5:6]], -1))
    table = pmv.compare(sleep_ml, tree, scale="cholesky")
    np.testing.assert_allclose(table["posterior_mean"], theta.mean(0), rtol=RTOL_MAP)


@pytest.fixture(scope="module")
def halfnormal_fit(sleepstudy):
    """A hand-written model: independent intercept and slope with HalfNormal SDs."""
    d = sleepstudy
    subj = d["Subject"].cat.codes.to_numpy()
    days = d["Days"].to_numpy(float)
    coords = {"Subject": list(d["Subject"].cat.categories), "effect": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        b = pm.Normal("b", 0.0, 100.0, shape=2)
        tau = pm.HalfNormal("tau", 50.0, dims="effect")
        u = pm.Normal("u", 0.0, tau, dims=("Subject", "effect"))
        s = pm.HalfNormal("s", 50.0)
        pm.Normal("y", b[0] + b[1] * days + u[subj, 0] + u[subj, 1] * days, s, observed=d["Reaction"].to_numpy())
    return pmv.fit(model, random=["u"], method="ML")


def _halfnormal_posterior(fit, draws: int = 4000, seed: int = 5):
    rng = np.random.default_rng(seed)
    mean = fit.params("natural").to_numpy()  # b[0], b[1], tau[(Intercept)], tau[Days], s
    spread = np.array([5.0, 1.0, 3.0, 1.0, 2.0])  # means >= 5.9 SDs from 0
    nat = mean + spread * rng.standard_normal((draws, 5))
    ds = xr.Dataset(
        {
            "b": (("draw", "b_dim_0"), nat[:, :2]),
            "tau": (("draw", "effect"), nat[:, 2:4]),
            "s": (("draw",), nat[:, 4]),
            "u": (("draw", "Subject", "effect"), rng.standard_normal((draws, 18, 2))),
        },
        coords={"draw": np.arange(draws), "effect": ["(Intercept)", "Days"]},
    )
    return nat, ds


def test_compare_handwritten_model_halfnormal_sd_becomes_a_variance(halfnormal_fit):
    fit = halfnormal_fit
    nat, ds = _halfnormal_posterior(fit)
    assert fit.labels("var") == ["b[0]", "b[1]", "cov_Subject.(Intercept)", "cov_Subject.Days.(Intercept)",
                                 "cov_Subject.Days", "residual"]  # fmt: skip
    table = pmv.compare(fit, ds, scale="var")  # a Dataset with a "draw" dimension only
    want = np.column_stack([nat[:, 0], nat[:, 1], nat[:, 2] ** 2, np.zeros(len(nat)), nat[:, 3] ** 2, nat[:, 4] ** 2])
    np.testing.assert_allclose(table["posterior_mean"], want.mean(0), rtol=RTOL_MAP, atol=0)
    np.testing.assert_allclose(table["posterior_sd"], want.std(0, ddof=1), rtol=RTOL_MAP, atol=0)
    table = pmv.compare(fit, ds, scale="natural", vcov="CR0")
    assert list(table.index) == ["b[0]", "b[1]", "tau[(Intercept)]", "tau[Days]", "s"]
    np.testing.assert_allclose(table["posterior_mean"], nat.mean(0), rtol=RTOL_MAP)
    np.testing.assert_allclose(table["posterior_sd"], nat.std(0, ddof=1), rtol=RTOL_MAP)
    sd = pmv.compare(fit, xr.DataTree(ds), scale="sd")  # a DataTree node that is the posterior itself
    np.testing.assert_allclose(sd.loc["sd_(Intercept)|Subject", "posterior_mean"], nat[:, 2].mean(), rtol=RTOL_MAP)
    np.testing.assert_allclose(sd.loc["sigma", "posterior_sd"], nat[:, 4].std(ddof=1), rtol=RTOL_MAP)


def test_compare_hdi(sleep_ml):
    x, tree = simulate_sleep_posterior(sleep_ml)
    eti = pmv.compare(sleep_ml, tree, prob=0.8)
    hdi = pmv.compare(sleep_ml, tree, prob=0.8, ci_kind="hdi")
    flat = _flat(x)
    width_eti = eti["posterior_upper"] - eti["posterior_lower"]
    width_hdi = hdi["posterior_upper"] - hdi["posterior_lower"]
    # the HDI is the shortest interval holding 80% of the draws
    assert np.all(width_hdi <= width_eti + 1e-12)
    # the end points are draws; this test maps the draws to the scale by its own route, which can
    # differ from compare's in the last bits, so the ends are widened by 1e-12 relative
    lo, hi = hdi["posterior_lower"].to_numpy(), hdi["posterior_upper"].to_numpy()
    inside = (flat >= lo - 1e-12 * np.abs(lo)) & (flat <= hi + 1e-12 * np.abs(hi))
    assert np.all(inside.mean(0) >= 0.8)
    np.testing.assert_array_equal(hdi["posterior_mean"], eti["posterior_mean"])


def test_posterior_on_scale_is_laid_out_as_sample_normal(sleep_ml):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=100)
    post = pmv.posterior_on_scale(sleep_ml, tree, scale="sd")
    normal = sleep_ml.sample_normal(100, scale="sd", random_seed=0)
    assert list(post["posterior"].data_vars) == list(normal["posterior"].data_vars) == sleep_ml.labels("sd")
    assert post["posterior"]["sigma"].dims == normal["posterior"]["sigma"].dims == ("chain", "draw")


# -- sample_normal --------------------------------------------------------------------------------
@pytest.mark.parametrize("vcov", ["model", "CR1"])
def test_sample_normal_has_the_estimate_and_covariance(sleep_ml, vcov):
    import arviz as az

    chains, draws = 4, 5000
    tree = sleep_ml.sample_normal(draws, scale="sd", vcov=vcov, chains=chains, random_seed=11)
    post = tree["posterior"]
    labels = sleep_ml.labels("sd")
    assert list(post.data_vars) == labels and post.sizes == {"chain": chains, "draw": draws}
    x = np.stack([post[lab].values.ravel() for lab in labels], axis=1)
    mean = sleep_ml.params("sd").to_numpy()
    V = (sleep_ml.vcov("sd") if vcov == "model" else sleep_ml.sandwich("sd", adjust="CR1")).to_numpy()
    se = np.sqrt(np.diag(V))
    n = chains * draws
    # Monte Carlo error: the mean of n draws has SD se / sqrt(n); at most 5 of them
    np.testing.assert_allclose((x.mean(0) - mean) / (se / np.sqrt(n)), 0.0, rtol=0, atol=5)
    # a variance estimated from n normal draws has relative SD sqrt(2 / n) = 1%; 6 of them
    np.testing.assert_allclose(np.var(x, axis=0, ddof=1), se**2, rtol=6 * np.sqrt(2 / n))
    corr = np.corrcoef(x.T)
    # a correlation from n draws has SD below 1 / sqrt(n) = 0.007; 5 of them
    np.testing.assert_allclose(corr, V / np.outer(se, se), rtol=0, atol=5 / np.sqrt(n))
    summary = az.summary(tree, kind="stats", round_to="none")
    assert list(summary.index) == labels
    assert tree["posterior"].attrs["vcov"] == vcov and tree["posterior"].attrs["scale"] == "sd"
    again = sleep_ml.sample_normal(draws, scale="sd", vcov=vcov, chains=chains, random_seed=11)
    xr.testing.assert_equal(again["posterior"].to_dataset(), post.to_dataset())


def test_sample_normal_bad_input(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="unknown scale 'logsd'"):
        sleep_ml.sample_normal(10, scale="logsd")
    with pytest.raises(pmv.MixVcovError, match="unknown vcov 'HC0'"):
        sleep_ml.sample_normal(10, vcov="HC0")
    with pytest.raises(pmv.MixVcovError, match="draws must be a positive integer"):
        sleep_ml.sample_normal(0)


# -- plot -----------------------------------------------------------------------------------------
def test_plot_compare_writes_a_png(sleep_ml, tmp_path):
    from matplotlib.image import imread

    _, tree = simulate_sleep_posterior(sleep_ml, draws=250)
    path = tmp_path / "compare.png"
    fig = pmv.plot_compare(sleep_ml, tree, scale="sd", prob=0.95, filename=path)
    assert len(fig.axes) == len(sleep_ml.labels("sd"))
    assert [ax.get_ylabel() for ax in fig.axes] == sleep_ml.labels("sd")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    image = imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 800
    # three interval colours besides black, white and greys: C0 blue, C1 orange, C2 green
    rgb = image[..., :3].reshape(-1, 3)
    for colour in ((0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17)):
        assert np.any(np.all(np.abs(rgb - colour) < 0.02, axis=1)), colour


# -- bad input ------------------------------------------------------------------------------------
def test_compare_bad_input(sleep_ml):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=20)
    lacking = tree["posterior"].to_dataset().drop_vars(["sigma", "chol_Subject"])
    with pytest.raises(pmv.MixVcovError, match=r"lacks the model's parameter variable\(s\) 'chol_Subject', 'sigma'"):
        pmv.compare(sleep_ml, lacking)
    for prob in (0, 1, 1.5, -0.2, True, "0.9"):
        with pytest.raises(pmv.MixVcovError, match="prob must be a number strictly between 0 and 1"):
            pmv.compare(sleep_ml, tree, prob=prob)
    with pytest.raises(pmv.MixVcovError, match="unknown scale 'logsd'; valid scales are: 'sd', 'var'"):
        pmv.compare(sleep_ml, tree, scale="logsd")
    with pytest.raises(pmv.MixVcovError, match="unknown scale"):
        pmv.plot_compare(sleep_ml, tree, scale="logsd")
    with pytest.raises(pmv.MixVcovError, match="unknown vcov 'model'"):
        pmv.compare(sleep_ml, tree, vcov="model")
    with pytest.raises(pmv.MixVcovError, match="unknown ci_kind"):
        pmv.compare(sleep_ml, tree, ci_kind="quantile")
    wrong = tree["posterior"].to_dataset()
    wrong["sigma"] = wrong["u_Subject"]
    with pytest.raises(pmv.MixVcovError, match="'sigma' has shape"):
        pmv.compare(sleep_ml, wrong)
    with pytest.raises(pmv.MixVcovError, match="must be an xarray DataTree"):
        pmv.compare(sleep_ml, {"sigma": np.ones(3)})
    with pytest.raises(pmv.MixVcovError, match="no 'posterior' group"):
        pmv.compare(sleep_ml, xr.DataTree.from_dict({"prior": tree["posterior"].to_dataset()}))


def test_compare_reml_fit_has_no_sandwich(sleep_reml):
    _, tree = simulate_sleep_posterior(sleep_reml, draws=50)
    with pytest.raises(pmv.MixVcovError, match="vcov=None"):
        pmv.compare(sleep_reml, tree)
    table = pmv.compare(sleep_reml, tree, vcov=None)
    assert table[["se_sandwich", "sandwich_lower", "sandwich_upper"]].isna().all().all()
    assert table["se_model"].notna().all()


# -- with pm.sample (slow) ------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_with_pm_sample(sleepstudy):
    model = pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy)
    fit = model.fit("ML")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = pm.sample(model=model.model, draws=300, tune=300, chains=2, cores=1, random_seed=1, progressbar=False)
    idata.update(fit.to_datatree())
    table = pmv.compare(fit, idata, scale="sd")
    assert table.notna().all().all()
    # the posterior and the fit agree on the fixed effects to within a standard error or so
    gap = (table["posterior_mean"] - table["estimate"]) / table["se_model"]
    assert np.all(np.abs(gap.loc[["(Intercept)", "Days"]]) < 1.0)


# -- the posterior is matched to the fit by label (issue: nothing silently wrong) -------------------------
def _with_beta_reversed(tree: xr.DataTree) -> xr.DataTree:
    """The same draws with ``beta``'s coordinate ``fixed`` stored in the other order, ``Days`` first."""
    ds = tree["posterior"].to_dataset()
    return xr.DataTree.from_dict({"posterior": ds.isel(fixed=[1, 0])})


@pytest.mark.parametrize("scale", ["sd", "natural"])
def test_compare_matches_draws_by_coordinate_not_position(sleep_ml, scale):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=200)
    reversed_tree = _with_beta_reversed(tree)
    assert list(reversed_tree["posterior"]["fixed"].values) == ["Days", "(Intercept)"]
    want = pmv.compare(sleep_ml, tree, scale=scale, vcov=None)
    got = pmv.compare(sleep_ml, reversed_tree, scale=scale, vcov=None)
    # the same draws, labelled the same: identical summaries, whatever the storage order
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
    # and (Intercept)'s posterior is near its estimate (251), not Days' (10)
    np.testing.assert_allclose(got.iloc[0]["posterior_mean"], got.iloc[0]["estimate"], atol=5 * 5.0 / np.sqrt(800))
    on_scale = pmv.posterior_on_scale(sleep_ml, reversed_tree, scale="sd")["posterior"]
    mapped = pmv.posterior_on_scale(sleep_ml, tree, scale="sd")["posterior"]
    xr.testing.assert_equal(on_scale.to_dataset(), mapped.to_dataset())


def test_compare_refuses_coordinates_the_model_does_not_have(sleep_ml):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=20)
    ds = tree["posterior"].to_dataset()
    other = ds.assign_coords(fixed=["(Intercept)", "x"])
    for fn in (pmv.compare, pmv.posterior_on_scale):
        message = r"'beta' along dimension 'fixed' has coordinates '\(Intercept\)', 'x'.*lacks 'Days' and has 'x'"
        with pytest.raises(pmv.MixVcovError, match=message):
            fn(sleep_ml, other)
    with pytest.raises(pmv.MixVcovError, match="no coordinate values along dimension 'fixed'"):
        pmv.compare(sleep_ml, ds.drop_vars("fixed"))
    with pytest.raises(pmv.MixVcovError, match="repeats the coordinate value"):
        pmv.compare(sleep_ml, ds.assign_coords(fixed=["Days", "Days"]))
    # the packed Cholesky factor has no coordinates in the model: pm.sample labels it 0, 1, 2
    chol = ds.rename_dims(chol_Subject_dim_0="c").drop_vars("chol_Subject_dim_0").assign_coords(c=[0, 1, 5])
    message = r"'chol_Subject' along dimension 'c' has coordinates '0', '1', '5'.*lacks '2' and has '5'"
    with pytest.raises(pmv.MixVcovError, match=message):
        pmv.compare(sleep_ml, chol)
    # a permutation of 0, 1, 2 is matched by value as well
    moved = ds.isel(chol_Subject_dim_0=[2, 0, 1])
    np.testing.assert_array_equal(
        pmv.compare(sleep_ml, moved, vcov=None).to_numpy(), pmv.compare(sleep_ml, ds, vcov=None).to_numpy()
    )


def test_compare_refuses_draws_outside_the_support(sleep_ml):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=20)
    ds = tree["posterior"].to_dataset()
    sigma = ds["sigma"].copy()
    sigma[0, 3] = -1.5
    for fn in (pmv.compare, pmv.posterior_on_scale):
        message = r"'sigma' has 1 of 80 draws below its lower bound 0 \(smallest -1\.5\)"
        with pytest.raises(pmv.MixVcovError, match=message):
            fn(sleep_ml, ds.assign(sigma=sigma))
    chol = ds["chol_Subject"].copy()
    chol[1, 2, 2] = -0.1  # the diagonal entry L11 of the packed factor L00, L10, L11
    with pytest.raises(pmv.MixVcovError, match=r"'chol_Subject\[2\]' has 1 of 80 draws below its lower bound 0"):
        pmv.compare(sleep_ml, ds.assign(chol_Subject=chol))
    chol[1, 2, 2] = np.nan
    with pytest.raises(pmv.MixVcovError, match=r"'chol_Subject\[2\]' has 1 non-finite draw"):
        pmv.compare(sleep_ml, ds.assign(chol_Subject=chol))
    # the off-diagonal entry L10 is unbounded: a negative value is a negative correlation, accepted
    chol = ds["chol_Subject"].copy()
    chol[..., 1] = -np.abs(chol[..., 1])
    table = pmv.compare(sleep_ml, ds.assign(chol_Subject=chol), vcov=None)
    assert np.all(table.loc["cor_Days.(Intercept)|Subject", ["posterior_lower", "posterior_upper"]] < 0)


def _observed_tree(fit, tree: xr.DataTree, reaction: np.ndarray) -> xr.DataTree:
    observed = xr.Dataset({"Reaction": (("Reaction_dim_0",), reaction)})
    return xr.DataTree.from_dict({"posterior": tree["posterior"].to_dataset(), "observed_data": observed})


def test_compare_warns_when_the_posterior_saw_other_data(sleep_ml):
    _, tree = simulate_sleep_posterior(sleep_ml, draws=20)
    reaction = sleep_ml.data["Reaction"].to_numpy()
    same = _observed_tree(sleep_ml, tree, reaction.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pmv.compare(sleep_ml, same, vcov=None)  # the fit's own data: silent
    shifted = reaction.copy()
    shifted[:10] += 2.5
    for fn in (pmv.compare, pmv.posterior_on_scale):
        message = r"drawn on other data.*10 of 180 values of 'Reaction' differ \(largest difference 2\.5\)"
        with pytest.warns(pmv.MixVcovWarning, match=message):
            fn(sleep_ml, _observed_tree(sleep_ml, tree, shifted))
    with pytest.warns(pmv.MixVcovWarning, match=r"'Reaction' has shape \(170,\) there and \(180,\) in the fit"):
        pmv.compare(sleep_ml, _observed_tree(sleep_ml, tree, reaction[:170]), vcov=None)
    other = xr.DataTree.from_dict(
        {"posterior": tree["posterior"].to_dataset(), "observed_data": xr.Dataset({"y": ("n", reaction)})}
    )
    with pytest.warns(pmv.MixVcovWarning, match=r"no variable 'Reaction', the fit's observed variable \(it has 'y'\)"):
        pmv.compare(sleep_ml, other, vcov=None)
