"""Derived quantities and their delta-method standard errors, from exact gradients.

A derived quantity is a smooth function ``h(theta)`` of the parameters on one reporting scale
(see :mod:`pymc_mixvcov.inference.scales`). Its estimate is ``h(theta_hat)`` and, with ``V`` the
covariance of ``theta_hat`` on that scale (model-based or a sandwich) and ``g = dh/dtheta`` at
``theta_hat``, its delta-method standard error is

    se(h) = sqrt(g^T V g);

for a vector ``h`` the covariance is ``G V G^T`` with ``G`` the Jacobian. ``h`` is written by the
user as a function of symbolic scalars (pytensor variables), so that ``g`` is the exact
derivative (pytensor's reverse mode), never a finite difference. The delta method is invariant
to the scale it is computed on: ``h`` written on the ``"var"`` scale and the same ``h`` written on
the ``"sd"`` scale give the same standard error, since the scales' covariances are related by
the exact Jacobian of the map between them.

Built on it: :func:`icc` (intraclass correlation, the adjusted ICC of Nakagawa, Johnson and
Schielzeth 2017 for several random intercepts, on the latent scale for logit GLMMs) and
:func:`mor` (median odds ratio, Larsen and Merlo 2005).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pandas as pd
import pytensor.tensor as pt
from pytensor.graph.traversal import ancestors
from pytensor.tensor import TensorVariable

from ..errors import MixVcovError
from .scales import check_scale, delta_method

if TYPE_CHECKING:
    from .results import MixedFit

__all__ = ["Parameters", "VcovKind", "derived", "icc", "mor"]

#: Covariances a derived quantity's standard error may use: model-based (``None`` or ``"model"``,
#: :meth:`MixedFit.vcov`) or a sandwich (:meth:`MixedFit.sandwich` with that ``adjust``).
VcovKind = Literal["model", "CR0", "CR1", "CR3"]
VCOV_KINDS: tuple[str, ...] = get_args(VcovKind)

#: Variance of the standard logistic distribution: the latent-scale residual variance of a logit model.
LOGISTIC_VARIANCE = np.pi**2 / 3


class Parameters(Mapping):
    """The parameters of one reporting scale as symbolic scalars, by label (what ``fn`` receives).

    Looking up a label that the scale does not have raises a :class:`MixVcovError` listing the
    valid labels (and the closest ones).
    """

    def __init__(self, x: TensorVariable, labels: Sequence[str], scale: str):
        self._x = x
        self._labels = list(labels)
        self._index = {lab: i for i, lab in enumerate(self._labels)}
        self._scale = scale
        self._vars: dict[int, TensorVariable] = {}

    def __getitem__(self, label: str) -> TensorVariable:
        i = self._index.get(label) if isinstance(label, str) else None
        if i is None:
            close = difflib.get_close_matches(str(label), self._labels, n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(map(repr, close))})" if close else ""
            raise MixVcovError(
                f"{label!r} is not a parameter label on the {self._scale!r} scale{hint}; valid labels are: "
                f"{', '.join(map(repr, self._labels))}"
            )
        if i not in self._vars:
            self._vars[i] = self._x[i]
        return self._vars[i]

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def get(self, label, default=None):
        return self[label] if label in self._index else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def used(self) -> dict[int, TensorVariable]:
        """The parameters looked up so far, by position on the scale."""
        return dict(self._vars)


def _flatten_result(result, fn_name: str) -> tuple[list, list[str] | None]:
    """``fn``'s result as a list of scalar entries and, for a mapping, their names."""
    if isinstance(result, Mapping):
        names = [str(k) for k in result.keys()]
        items = []
        for k, v in result.items():
            entries, _ = _flatten_result(v, fn_name)
            if len(entries) != 1:
                raise MixVcovError(
                    f"{fn_name} returned a mapping whose entry {k!r} is not a scalar ({len(entries)} values); "
                    "each entry of a returned mapping must be one quantity"
                )
            items.append(entries[0])
        return items, names
    if isinstance(result, TensorVariable):
        if result.ndim == 0:
            return [result], None
        if result.ndim == 1:
            m = result.type.shape[0]
            if m is None:
                raise MixVcovError(
                    f"{fn_name} returned a vector of unknown length; return a list of scalars or "
                    "pt.stack([...]) of them"
                )
            return [result[i] for i in range(m)], None
        raise MixVcovError(
            f"{fn_name} returned a {result.ndim}-dimensional array (shape {result.type.shape}); a derived "
            "quantity is a scalar, or a vector (list) of scalars"
        )
    if isinstance(result, list | tuple):
        out = []
        for v in result:
            entries, _ = _flatten_result(v, fn_name)
            if len(entries) != 1 or (isinstance(v, TensorVariable) and v.ndim != 0):
                raise MixVcovError(
                    f"{fn_name} returned a list holding a non-scalar; a vector of derived quantities is a flat "
                    "list of scalars"
                )
            out.append(entries[0])
        return out, None
    if isinstance(result, np.ndarray):
        if result.ndim > 1:
            raise MixVcovError(
                f"{fn_name} returned a {result.ndim}-dimensional array (shape {result.shape}); a derived "
                "quantity is a scalar, or a vector (list) of scalars"
            )
        if result.ndim == 0:
            return _flatten_result(result.item(), fn_name)
        return _flatten_result(list(result), fn_name)
    if isinstance(result, numbers.Number | np.generic):
        return [result], None
    raise MixVcovError(
        f"{fn_name} returned a {type(result).__name__}; it must return a scalar built from the parameters it "
        "receives, a list of them, or a mapping from names to them"
    )


