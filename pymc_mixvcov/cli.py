"""The ``pymc-mixvcov`` command.

``pymc-mixvcov fit FORMULA --data FILE [options]`` fits an lme4 formula to a CSV or Parquet
file, prints the fit as lme4's ``summary()`` prints it (followed by every parameter's standard
error and the full covariance matrix), and with ``--out`` writes the full result (estimates,
covariances on every scale, scores, the tidy table) as netCDF or JSON; ``--json`` prints that
JSON instead of the summary. ``pymc-mixvcov demo`` fits the bundled sleepstudy data.

Column types come from the file, as R's ``read.csv`` would make them: text columns are factors
(levels in sorted order), numbers are numeric, ``TRUE``/``FALSE`` are logical, empty cells and
``NA`` are missing (and refused, with the rows named). ``--factor COL`` makes a numeric column a
factor (R's ``factor(x)``: levels in numeric order). Parquet keeps its own types (dictionary or
``Enum`` columns are factors with their declared levels; see :mod:`pymc_mixvcov.model.frames`).

Errors in the input (the formula, the file, an option the model cannot take) end the command
with exit status 2 and one line on standard error, no traceback; warnings (a boundary fit, say)
are printed as one line each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: Exit status of errors in the command's input (argparse's own for bad options).
INPUT_ERROR = 2

_CSV = (".csv", ".txt", ".tsv", ".tab")
_PARQUET = (".parquet", ".pq")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
_PARQUET_EXTRA = (
    "reading Parquet needs polars or pyarrow, neither of which is installed: "
    "pip install 'pymc-mixvcov[polars]' (or 'pymc-mixvcov[parquet]' for pyarrow)"
)


class InputError(Exception):
    """An error in the command's input: reported as one line, exit status 2."""


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


# -- reading the data -------------------------------------------------------------------------------
def read_data(path: str, factors: list[str] | None = None):
    """The data file ``path`` (CSV, TSV or Parquet) as a pandas DataFrame, ``factors`` made factors.

    Raises
    ------
    InputError
        A missing or unreadable file, an unknown suffix, Parquet without polars or pyarrow, a
        ``--factor`` column that is not in the file.
    """
    import pandas as pd

    file = Path(path)
    if not file.exists():
        raise InputError(f"data file {path!r} does not exist")
    if file.is_dir():
        raise InputError(f"data file {path!r} is a directory, not a file")
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind in _CSV:
            data = pd.read_csv(file, sep="\t" if kind in (".tsv", ".tab") else ",")
        elif kind in _PARQUET:
            data = _read_parquet(file)
        else:
            raise InputError(
                f"cannot tell the format of data file {path!r} from its suffix; use .csv, .tsv or .txt "
                "(comma or tab separated, with a header row) or .parquet"
            )
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read data file {path!r}: {message}") from None
    if data.shape[1] == 0 or data.shape[0] == 0:
        raise InputError(f"data file {path!r} has no rows or no columns")
    for col in factors or []:
        if col not in data.columns:
            raise InputError(f"--factor {col!r} is not a column of {path!r}; columns: {list(map(str, data.columns))}")
        data[col] = data[col].astype("category")
    return data


def _read_parquet(file: Path):
    """A Parquet file through polars (preferred: keeps Enum and Categorical columns) or pyarrow."""
    from .model.frames import as_pandas

    try:
        import polars as pl
    except ImportError:
        pl = None
    if pl is not None:
        return as_pandas(pl.read_parquet(file))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(_PARQUET_EXTRA) from None
    return as_pandas(pq.read_table(file))


# -- the fit command ----------------------------------------------------------------------------------
def _cluster(value: str | None):
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InputError("--cluster needs one or more column names (comma-separated for multi-way clustering)")
    return parts[0] if len(parts) == 1 else parts


def _check_output(args) -> None:
    """Refuse a bad ``--out`` before the fit (which can take long)."""
    from .output.export import FORMATS

    if args.out is None:
        return
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise InputError(
            f"cannot tell the format of --out {args.out!r} from its suffix; use .nc (netCDF) or .json (JSON)"
        )
    if not out.parent.exists():
        raise InputError(f"the folder of --out {args.out!r} does not exist")


def _build(args, data):
    import pymc_mixvcov as pmv

    from .errors import MixVcovError

    try:
        if args.family == "gaussian":
            if args.link is not None:
                raise InputError("--link applies to --family binomial, poisson, negative_binomial or gamma")
            return pmv.lmm(args.formula, data)
        return pmv.glmm(args.formula, data, family=args.family, link=args.link)
    except (InputError, MixVcovError):
        raise
    except (ValueError, KeyError, TypeError, SyntaxError, IndexError, AttributeError) as exc:
        # the formula front end reports what it recognises; anything else in building the model
        # from the user's formula and data is still an error in that input
        raise InputError(f"cannot build the model {args.formula!r} from {args.data!r}: {exc}") from None


