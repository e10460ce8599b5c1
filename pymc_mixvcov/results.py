"""The result of a fit: estimates, log-likelihood and covariance matrices on every scale."""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import numpy as np
import pandas as pd

from .errors import MixVcovError, SingularFitWarning
from .scales import check_scale, delta_method

__all__ = ["MixedFit", "Information"]

Information = Literal["observed", "expected"]
INFORMATIONS: tuple[str, ...] = get_args(Information)

#: lme4's ``isSingular`` tolerance on the relative Cholesky factor's diagonal.
SINGULAR_TOL = 1e-4


def _check_information(information: str) -> str:
    if information not in INFORMATIONS:
        raise MixVcovError(
            f"unknown information {information!r}; valid values are: {', '.join(map(repr, INFORMATIONS))}"
        )
    return information


def invert_information(A: np.ndarray, held: np.ndarray, labels: list[str]) -> np.ndarray:
    """Inverse of the information ``A``, with the parameters in ``held`` fixed (NaN rows).

    The inverse is taken through a Cholesky factorisation of the correlation-scaled matrix.
    When that fails or the matrix is numerically singular (reciprocal condition number below
    ``1e-12``), the parameter with the largest loading on the weakest direction is held
    fixed as well and a :class:`SingularFitWarning` names it. Never a pseudo-inverse.
    """
    held = held.copy()
    P = A.shape[0]
    while True:
        keep = ~held
        V = np.full((P, P), np.nan)
        if not keep.any():
            return V
        sub = A[np.ix_(keep, keep)]
        d = np.sqrt(np.abs(np.diag(sub)))
        d[d == 0] = 1.0
        scaled = sub / np.outer(d, d)
        w, vecs = np.linalg.eigh(0.5 * (scaled + scaled.T))
        if w[0] > 1e-12 * max(w[-1], 1.0):
            L = np.linalg.cholesky(scaled)
            inv = np.linalg.solve(L.T, np.linalg.solve(L, np.eye(L.shape[0])))
            V[np.ix_(keep, keep)] = inv / np.outer(d, d)
            return 0.5 * (V + V.T)
        worst = np.flatnonzero(keep)[int(np.argmax(np.abs(vecs[:, 0])))]
        warnings.warn(
            f"the information matrix is singular (smallest scaled eigenvalue {w[0]:.3g}); parameter "
            f"{labels[worst]!r} is not identified at this estimate. Its variance is reported as NaN "
            "and the others are computed with it held fixed.",
            SingularFitWarning,
            stacklevel=4,
        )
        held[worst] = True


