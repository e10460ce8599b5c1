"""Simulation: convergence and Wald coverage in the survival frailty model.

The model of ``examples/frailty_survival.py``: exponential survival times with
``lambda_i = lambda_0 exp(b_j + (beta_X + a_j) X_i + beta_Z Z_i)``, independent frailties
``b_j ~ N(0, 0.5^2)`` on the intercept and ``a_j ~ N(0, 0.3^2)`` on the slope of the binary
``X``, ``lambda_0 = 0.5``, ``beta_X = 0.4``, ``beta_Z = -0.3``, censoring at time 2 (about 70%
events); 100 clusters of 20. Each replicate is fitted as the Poisson GLMM
``event ~ X + Z + offset(log(time)) + (1 | cluster) + (0 + X | cluster)`` (Laplace, ML) and
records convergence, the warnings raised, the estimates, the model-based standard errors
(inverse observed information) and the CR1 cluster-robust ones.

A replicate *succeeds* when the fit converged and either its information is positive definite
(every model-based SE finite) or a :class:`pymc_mixvcov.SingularFitWarning` names each
parameter whose SE is missing (a boundary fit). Coverage is that of the 95% Wald intervals
``estimate +- 1.96 SE`` of the fixed effects (the SDs' intervals, on the log scale as
:meth:`pymc_mixvcov.MixedFit.summary` forms them, are reported too), with its Monte Carlo
standard error ``sqrt(p (1 - p) / R)``.

Run from the repository root::

    python benchmarks/frailty_simulation.py --reps 200 --seed 2026 \\
        --csv benchmarks/results/frailty_simulation.csv

``--from-csv FILE`` prints the figures of a saved study without running it. Replicate ``r``
simulates from seed ``SeedSequence(seed).generate_state(reps)[r]``, so the figures depend on
``--seed`` and ``--reps`` only. The exit status is 0 when the convergence
rate is at least 0.99 and every fixed effect's coverage (model-based and CR1) lies within
[0.92, 0.98], 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]

#: The seed of the reported run (benchmarks/README.md) and of the slow test.
DEFAULT_SEED = 2026
#: Replicates, clusters and cluster size of the reported run.
DEFAULT_REPS, N_CLUSTERS, CLUSTER_SIZE = 200, 100, 20
#: Targets: share of successful replicates, and the band for the coverage of 95% intervals.
MIN_CONVERGENCE, COVERAGE_BAND = 0.99, (0.92, 0.98)
LEVEL = 0.95
SE_KINDS = ("model", "CR1")


def load_example() -> ModuleType:
    """The module ``examples/frailty_survival.py`` (``simulate``, ``poisson_fit``, ``TRUTH``)."""
    spec = importlib.util.spec_from_file_location("frailty_survival", ROOT / "examples" / "frailty_survival.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def replicate_seeds(seed: int, reps: int) -> np.ndarray:
    """One independent 64-bit seed per replicate, from ``numpy.random.SeedSequence(seed)``."""
    return np.random.SeedSequence(seed).generate_state(reps, dtype=np.uint64)


def run_replicate(example: ModuleType, seed: int) -> dict[str, object]:
    """Simulate one data set, fit it and record the outcome.

    Parameters
    ----------
    example : module
        :func:`load_example`'s module.
    seed : int
        Seed of ``example.simulate``.

    Returns
    -------
    dict
        ``seed``, ``events`` (share of observed events), ``error`` (message of an exception,
        else empty), ``converged``, ``pd_information`` (Cholesky factorisation of the observed
        information succeeds and every model-based SE is finite), ``boundary_named`` (a
        ``SingularFitWarning`` names every parameter whose model-based SE is missing, and was
        raised), ``warnings`` (the pymc_mixvcov warnings, ``Category: message`` joined by
        ``" | "``), ``seconds`` (fit and standard errors), and for every ``"sd"``-scale
        parameter ``est:<label>``, ``se_model:<label>`` and ``se_CR1:<label>``.
    """
    import pymc_mixvcov as pmv

    df = example.simulate(n_clusters=N_CLUSTERS, size=CLUSTER_SIZE, seed=int(seed))
    row: dict[str, object] = {"seed": int(seed), "events": float(df["event"].mean()), "error": ""}
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = example.poisson_fit(df)
            labels = fit.labels("sd")
            est = fit.params("sd").to_numpy()
            se_model = fit.se("sd").to_numpy()
            se_cr1 = np.sqrt(np.diag(fit.sandwich("sd", adjust="CR1").to_numpy()))
            info = fit.information("observed").to_numpy()
        except Exception as exc:  # a failed replicate is a result, not a crash of the study
            row["error"] = f"{type(exc).__name__}: {exc}"
            fit = None
    row["seconds"] = time.perf_counter() - t
    ours = [w for w in caught if issubclass(w.category, pmv.MixVcovWarning)]
    row["warnings"] = " | ".join(f"{w.category.__name__}: {w.message}" for w in ours)
    if fit is None:
        row.update(converged=False, pd_information=False, boundary_named=False)
        return row
    try:
        np.linalg.cholesky(info)
        chol_ok = True
    except np.linalg.LinAlgError:
        chol_ok = False
    missing = [lab for lab, s in zip(labels, se_model, strict=True) if not np.isfinite(s)]
    singular = [str(w.message) for w in ours if issubclass(w.category, pmv.SingularFitWarning)]
    row["converged"] = fit.converged
    row["pd_information"] = chol_ok and not missing
    row["boundary_named"] = bool(singular) and all(any(lab in m for m in singular) for lab in missing)
    for lab, e, s, r in zip(labels, est, se_model, se_cr1, strict=True):
        row[f"est:{lab}"], row[f"se_model:{lab}"], row[f"se_CR1:{lab}"] = float(e), float(s), float(r)
    return row


def run_study(reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED, progress: bool = False) -> pd.DataFrame:
    """Run ``reps`` replicates; one row per replicate (see :func:`run_replicate`)."""
    example = load_example()
    rows = []
    for r, s in enumerate(replicate_seeds(seed, reps)):
        rows.append({"rep": r, **run_replicate(example, int(s))})
        if progress and (r + 1) % 10 == 0:
            print(f"  {r + 1}/{reps} replicates", file=sys.stderr, flush=True)
    out = pd.DataFrame(rows)
    out["success"] = (out["error"] == "") & out["converged"] & (out["pd_information"] | out["boundary_named"])
    return out


@dataclass(frozen=True)
class StudySummary:
    """The figures of a study.

    Attributes
    ----------
    reps : int
        Replicates run.
    convergence_rate : float
        Share of successful replicates (converged, with a positive definite information or a
        warning naming the boundary parameter).
    counts : dict
        Replicates that raised an error (``errors``), did not converge (``not converged``), have a
        positive definite information (``positive definite``), a warning naming the boundary
        parameter (``boundary named``; such fits may also have a positive definite information),
        ``neither``, and any pymc_mixvcov warning (``warned``).
    table : pandas.DataFrame
        One row per ``"sd"``-scale parameter: ``truth``, ``mean estimate``, ``bias``,
        ``empirical SD``, ``mean SE model``, ``mean SE CR1``, ``coverage model``, ``MC SE model``,
        ``coverage CR1``, ``MC SE CR1`` and ``n`` (successful replicates with finite SEs).
    fixed : list of str
        Labels of the fixed effects (the rows with a coverage target).
    seconds : numpy.ndarray
        Time of each replicate's fit and standard errors.
    """

    reps: int
    convergence_rate: float
    counts: dict[str, int]
    table: pd.DataFrame
    fixed: list[str]
    seconds: np.ndarray


def wald_covers(est: np.ndarray, se: np.ndarray, truth: float, positive: bool) -> np.ndarray:
    """Whether the ``LEVEL`` Wald interval covers ``truth``; on the log scale for a positive parameter.

    The log-scale interval ``est * exp(+-q se / est)`` is the one
    :meth:`pymc_mixvcov.MixedFit.summary` reports for SDs.
    """
    q = norm.ppf(0.5 + LEVEL / 2)
    if positive:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (est > 0) & (np.abs(np.log(truth / est)) <= q * se / est)
    return np.abs(est - truth) <= q * se


def summarise(results: pd.DataFrame, truth: dict[str, float]) -> StudySummary:
    """Convergence rate, bias, SEs against the empirical SD, and coverage per parameter.

    Parameters
    ----------
    results : pandas.DataFrame
        :func:`run_study`'s output.
    truth : dict
        True values by ``"sd"``-scale label (``examples/frailty_survival.py``'s ``TRUTH``).

    Returns
    -------
    StudySummary
    """
    ok = results[results["success"]]
    fixed = [lab for lab in truth if not lab.startswith("sd_")]
    rows = {}
    for lab, true in truth.items():
        est = ok[f"est:{lab}"].to_numpy(float)
        se = {k: ok[f"se_{k}:{lab}"].to_numpy(float) for k in SE_KINDS}
        finite = np.isfinite(est) & np.isfinite(se["model"]) & np.isfinite(se["CR1"])
        n = int(finite.sum())
        row = {
            "truth": true,
            "mean estimate": est[finite].mean(),
            "bias": est[finite].mean() - true,
            "empirical SD": est[finite].std(ddof=1),
        }
        for k in SE_KINDS:
            row[f"mean SE {k}"] = se[k][finite].mean()
        for k in SE_KINDS:
            p = wald_covers(est[finite], se[k][finite], true, positive=lab.startswith("sd_")).mean()
            row[f"coverage {k}"] = p
            row[f"MC SE {k}"] = np.sqrt(p * (1 - p) / n)
        row["n"] = n
        rows[lab] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    fitted = results["error"] == ""
    counts = {
        "errors": int((~fitted).sum()),
        "not converged": int((fitted & ~results["converged"]).sum()),
        "positive definite": int((fitted & results["pd_information"]).sum()),
        "boundary named": int(results["boundary_named"].sum()),
        "neither": int((fitted & ~results["pd_information"] & ~results["boundary_named"]).sum()),
        "warned": int((results["warnings"] != "").sum()),
    }
    return StudySummary(
        reps=len(results),
        convergence_rate=float(results["success"].mean()),
        counts=counts,
        table=table,
        fixed=fixed,
        seconds=results["seconds"].to_numpy(float),
    )


def meets_targets(summary: StudySummary) -> bool:
    """Convergence rate ``>= MIN_CONVERGENCE`` and every fixed-effect coverage within ``COVERAGE_BAND``."""
    lo, hi = COVERAGE_BAND
    cov = summary.table.loc[summary.fixed, [f"coverage {k}" for k in SE_KINDS]].to_numpy()
    return summary.convergence_rate >= MIN_CONVERGENCE and bool(np.all((cov >= lo) & (cov <= hi)))


def read_results(path: Path) -> pd.DataFrame:
    """A study written by ``--csv``, as :func:`run_study` returned it."""
    results = pd.read_csv(path, keep_default_na=False, dtype={"seed": np.uint64})
    for col in ("converged", "pd_information", "boundary_named", "success"):
        results[col] = results[col].astype(str).eq("True")
    for col in results.columns:
        if col.startswith(("est:", "se_")):
            results[col] = pd.to_numeric(results[col].replace("", np.nan))
    return results


def report(summary: StudySummary, results: pd.DataFrame, seed: int | None, wall: float | None) -> None:
    """Print the study's figures (``wall``: the study's time, when it was run in this process)."""
    t = summary.table
    print(
        f"frailty simulation: {summary.reps} replicates of {N_CLUSTERS} clusters x {CLUSTER_SIZE}"
        f"{'' if seed is None else f', seed {seed}'}; "
        f"events observed: {results['events'].mean():.1%} on average"
    )
    print(
        f"success (converged, positive definite information or named boundary): "
        f"{summary.convergence_rate:.1%} (target >= {MIN_CONVERGENCE:.0%}); {summary.counts}"
    )
    lo, hi = COVERAGE_BAND
    print(f"\ncoverage of {LEVEL:.0%} Wald intervals (MC SE); target for the fixed effects [{lo}, {hi}]:")
    cov = pd.DataFrame(
        {k: [f"{p:.3f} ({s:.3f})" for p, s in zip(t[f"coverage {k}"], t[f"MC SE {k}"], strict=True)] for k in SE_KINDS},
        index=t.index,
    )
    cov["n"] = t["n"]
    print(cov.to_string())
    print("\nestimates (successful replicates):")
    cols = ["truth", "mean estimate", "bias", "empirical SD", "mean SE model", "mean SE CR1"]
    print(t[cols].to_string(float_format=lambda v: f"{v:.4f}"))
    sec = summary.seconds
    print(
        f"\ntime per replicate (fit, SEs, CR1): mean {sec.mean():.2f} s, median {np.median(sec):.2f} s, "
        f"max {sec.max():.2f} s; total {sec.sum():.0f} s"
        + ("" if wall is None else f"; whole study {wall:.0f} s (with simulation)")
    )
    for w in results.loc[results["warnings"] != "", ["rep", "warnings"]].itertuples(index=False):
        print(f"replicate {w.rep}: {w.warnings[:300]}")
    for w in results.loc[results["error"] != "", ["rep", "error"]].itertuples(index=False):
        print(f"replicate {w.rep} failed: {w.error[:300]}")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the study, print its figures, optionally write the replicates to CSV."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="replicates (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the study (default %(default)s)")
    parser.add_argument("--csv", type=Path, default=None, help="write one row per replicate to this file")
    parser.add_argument(
        "--from-csv", type=Path, default=None, help="summarise a study written by --csv instead of running one"
    )
    args = parser.parse_args(argv)
    if args.from_csv is not None:
        results = read_results(args.from_csv)
        summary = summarise(results, load_example().TRUTH)
        report(summary, results, None, None)
        return 0 if meets_targets(summary) else 1
    warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
    t0 = time.perf_counter()
    results = run_study(args.reps, args.seed, progress=True)
    wall = time.perf_counter() - t0
    summary = summarise(results, load_example().TRUTH)
    report(summary, results, args.seed, wall)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.csv, index=False, float_format="%.10g")
    return 0 if meets_targets(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
