r"""Small-sample tests of the fixed effects of a Gaussian mixed model: Satterthwaite and Kenward-Roger.

A linear hypothesis ``L beta = r`` (``L`` a ``q x p`` matrix) is tested with an ``F`` (``q > 1``)
or ``t`` (``q = 1``) statistic whose denominator degrees of freedom account for the estimated
variance parameters ``psi``. ``C(psi) = (X^T V(psi)^{-1} X)^{-1}`` is the covariance of
``beta_hat`` as a function of ``psi``.

**Satterthwaite** (Satterthwaite 1946; lmerTest, Kuznetsova, Brockhoff and Christensen 2017).
For a contrast ``c`` (one row of ``L``),

.. math::

    \nu = \frac{2\,(c^T C c)^2}{g^T A^{-1} g}, \qquad
    g_k = \frac{\partial (c^T C c)}{\partial \psi_k} = -c^T C \frac{\partial (X^T V^{-1} X)}{\partial \psi_k} C c,

with ``A^{-1}`` the covariance of ``psi_hat``: the inverse observed information of the
criterion (REML or ML, ``beta`` profiled out). ``nu`` does not depend on how ``psi`` is
parameterised: under ``psi = psi(phi)`` with Jacobian ``J``, ``g_phi = J^T g_psi`` and, at the
optimum (zero gradient), ``A_phi = J^T A_psi J``, so ``g^T A^{-1} g`` is unchanged. Here ``psi``
are the model's own variance parameters; ``d(X^T V^{-1} X)/d psi`` is the engine's exact derivative
in its core parameters ``(theta, sigma)`` (``fns.xtvx``: pytensor's derivative of the
cluster-statistics graph of :class:`pymc_mixvcov.engines.marginal.CoreGraph` on the cluster engine,
the closed form of :mod:`pymc_mixvcov.engines.blocked_ddf` on the blocked engine), times the exact
Jacobian of the model map. For ``q > 1`` (Fai and Cornelius
1996, as lmerTest): with ``L C L^T = P diag(d) P^T``, the ``q`` rotated contrasts
``P^T L`` (eigenvalues ``d_m`` above ``sqrt(eps) d_1``) are independent,
``F = (1/q) sum_m (P_m^T L beta)^2 / d_m``, each has its Satterthwaite ``nu_m``, and
``E = sum_m nu_m / (nu_m - 2)``, ``ddf = 2 E / (E - q)`` (``2`` when any ``nu_m <= 2``; the
mean when all are equal within ``1e-8``).

**Kenward-Roger** (Kenward and Roger 1997; pbkrtest, Halekoh and Hojsgaard 2014), REML only, on
the var scale ``sigma = (vech G_k, sigma^2)`` in which ``V`` is linear (so that its second
derivatives vanish). With ``Phi = C``, ``P_i = d(X^T V^{-1} X)/d sigma_i``,
``Q_ij + Q_ji = d^2 (X^T V^{-1} X)/d sigma_i d sigma_j`` (``Q_ij = X^T V^{-1} V_i V^{-1} V_j V^{-1} X``;
the engine's closed forms, ``fns.var_scale_pieces``: :mod:`pymc_mixvcov.engines.cluster_ddf` from the
cluster statistics, :mod:`pymc_mixvcov.engines.blocked_ddf` from the blocked factor) and ``W`` the inverse
expected REML information of ``sigma`` (the model's expected information carried to ``sigma``):

.. math::

    \Phi_A = \Phi + 2 \Phi \Big[\sum_{ij} W_{ij} (Q_{ij} - P_i \Phi P_j)\Big] \Phi .

For ``L`` of rank ``q``, ``Theta = L^T (L Phi L^T)^{-1} L``,
``A_1 = sum_ij W_ij tr(Theta Phi P_i Phi) tr(Theta Phi P_j Phi)``,
``A_2 = sum_ij W_ij tr(Theta Phi P_i Phi Theta Phi P_j Phi)``, ``B = (A_1 + 6 A_2)/(2q)``,
``g = ((q+1) A_1 - (q+4) A_2)/((q+2) A_2)``, ``c_1 = g/(3q + 2(1-g))``,
``c_2 = (q-g)/(3q + 2(1-g))``, ``c_3 = (q+2-g)/(3q + 2(1-g))``,
``rho = (1/q) ((1 - A_2/q)/(1 - c_2 B))^2 (1 + c_1 B)/(1 - c_3 B)``; then
``ddf = 4 + (q+2)/(q rho - 1)``, the scale ``lambda = ddf (1 - A_2/q)/(ddf - 2)`` and
``F = lambda (L beta - r)^T (L Phi_A L^T)^{-1} (L beta - r)/q`` (pbkrtest's ``KRmodcomp``; a
``t``-test uses ``Phi_A`` for the standard error, as lmerTest's ``summary``).

References
----------
Satterthwaite, F. E. (1946). An approximate distribution of estimates of variance components.
Biometrics Bulletin 2, 110-114.
Kenward, M. G. and Roger, J. H. (1997). Small sample inference for fixed effects from restricted
maximum likelihood. Biometrics 53, 983-997.
Fai, A. H.-T. and Cornelius, P. L. (1996). Approximate F-tests of multiple degree of freedom
hypotheses in generalized least squares analyses of unbalanced split-plot experiments. Journal of
Statistical Computation and Simulation 54, 363-378.
Kuznetsova, A., Brockhoff, P. B. and Christensen, R. H. B. (2017). lmerTest package: tests in
linear mixed effects models. Journal of Statistical Software 82(13).
Halekoh, U. and Hojsgaard, S. (2014). A Kenward-Roger approximation and parametric bootstrap
methods for tests in linear mixed models - the R package pbkrtest. Journal of Statistical
Software 59(9).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import numpy as np
import pandas as pd
from scipy import special  # t, F and chi-square tails (scipy.stats costs 0.4 s to import)

from ..errors import MixVcovError

__all__ = ["DDF", "AnovaType", "DDFMethods", "parse_hypothesis", "term_hypotheses"]

#: Denominator degrees of freedom: ``None`` gives the large-sample (normal / chi-square) tests.
DDF = Literal["satterthwaite", "kenward-roger"]
DDFS: tuple[str, ...] = get_args(DDF)
#: Hypotheses of :meth:`MixedFit.anova`, as lmerTest's ``anova(type=)``.
AnovaType = Literal["III", "II"]
ANOVA_TYPES: tuple[str, ...] = get_args(AnovaType)


def check_ddf(ddf) -> str | None:
    """``ddf`` if it is one of :data:`DDF` or ``None``, else a :class:`MixVcovError` listing them."""
    if ddf is None or ddf in DDFS:
        return ddf
    raise MixVcovError(f"unknown ddf {ddf!r}; valid values are: {', '.join(map(repr, DDFS))} or None")


# -- hypotheses -----------------------------------------------------------------------------------
_NUMBER = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")


def _parse_side(text: str, labels: list[str], full: str) -> tuple[np.ndarray, float]:
    """Coefficients of the labels and the constant of one side of an equation: a sum of terms
    ``[+-] [number [*]] label`` or ``[+-] number``."""
    by_length = sorted(labels, key=len, reverse=True)
    coef, const, pos, first = np.zeros(len(labels)), 0.0, 0, True
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            if first:
                raise MixVcovError(f"hypothesis {full!r}: a side of the equation is empty")
            return coef, const
        sign = 1.0
        if text[pos] in "+-":
            sign = -1.0 if text[pos] == "-" else 1.0
            pos += 1
            while pos < len(text) and text[pos].isspace():
                pos += 1
        elif not first:
            raise MixVcovError(f"hypothesis {full!r}: expected + or - at {text[pos:]!r}")
        first = False
        m = _NUMBER.match(text, pos)
        number = None
        if m is not None and not any(text.startswith(lab, pos) for lab in by_length if len(lab) > len(m.group(0))):
            number = float(m.group(1))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos < len(text) and text[pos] == "*":
                pos += 1
                while pos < len(text) and text[pos].isspace():
                    pos += 1
            elif pos == len(text) or text[pos] in "+-":
                const += sign * number
                continue
        label = next((lab for lab in by_length if text.startswith(lab, pos)), None)
        if label is None:
            raise MixVcovError(
                f"hypothesis {full!r}: {text[pos:]!r} does not start with a fixed-effect label; the labels are {labels}"
            )
        coef[labels.index(label)] += sign * (1.0 if number is None else number)
        pos += len(label)


def parse_hypothesis(hypothesis, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(L, r)`` of the linear hypothesis ``L beta = r``.

    Parameters
    ----------
    hypothesis : str, list of str, array_like or pandas.DataFrame
        A string ``"Days = 0"``, ``"phasemid = phaselate"``, ``"2 a - b = 1"`` (linear combinations
        of the fixed-effect labels with numeric coefficients, ``*`` optional; several equations
        separated by ``;`` or given as a list, one row of ``L`` each; a side without ``=`` means
        ``= 0``), or a ``q x p`` (or length ``p``) matrix ``L`` (``r = 0``), or a DataFrame whose
        columns are labels. Nothing is evaluated: the strings are parsed.
    labels : list of str
        The fixed-effect labels, in the order of ``beta``.
    """
    p = len(labels)
    if isinstance(hypothesis, str):
        hypothesis = [h for h in hypothesis.split(";") if h.strip()]
    if isinstance(hypothesis, list | tuple) and hypothesis and all(isinstance(h, str) for h in hypothesis):
        rows, rhs = [], []
        for h in hypothesis:
            sides = h.split("=")
            if len(sides) > 2:
                raise MixVcovError(f"hypothesis {h!r} has more than one '='")
            lc, lk = _parse_side(sides[0], labels, h)
            rc, rk = _parse_side(sides[1], labels, h) if len(sides) == 2 else (np.zeros(p), 0.0)
            if not np.any(lc - rc):
                raise MixVcovError(f"hypothesis {h!r} involves no fixed effect (its coefficients cancel)")
            rows.append(lc - rc)
            rhs.append(rk - lk)
        return np.array(rows), np.array(rhs)
    if isinstance(hypothesis, pd.DataFrame):
        unknown = [c for c in hypothesis.columns if c not in labels]
        if unknown:
            raise MixVcovError(f"hypothesis columns {unknown} are not fixed-effect labels; the labels are {labels}")
        hypothesis = hypothesis.reindex(columns=labels, fill_value=0.0).to_numpy(float)
    try:
        L = np.atleast_2d(np.asarray(hypothesis, dtype=float))
    except (TypeError, ValueError) as exc:
        raise MixVcovError(
            f"hypothesis must be a string, a list of strings or a numeric matrix with {p} columns; got {hypothesis!r}"
        ) from exc
    if L.ndim != 2 or L.shape[1] != p or L.shape[0] == 0 or not np.all(np.isfinite(L)):
        raise MixVcovError(f"hypothesis matrix L must be finite with {p} columns (one per fixed effect); got {L.shape}")
    return L, np.zeros(L.shape[0])


