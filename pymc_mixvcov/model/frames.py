"""Data frames of any library the front ends accept, as the pandas frame the package works on.

A pandas ``DataFrame`` is used as it is. Any other eager or lazy data frame that `narwhals
<https://narwhals-dev.github.io/narwhals/>`_ understands (polars, pyarrow tables, modin, cuDF,
DuckDB or Ibis relations, ...) is collected and converted column by column through NumPy, so
that no further library (such as pyarrow for polars' own ``to_pandas``) is needed and the level
order of every factor is decided here, once, as R would decide it:

* ``Enum`` columns: a factor whose levels are the declared categories, in their declared
  order (the first is the baseline of treatment contrasts; unused levels are dropped later, as
  lme4's ``model.frame`` drops them). An ``Enum`` is an unordered factor: R's ``factor(x,
  levels = ...)``, with treatment contrasts. For polynomial contrasts, pass a pandas ordered
  categorical.
* ``Categorical`` columns: a factor whose levels are the values present, in the order the
  library sorts the column. polars 2 sorts a ``Categorical`` by its strings (lexically), as R's
  ``factor()`` sorts (checked with polars 2.1, ``tests/test_polars.py``); older polars releases
  sorted by the physical encoding (order of first appearance) unless the column was made with
  ``ordering="lexical"``, and that order is then the level order.
* ``String`` columns: strings, which the formula front end makes factors with sorted levels
  (R's ``factor()``), exactly as for a pandas string column.
* ``Boolean``: logical columns (R's ``TRUE``/``FALSE``); numeric columns: NumPy floats or
  integers. Missing values (nulls) become ``NaN``/``None``, which the front ends report by
  column and row.

``narwhals`` is imported only when a frame that is not pandas arrives.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import MixVcovError

__all__ = ["as_pandas"]

_EXTRA = "pip install 'pymc-mixvcov[polars]' (or pip install narwhals)"


def _narwhals():
    try:
        import narwhals as nw
    except ImportError:  # pragma: no cover - narwhals is a core dependency
        raise MixVcovError(
            f"data frames other than pandas are read through narwhals, which is not installed: {_EXTRA}"
        ) from None
    return nw


def as_pandas(data, *, argument: str = "data") -> pd.DataFrame:
    """``data`` as a pandas ``DataFrame`` (see the module docstring for the column types).

    Parameters
    ----------
    data : pandas.DataFrame, or any data frame narwhals supports (polars, pyarrow, ...)
        A lazy frame (polars ``LazyFrame``, DuckDB relation, ...) is collected first.
    argument : str
        The argument's name, for messages.

    Returns
    -------
    pandas.DataFrame
        ``data`` itself if it is a pandas frame; else a new frame with a 0-based index.

    Raises
    ------
    MixVcovError
        ``data`` is not a data frame (a dict gets the hint to build one).
    """
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict | list | tuple | np.ndarray | pd.Series) or data is None:
        hint = " (build one with pandas.DataFrame(data) or polars.DataFrame(data))" if isinstance(data, dict) else ""
        raise MixVcovError(f"{argument} must be a data frame (pandas, polars, ...), got {type(data).__name__}{hint}")
    nw = _narwhals()
    try:
        frame = nw.from_native(data, eager_only=False, series_only=False, pass_through=False)
    except TypeError:
        raise MixVcovError(
            f"{argument} must be a data frame (pandas, polars, or another library narwhals supports), got "
            f"{type(data).__module__}.{type(data).__name__}"
        ) from None
    if isinstance(frame, nw.LazyFrame):
        frame = frame.collect()
    return pd.DataFrame({name: _column(nw, frame[name]) for name in frame.columns})


def _column(nw, s):
    """One narwhals column as a pandas-ready array or Categorical (see the module docstring)."""
    dtype = s.dtype
    if isinstance(dtype, nw.Enum):
        levels = [str(v) for v in dtype.categories]
        return pd.Categorical(s.cast(nw.String()).to_list(), categories=levels)
    if dtype == nw.Categorical:
        levels = s.drop_nulls().unique().sort().cast(nw.String()).to_list()
        return pd.Categorical(s.cast(nw.String()).to_list(), categories=levels)
    if dtype == nw.String:
        return np.array(s.to_list(), dtype=object)
    if dtype == nw.Boolean:
        values = s.to_list()
        return np.array(values, dtype=bool) if None not in values else np.array(values, dtype=object)
    return s.to_numpy()
