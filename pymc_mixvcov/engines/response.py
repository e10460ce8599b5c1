"""The same model with another response: an engine's functions on new data, nothing recompiled.

A parametric bootstrap refits one model to many simulated responses ``y*``. The design (``X``,
``Z``, the clusters, the model map ``nat -> phi``) is that of the fit; only the data statistics that
involve the response change, and every engine takes those as *inputs* of its compiled functions
(:mod:`pymc_mixvcov.compilation.derivatives`), never as constants. So a replicate's functions are a
shallow copy of the fit's with these inputs replaced and the per-point caches dropped:

* the cluster engine (:mod:`pymc_mixvcov.engines.marginal`): per cluster ``c``, ``Z_c^T y_c``,
  ``X_c^T y_c`` and ``y_c^T y_c`` (and ``X^T y``, ``y^T y`` of the observations that use no random
  effect). With ``r`` the response net of the offset and of its own least-squares fit (as the fit's,
  :func:`pymc_mixvcov.engines.blocked_layout.centred_response`; the coefficients ``b0`` go with the
  new structure) these are ``S_b r``, ``S_x r`` and ``S_1 (r * r)`` for sparse matrices ``S`` of the
  design, built once: a swap costs three sparse products and a least-squares fit, ``O(n (R + p^2))``;
* the blocked engine (:mod:`pymc_mixvcov.engines.blocked`): ``Z^T r``, ``X^T r`` and ``r^T r``;
* the Laplace engines (:mod:`pymc_mixvcov.engines.jets`, :mod:`pymc_mixvcov.engines.laplace`,
  :mod:`pymc_mixvcov.engines.blocked_laplace`): ``y`` itself; the conditional modes of the fit are
  kept as the inner search's start.

:class:`ResponseSwap` holds the fit's functions and these maps, and is picklable (with
``cloudpickle``): it is what bootstrap workers receive, once per task.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from ..errors import MixVcovError

__all__ = ["ResponseSwap", "StackedResponses", "affine_map", "cluster_response_maps"]


def cluster_response_maps(spec, structure) -> list[tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]]:
    """Sparse maps from the response to each batch's statistics ``(b, Xy, yy)``.

    For batch ``k`` with ``C`` clusters of ``s`` random effects and ``p`` fixed effects, returns
    ``(S_b, S_x, S_1)`` of shapes ``(C s, n)``, ``(C p, n)`` and ``(C, n)`` with
    ``b = S_b r``, ``Xy = S_x r`` and ``yy = S_1 (r * r)`` (flattened row-major), ``r = y - offset``:
    the sums of :func:`pymc_mixvcov.engines.marginal.build_structure` written as matrices.
    """
    from ..model.weights import whitened

    X = whitened(spec)[0]  # rows scaled by sqrt(w) with precision weights, as the statistics are
    n, p = X.shape
    oc = structure.obs_cluster
    pos_m, val_m = structure.obs_pos, structure.obs_val
    out = []
    for bt in structure.batches:
        s, C = bt.s, bt.clusters.size
        bidx = np.full(structure.n_clusters, -1)
        bidx[bt.clusters] = np.arange(C)
        obs = np.flatnonzero((oc >= 0) & (bidx[np.maximum(oc, 0)] >= 0))
        ci = bidx[oc[obs]]
        used = pos_m[obs] >= 0
        R = pos_m.shape[1]
        rows_b = (ci[:, None] * s + np.where(used, pos_m[obs], 0))[used]
        cols_b = np.broadcast_to(obs[:, None], (obs.size, R))[used]
        S_b = sp.csr_matrix((val_m[obs][used], (rows_b, cols_b)), shape=(C * s, n))
        rows_x = (ci[:, None] * p + np.arange(p)[None, :]).ravel()
        cols_x = np.repeat(obs, p)
        S_x = sp.csr_matrix((X[obs].ravel(), (rows_x, cols_x)), shape=(C * p, n))
        S_1 = sp.csr_matrix((np.ones(obs.size), (ci, obs)), shape=(C, n))
        for S in (S_b, S_x, S_1):
            S.sum_duplicates()
        out.append((S_b, S_x, S_1))
    return out


class ResponseSwap:
    """The functions of a fit, ready to be given another response (see the module docstring).

    Parameters
    ----------
    functions : LMMFunctions, BlockedLMMFunctions, LaplaceFunctions or MAPFunctions
        The fit's functions (``MixedFit._functions``).

    Calling it with a response ``y`` (the observed variable's values, offset included, in the
    order of the observations) returns ``(functions, spec)`` for that response: new objects, the
    fit's are not modified.
    """

    def __init__(self, functions):
        self.functions = functions
        base = functions.base if _is_map(functions) else functions
        self.kind = type(base).__name__
        from ..model.weights import whitened

        #: sqrt(w) of precision weights (None without): the engines' statistics are of scaled rows
        self.row_scale = whitened(base.spec)[2] if base.spec.gaussian else None
        if self.kind == "LMMFunctions":
            self._maps = cluster_response_maps(base.spec, base.structure)
            self._free = np.flatnonzero(base.structure.obs_cluster < 0)
            self._X = whitened(base.spec)[0]
            self._X_free = self._X[self._free]
        elif self.kind not in ("BlockedLMMFunctions", "LaplaceFunctions", "BlockedLaplaceFunctions"):
            raise MixVcovError(f"cannot give a new response to the functions of a {self.kind}")

    @property
    def spec(self):
        return self.functions.spec

    def __call__(self, y: np.ndarray):
        y = np.asarray(y, float).reshape(-1)
        spec = self.spec
        if y.shape != spec.y.shape:
            raise MixVcovError(f"a new response needs {spec.y.size} values, got {y.size}")
        new_spec = replace(spec, y=y)
        fns = self.functions
        if _is_map(fns):
            base = self._swap(fns.base, new_spec, y)
            out = copy.copy(fns)
            out.base, out.spec, out.structure = base, new_spec, base.structure
            return out, new_spec
        return self._swap(fns, new_spec, y), new_spec

    def _swap(self, fns, spec, y: np.ndarray):
        out = copy.copy(fns)
        out.spec = spec
        if self.kind == "LMMFunctions":
            out.structure, out.data = self._cluster_data(fns, self.scaled(y))
            out.__dict__.pop("_last_clusters", None)
        elif self.kind == "BlockedLMMFunctions":
            d = fns.data
            r = self.scaled(y)
            out.data = d.with_response(r)
            out.__dict__.pop("_last_ml", None)
            out._profiles = []  # the fit's profiled criteria, of its own response
        elif self.kind == "BlockedLaplaceFunctions":  # the response is its jets' data alone
            jet = copy.copy(fns.jet)
            jet.y, jet.last_vprime, jet._mode_factor = y, None, None
            out.jet = out._jet_pieces = jet
            out._last, out._modes_at, out.modes_converged = None, None, True
        else:  # LaplaceFunctions: the response is one of the data inputs (laplace_data's third)
            out.data = [*fns.data[:2], y, *fns.data[3:]]
            jet = copy.copy(fns._jet_pieces)
            jet.y, jet.last_vprime = y, None
            out._jet_pieces = jet
            out.jet = jet if fns.jet is not None else None
            for key in ("_last", "_modes_at"):
                out.__dict__.pop(key, None)
            out.modes_converged = True
        return out

    def scaled(self, y: np.ndarray) -> np.ndarray:
        """``y - offset``, scaled by ``sqrt(w)`` with precision weights: what the statistics sum."""
        r = np.asarray(y, float) - np.asarray(self.spec.offset, float)
        return r if self.row_scale is None else r * self.row_scale

    def _cluster_data(self, fns, r: np.ndarray):
        """The cluster engine's structure and data inputs (``data_values``' order) for ``r``, centred by
        its own least-squares fit (the structure's ``b0``)."""
        from .blocked_layout import centred_response
        from .marginal import data_values

        b0, r = centred_response(self._X, r)
        structure = fns.structure
        batches = []
        for bt, (S_b, S_x, S_1) in zip(structure.batches, self._maps, strict=True):
            C, s, p = bt.clusters.size, bt.s, structure.p
            batches.append(
                replace(
                    bt,
                    b=(S_b @ r).reshape(C, s),
                    Xy=(S_x @ r).reshape(C, p),
                    yy=S_1 @ (r * r),
                )
            )
        rf = r[self._free]
        XXf, _, _, nf = structure.free
        new = replace(structure, batches=batches, free=(XXf, self._X_free.T @ rf, float(rf @ rf), nf), b0=b0)
        return new, data_values(new)


def _is_map(functions) -> bool:
    return type(functions).__name__ == "MAPFunctions"


def affine_map(model_map, nat: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """``(J, c)`` with ``phi(x) = J x + c`` where the model map looks affine, else ``None``.

    Formula-built models map their natural parameters to the core ones by the identity (or a
    selection); evaluating such a map and its derivatives costs as much as the rest of a stacked
    evaluation. Affine here means: the second derivatives ``T`` exactly 0 and the Jacobian the
    same at ``nat`` and at two points around it. This is a numerical observation, so users of the
    shortcut check the true map at their final points (:meth:`StackedResponses.check`).
    """
    rng = np.random.default_rng(20261127)
    phi0, J0, T0 = model_map(nat)
    if np.any(T0 != 0):
        return None
    for _ in range(2):
        x = nat + 0.1 * (np.abs(nat) + 1.0) * rng.standard_normal(nat.size)
        x = np.where((x > lower) & (x < upper), x, nat)
        phi, J, T = model_map(x)
        if np.any(T != 0) or not np.array_equal(J, J0):
            return None
        if not np.allclose(phi, J0 @ x + (phi0 - J0 @ nat), rtol=1e-12, atol=1e-12 * (1 + np.abs(phi).max())):
            return None
    return np.asarray(J0, float), np.asarray(phi0 - J0 @ nat, float)


class StackedResponses:
    """Log-likelihood, gradient and observed information of many responses at once (cluster engine, ML).

    The cluster engine's per-cluster function (``cluster_observed``: every cluster's log-likelihood,
    score and Hessian in ``phi``, with ``phi`` given per cluster) does not care which data set a
    cluster belongs to. ``K`` responses of the same design are ``K`` copies of its clusters with
    their own ``Z_c^T y_c``, ``X_c^T y_c``, ``y_c^T y_c`` and their own parameters: one evaluation
    for all of them, summed per response, costs little more than one (the evaluator's cost is per
    graph node, not per cluster). Then, per response, ``grad_nat = J^T g_phi`` and
    ``A_nat = -(J^T H_phi J + sum_k (g_phi)_k T_k)`` as in :class:`LMMFunctions.clusters`.

    Applies to ML fits by the cluster engine of models whose every observation uses a random
    effect (:meth:`applies`); the observations without one enter through a single shared parameter
    vector in the compiled function.
    """

    def __init__(self, swap: ResponseSwap, ys: np.ndarray, affine: tuple | None = None):
        fns = swap.functions
        self.affine = affine
        self.fns, self.swap = fns, swap
        structure = fns.structure
        # each response net of its own least-squares fit, exactly as ResponseSwap centres it (one at
        # a time: a replicate's numbers do not depend on the others); its b0 shifts its beta
        from .blocked_layout import centred_response

        centred = [centred_response(swap._X, swap.scaled(y)) for y in np.asarray(ys, float)]
        self.b0 = np.stack([b0 for b0, _ in centred])  # (K, p)
        R = np.stack([r for _, r in centred], axis=1)  # (n, K)
        self.K = R.shape[1]
        self.stats = []
        for bt, (S_b, S_x, S_1) in zip(structure.batches, swap._maps, strict=True):
            C, s, p = bt.clusters.size, bt.s, structure.p
            b = np.asarray(S_b @ R).T.reshape(self.K, C, s)
            Xy = np.asarray(S_x @ R).T.reshape(self.K, C, p)
            yy = np.asarray(S_1 @ (R * R)).T.reshape(self.K, C)
            self.stats.append((b, Xy, yy))
        p = structure.p
        self._free = [np.zeros((p, p)), np.zeros(p), np.asarray(0.0), np.asarray(0.0)]

    @staticmethod
    def applies(functions) -> bool:
        """Whether ``functions`` (a fit's) can be stacked: cluster engine, ML, no free observations."""
        return (
            type(functions).__name__ == "LMMFunctions"
            and functions.method == "ML"
            and int(functions.structure.free[3]) == 0
        )

    def information(self, rows: np.ndarray, nats: np.ndarray) -> list[dict]:
        """``{"loglik", "grad", "observed"}`` of response ``rows[i]`` at ``nats[i]``, for every ``i``."""
        fns = self.fns
        rows = np.asarray(rows, int)
        m = rows.size
        if self.affine is not None:
            J0, c0 = self.affine
            maps = [(J0 @ x + c0, J0, None) for x in nats]
        else:
            maps = [fns.map(x) for x in nats]
        phis = np.stack([mp[0] for mp in maps])
        phis[:, : self.b0.shape[1]] -= self.b0[rows]  # beta - b0 of each response (engines.marginal)
        inputs_phi, data = [], []
        for bt, (b, Xy, yy) in zip(fns.structure.batches, self.stats, strict=True):
            C = bt.clusters.size
            inputs_phi.append(np.repeat(phis, C, axis=0))
            data += [
                np.tile(bt.A, (m, 1, 1)),
                np.tile(bt.B, (m, 1, 1)),
                b[rows].reshape(m * C, bt.s),
                np.tile(bt.XX, (m, 1, 1)),
                Xy[rows].reshape(m * C, -1),
                yy[rows].reshape(m * C),
                np.tile(bt.nobs, m),
                np.tile(bt.lam_idx.astype(np.int64), (m, 1, 1)),
            ]
        nb = len(fns.structure.batches)
        res = fns._fn("cluster_observed")(*inputs_phi, phis[0], *data, *self._free)
        dim = phis.shape[1]
        ll, g, H = np.zeros(m), np.zeros((m, dim)), np.zeros((m, dim, dim))
        for k, bt in enumerate(fns.structure.batches):
            C = bt.clusters.size
            ll += np.asarray(res[k]).reshape(m, C).sum(1)
            g += np.asarray(res[nb + 1 + k]).reshape(m, C, dim).sum(1)
            H += np.asarray(res[2 * nb + 2 + k]).reshape(m, C, dim, dim).sum(1)
        out = []
        for i, (_, J, T) in enumerate(maps):
            observed = J.T @ H[i] @ J if T is None else J.T @ H[i] @ J + np.einsum("k,kij->ij", g[i], T)
            # precision weights: sum log(w) / 2, the constant the cluster engine adds (0 without)
            ll_i = float(ll[i]) + float(getattr(fns, "_half_logw_total", 0.0))
            out.append({"loglik": ll_i, "grad": J.T @ g[i], "observed": -observed})
        return out

    def check(self, nat: np.ndarray) -> bool:
        """Whether the affine shortcut (if any) is exact at ``nat``: the true map's value, Jacobian and
        second derivatives there are the shortcut's."""
        if self.affine is None:
            return True
        J0, c0 = self.affine
        phi, J, T = self.fns.map(nat)
        scale = 1e-12 * (1.0 + np.abs(phi).max())
        return bool(
            np.all(T == 0) and np.array_equal(J, J0) and np.allclose(phi, J0 @ nat + c0, rtol=1e-12, atol=scale)
        )