# -- the computations -----------------------------------------------------------------------------
def _fstat_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the ddf of an F of independent t's with ``nu`` df."""
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2))
    return float(2 * E / (E - nu.size))


class DDFMethods:
    """The pieces of both methods for one fit, computed once (see the module docstring).

    Parameters
    ----------
    fit : MixedFit
        A Gaussian ML or REML fit.
    """

    def __init__(self, fit):
        if not fit.spec.gaussian:
            raise MixVcovError(
                f"Satterthwaite and Kenward-Roger degrees of freedom are defined for Gaussian (linear) mixed models; "
                f"this model has a {fit.spec.family} likelihood: use ddf=None (Wald z tests)"
            )
        if fit.method not in ("ML", "REML"):
            raise MixVcovError(
                f"small-sample degrees of freedom need an ML or REML fit (this one is {fit.method!r}); refit "
                "with method='REML'"
            )
        self.fit = fit
        fns = fit._functions
        self.labels = fit.labels("natural")
        self.fixed_labels = list(fit._scales.fixed_labels)
        nat = np.asarray(fit._opt["nat"], float)
        self.beta = nat[fns.fi]
        p = fns.sig.p
        self.p = p
        phi, J, _ = fns.map(nat, second=False)
        XtVX, D = fns.xtvx(phi)
        self.C = np.linalg.inv(XtVX)
        self.C = 0.5 * (self.C + self.C.T)
        dC = -np.einsum("ab,kbc,cd->kad", self.C, np.asarray(D), self.C)
        dC_nat = np.einsum("kab,kv->vab", dC, J[p:][:, fns.vi])
        Vv = fit._vcov_natural("observed")[np.ix_(fns.vi, fns.vi)]
        keep = np.isfinite(np.diag(Vv))  # parameters held at a boundary count as known
        self.dC = dC_nat[keep]
        self.vcov_varpar = Vv[np.ix_(keep, keep)]
        self._kr: tuple | None = None

    # -- Satterthwaite --------------------------------------------------------------------------
    def satterthwaite_1d(self, c: np.ndarray) -> tuple[float, float]:
        """``(c^T C c, nu)`` of one contrast."""
        v = float(c @ self.C @ c)
        g = np.einsum("a,kab,b->k", c, self.dC, c)
        denom = float(g @ self.vcov_varpar @ g)
        return v, (2 * v**2 / denom if denom > 0 else np.inf)

    def satterthwaite_f(self, L: np.ndarray, r: np.ndarray) -> tuple[float, int, float]:
        """``(F, ndf, ddf)`` of ``L beta = r`` (Fai and Cornelius 1996, as lmerTest's ``contestMD``)."""
        d, P = np.linalg.eigh(L @ self.C @ L.T)
        order = np.argsort(d)[::-1]
        d, P = d[order], P[:, order]
        pos = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0)
        q = int(pos.sum())
        if q == 0:
            raise MixVcovError("the hypothesis matrix L has rank 0 (L C L^T = 0): nothing to test")
        PtL = P[:, :q].T @ L
        b = self.beta - (np.linalg.pinv(L) @ r if np.any(r) else 0.0)
        F = float(np.sum((PtL @ b) ** 2 / d[:q]) / q)
        nu = np.array([self.satterthwaite_1d(PtL[m])[1] for m in range(q)])
        return F, q, _fstat_ddf(nu)

    # -- Kenward-Roger --------------------------------------------------------------------------
    def _kenward_roger(self):
        if self._kr is not None:
            return self._kr
        fit = self.fit
        if fit.method != "REML":
            raise MixVcovError(
                "Kenward-Roger's method is defined for REML fits (as pbkrtest and lmerTest); refit with "
                "method='REML', or use ddf='satterthwaite'"
            )
        if fit.at_bound.any() or fit._small_theta().any():
            raise MixVcovError(
                "Kenward-Roger's adjustment needs every random-effect covariance matrix positive definite; this "
                "fit is singular (see the boundary warning). Use ddf='satterthwaite' or simplify the model"
            )
        fns, p = fit._functions, self.p
        Jvs = np.asarray(fit._opt["jac_var"], float)[p:][:, fns.vi]
        rows = np.any(Jvs != 0, axis=1)  # covariances fixed at 0 by the model are no parameters
        Jr = Jvs[rows]
        if Jr.shape[0] != Jr.shape[1] or np.linalg.cond(Jr) > 1e12:
            raise MixVcovError(
                "Kenward-Roger's method works on the variances and covariances of the random effects; this "
                f"model's {Jr.shape[1]} variance parameters do not map one to one onto {Jr.shape[0]} of them. "
                "Use ddf='satterthwaite'"
            )
        phi, _, _ = fns.map(np.asarray(fit._opt["nat"], float), second=False)
        XtVX, P, H = fns.var_scale_pieces(phi)
        Phi = np.linalg.inv(XtVX)
        Phi = 0.5 * (Phi + Phi.T)
        P, H = np.asarray(P)[rows], np.asarray(H)[np.ix_(rows, rows)]
        E = fit._information("expected")[np.ix_(fns.vi, fns.vi)]
        W = Jr @ np.linalg.solve(E, Jr.T)
        W = 0.5 * (W + W.T)
        UU = 0.5 * np.einsum("ij,ijab->ab", W, H) - np.einsum("ij,iab,bc,jcd->ad", W, P, Phi, P)
        PhiA = Phi + 2 * Phi @ UU @ Phi
        self._kr = (Phi, 0.5 * (PhiA + PhiA.T), P, W)
        return self._kr

    def kr_vcov(self) -> np.ndarray:
        """Kenward and Roger's adjusted covariance ``Phi_A`` of the fixed effects."""
        return self._kenward_roger()[1]

    def kr_ddf(self, L: np.ndarray) -> tuple[float, float, int]:
        """``(ddf, A_2, q)`` of pbkrtest's ``Lb_ddf`` for ``L`` (``q`` its rank)."""
        Phi, _, P, W = self._kenward_roger()
        q = int(np.linalg.matrix_rank(L))
        Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
        u = np.einsum("ab,kbc,cd->kad", Theta @ Phi, P, Phi)
        tr = np.trace(u, axis1=1, axis2=2)
        A1 = float(tr @ W @ tr)
        A2 = float(np.einsum("ij,iab,jba->", W, u, u))
        B = (A1 + 6 * A2) / (2 * q)
        g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
        den = 3 * q + 2 * (1 - g)
        c1, c2, c3 = g / den, (q - g) / den, (q + 2 - g) / den
        V0 = 1 + c1 * B
        V0 = 0.0 if abs(V0) < 1e-10 else V0
        V1, V2 = 1 - c2 * B, 1 - c3 * B
        ratio = 0.0 if V1 == 0 else (1 - A2 / q) / V1  # pbkrtest's .divZero
        rho = ratio**2 * V0 / V2 / q
        return 4 + (q + 2) / (q * rho - 1), A2, q

    def kr_f(self, L: np.ndarray, r: np.ndarray) -> tuple[float, int, float]:
        """``(F, ndf, ddf)`` of ``L beta = r``, pbkrtest's ``KRmodcomp``."""
        _, PhiA, _, _ = self._kenward_roger()
        ddf, A2, q = self.kr_ddf(L)
        scale = 1.0 if abs(ddf - 2) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
        b = self.beta - (np.linalg.pinv(L) @ r if np.any(r) else 0.0)
        Lb = L @ b
        F = float(Lb @ np.linalg.solve(L @ PhiA @ L.T, Lb)) / q
        return scale * F, q, ddf

    # -- the tables -----------------------------------------------------------------------------
    def ttest(self, ddf: str | None) -> pd.DataFrame:
        """One t-test per fixed effect (see :meth:`MixedFit.ttest`)."""
        rows = []
        for j in range(self.p):
            c = np.zeros(self.p)
            c[j] = 1.0
            rows.append(self.contrast_t(c, 0.0, ddf))
        return pd.DataFrame(rows, index=self.fixed_labels, columns=["estimate", "se", "df", "t", "p"])

    def contrast_t(self, c: np.ndarray, r: float, ddf: str | None) -> list[float]:
        """``[c^T beta, se, df, t, p]`` of ``c^T beta = r``; ``t = (c^T beta - r) / se``, two-sided ``p``."""
        est = float(c @ self.beta)
        if ddf == "kenward-roger":
            v, df = float(c @ self.kr_vcov() @ c), self.kr_ddf(c[None, :])[0]
        elif ddf == "satterthwaite":
            v, df = self.satterthwaite_1d(c)
        else:
            v, df = float(c @ self.C @ c), np.inf
        se = np.sqrt(v)
        t = (est - r) / se
        return [est, se, df, t, float(2 * special.stdtr(df, -abs(t)))]

    def ftest(self, L: np.ndarray, r: np.ndarray, ddf: str | None) -> list[float]:
        """``[F, ndf, ddf, p]`` of ``L beta = r``; ``ddf=None``: the Wald chi-square over ``q`` (``ddf`` infinite)."""
        if ddf == "kenward-roger":
            F, q, den = self.kr_f(L, r)
        elif ddf == "satterthwaite":
            F, q, den = self.satterthwaite_f(L, r)
        else:
            q = int(np.linalg.matrix_rank(L))
            b = L @ self.beta - r
            F, den = float(b @ np.linalg.lstsq(L @ self.C @ L.T, b, rcond=None)[0]) / q, np.inf
        return [F, q, den, float(special.fdtrc(q, den, F)) if np.isfinite(den) else float(special.chdtrc(q, F * q))]


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    mx = float(np.max(np.abs(x))) if x.size else 0.0
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))) if mx > 0 else digits)