class MixedFit:
    """A fitted mixed model (frozen; covariance matrices are computed once and cached).

    Attributes
    ----------
    loglik : float
        The maximised log-likelihood: ML, or REML (lme4's ``logLik`` for REML fits).
    converged : bool
        Whether the optimiser reached a stationary point (Newton decrement below 1e-6).
    method : {"ML", "REML"}
    """

    def __init__(
        self,
        *,
        spec,
        structure,
        scales,
        functions,
        method,
        optimum,
        converged,
        iterations,
        grad_norm,
        at_bound,
        message,
    ):
        self.spec = spec
        self.structure = structure
        self._scales = scales
        self._functions = functions
        self.method = method
        self._opt = optimum
        self.converged = bool(converged)
        self.iterations = int(iterations)
        self.grad_norm = float(grad_norm)
        self.at_bound = at_bound
        self.message = message
        self.loglik = float(optimum["loglik"])
        self._vcov_nat: dict[str, np.ndarray] = {}
        self._warn_boundary()

    # -- basic facts ---------------------------------------------------------------------------
    @property
    def nobs(self) -> int:
        """Number of observations."""
        return self.spec.n

    @property
    def n_clusters(self) -> int:
        """Number of independent clusters of the marginal likelihood."""
        return self.structure.n_clusters

    @property
    def singular(self) -> bool:
        """Whether a variance parameter sits on its boundary (lme4's ``isSingular``)."""
        return bool(self.at_bound.any()) or bool(self._small_theta().any())

    def _small_theta(self) -> np.ndarray:
        vals = self._opt["value_cholesky"]
        diag = np.zeros(vals.size, bool)
        k = self.spec.fixed_index.size
        for t in self.spec.terms:
            for col in range(t.r):
                for row in range(col, t.r):
                    diag[k] = row == col
                    k += 1
        return diag & (np.abs(vals) < SINGULAR_TOL)

    def _warn_boundary(self) -> None:
        if not self.singular:
            return
        sd_labels = self._scales.labels("sd")
        names = [sd_labels[i] for i in np.flatnonzero(self._small_theta())]
        held = [self.spec.natural_labels[i] for i in np.flatnonzero(self.at_bound)]
        warnings.warn(
            f"boundary (singular) fit: {', '.join(names) or ', '.join(held)} estimated at 0"
            f"{' (natural parameter ' + ', '.join(held) + ' at its bound)' if held else ''}. "
            "The usual asymptotics do not hold on the boundary: the covariance is computed with "
            "the boundary parameters held fixed, so it is conditional on them, and entries that "
            "involve them are NaN. Consider removing that random-effect term.",
            SingularFitWarning,
            stacklevel=3,
        )

    # -- estimates ----------------------------------------------------------------------------
    def labels(self, scale: str = "sd") -> list[str]:
        """Parameter labels on ``scale``."""
        return self._scales.labels(check_scale(scale))

    def params(self, scale: str = "sd") -> pd.Series:
        """Estimates on ``scale`` (``"sd"``, ``"var"``, ``"cholesky"``, ``"natural"``, ``"unconstrained"``)."""
        check_scale(scale)
        values = self._opt["nat"] if scale == "natural" else self._opt[f"value_{scale}"]
        return pd.Series(np.asarray(values, float), index=self.labels(scale), name="estimate")

    # -- covariances --------------------------------------------------------------------------
    def information(self, information: Information = "observed") -> pd.DataFrame:
        """Information matrix on the natural scale (observed: ``-d2 log L``; expected: Fisher)."""
        _check_information(information)
        lab = self.spec.natural_labels
        return pd.DataFrame(self._opt[information], index=lab, columns=lab)

    def _vcov_natural(self, information: str) -> np.ndarray:
        if information not in self._vcov_nat:
            self._vcov_nat[information] = invert_information(
                self._opt[information], self.at_bound, self.spec.natural_labels
            )
        return self._vcov_nat[information]

    def _dependence(self, scale: str) -> np.ndarray:
        """Which scale entries depend on which natural parameters (Jacobian pattern off the boundary)."""
        nat = self._opt["nat"].copy()
        lower = self.spec.lower
        bump = 0.1 * (1.0 + np.nanmean(np.abs(nat)))
        nat = np.where(np.isfinite(lower) & (nat <= lower + 1e-12), lower + bump, nat)
        nat = nat + 1e-3 * bump * np.random.default_rng(0).uniform(size=nat.size)
        return np.abs(self._functions.scales(nat)[f"jac_{scale}"]) > 0

    def vcov(self, scale: str = "var", information: Information = "observed") -> pd.DataFrame:
        """Covariance matrix of all parameters: fixed effects and variance components.

        Parameters
        ----------
        scale : {"var", "sd", "cholesky", "natural", "unconstrained"}
            Reporting scale (see :mod:`pymc_mixvcov.scales`); converted with the exact Jacobian.
        information : {"observed", "expected"}
            Inverse observed information (exact Hessian) or inverse expected (Fisher)
            information (closed form, zero fixed/variance cross block).

        Returns
        -------
        pandas.DataFrame
            Labelled ``P x P`` matrix.
        """
        check_scale(scale)
        _check_information(information)
        V = self._vcov_natural(information)
        if scale != "natural":
            held = np.isnan(np.diag(V))
            V = delta_method(V, self._opt[f"jac_{scale}"], self._dependence(scale) if held.any() else None)
        lab = self.labels(scale)
        return pd.DataFrame(V, index=lab, columns=lab)

    def se(self, scale: str = "sd", information: Information = "observed") -> pd.Series:
        """Standard errors on ``scale``: square roots of the diagonal of :meth:`vcov`."""
        V = self.vcov(scale, information)
        return pd.Series(np.sqrt(np.diag(V.to_numpy())), index=V.index, name="se")

    def __repr__(self) -> str:
        return (
            f"MixedFit(method={self.method!r}, loglik={self.loglik:.4f}, nobs={self.nobs}, "
            f"clusters={self.n_clusters}, converged={self.converged})"
        )
