"""Prior weights, as lme4's ``weights =``: Gaussian precision weights and binomial trials.

**Gaussian models** (``lmer(..., weights = w)``): observation ``i`` has residual variance
``sigma^2 / w_i``,

.. math::

    y = X\\beta + Zu + e, \\qquad u \\sim N(0, \\Lambda\\Lambda^T), \\qquad
    e \\sim N(0, \\sigma^2 W^{-1}), \\quad W = \\mathrm{diag}(w_i),\\ w_i > 0.

In a ``pm.Model`` the likelihood reads ``pm.Normal("y", mu, sigma / pt.sqrt(w), observed=y)``
(or ``sigma * c`` with ``c_i = w_i^{-1/2}``): the residual SD is a scalar expression of the
parameters times (or divided by) a vector of data. :func:`split_residual_sd` reads ``sigma`` and
``w`` off that graph. Scaling every row of the model by ``sqrt(w_i)`` (``y* = W^{1/2} y``,
``X* = W^{1/2} X``, ``Z* = W^{1/2} Z``) gives an unweighted model with the same parameters,
``y* ~ N(X* beta, Z* G Z*^T + sigma^2 I)``, and since the map has Jacobian ``|W^{1/2}|``,

.. math::

    \\ell_W(\\beta, \\theta, \\sigma; y) = \\ell(\\beta, \\theta, \\sigma; y^*)
        + \\tfrac12 \\sum_i \\log w_i

for ML and REML alike (REML's error contrasts map the same way). The Gaussian engines therefore
form their statistics from the scaled rows (:func:`whitened`) and add the constant
(:func:`half_log_weights`); gradients, observed and expected information, per-cluster
contributions and the Satterthwaite and Kenward-Roger quantities are those of the scaled model,
unchanged by the constant. Casewise scores are too: merDeriv's decomposition of observation
``i`` (``r_i [V^{-1} X]_i``, ``[V^{-1} V_a]_{ii}``, ``r_i [V^{-1} V_a V^{-1} r]_i``) is invariant
under ``V -> W^{1/2} V W^{1/2}``, ``r -> W^{1/2} r``. This is lme4's own construction (its
``sqrtXWt``, and ``-sum(log w)`` in the deviance; Bates et al. 2015, section 3.7).

Weights must be positive and finite. lme4 accepts ``w_i = 0`` but then reports a log-likelihood
of ``-Inf`` (``log 0`` in the constant); such an observation has infinite variance and carries
no information, so it is refused here with the advice to drop the row.

**Binomial models** (``glmer(prop ~ ..., family = binomial, weights = n)``): a proportion
response ``y_i`` with ``n_i`` trials is ``k_i = n_i y_i`` successes out of ``n_i``, the model of
``cbind(k, n - k)``: glmer's log-likelihood, ``sum_i log dbinom(round(n_i y_i), n_i, mu_i)``, is
that of the counts. The counts must be whole numbers: glmer warns ("non-integer #successes in a
binomial glm!") and rounds them in its log-likelihood while its deviance uses them unrounded;
here that is an error (:func:`binomial_counts`).

References
----------
Bates, D., Maechler, M., Bolker, B., Walker, S. (2015). Fitting linear mixed-effects models
using lme4. Journal of Statistical Software 67(1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import MixVcovError

__all__ = ["weights_values", "split_residual_sd", "whitened", "half_log_weights", "binomial_counts"]


def weights_values(weights, data: pd.DataFrame, n: int) -> tuple[np.ndarray, str]:
    """The values of ``weights`` (a column of ``data`` or an array of ``n`` values), checked.

    Returns the weights and a name for messages (the column's name, or ``"weights"``).

    Raises
    ------
    MixVcovError
        An unknown column, a length other than ``n``, or a value that is missing, infinite,
        negative or zero (naming the column and the first rows).
    """
    if isinstance(weights, str):
        if weights not in data.columns:
            raise MixVcovError(
                f"weights {weights!r} is not a column of the data; available columns: {list(data.columns)}"
            )
        col = data[weights]
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            raise MixVcovError(
                f"weights column {weights!r} is not numeric ({col.dtype}); weights are positive numbers, one per row"
            )
        w = np.asarray(col.to_numpy(dtype=float, na_value=np.nan), float)
        name = f"weights column {weights!r}"
    else:
        try:
            w = np.asarray(weights, dtype=float).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise MixVcovError(f"weights must be a column name or an array of numbers: {exc}") from exc
        name = "weights"
    if w.size != n:
        raise MixVcovError(f"{name} has {w.size} values for {n} observations; give one weight per row of the data")
    return check_weights(w, name), name


def check_weights(w: np.ndarray, name: str) -> np.ndarray:
    """``w`` if every value is finite and positive; otherwise a :class:`MixVcovError` naming ``name``."""
    w = np.asarray(w, float).reshape(-1)
    for bad, what in (
        (np.isnan(w), "missing (NaN)"),
        (np.isinf(w), "infinite"),
        (w < 0, "negative"),
        (w == 0, "zero"),
    ):
        if np.any(bad):
            rows = np.flatnonzero(bad)[:10].tolist()
            advice = (
                "an observation of weight 0 carries no information (a Gaussian one has infinite variance, and lme4 "
                "reports a log-likelihood of -Inf): drop those rows instead"
                if what == "zero"
                else "weights must be positive and finite: fix or drop those rows"
            )
            raise MixVcovError(f"{name} has {int(np.sum(bad))} {what} value(s), at rows {rows}; {advice}")
    return w


def _strip(x):
    from pytensor.tensor.elemwise import DimShuffle

    while x.owner is not None and isinstance(x.owner.op, DimShuffle):
        x = x.owner.inputs[0]
    return x


def split_residual_sd(sigma, free_rvs, n: int, obs_name: str):
    """``(s, w)`` when the residual SD graph ``sigma`` is ``s / d`` or ``s * d``: ``s`` a scalar
    expression of the parameters, ``d`` a vector of ``n`` data values (``w = d^2``, or ``1 / d^2``
    for a product; ``d = sqrt(v)`` written as such gives ``w = v`` exactly). ``None`` when
    ``sigma`` depends on no parameter or is not of that form.

    Raises
    ------
    MixVcovError
        When ``d`` gives weights that are not positive and finite.
    """
    import pytensor
    import pytensor.scalar as ps
    import pytensor.tensor as pt
    from pytensor.graph.traversal import ancestors
    from pytensor.tensor.elemwise import Elemwise

    node = _strip(sigma).owner
    if node is None or not isinstance(node.op, Elemwise):
        return None
    op = node.op.scalar_op
    free = set(free_rvs)

    def has_params(v) -> bool:
        return bool(free & set(ancestors([v])))

    if isinstance(op, ps.Mul):
        par = [v for v in node.inputs if has_params(v)]
        dat = [v for v in node.inputs if not has_params(v)]
        power = -2.0
    elif isinstance(op, ps.TrueDiv) and has_params(node.inputs[0]) and not has_params(node.inputs[1]):
        par, dat, power = [node.inputs[0]], [node.inputs[1]], 2.0
    else:
        return None
    if not par or not dat:
        return None
    mode = pytensor.compile.mode.Mode(linker="py", optimizer="fast_compile")
    values = []
    for v in dat:
        inner = _strip(v)
        # d = sqrt(v): the weights are v itself, without the rounding of squaring a square root
        if power == 2.0 and inner.owner is not None and isinstance(getattr(inner.owner.op, "scalar_op", None), ps.Sqrt):
            values.append(np.asarray(pytensor.function([], inner.owner.inputs[0], mode=mode)(), float))
        else:
            values.append(np.asarray(pytensor.function([], v, mode=mode)(), float) ** power)
    w = np.ones(n)
    for v in values:
        w = w * np.broadcast_to(v.reshape(-1) if v.ndim else v, (n,))
    scale = par[0] if len(par) == 1 else pt.mul(*par)
    return scale, check_weights(w, f"the residual SD of {obs_name!r}: its weights")


def whitened(spec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(X*, y* - offset*, sqrt(w))`` of a Gaussian ``spec``: rows scaled by ``sqrt(w_i)``
    (``sqrt(w)`` is ``None`` and the rows are as they are without weights). The random-effect
    design values ``z`` are scaled by the same factor where they are used."""
    X, y = np.asarray(spec.X, float), np.asarray(spec.y - spec.offset, float)
    w = getattr(spec, "weights", None)
    if w is None:
        return X, y, None
    s = np.sqrt(np.asarray(w, float))
    return X * s[:, None], y * s, s


def half_log_weights(spec) -> np.ndarray | None:
    """``log(w_i) / 2`` of every observation (``None`` without weights): the log-likelihood's
    Jacobian term, added to the scaled model's."""
    w = getattr(spec, "weights", None)
    return None if w is None else 0.5 * np.log(np.asarray(w, float))


def binomial_counts(y: np.ndarray, w: np.ndarray, response: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Successes and trials ``(k, n)`` of a proportion response ``y`` with ``n = w`` trials.

    ``y`` must lie in ``[0, 1]``, ``w`` be whole numbers and ``k = y w`` whole numbers within
    ``1e-8`` relative (proportions such as ``1/3`` stored in floating point): glmer warns and
    rounds ``k`` in its log-likelihood; here it is an error that names the rows.
    """
    bad = ~((y >= 0) & (y <= 1))
    if np.any(bad):
        rows = np.flatnonzero(bad)[:10].tolist()
        raise MixVcovError(
            f"response {response!r} with binomial weights must be a proportion in [0, 1] (successes / trials); "
            f"{int(bad.sum())} row(s) are outside, rows {rows}"
        )
    bad = np.abs(w - np.round(w)) > 1e-8 * np.maximum(1.0, w)
    if np.any(bad):
        rows = np.flatnonzero(bad)[:10].tolist()
        raise MixVcovError(
            f"{name} holds the numbers of trials of binomial response {response!r} and must be whole numbers; "
            f"{int(bad.sum())} row(s) are not, rows {rows}"
        )
    n = np.round(w)
    k = y * n
    bad = np.abs(k - np.round(k)) > 1e-8 * np.maximum(1.0, n)
    if np.any(bad):
        rows = np.flatnonzero(bad)[:10].tolist()
        raise MixVcovError(
            f"response {response!r} times {name} (successes = proportion x trials) is not a whole number at "
            f"{int(bad.sum())} row(s), rows {rows}: a binomial response needs whole counts (glmer warns "
            "'non-integer #successes' and rounds them). Check that the weights are the numbers of trials the "
            "proportions were computed from"
        )
    return np.round(k), n
