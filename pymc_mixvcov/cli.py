"""The ``pymc-mixvcov`` command."""

from __future__ import annotations

import argparse
import sys


def demo() -> int:
    """Fit sleepstudy by ML; print the full covariance matrix and model-based and CR1 standard errors."""
    import warnings

    import numpy as np
    import pandas as pd

    import pymc_mixvcov as pmv

    warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
    data = pmv.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    fit = pmv.lmm(formula, data).fit(method="ML")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 6):
        print(f"lmer-style fit: {formula}  (ML, sleepstudy, n = {fit.nobs}, {fit.n_clusters} subjects)")
        print(f"log-likelihood: {fit.loglik:.4f}   converged: {fit.converged}\n")
        print("Full covariance matrix (inverse observed information, variance scale):")
        print(fit.vcov(scale="var", information="observed").to_string(), "\n")
        robust = fit.sandwich(scale="sd", information="observed", adjust="CR1")
        table = pd.DataFrame(
            {
                "estimate": fit.params("sd"),
                "se (model)": fit.se("sd"),
                "se (CR1 sandwich)": pd.Series(np.sqrt(np.diag(robust.to_numpy())), index=robust.index),
            }
        )
        print("Estimates and standard errors, SD scale (sd, correlation, sigma):")
        print("  model: inverse observed information; CR1: cluster-robust by Subject, G/(G-1) adjusted")
        print(table.to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command.

    Called as the ``pymc-mixvcov`` command (``argv`` is ``None``: the arguments are read from
    ``sys.argv``), it also registers the exit hook of :mod:`pymc_mixvcov._exit` for its own
    process, which skips CPython's last collector passes at shutdown; called with an argument
    list from Python code, it changes nothing about how that process exits.
    """
    if argv is None:
        from . import _exit

        _exit.install()
    parser = argparse.ArgumentParser(
        prog="pymc-mixvcov",
        description="Frequentist covariances of fixed effects and variance components for PyMC mixed models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit sleepstudy by ML and print the full covariance matrix")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
