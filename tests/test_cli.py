"""The command line (pymc_mixvcov/cli.py): a formula and a data file in, the lme4-style summary
out, the full result written as netCDF or JSON and read back equal to the in-process fit; input
errors end with exit status 2 and one line.

The command and the in-process fit run the same computation on the same data, so what is read
back is compared with rtol 1e-10 (netCDF and JSON store float64 exactly; JSON's decimal
representation round-trips)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pymc_mixvcov.cli import main
from pymc_mixvcov.output.summary import layout_text

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep_csv(tmp_path_factory, sleepstudy):
    """sleepstudy as R's write.csv writes it: Subject as numbers (a factor only in the formula's bar)."""
    path = tmp_path_factory.mktemp("cli") / "sleepstudy.csv"
    sleepstudy.assign(Subject=sleepstudy["Subject"].astype(int)).to_csv(path, index=False)
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_prints_the_summary_and_writes_netcdf(sleep_csv, sleep_ml, tmp_path, capsys):
    out = tmp_path / "fit.nc"
    code, stdout, stderr = _run(["fit", FORMULA, "--data", sleep_csv, "--out", out], capsys)
    assert code == 0, stderr
    assert stdout.startswith(
        "Linear mixed model fit by maximum likelihood\nFormula: " + FORMULA + "\n   Data: sleepstudy.csv"
    )
    assert layout_text(sleep_ml.summary().layout).split("\n", 3)[3] in stdout  # all but the header lines
    tree = xr.open_datatree(out)
    for scale in ("sd", "var", "cholesky", "natural", "unconstrained"):
        est = tree["estimates"][scale]
        assert list(est[f"param_{scale}"].values) == sleep_ml.labels(scale)
        np.testing.assert_allclose(est.values, sleep_ml.params(scale), rtol=1e-10)
        group = tree[f"vcov_{scale}"]
        np.testing.assert_allclose(group["observed"].values, sleep_ml.vcov(scale), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(group["expected"].values, sleep_ml.vcov(scale, "expected"), rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(group["CR1"].values, sleep_ml.sandwich(scale, adjust="CR1"), rtol=1e-8, atol=1e-12)
    scores = tree["scores"]["scores_var"]
    np.testing.assert_allclose(scores.values, sleep_ml.scores(), rtol=1e-8, atol=1e-10)
    assert list(scores["Subject"].values) == [str(v) for v in sleep_ml.scores().index]
    summary = tree["summary"]
    tidy = sleep_ml.tidy()
    assert list(summary["term"].values) == list(tidy["term"])
    np.testing.assert_allclose(summary["std_error"].values, tidy["std_error"], rtol=1e-10)
    assert list(summary["effect"].values) == list(tidy["effect"])
    assert tree.attrs["formula"] == FORMULA and tree.attrs["data"] == "sleepstudy.csv"
    np.testing.assert_allclose(tree.attrs["aic"], sleep_ml.aic, rtol=1e-10)
    np.testing.assert_allclose(tree["random_effects"]["vcov"].values[:3], sleep_ml.params("var").iloc[2:5], rtol=1e-10)
    tree.close()


def test_json_to_stdout_and_to_a_file(sleep_csv, sleep_ml, tmp_path, capsys):
    code, stdout, _ = _run(["fit", FORMULA, "--data", sleep_csv, "--json", "--vcov", "CR1"], capsys)
    assert code == 0
    result = json.loads(stdout)  # only the JSON on standard output
    groups = result["groups"]
    sd = groups["estimates"]["data_vars"]["sd"]["data"]
    np.testing.assert_allclose(sd, sleep_ml.params("sd"), rtol=1e-10)
    np.testing.assert_allclose(
        groups["vcov_var"]["data_vars"]["CR3"]["data"], sleep_ml.sandwich("var", adjust="CR3"), rtol=1e-8
    )
    assert groups["vcov_sd"]["coords"]["param_sd"]["data"] == sleep_ml.labels("sd")
    rows = groups["summary"]["data_vars"]
    np.testing.assert_allclose(rows["std_error"]["data"], sleep_ml.tidy(vcov="CR1")["std_error"], rtol=1e-10)
    assert rows["p_value"]["data"][2:] == [None] * 4  # NaN is null: ran_pars have no p-value
    assert groups["summary"]["attrs"]["vcov"] == "CR1"
    path = tmp_path / "fit.json"
    code, stdout, _ = _run(["fit", FORMULA, "--data", sleep_csv, "--out", path], capsys)
    assert code == 0 and "written:" in stdout
    assert json.loads(path.read_text())["attrs"]["formula"] == FORMULA


def test_parquet_reml_with_satterthwaite(sleepstudy, sleep_reml, tmp_path, capsys):
    pl = pytest.importorskip("polars")
    path = tmp_path / "sleep.parquet"
    pl.DataFrame(
        {
            "Reaction": sleepstudy["Reaction"].to_numpy(),
            "Days": sleepstudy["Days"].to_numpy(),
            "Subject": sleepstudy["Subject"].astype(str).to_numpy(),
        }
    ).with_columns(pl.col("Subject").cast(pl.Categorical)).write_parquet(path)
    code, stdout, stderr = _run(
        ["fit", FORMULA, "--data", path, "--method", "REML", "--ddf", "satterthwaite", "--scale", "var"], capsys
    )
    assert code == 0, stderr
    assert "REML criterion at convergence: 1743.6" in stdout
    assert "Estimate Std. Error     df t value Pr(>|t|)" in stdout
    want = layout_text(sleep_reml.summary(scale="var", ddf="satterthwaite").layout)
    assert want.split("\n", 3)[3] in stdout


def test_glmm_with_factor_columns(cbpp, cbpp_fit, tmp_path, capsys):
    """cbpp as a CSV file holds herd and period as numbers: --factor makes them factors (R's factor())."""
    path = tmp_path / "cbpp.csv"
    cbpp.assign(herd=cbpp["herd"].astype(int), period=cbpp["period"].astype(int)).to_csv(path, index=False)
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    out = tmp_path / "cbpp.nc"
    argv = ["fit", formula, "--data", path, "--family", "binomial", "--factor", "period", "--factor", "herd"]
    code, stdout, stderr = _run([*argv, "--out", out], capsys)
    assert code == 0, stderr
    assert " Family: binomial  ( logit )" in stdout and "period4" in stdout
    tree = xr.open_datatree(out)
    assert list(tree["estimates"]["param_sd"].values) == cbpp_fit.labels("sd")
    np.testing.assert_allclose(tree["estimates"]["sd"].values, cbpp_fit.params("sd"), rtol=1e-8)
    np.testing.assert_allclose(tree["vcov_sd"]["observed"].values, cbpp_fit.vcov("sd"), rtol=1e-6, atol=1e-12)
    assert "unavailable_expected" in tree["vcov_sd"].attrs  # no expected information for GLMMs: said, not faked
    tree.close()
    # without --factor, period is a number: one slope, as in R
    code, stdout, _ = _run(argv[:6], capsys)
    assert code == 0 and "period2" not in stdout and "period " in stdout


def _error(argv, capsys) -> str:
    code, stdout, stderr = _run(argv, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pymc-mixvcov: error: "), stderr
    return lines[0]


def test_bad_input_gives_one_line_and_status_2(sleep_csv, tmp_path, capsys):
    assert "does not exist" in _error(["fit", FORMULA, "--data", tmp_path / "none.csv"], capsys)
    assert "follows a complete formula" in _error(
        ["fit", "Reaction ~ Days Subject + (1 | Subject)", "--data", sleep_csv], capsys
    )
    assert "cannot parse formula" in _error(["fit", "Reaction ~ Days + (Days | Subject", "--data", sleep_csv], capsys)
    assert "has no response" in _error(["fit", "Days + (1 | Subject)", "--data", sleep_csv], capsys)
    assert "not in the data" in _error(["fit", "Reaction ~ Dayz + (1 | Subject)", "--data", sleep_csv], capsys)
    assert "cannot tell the format of --out" in _error(
        ["fit", FORMULA, "--data", sleep_csv, "--out", tmp_path / "x.txt"], capsys
    )
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    assert "cannot tell the format of data file" in _error(["fit", FORMULA, "--data", bad], capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "cannot read data file" in _error(["fit", FORMULA, "--data", empty], capsys)
    assert "--factor 'Sbj' is not a column" in _error(["fit", FORMULA, "--data", sleep_csv, "--factor", "Sbj"], capsys)
    assert "--link applies to" in _error(["fit", FORMULA, "--data", sleep_csv, "--link", "log"], capsys)
    assert "nAGQ=5" in _error(["fit", FORMULA, "--data", sleep_csv, "--nagq", "5"], capsys)
    assert "REML" in _error(["fit", FORMULA, "--data", sleep_csv, "--method", "REML", "--vcov", "CR1"], capsys)
    holes = tmp_path / "holes.csv"
    pd.read_csv(sleep_csv).assign(Days=lambda d: d["Days"].where(d.index != 3)).to_csv(holes, index=False)
    assert "column 'Days' has 1 missing" in _error(["fit", FORMULA, "--data", holes], capsys)
    with pytest.raises(SystemExit) as err:  # argparse's own errors: status 2 too
        main(["fit", FORMULA, "--data", str(sleep_csv), "--vcov", "HC9"])
    assert err.value.code == 2


def test_parquet_without_polars_or_pyarrow_names_the_extras(sleep_csv, tmp_path, monkeypatch, capsys):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "polars", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    line = _error(["fit", FORMULA, "--data", path], capsys)
    assert "pymc-mixvcov[polars]" in line and "pymc-mixvcov[parquet]" in line


def test_warnings_are_one_line_each(sleepstudy, tmp_path, capsys):
    """A boundary fit: the SingularFitWarning is printed as one line on standard error."""
    rng = np.random.default_rng(1)
    data = pd.DataFrame({"y": rng.normal(size=60), "x": rng.normal(size=60), "g": np.repeat(np.arange(6), 10)})
    path = tmp_path / "flat.csv"
    data.to_csv(path, index=False)
    code, stdout, stderr = _run(["fit", "y ~ x + (1 | g)", "--data", path], capsys)
    assert code == 0
    warned = [line for line in stderr.splitlines() if line.startswith("pymc-mixvcov: warning (SingularFitWarning)")]
    assert len(warned) == 1 and "boundary (singular) fit" in warned[0]
    assert "boundary (singular) fit" in stdout  # the summary says so too


def test_the_installed_command_reports_errors_without_traceback(tmp_path):
    """The real process: exit status 2, one line on standard error, nothing on standard output."""
    env = {**os.environ, "PYMC_MIXVCOV_PROGRESS": "0"}
    script = "import sys; from pymc_mixvcov.cli import main; sys.argv[0] = 'pymc-mixvcov'; sys.exit(main())"
    out = subprocess.run(
        [sys.executable, "-c", script, "fit", FORMULA, "--data", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"pymc-mixvcov: error: data file '{tmp_path / 'missing.csv'}' does not exist"
    ]


def test_demo_still_runs(capsys):
    assert main(["demo"]) == 0
    assert "Full covariance matrix" in capsys.readouterr().out


def test_read_data_column_types(tmp_path):
    """Text columns stay text (factors with sorted levels in the formula), numbers numeric,
    TRUE/FALSE logical, NA missing: R's read.csv."""
    from pymc_mixvcov.cli import read_data

    path = tmp_path / "types.tsv"
    path.write_text("a\tb\tc\td\nx\t1\tTRUE\t2.5\ny\t2\tFALSE\tNA\n")
    data = read_data(str(path), ["b"])
    assert pd.api.types.is_string_dtype(data["a"]) and isinstance(data["b"].dtype, pd.CategoricalDtype)
    assert data["c"].dtype == bool and np.isnan(data["d"].iloc[1])