def _doolittle_lower(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The unit lower factor ``L`` of the LU (Doolittle) factorisation of ``x`` without pivoting, as
    lmerTest's ``doolittle`` (entries below ``eps`` set to 0, a pivot below ``eps`` gives a zero column)."""
    n = x.shape[0]
    L, U = np.eye(n), np.zeros((n, n))
    for i in range(n):
        U[i] = x[i] - L[i, :i] @ U[:i]
        for j in range(i + 1, n):
            v = x[j, i] - L[j, :i] @ U[:i, i]
            L[j, i] = 0.0 if abs(U[i, i]) < eps else v / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _residuals(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Residuals of the least-squares fits of the columns of ``B`` on those of ``A`` (R's ``lm.fit``)."""
    return B - A @ np.linalg.lstsq(A, B, rcond=None)[0]


def term_hypotheses(fit, kind: str) -> dict[str, np.ndarray]:
    """``L`` of each model term for :meth:`MixedFit.anova`, as lmerTest 3.1-3.

    Formula models group the fixed-effect columns by the term that made them. A term ``A`` is
    contained in ``B`` when ``B`` has all of ``A``'s variables and more, and the same numeric ones
    (lmerTest's ``containment``). A term contained in none is tested by "all its coefficients are
    0" (both types). Otherwise:

    * type III (lmerTest's ``extract_contrasts_type3``): ``L = zap((X^+ X_rd)^T)``, ``X_rd`` the
      design with every factor coded by all its indicators; terms in decreasing order, the
      columns of ``L`` of a contained term are replaced by their residuals on the columns of the
      terms that contain it; the term's hypothesis is the transpose of its columns of ``L`` (rows of
      ``X_rd``'s columns named as ``X``'s), zero rows dropped. When a factor is coded otherwise
      (``contr.poly``, an explicit encoding), ``X`` is first the treatment-coded design ``X_t`` and
      the hypotheses are mapped back by ``zap(X_t^+ X)``.
    * type II (lmerTest's ``get_contrasts_type2``): the columns of ``X`` are reordered so that the
      term and the terms containing it come last; the term's rows of ``D^T``, ``D`` the unit lower
      Doolittle factor of ``X^T X`` in that order.

    Hand-written models: one term per fixed effect (per vector-valued fixed-effect variable when
    the labels show it, ``b[0]``, ``b[1]``).
    """
    labels = list(fit._scales.fixed_labels)
    p = len(labels)
    info = getattr(fit, "fixed_terms", None)
    terms = list(info.terms) if info is not None else [lab.split("[")[0] for lab in labels]
    groups: dict[str, list[int]] = {}
    for j, t in enumerate(terms):
        if t != "(Intercept)":
            groups.setdefault(t, []).append(j)
    if not groups:
        raise MixVcovError("this model has no fixed-effect term besides the intercept: nothing to test")

    def marginal(cols: list[int]) -> np.ndarray:
        L = np.zeros((len(cols), p))
        L[np.arange(len(cols)), cols] = 1.0
        return L

    if info is None or len(groups) == 1:
        return {t: marginal(cols) for t, cols in groups.items()}
    variables = {t: set(t.split(":")) for t in groups}
    contained = {
        a: [b for b in groups if variables[a] < variables[b] and info.numerics[a] == info.numerics[b]] for a in groups
    }
    if not any(contained.values()):
        return {t: marginal(cols) for t, cols in groups.items()}
    X = np.asarray(fit.spec.X, float)
    out: dict[str, np.ndarray] = {}
    if kind == "II":
        for t, cols in groups.items():
            if not contained[t]:
                out[t] = marginal(cols)
                continue
            last = cols + [j for u in contained[t] for j in groups[u]]
            order = [j for j in range(p) if j not in last] + last
            D = _doolittle_lower(X[:, order].T @ X[:, order]).T
            back = np.argsort(order)
            out[t] = D[[order.index(j) for j in cols]][:, back]
        return out
    intercept = [np.ones((X.shape[0], 1))] if info.rd_labels[:1] == ["(Intercept)"] else []
    Xrd = np.hstack(intercept + list(info.rd_blocks))
    Xorig = X
    if not info.treatment:  # lmerTest: the hypotheses of the treatment-coded design, mapped back
        X = np.hstack(intercept + list(info.tr_blocks))
        if np.linalg.matrix_rank(X) < X.shape[1]:
            raise MixVcovError(
                "the treatment-coded design of this model is rank deficient; lmerTest's type III hypotheses are "
                "not available: use type='II' or fit.test(L)"
            )
    L = _zapsmall((np.linalg.pinv(X) @ Xrd).T)
    for t in sorted(groups, key=lambda u: -len(variables[u])):  # stable: formula order within a degree
        if contained[t]:
            others = [j for u in contained[t] for j in groups[u]]
            L[:, groups[t]] = _zapsmall(_residuals(L[:, others], L[:, groups[t]]))
    names = labels if info.treatment else info.tr_labels
    missing = [lab for lab in names if lab not in info.rd_labels]
    if missing:
        raise MixVcovError(f"cannot match the fixed-effect columns {missing} to the indicator design of their terms")
    Lx = L[[info.rd_labels.index(lab) for lab in names]]
    back = np.eye(p) if info.treatment else _zapsmall(np.linalg.pinv(X) @ Xorig)
    for t, cols in groups.items():
        Lt = Lx[:, cols].T @ back
        out[t] = Lt[np.sum(np.abs(Lt), axis=1) > 1e-8]
    return out