def fit_command(args) -> int:
    """``pymc-mixvcov fit``: read, fit, print the summary, write the result."""
    import json
    import warnings

    from .errors import MixVcovError

    _check_output(args)
    cluster = _cluster(args.cluster)
    data = read_data(args.data, args.factor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")
        try:
            model = _build(args, data)
            fit = model.fit(method=args.method, nAGQ=args.nagq, progress=False if args.no_progress else None)
            fit.data_name = Path(args.data).name
            summary = fit.summary(
                vcov=args.vcov,
                scale=args.scale,
                level=args.level,
                information=args.information,
                cluster=cluster,
                ddf=args.ddf,
            )
            text = str(summary)
            tree = None
            if args.out is not None or args.json:
                from .output.export import result_tree, tree_to_json, write

                tree = result_tree(
                    fit,
                    scale=args.scale,
                    vcov=args.vcov,
                    conf_level=args.level,
                    ddf=args.ddf,
                    information=args.information,
                    cluster=cluster,
                )
                if args.out is not None:
                    write(tree, args.out)
        except MixVcovError as exc:
            raise InputError(str(exc)) from None
    for w in caught:
        message = " ".join(str(w.message).split())
        print(f"pymc-mixvcov: warning ({w.category.__name__}): {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(tree_to_json(tree), indent=1, allow_nan=False))
    else:
        print(text)
        if args.out is not None:
            print(f"\nwritten: {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from .model.formula import FAMILIES

    parser = argparse.ArgumentParser(
        prog="pymc-mixvcov",
        description="Frequentist covariances of fixed effects and variance components for PyMC mixed models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="fit sleepstudy by ML and print the full covariance matrix")
    f = sub.add_parser(
        "fit",
        help="fit an lme4 formula to a CSV or Parquet file",
        description=(
            "Fit an lme4 formula to a data file; print the fit as lme4's summary() does, then every "
            "parameter's standard error and the full covariance matrix; optionally write the full result."
        ),
        epilog=(
            'example: pymc-mixvcov fit "Reaction ~ Days + (Days | Subject)" --data sleepstudy.csv --vcov CR1 '
            "--out fit.nc. Text columns are factors (sorted levels), as R's read.csv and lme4 make them."
        ),
    )
    f.add_argument("formula", help='lme4 formula, e.g. "Reaction ~ Days + (Days | Subject)" (quote it)')
    f.add_argument("--data", required=True, metavar="FILE", help="CSV (.csv, .tsv, .txt; may be .gz) or Parquet")
    f.add_argument(
        "--family",
        default="gaussian",
        choices=("gaussian", *FAMILIES),
        help="likelihood (default gaussian: a linear mixed model, lme4's lmer; others as glmer)",
    )
    f.add_argument("--link", default=None, choices=("logit", "probit", "cloglog", "log", "identity"))
    f.add_argument("--method", default="ML", choices=("ML", "REML"), help="default ML")
    f.add_argument("--nagq", type=int, default=1, metavar="N", help="quadrature points per random effect (GLMMs)")
    f.add_argument("--scale", default="sd", choices=("sd", "var", "cholesky", "natural", "unconstrained"))
    f.add_argument(
        "--vcov",
        default="model",
        choices=("model", "CR0", "CR1", "CR3"),
        help="covariance of the summary: model-based (default) or a cluster-robust sandwich (ML fits)",
    )
    f.add_argument(
        "--cluster", default=None, metavar="COL[,COL]", help="clusters of the sandwiches (several: multi-way)"
    )
    f.add_argument("--ddf", default=None, choices=("satterthwaite", "kenward-roger"), help="t tests of fixed effects")
    f.add_argument("--information", default="observed", choices=("observed", "expected"))
    f.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    f.add_argument(
        "--factor", action="append", default=[], metavar="COL", help="treat a numeric column as a factor (repeatable)"
    )
    f.add_argument("--out", default=None, metavar="PATH", help="write the full result: .nc (netCDF) or .json")
    f.add_argument("--json", action="store_true", help="print the full result as JSON instead of the summary")
    f.add_argument("--no-progress", action="store_true", help="never show a status line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command.

    Called as the ``pymc-mixvcov`` command (``argv`` is ``None``: the arguments are read from
    ``sys.argv``), it also registers the exit hook of :mod:`pymc_mixvcov._exit` for its own
    process, which skips CPython's last collector passes at shutdown; called with an argument
    list from Python code, it changes nothing about how that process exits.

    Returns the exit status: 0, or 2 for an error in the input (reported on standard error).
    """
    if argv is None:
        from . import _exit

        _exit.install()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    try:
        return fit_command(args)
    except InputError as exc:
        message = " ".join(str(exc).split())
        print(f"pymc-mixvcov: error: {message}", file=sys.stderr)
        return INPUT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
