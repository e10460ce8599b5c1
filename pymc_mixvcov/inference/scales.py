"""Reporting scales, their labels, and the delta method.

Every scale is a symbolic map of the natural parameters (the model's free variables on
their constrained scale), compiled in :mod:`pymc_mixvcov.compilation.derivatives`; covariances move between
scales with the exact Jacobian ``J`` of the map: ``V_scale = J V_natural J^T``. At the
maximum-likelihood estimate this equals re-parameterising the information matrix.

Scales (rows: fixed effects, then variance parameters in lme4's theta order, i.e. the
column-major lower triangle of each term, terms in order, then the residual):

``"var"``
    variances ``cov_<group>.<term>``, covariances ``cov_<group>.<row>.<col>``, ``residual``
    (``sigma^2``); merDeriv's labels.
``"sd"``
    ``sd_<term>|<group>``, ``cor_<row>.<col>|<group>``, ``sigma``; lme4's ``sdcor``.
``"cholesky"``
    ``theta_<group>.<term>``, ``theta_<group>.<row>.<col>``: lme4's theta, the entries of the
    Cholesky factor of each term's covariance relative to ``sigma`` (``G = sigma^2 L L^T``),
    then ``sigma``.
``"natural"``
    the model's own free parameters; ``"unconstrained"``: PyMC's transformed values.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..errors import MixVcovError
from ..model.spec import GaussianSpec

__all__ = ["Scale", "SCALES", "ScaleMaps", "check_scale", "delta_method", "sd_scale_second"]

Scale = Literal["sd", "var", "cholesky", "natural", "unconstrained"]
SCALES: tuple[str, ...] = get_args(Scale)


def check_scale(scale: str) -> str:
    """Return ``scale`` if it is valid, else raise an error listing the valid ones."""
    if scale not in SCALES:
        raise MixVcovError(f"unknown scale {scale!r}; valid scales are: {', '.join(map(repr, SCALES))}")
    return scale


def _lower_tri_colmajor(r: int) -> list[tuple[int, int]]:
    return [(i, j) for j in range(r) for i in range(j, r)]


class ScaleMaps:
    """Symbolic maps ``natural -> scale`` and their labels for a :class:`GaussianSpec`."""

    def __init__(self, spec: GaussianSpec, fixed_labels: list[str] | None = None):
        self.spec = spec
        nat_labels = spec.natural_labels
        if fixed_labels is None:
            fixed_labels = [nat_labels[i] for i in spec.fixed_index]
        if len(fixed_labels) != spec.fixed_index.size:
            raise MixVcovError(
                f"{len(fixed_labels)} fixed-effect labels given for {spec.fixed_index.size} fixed effects"
            )
        self.fixed_labels = list(fixed_labels)

    def labels(self, scale: str) -> list[str]:
        check_scale(scale)
        spec = self.spec
        if scale == "natural":
            return spec.natural_labels
        if scale == "unconstrained":
            return spec.unconstrained_labels()
        out = list(self.fixed_labels)
        for t, g in zip(spec.terms, self.term_groups(), strict=True):
            e = t.effects
            for i, j in _lower_tri_colmajor(t.r):
                if scale == "var":
                    out.append(f"cov_{g}.{e[i]}" if i == j else f"cov_{g}.{e[i]}.{e[j]}")
                elif scale == "sd":
                    out.append(f"sd_{e[i]}|{g}" if i == j else f"cor_{e[i]}.{e[j]}|{g}")
                else:
                    out.append(f"theta_{g}.{e[i]}" if i == j else f"theta_{g}.{e[i]}.{e[j]}")
        if spec.gaussian:
            out.append("residual" if scale == "var" else "sigma")
        else:  # the likelihood's own parameters, as they are on every scale
            out += [spec.natural_labels[i] for i in spec.psi_index]
        return out

    def term_groups(self) -> list[str]:
        """The grouping name each term's labels carry: its factor's name, or, when an earlier term on
        the same factor has an effect of the same name (``(1 | g) + (1 | g)``), ``g.1``, ``g.2``, ...
        as R's ``make.unique`` (lme4's names of such blocks), so that no two parameters share a label."""
        seen: set[tuple[str, str]] = set()
        out = []
        for t in self.spec.terms:
            g, k = t.group, 0
            while any((g, str(e)) in seen for e in t.effects):
                k += 1
                g = f"{t.group}.{k}"
            seen.update((g, str(e)) for e in t.effects)
            out.append(g)
        return out

    def kinds(self, scale: str) -> list[str]:
        """Kind of every entry of ``scale``: ``"positive"`` (SDs, variances, diagonal Cholesky
        entries), ``"correlation"``, or ``"real"`` (fixed effects, covariances, other)."""
        check_scale(scale)
        spec = self.spec
        if scale in ("natural", "unconstrained"):
            if scale == "unconstrained":
                return ["real"] * len(self.labels(scale))
            pos = (spec.lower == 0) & ~np.isfinite(spec.upper)
            return ["positive" if k else "real" for k in pos]
        out = ["real"] * len(self.fixed_labels)
        for t in spec.terms:
            for i, j in _lower_tri_colmajor(t.r):
                if i == j:
                    out.append("positive")
                else:
                    out.append("correlation" if scale == "sd" else "real")
        if spec.gaussian:
            out.append("positive")
        else:
            pos = (spec.lower == 0) & ~np.isfinite(spec.upper)
            out += ["positive" if pos[i] else "real" for i in spec.psi_index]
        return out


def delta_method(V: np.ndarray, J: np.ndarray, depends: np.ndarray | None = None) -> np.ndarray:
    """``J V J^T``: the covariance of ``h(x)`` when ``x`` has covariance ``V`` and ``J = dh/dx``.

    Entries of ``V`` that are NaN (parameters held at a boundary) propagate only to the rows of
    ``h`` that depend on them: ``depends[i, k]`` says whether ``h_i`` depends on ``x_k`` (default:
    ``J != 0``, which misses dependence whose derivative vanishes at the boundary).
    """
    bad = np.isnan(np.diag(V))
    Vc = np.where(np.isnan(V), 0.0, V)
    Jc = np.where(np.isfinite(J), J, 0.0)
    out = Jc @ Vc @ Jc.T
    touched = ~np.all(np.isfinite(J[:, ~bad]), axis=1)
    if bad.any():
        dep = np.abs(J) > 0 if depends is None else depends
        touched |= np.any(dep[:, bad], axis=1)
    if touched.any():
        out[touched, :] = np.nan
        out[:, touched] = np.nan
    return 0.5 * (out + out.T)


def sd_scale_second(ts: np.ndarray, r_terms: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sd scale's variance entries as a function of ``ts = phi[p:]``, with exact first and
    second derivatives in closed form.

    ``ts`` holds the lower triangles (column-major, terms in order) of the absolute covariance
    factors ``L`` (``G = L L^T``) of the terms, of sizes ``r_terms``, then the entries (``sigma``, or a
    likelihood's own parameters) that the sd scale reports as they are. With ``v = L[i, :]`` and ``w = L[j, :]``
    (rows of one factor), ``u_v = v / |v|``:

    * ``sd_i = |v|``: gradient ``u_v``, Hessian ``(I - u_v u_v^T) / |v|``;
    * ``cor_ij = <v, w> / (|v| |w|) = c``: gradients ``(u_w - c u_v) / |v|`` in ``v`` and
      ``(u_v - c u_w) / |w|`` in ``w``; Hessians ``-(u_w u_v^T + u_v u_w^T + c (I - 3 u_v u_v^T)) / |v|^2``
      in ``v`` (and symmetrically in ``w``) and ``((I - u_w u_w^T) - u_v (u_v - c u_w)^T) / (|v| |w|)``
      across ``(v, w)``;

    restricted to the entries of ``L`` that are parameters (``L[i, c]``, ``c <= i``). A row of 0 (an
    SD of 0) gets value, gradient and Hessian 0, as the guarded graph of
    :func:`pymc_mixvcov.compilation.derivatives._scale_parts` gives.

    Returns
    -------
    s : numpy.ndarray, shape (m,)
    J : numpy.ndarray, shape (m, m)
        ``J[k, l] = d s_k / d ts_l``.
    H : numpy.ndarray, shape (m, m, m)
        ``H[k] = d^2 s_k / d ts^2``.
    """
    ts = np.asarray(ts, float)
    m = ts.size
    s, J, H = np.zeros(m), np.zeros((m, m)), np.zeros((m, m, m))
    off = 0
    for r in r_terms:
        pairs = _lower_tri_colmajor(r)
        pos = np.full((r, r), -1)
        L = np.zeros((r, r))
        for k, (i, j) in enumerate(pairs):
            pos[i, j] = off + k
            L[i, j] = ts[off + k]
        norm = np.sqrt(np.sum(L**2, axis=1))
        unit = np.divide(L, norm[:, None], out=np.zeros_like(L), where=norm[:, None] > 0)
        for k, (i, j) in enumerate(pairs):
            row = off + k
            pi, pj = pos[i, : i + 1], pos[j, : j + 1]
            if i == j:
                s[row] = norm[i]
                if norm[i] > 0:
                    u = unit[i, : i + 1]
                    J[row, pi] = u
                    H[row][np.ix_(pi, pi)] = (np.eye(i + 1) - np.outer(u, u)) / norm[i]
                continue
            if not (norm[i] > 0 and norm[j] > 0):
                continue
            uv, uw = unit[i], unit[j]  # rows of length r, zero beyond the diagonal
            nv, nw = norm[i], norm[j]
            c = float(uv @ uw)
            s[row] = c
            gv, gw = (uw - c * uv) / nv, (uv - c * uw) / nw
            J[row, pi] = gv[: i + 1]
            J[row, pj] += gw[: j + 1]
            eye = np.eye(r)
            Hvv = -(np.outer(uw, uv) + np.outer(uv, uw) + c * (eye - 3.0 * np.outer(uv, uv))) / nv**2
            Hww = -(np.outer(uv, uw) + np.outer(uw, uv) + c * (eye - 3.0 * np.outer(uw, uw))) / nw**2
            Hvw = ((eye - np.outer(uw, uw)) - np.outer(uv, uv - c * uw)) / (nv * nw)
            Hk = H[row]
            Hk[np.ix_(pi, pi)] += Hvv[: i + 1, : i + 1]
            Hk[np.ix_(pj, pj)] += Hww[: j + 1, : j + 1]
            Hk[np.ix_(pi, pj)] += Hvw[: i + 1, : j + 1]
            Hk[np.ix_(pj, pi)] += Hvw[: i + 1, : j + 1].T
        off += len(pairs)
    for k in range(off, m):
        s[k] = ts[k]
        J[k, k] = 1.0
    return s, J, H
