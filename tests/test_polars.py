"""Data frames beyond pandas (pymc_mixvcov/model/frames.py): polars, pyarrow and lazy frames give
the pandas results and labels; polars Enum and Categorical columns give R's factor coding.

The same data give the same design matrices, so the fits are the same computation: estimates,
log-likelihoods and covariances are compared with rtol 1e-10 (the optimiser's path is the same;
only floating-point summation order could differ)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pymc_mixvcov as pmv
from pymc_mixvcov.model.frames import as_pandas

pl = pytest.importorskip("polars")

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _same_fit(a, b, scales=("sd", "var")):
    assert a.labels("sd") == b.labels("sd")
    np.testing.assert_allclose(a.loglik, b.loglik, rtol=1e-10)
    for scale in scales:
        np.testing.assert_allclose(a.params(scale), b.params(scale), rtol=1e-10)
        np.testing.assert_allclose(
            a.vcov(scale), b.vcov(scale), rtol=1e-8, atol=1e-10 * np.abs(a.vcov(scale).to_numpy()).max()
        )


@pytest.fixture(scope="module")
def sleep_polars(sleepstudy):
    """sleepstudy as polars, Subject a string column (R's read.csv: a character column)."""
    return pl.DataFrame(
        {
            "Reaction": sleepstudy["Reaction"].to_numpy(),
            "Days": sleepstudy["Days"].to_numpy(),
            "Subject": sleepstudy["Subject"].astype(str).to_numpy(),
        }
    )


@pytest.mark.parametrize("dtype", ["String", "Categorical", "Enum"])
def test_polars_gives_the_pandas_fit(sleep_polars, sleep_ml, dtype):
    levels = [str(v) for v in sleep_ml.spec.terms[0].levels]  # R's levels: 308, 309, ...
    cast = {"String": pl.String, "Categorical": pl.Categorical, "Enum": pl.Enum(levels)}[dtype]
    frame = sleep_polars.with_columns(pl.col("Subject").cast(cast))
    fit = pmv.lmm(FORMULA, frame).fit()
    _same_fit(fit, sleep_ml)
    assert [str(v) for v in fit.spec.terms[0].levels] == levels
    assert list(fit.scores().index) == list(sleep_ml.scores().index)
    assert isinstance(fit.data, pd.DataFrame)
    np.testing.assert_allclose(fit.sandwich(cluster="Subject"), sleep_ml.sandwich(cluster="Subject"), rtol=1e-8)


def test_lazy_frames_and_pyarrow_tables(sleep_polars, sleep_ml):
    _same_fit(pmv.lmm(FORMULA, sleep_polars.lazy()).fit(), sleep_ml, scales=("sd",))
    pa = pytest.importorskip("pyarrow")
    table = pa.table({c: sleep_polars[c].to_numpy() for c in sleep_polars.columns})
    _same_fit(pmv.lmm(FORMULA, table).fit(), sleep_ml, scales=("sd",))


def _phases(days: np.ndarray) -> np.ndarray:
    return np.where(days <= 2, "early", np.where(days <= 5, "mid", "late"))


def test_enum_declared_order_is_the_level_order(sleepstudy):
    """An Enum's declared order, not the alphabetical one, sets the baseline and the column order,
    as R's factor(x, levels = c("mid", "early", "late")) does; the fit equals the pandas one with a
    categorical of that order. The polars Enum is unordered: treatment contrasts."""
    phase = _phases(sleepstudy["Days"].to_numpy())
    order = ["mid", "early", "late"]
    pdata = sleepstudy.assign(phase=pd.Categorical(phase, categories=order))
    frame = pl.from_dict(
        {
            "Reaction": sleepstudy["Reaction"].to_numpy(),
            "Subject": sleepstudy["Subject"].astype(str).to_numpy(),
            "phase": phase,
        }
    ).with_columns(pl.col("phase").cast(pl.Enum(["mid", "early", "late", "unused"])))
    formula = "Reaction ~ phase + (1 | Subject)"
    fit = pmv.lmm(formula, frame).fit()
    assert fit.labels("sd")[:3] == ["(Intercept)", "phaseearly", "phaselate"]  # baseline "mid"
    _same_fit(fit, pmv.lmm(formula, pdata).fit())


def test_categorical_order_is_the_sort_order_polars_defines(sleepstudy):
    """polars 2 sorts a Categorical by its strings: the levels are sorted, as R's factor() sorts
    them, whatever order the values first appear in (here: late, mid, early)."""
    phase = _phases(sleepstudy["Days"].to_numpy())[::-1].copy()
    data = sleepstudy.iloc[::-1].reset_index(drop=True).assign(phase=phase)
    frame = pl.from_dict(
        {
            "Reaction": data["Reaction"].to_numpy(),
            "Subject": data["Subject"].astype(str).to_numpy(),
            "phase": phase,
        }
    ).with_columns(pl.col("phase").cast(pl.Categorical))
    assert frame["phase"].sort().unique(maintain_order=True).to_list() == ["early", "late", "mid"]
    converted = as_pandas(frame)
    assert list(converted["phase"].cat.categories) == ["early", "late", "mid"]
    formula = "Reaction ~ phase + (1 | Subject)"
    fit = pmv.lmm(formula, frame).fit()
    assert fit.labels("sd")[:3] == ["(Intercept)", "phaselate", "phasemid"]
    _same_fit(fit, pmv.lmm(formula, data.assign(Subject=data["Subject"].astype(str))).fit())


def test_column_types_and_nulls():
    frame = pl.DataFrame(
        {
            "x": [1, None, 3],
            "s": ["a", None, "b"],
            "b": [True, False, None],
            "c": pl.Series(["u", "v", None], dtype=pl.Categorical),
            "e": pl.Series(["lo", "hi", "lo"], dtype=pl.Enum(["lo", "mid", "hi"])),
            "f": [1.5, 2.5, 3.5],
        }
    )
    out = as_pandas(frame)
    assert np.isnan(out["x"].iloc[1]) and out["x"].iloc[2] == 3
    assert out["s"].isna().tolist() == [False, True, False]
    assert out["b"].isna().tolist() == [False, False, True]
    assert list(out["c"].cat.categories) == ["u", "v"] and out["c"].isna().tolist() == [False, False, True]
    assert list(out["e"].cat.categories) == ["lo", "mid", "hi"] and not out["e"].cat.ordered
    assert out["f"].dtype == np.float64


def test_missing_values_in_a_polars_frame_are_named(sleep_polars):
    frame = sleep_polars.with_columns(
        pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise(pl.col("Days")).alias("Days")
    )
    with pytest.raises(pmv.MixVcovError, match=r"column 'Days' has 1 missing or non-finite value\(s\) at rows \[4\]"):
        pmv.lmm(FORMULA, frame)


def test_glmm_and_fit_accept_polars(cbpp, cbpp_fit, sleep_polars, sleep_ml):
    frame = pl.DataFrame(
        {c: cbpp[c].astype(str if c in ("herd", "period") else float).to_numpy() for c in cbpp.columns}
    )
    frame = frame.with_columns(
        pl.col("herd").cast(pl.Enum([str(v) for v in cbpp["herd"].cat.categories])),
        pl.col("period").cast(pl.Enum([str(v) for v in cbpp["period"].cat.categories])),
    )
    fit = pmv.glmm("cbind(incidence, size - incidence) ~ period + (1 | herd)", frame, family="binomial").fit()
    assert fit.labels("sd") == cbpp_fit.labels("sd")
    np.testing.assert_allclose(fit.params("sd"), cbpp_fit.params("sd"), rtol=1e-8)
    # pmv.fit(model, data=polars): the columns name sandwich clusters
    handwritten = pmv.fit(pmv.lmm(FORMULA, sleep_polars).model, random=["u_Subject"], data=sleep_polars)
    assert isinstance(handwritten.data, pd.DataFrame)
    np.testing.assert_allclose(
        handwritten.sandwich(cluster="Subject").to_numpy(), sleep_ml.sandwich(cluster="Subject").to_numpy(), rtol=1e-8
    )


def test_what_is_not_a_frame_is_refused(sleepstudy):
    with pytest.raises(pmv.MixVcovError, match="data must be a data frame .* got dict .*pandas.DataFrame"):
        pmv.lmm(FORMULA, {"Reaction": [1.0]})
    with pytest.raises(pmv.MixVcovError, match="data must be a data frame .* got list"):
        pmv.lmm(FORMULA, [1, 2])
    with pytest.raises(pmv.MixVcovError, match="data must be a data frame"):
        pmv.lmm(FORMULA, object())
    model = pmv.lmm(FORMULA, sleepstudy).model
    with pytest.raises(pmv.MixVcovError, match="data must be a data frame"):
        pmv.fit(model, random=["u_Subject"], data=np.zeros((3, 2)))
