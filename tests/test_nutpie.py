"""``pmv.compare`` and ``pmv.plot_compare`` with posteriors drawn by nutpie.

nutpie is an optional dependency (``pip install pymc-mixvcov[nutpie]``); these tests are skipped
where it is not installed. nutpie returns an ArviZ DataTree as ``pm.sample`` does, without an
``observed_data`` group, with PyMC's deterministics (``u``, ``chol_Subject_stds``,
``chol_Subject_corr``) stored next to the free variables and unnamed dimensions called
``<name>_dim_<k>``.

Expected values: every posterior column of ``compare`` is a statistic of the sampled draws,
recomputed here with NumPy from the trace (for the SDs and the correlation from PyMC's own
deterministics ``chol_Subject_stds`` and ``chol_Subject_corr``, an independent path from the
package's map): equal to round-off (``1e-10`` relative; the statistics are sums and
quantiles of the same numbers in the same or another order). The frequentist columns are the
fit's own ``summary`` (the same numbers).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytest

import pymc_mixvcov as pmv

nutpie = pytest.importorskip("nutpie")

#: Same numbers, statistics formed in another order (see the module docstring).
TOL = 1e-10


def _draws(trace, name: str) -> np.ndarray:
    """A posterior variable's draws with the sample dimensions flattened into the first axis."""
    da = trace["posterior"][name]
    other = [d for d in da.dims if d not in ("chain", "draw")]
    values = da.transpose("chain", "draw", *other).values
    return values.reshape(-1, *values.shape[2:])


def _check_posterior_columns(table, draws: dict[str, np.ndarray], prob: float = 0.95) -> None:
    for label, x in draws.items():
        row = table.loc[label]
        lo, hi = np.quantile(x, [(1 - prob) / 2, (1 + prob) / 2])
        np.testing.assert_allclose(row["posterior_mean"], x.mean(), rtol=TOL, err_msg=label)
        np.testing.assert_allclose(row["posterior_sd"], x.std(ddof=1), rtol=TOL, err_msg=label)
        np.testing.assert_allclose([row["posterior_lower"], row["posterior_upper"]], [lo, hi], rtol=TOL, err_msg=label)


@pytest.fixture(scope="module")
def intercept_model(sleepstudy):
    """sleepstudy with a non-centred random intercept by Subject (compiles in seconds with numba)."""
    d = sleepstudy
    subj = d["Subject"].cat.codes.to_numpy()
    coords = {"Subject": list(d["Subject"].cat.categories), "fixed": ["(Intercept)", "Days"]}
    with pm.Model(coords=coords) as model:
        beta = pm.Normal("beta", [250.0, 10.0], 50.0, dims="fixed")
        tau = pm.HalfNormal("tau", 50.0)
        z = pm.Normal("z", 0.0, 1.0, dims="Subject")
        u = pm.Deterministic("u", z * tau, dims="Subject")
        sigma = pm.HalfNormal("sigma", 50.0)
        pm.Normal("y", beta[0] + beta[1] * d["Days"].to_numpy(float) + u[subj], sigma, observed=d["Reaction"])
    return model


@pytest.fixture(scope="module")
def intercept_trace(intercept_model):
    compiled = nutpie.compile_pymc_model(intercept_model)
    return nutpie.sample(compiled, draws=300, tune=300, chains=2, cores=1, seed=3, progress_bar=False)


@pytest.mark.parametrize("method", ["ML", "MAP"])
def test_compare_reads_a_nutpie_trace(intercept_model, intercept_trace, method):
    fit = pmv.fit(intercept_model, random=["z"], method=method)
    table = pmv.compare(fit, intercept_trace, scale="sd", prob=0.95, vcov="CR1")
    assert list(table.index) == fit.labels("sd") == ["beta[(Intercept)]", "beta[Days]", "sd_u|Subject", "sigma"]
    assert table.attrs["draws"] == 600 and table.attrs["method"] == method
    beta = _draws(intercept_trace, "beta")  # coordinates in the model's order: checked, not assumed
    order = list(intercept_trace["posterior"]["beta"]["fixed"].values)
    _check_posterior_columns(
        table,
        {
            "beta[(Intercept)]": beta[:, order.index("(Intercept)")],
            "beta[Days]": beta[:, order.index("Days")],
            "sd_u|Subject": _draws(intercept_trace, "tau"),
            "sigma": _draws(intercept_trace, "sigma"),
        },
    )
    model_based, robust = fit.summary(vcov="model", scale="sd"), fit.summary(vcov="CR1", scale="sd")
    np.testing.assert_allclose(table["estimate"], model_based["Estimate"], rtol=1e-14)
    np.testing.assert_allclose(table["se_model"], model_based["Std. Error"], rtol=1e-14)
    np.testing.assert_allclose(table["se_sandwich"], robust["Std. Error"], rtol=1e-14)
    np.testing.assert_allclose(table[["sandwich_lower", "sandwich_upper"]], robust.iloc[:, 4:6], rtol=1e-14)


def test_plot_compare_draws_a_nutpie_trace(intercept_model, intercept_trace, tmp_path):
    fit = pmv.fit(intercept_model, random=["z"], method="MAP")
    out = tmp_path / "compare.png"
    fig = pmv.plot_compare(fit, intercept_trace, filename=out)
    assert out.stat().st_size > 0
    assert len(fig.axes) == len(fit.labels("sd"))
    # MAP fits label the model-based interval as the Laplace approximation of the posterior
    assert "Laplace (model)" in [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.slow
def test_compare_reads_a_nutpie_trace_of_a_formula_model(sleepstudy):
    """The formula-built model (LKJ Cholesky factor, unnamed dimensions in nutpie's trace).

    Slow: nutpie's numba compilation of the LKJ model takes about a minute.
    """
    model = pmv.lmm("Reaction ~ Days + (Days | Subject)", sleepstudy)
    trace = nutpie.sample(
        nutpie.compile_pymc_model(model.model), draws=300, tune=300, chains=2, cores=1, seed=5, progress_bar=False
    )
    fit = model.fit("ML")
    table = pmv.compare(fit, trace, scale="sd")
    stds, corr = _draws(trace, "chol_Subject_stds"), _draws(trace, "chol_Subject_corr")
    beta = _draws(trace, "beta")
    _check_posterior_columns(
        table,
        {
            "(Intercept)": beta[:, 0],
            "Days": beta[:, 1],
            "sd_(Intercept)|Subject": stds[:, 0],
            "cor_Days.(Intercept)|Subject": corr[:, 1, 0],
            "sd_Days|Subject": stds[:, 1],
            "sigma": _draws(trace, "sigma"),
        },
    )