def _scalar_outputs(entries: list, x: TensorVariable, fn_name: str, names: list[str]) -> list[TensorVariable]:
    """Checked float64 scalars of ``fn``'s entries: each depends on the parameters and is real-valued."""
    out = []
    for name, e in zip(names, entries, strict=True):
        v = e if isinstance(e, TensorVariable) else pt.as_tensor_variable(e)
        if v.ndim != 0:
            raise MixVcovError(f"{fn_name}: quantity {name!r} is not a scalar (shape {v.type.shape})")
        if x not in ancestors([v]):
            raise MixVcovError(
                f"{fn_name}: quantity {name!r} does not depend on the parameters (it is a constant); build it "
                "from the values of the mapping that fn receives"
            )
        if v.dtype.startswith(("int", "uint", "bool")):
            raise MixVcovError(
                f"{fn_name}: quantity {name!r} has {v.dtype} values (a comparison, a count or an index), which "
                "are not differentiable; the delta method needs a smooth real-valued function"
            )
        if v.dtype.startswith("complex"):
            raise MixVcovError(f"{fn_name}: quantity {name!r} is complex; derived quantities are real")
        out.append(pt.cast(v, "float64") if v.dtype != "float64" else v)
    return out


def _covariance(fit: MixedFit, scale: str, vcov, information: str, cluster) -> np.ndarray:
    labels = fit.labels(scale)
    if isinstance(vcov, pd.DataFrame):
        if list(vcov.index) != labels or list(vcov.columns) != labels:
            raise MixVcovError(
                f"the covariance given as vcov must be labelled with the {scale!r} scale's labels, in order: "
                f"{', '.join(map(repr, labels))}"
            )
        return vcov.to_numpy(float)
    if vcov is None or vcov == "model":
        return fit.vcov(scale, information).to_numpy()
    if isinstance(vcov, str) and vcov in VCOV_KINDS:
        return fit.sandwich(scale, information, adjust=vcov, cluster=cluster).to_numpy()
    raise MixVcovError(
        f"unknown vcov {vcov!r}; valid values are: None, {', '.join(map(repr, VCOV_KINDS))}, or a covariance "
        f"DataFrame labelled with the {scale!r} scale's labels"
    )


