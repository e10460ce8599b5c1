"""The var, sd and cholesky scales of a Gaussian model and their Jacobians in ``phi``, in closed form.

The same values and derivatives as the pytensor graph of
:func:`pymc_mixvcov.compilation.derivatives._build_scales` (``tail="sigma"``), for the blocked
engine, whose functions need no compiled graph of their own: a small crossed fit then loads
nothing from the compile cache but the model's map. With ``phi = (beta, theta, sigma)``, ``theta``
the lower triangles (column-major) of the absolute factors ``L_k`` and ``G_k = L_k L_k^T``:

* var: ``beta``, the lower triangle of each ``G_k``, ``sigma^2``;
* sd: ``beta``, ``sd_i = sqrt(G_ii)`` on the diagonal and ``rho_ij = G_ij / (sd_i sd_j)`` below it, ``sigma``;
* cholesky (lme4's theta): ``beta``, ``L_k / sigma``, ``sigma``;

with ``dG_ij / dL_uv = delta_iu L_jv + delta_ju L_iv``, ``d sd_i = dG_ii / (2 sd_i)``,
``d rho_ij = dG_ij / (sd_i sd_j) - rho_ij (d sd_i / sd_i + d sd_j / sd_j)``. As in the graph, ``G_ii``
is kept at least ``1e-300`` under the square root (a boundary fit).
"""

from __future__ import annotations

import numpy as np

__all__ = ["closed_form_scales"]


def _lower(r: int) -> list[tuple[int, int]]:
    return [(i, j) for j in range(r) for i in range(j, r)]


def closed_form_scales(phi: np.ndarray, p: int, r_terms: tuple[int, ...]) -> list[np.ndarray]:
    """``[var, J_var, sd, J_sd, cholesky, J_cholesky]`` at ``phi`` (Jacobians in ``phi``)."""
    phi = np.asarray(phi, float)
    dim = phi.size
    sigma = phi[-1]
    vals = {k: [phi[:p]] for k in ("var", "sd", "cholesky")}
    jacs = {k: [np.eye(p, dim)] for k in ("var", "sd", "cholesky")}
    off = p
    for r in r_terms:
        idx = _lower(r)
        m = len(idx)
        L = np.zeros((r, r))
        for a, (i, j) in enumerate(idx):
            L[i, j] = phi[off + a]
        G = L @ L.T
        # dG[i, j, a] = d G_ij / d theta_a
        dG = np.zeros((r, r, m))
        for a, (u, v) in enumerate(idx):
            E = np.zeros((r, r))
            E[u, v] = 1.0
            dG[:, :, a] = E @ L.T + L @ E.T
        sd = np.sqrt(np.maximum(np.diag(G), 1e-300))
        dsd = np.array([dG[i, i] / (2.0 * sd[i]) if G[i, i] > 1e-300 else np.zeros(m) for i in range(r)])
        var_v, sd_v, ch_v = [], [], []
        var_j = np.zeros((m, dim))
        sd_j = np.zeros((m, dim))
        ch_j = np.zeros((m, dim))
        cols = slice(off, off + m)
        for b, (i, j) in enumerate(idx):
            var_v.append(G[i, j])
            var_j[b, cols] = dG[i, j]
            if i == j:
                sd_v.append(sd[i])
                sd_j[b, cols] = dsd[i]
            else:
                rho = G[i, j] / (sd[i] * sd[j])
                sd_v.append(rho)
                sd_j[b, cols] = dG[i, j] / (sd[i] * sd[j]) - rho * (dsd[i] / sd[i] + dsd[j] / sd[j])
            ch_v.append(L[i, j] / sigma)
            ch_j[b, off + b] = 1.0 / sigma
            ch_j[b, -1] = -L[i, j] / sigma**2
        for name, v, jac in (("var", var_v, var_j), ("sd", sd_v, sd_j), ("cholesky", ch_v, ch_j)):
            vals[name].append(np.array(v))
            jacs[name].append(jac)
        off += m
    last = np.zeros((1, dim))
    for name, value, deriv in (("var", sigma**2, 2.0 * sigma), ("sd", sigma, 1.0), ("cholesky", sigma, 1.0)):
        vals[name].append(np.array([value]))
        row = last.copy()
        row[0, -1] = deriv
        jacs[name].append(row)
    out = []
    for name in ("var", "sd", "cholesky"):
        out += [np.concatenate(vals[name]), np.vstack(jacs[name])]
    return out