def derived(
    fit: MixedFit,
    fn: Callable[[Parameters], object],
    scale: str = "sd",
    vcov: VcovKind | pd.DataFrame | None = None,
    *,
    level: float | None = None,
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Estimate and delta-method standard error of ``fn(parameters)`` (see :meth:`MixedFit.derived`)."""
    check_scale(scale)
    if not callable(fn):
        raise MixVcovError(f"fn must be a function of the parameter mapping, got a {type(fn).__name__}")
    if level is not None and not (isinstance(level, numbers.Real) and 0 < level < 1):
        raise MixVcovError(f"level must be between 0 and 1 (or None for no interval), got {level!r}")
    labels = fit.labels(scale)
    fn_name = getattr(fn, "__name__", "fn")
    fn_name = "fn" if fn_name == "<lambda>" else fn_name
    V = _covariance(fit, scale, vcov, information, cluster)
    est = fit.params(scale).to_numpy(float)
    x = pt.vector("parameters", dtype="float64", shape=(len(labels),))
    params = Parameters(x, labels, scale)
    try:
        result = fn(params)
    except MixVcovError:
        raise
    except TypeError as exc:
        raise MixVcovError(
            f"{fn_name} could not be evaluated on the symbolic parameters ({exc}). Build the quantity with "
            "arithmetic operators, NumPy ufuncs (np.exp, np.sqrt) or pytensor.tensor functions (pt.exp, pt.log, "
            "pt.switch for a condition); Python's math module, float() and if-statements on a parameter do not "
            "work on symbolic values"
        ) from exc
    except Exception as exc:
        raise MixVcovError(
            f"{fn_name} raised {type(exc).__name__} when evaluated on the symbolic parameters: {exc}"
        ) from exc
    entries, auto_names = _flatten_result(result, fn_name)
    if not entries:
        raise MixVcovError(f"{fn_name} returned no quantity")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(entries):
            raise MixVcovError(f"{len(names)} names given for the {len(entries)} quantities that {fn_name} returns")
    elif auto_names is not None:
        names = auto_names
    elif (
        len(entries) == 1
        and not isinstance(result, list | tuple | np.ndarray)
        and (not isinstance(result, TensorVariable) or result.ndim == 0)
    ):
        names = [fn_name]
    else:
        names = [f"{fn_name}[{i}]" for i in range(len(entries))]
    outs = _scalar_outputs(entries, x, fn_name, names)
    # the parameters each quantity depends on (for NaN propagation from parameters held at a boundary)
    used = params.used
    depends = np.zeros((len(outs), len(labels)), bool)
    for k, o in enumerate(outs):
        anc = set(ancestors([o]))
        for i, var in used.items():
            depends[k, i] = var in anc
    values = pt.stack(outs)
    from ..compilation.derivatives import compile_fn, jacobian_of

    try:
        G = jacobian_of(values, x)
    except Exception as exc:  # pytensor: an operation without a gradient (NullTypeGradError, NotImplementedError)
        raise MixVcovError(
            f"{fn_name} is not differentiable: pytensor cannot differentiate it ({type(exc).__name__}: {exc}). "
            "Use smooth operations (arithmetic, exp, log, sqrt, tanh, erf, ...)"
        ) from exc
    h, J = compile_fn([x], [values, G])(est)
    h, J = np.asarray(h, float), np.asarray(J, float).reshape(len(outs), len(labels))
    # parameters held at a boundary (NaN variance): a quantity that depends on one gets a NaN
    # standard error, whatever its derivative there
    held = np.isnan(np.diag(V))
    for k, name in enumerate(names):
        if not np.isfinite(h[k]):
            raise MixVcovError(f"{fn_name}: quantity {name!r} is {h[k]} at the estimates")
        if not np.all(np.isfinite(J[k]) | held):
            bad = [labels[i] for i in np.flatnonzero(~np.isfinite(J[k]) & ~held)]
            raise MixVcovError(
                f"{fn_name}: the derivative of {name!r} is not finite at the estimates (with respect to "
                f"{', '.join(map(repr, bad))}); the function is not differentiable there"
            )
        if not np.any(J[k][depends[k]] != 0) and not np.any(depends[k] & held):
            raise MixVcovError(
                f"{fn_name}: the derivative of {name!r} is 0 at the estimates although it depends on "
                f"{', '.join(repr(labels[i]) for i in np.flatnonzero(depends[k]))}: the function is locally "
                "constant (floor, round, sign, a comparison) or stationary there, where the first-order "
                "delta method gives no standard error"
            )
    C = delta_method(V, J, depends)
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.where(np.diag(C) >= 0, np.diag(C), np.nan))
    out = pd.DataFrame({"estimate": h, "se": se}, index=pd.Index(names, name="quantity"))
    if level is not None:
        from scipy.stats import norm

        q = norm.ppf(0.5 + level / 2)
        out["lower"] = h - q * se
        out["upper"] = h + q * se
    return out


# -- built-ins ------------------------------------------------------------------------------------
def _intercept_terms(fit: MixedFit, what: str, advice: str) -> list[tuple[str, float]]:
    """``(sd-scale label, c)`` of every random-effect term when each is a random intercept.

    A random intercept here is a term with one effect whose design value ``c`` is the same, and
    not 0, for every observation; it adds ``c^2 s^2`` to the variance of the linear predictor
    (``c = 1`` for the ``(1 | g)`` of a formula).
    """
    spec = fit.spec
    labels = fit.labels("sd")
    k = spec.fixed_index.size
    out = []
    for t in spec.terms:
        z = t.z[:, 0]
        problem = None
        if t.r != 1:
            problem = "has several effects"
        elif np.any(t.codes < 0):
            problem = f"is not used by {int(np.sum(t.codes < 0))} observation(s)"
        elif z[0] == 0 or not np.all(z == z[0]):
            problem = "has a random slope"
        if problem is not None:
            raise MixVcovError(
                f"{what} is defined here for random intercepts only; the {t.group} term "
                f"({', '.join(map(str, t.effects))}) {problem}, so the variance it adds differs between "
                f"observations. {advice}"
            )
        out.append((labels[k], float(z[0])))
        k += t.r * (t.r + 1) // 2
    if not out:
        raise MixVcovError(f"{what} needs a random effect; this model has none")
    return out


def _logit_binomial(fit: MixedFit) -> bool:
    """Whether the likelihood is binomial (or Bernoulli) with the logit link.

    Read off the model's log-density ``l_i(eta_i)`` itself, so it holds for hand-written models
    too: for a logit binomial, ``dl_i/d eta_i = y_i - n_i expit(eta_i)`` with ``n_i >= y_i`` the same at
    every ``eta_i``; ``n_i`` is solved for at one ``eta`` and the identity checked at two others.
    """
    spec = fit.spec
    if spec.gaussian or spec.psi_index.size or spec.family not in ("Binomial", "Bernoulli"):
        return False
    from pytensor.gradient import grad
    from scipy.special import expit

    from ..compilation.derivatives import compile_fn

    eta_in, y_in, lp = spec.logp
    score = compile_fn([eta_in, y_in, spec.nat], [grad(pt.sum(lp), eta_in)])
    y = np.asarray(spec.y, float)
    nat = np.asarray(fit._opt["nat"], float)
    g = [np.asarray(score(np.full(y.size, e), y, nat)[0], float) for e in (-1.3, 0.4, 1.7)]
    n = (y - g[0]) / expit(-1.3)
    if not np.all(np.isfinite(n)) or np.any(n < y - 1e-8):
        return False
    return all(np.allclose(gi, y - n * expit(e), rtol=1e-8, atol=1e-8) for gi, e in zip(g[1:], (0.4, 1.7), strict=True))


def icc(
    fit: MixedFit,
    vcov: VcovKind | None = None,
    *,
    level: float | None = None,
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
) -> pd.DataFrame:
    """Intraclass correlation with its delta-method standard error (see :meth:`MixedFit.icc`)."""
    advice = (
        "Write the definition you want with fit.derived, e.g. the ICC at covariate value 0: "
        "fit.derived(lambda p: p['sd_(Intercept)|g']**2 / (p['sd_(Intercept)|g']**2 + p['sigma']**2))"
    )
    sds = _intercept_terms(fit, "the ICC", advice)
    if fit.spec.gaussian:
        residual = "sigma"
    elif _logit_binomial(fit):
        residual = None
    else:
        raise MixVcovError(
            f"the ICC is implemented for Gaussian models and logit binomial GLMMs (latent scale, residual variance "
            f"pi^2/3); this model's likelihood is {fit.spec.family} with another link or extra parameters, whose "
            "latent-scale residual variance is a modelling choice (e.g. 1 for probit, log(1 + 1/lambda) for a "
            "log-link Poisson). " + advice.replace("p['sigma']**2", "<residual variance>")
        )

    def ICC(p):
        var = sum(c**2 * p[s] ** 2 for s, c in sds)
        res = p[residual] ** 2 if residual is not None else LOGISTIC_VARIANCE
        return var / (var + res)

    return derived(fit, ICC, "sd", vcov, level=level, information=information, cluster=cluster)


def mor(
    fit: MixedFit,
    vcov: VcovKind | None = None,
    *,
    level: float | None = None,
    information: Literal["observed", "expected"] = "observed",
    cluster=None,
) -> pd.DataFrame:
    """Median odds ratio with its delta-method standard error (see :meth:`MixedFit.mor`)."""
    from scipy.stats import norm

    if not _logit_binomial(fit):
        what = "a Gaussian model" if fit.spec.gaussian else f"a {fit.spec.family} likelihood"
        raise MixVcovError(
            f"the median odds ratio is defined for binomial (or Bernoulli) GLMMs with the logit link; this fit has "
            f"{what} that is not one. For other links the random effects are not on the log-odds scale."
        )
    sds = _intercept_terms(
        fit,
        "the median odds ratio",
        "Write the definition you want with fit.derived, e.g. for one SD s: "
        "fit.derived(lambda p: np.exp(np.sqrt(2) * p[s] * 0.6744897501960817))",
    )
    if len(sds) != 1:
        raise MixVcovError(
            f"the median odds ratio is defined here for one random intercept; this model has {len(sds)} "
            f"({', '.join(s for s, _ in sds)}). Write the definition you want with fit.derived (e.g. from the "
            "sum of their variances)"
        )
    ((sd, c),) = sds
    q = float(norm.ppf(0.75))

    def MOR(p):
        return pt.exp(np.sqrt(2.0) * abs(c) * p[sd] * q)

    return derived(fit, MOR, "sd", vcov, level=level, information=information, cluster=cluster)
