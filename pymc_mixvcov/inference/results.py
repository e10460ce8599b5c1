"""The result of a fit: estimates, log-likelihood and covariance matrices on every scale."""

from __future__ import annotations

import warnings
from typing import Literal, get_args

import numpy as np
import pandas as pd

from ..errors import MixVcovError, SingularFitWarning
from .ddf import DDF, AnovaType
from .sandwich import ADJUSTS, Adjust, check_adjust, estfun, vcov_cluster, vcov_multiway
from .scales import check_scale, delta_method

__all__ = ["MixedFit", "Information", "RemlCross"]

Information = Literal["observed", "expected"]
INFORMATIONS: tuple[str, ...] = get_args(Information)
#: The fixed/variance cross block of a REML fit's observed information (see :meth:`MixedFit.vcov`).
RemlCross = Literal["zero", "ml"]
REML_CROSSES: tuple[str, ...] = get_args(RemlCross)
Level = Literal["cluster", "observation"]
LEVELS: tuple[str, ...] = get_args(Level)

#: lme4's ``isSingular`` tolerance on the relative Cholesky factor's diagonal.
SINGULAR_TOL = 1e-4


def _check_information(information: str) -> str:
    if information not in INFORMATIONS:
        raise MixVcovError(
            f"unknown information {information!r}; valid values are: {', '.join(map(repr, INFORMATIONS))}"
        )
    return information


def _check_reml_cross(reml_cross: str) -> str:
    if reml_cross not in REML_CROSSES:
        raise MixVcovError(f"unknown reml_cross {reml_cross!r}; valid values are: {', '.join(map(repr, REML_CROSSES))}")
    return reml_cross


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise MixVcovError(f"unknown level {level!r}; valid values are: {', '.join(map(repr, LEVELS))}")
    return level


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
        The maximised log-likelihood: ML, or REML (lme4's ``logLik`` for REML fits); for MAP
        fits the log-likelihood at the marginal posterior mode, priors excluded.
    converged : bool
        Whether the optimiser reached a stationary point (Newton decrement below 1e-6).
    method : {"ML", "REML", "MAP"}
    engine : {"clusters", "blocked", "laplace"}
        The engine that evaluated the likelihood and its derivatives (see :func:`pymc_mixvcov.optimise.fit`):
        cluster by cluster (Gaussian), the blocked sparse factor (large crossed designs: exact for
        Gaussian models, the Laplace approximation for others), or the Laplace/quadrature engine
        cluster by cluster (other likelihoods).
    nagq : int
        Quadrature points per random effect: 1 for the Laplace approximation (and for Gaussian
        models, whose marginal likelihood is exact), more for adaptive Gauss-Hermite quadrature.
    formula, family, link, data_name : str or None
        What a formula front end fitted (shown by :meth:`summary` and the notebook display);
        ``None`` for hand-written models.
    """

    formula: str | None = None
    family: str | None = None
    link: str | None = None
    data_name: str | None = None

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
        data=None,
        cluster=None,
        nagq=1,
        engine="clusters",
    ):
        self.spec = spec
        self.engine = str(engine)
        self.nagq = int(nagq)
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
        self._cache: dict[str, object] = {}
        self.data = data
        self._default_cluster = cluster
        self._warn_boundary()

    # -- information criteria ------------------------------------------------------------------
    @property
    def df(self) -> int:
        """Number of estimated parameters, lme4's ``attr(logLik(fit), "df")``.

        Every free parameter of the model counts: the fixed effects, the variance parameters
        (for a term of ``r`` correlated effects, ``r (r + 1) / 2``), the residual SD of Gaussian
        models and the likelihood's own parameters (a negative binomial's dispersion). Parameters
        estimated on their boundary count too, as in lme4.
        """
        return self.spec.n_params

    def _criterion_loglik(self, what: str) -> float:
        if self.method == "MAP":
            raise MixVcovError(
                f"{what} needs the maximised likelihood, but this fit maximises the posterior (method='MAP'); "
                "refit with method='ML' (or 'REML')"
            )
        return self.loglik

    @property
    def aic(self) -> float:
        """Akaike's information criterion, ``-2 loglik + 2 df`` (lme4's ``AIC``).

        For REML fits ``loglik`` is the REML criterion, as in lme4: such AICs compare only models
        with the same fixed effects (:func:`pymc_mixvcov.inference.anova` refits them by ML). GLMMs with
        ``nAGQ > 1``: ``loglik`` is the full marginal log-likelihood, whereas lme4's ``logLik``
        leaves out the saturated model's log-likelihood there. MAP fits raise
        :class:`MixVcovError`.
        """
        return -2.0 * self._criterion_loglik("AIC") + 2.0 * self.df

    @property
    def bic(self) -> float:
        """Schwarz's Bayesian information criterion, ``-2 loglik + log(n) df`` (lme4's ``BIC``).

        ``n`` is the number of observations (:attr:`nobs`), for REML fits too, as in lme4. See
        :attr:`aic` for the log-likelihood used.
        """
        return -2.0 * self._criterion_loglik("BIC") + np.log(self.nobs) * self.df

    # -- small-sample tests of the fixed effects (Satterthwaite, Kenward-Roger) ----------------
    def _ddf_methods(self):
        from .ddf import DDFMethods

        if "ddf" not in self._cache:
            self._cache["ddf"] = DDFMethods(self)
        return self._cache["ddf"]

    def ttest(self, ddf: DDF | None = "satterthwaite") -> pd.DataFrame:
        """t-test of each fixed effect with small-sample degrees of freedom (lmerTest's ``summary``).

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger"} or None
            Satterthwaite's approximation (ML and REML fits), Kenward and Roger's (REML fits; the
            standard error is then from the adjusted covariance :meth:`vcov_kr`), or ``None`` for
            the large-sample z test (``df = inf``). Formulas in :mod:`pymc_mixvcov.inference.ddf`.

        Returns
        -------
        pandas.DataFrame
            One row per fixed effect: ``estimate, se, df, t, p`` (two-sided).

        Raises
        ------
        MixVcovError
            Non-Gaussian models, MAP fits; Kenward-Roger on an ML or singular fit.
        """
        from .ddf import check_ddf

        return self._ddf_methods().ttest(check_ddf(ddf))

    def test(self, hypothesis, ddf: DDF | None = "satterthwaite") -> pd.DataFrame:
        """Test the linear hypothesis ``L beta = r`` (lmerTest's ``contest``, pbkrtest's ``KRmodcomp``).

        Parameters
        ----------
        hypothesis : str, list of str, array_like or pandas.DataFrame
            ``"Days = 0"``, ``"phasemid = phaselate"``, ``"(Intercept) + 5 Days = 300"``, several
            equations separated by ``;`` (a joint test), or the matrix ``L`` (``r = 0``); see
            :func:`pymc_mixvcov.inference.ddf.parse_hypothesis`.
        ddf : {"satterthwaite", "kenward-roger"} or None

        Returns
        -------
        pandas.DataFrame
            One row: ``F, ndf, ddf, p``; for a single equation also ``estimate`` (of ``L beta``),
            ``se`` and ``t = (L beta - r) / se`` (``F = t^2``).
        """
        from .ddf import check_ddf, parse_hypothesis

        ddf = check_ddf(ddf)
        m = self._ddf_methods()
        L, r = parse_hypothesis(hypothesis, m.fixed_labels)
        F, ndf, den, p = m.ftest(L, r, ddf)
        row = {"F": F, "ndf": ndf, "ddf": den, "p": p}
        if L.shape[0] == 1:
            est, se, _, t, _ = m.contrast_t(L[0], float(r[0]), ddf)
            row = {"estimate": est, "se": se, "t": t, **row}
        name = hypothesis if isinstance(hypothesis, str) else "L beta = r"
        return pd.DataFrame([row], index=[name])

    def anova(self, ddf: DDF | None = "satterthwaite", type: AnovaType = "III") -> pd.DataFrame:  # noqa: A002
        """F-test of each model term (lmerTest's ``anova``) with small-sample denominator df.

        Formula models: one row per term, with lmerTest's type III or II hypotheses (see
        :func:`pymc_mixvcov.inference.ddf.term_hypotheses`). Hand-written models: one row per fixed effect
        (per vector-valued fixed-effect variable), testing that it is 0.

        Parameters
        ----------
        ddf : {"satterthwaite", "kenward-roger"} or None
        type : {"III", "II"}

        Returns
        -------
        pandas.DataFrame
            ``F, ndf, ddf, p``, one row per term.
        """
        from .ddf import ANOVA_TYPES, check_ddf, term_hypotheses

        ddf = check_ddf(ddf)
        if type not in ANOVA_TYPES:
            raise MixVcovError(f"unknown type {type!r}; valid values are: {', '.join(map(repr, ANOVA_TYPES))}")
        m = self._ddf_methods()
        rows = {t: m.ftest(L, np.zeros(L.shape[0]), ddf) for t, L in term_hypotheses(self, type).items()}
        return pd.DataFrame.from_dict(rows, orient="index", columns=["F", "ndf", "ddf", "p"])

    def vcov_kr(self) -> pd.DataFrame:
        """Kenward and Roger's adjusted covariance of the fixed effects (pbkrtest's ``vcovAdj``), REML fits."""
        m = self._ddf_methods()
        return pd.DataFrame(m.kr_vcov(), index=m.fixed_labels, columns=m.fixed_labels)

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
        """Diagonal entries of the covariance factors that are 0 to within ``SINGULAR_TOL``.

        lme4's ``isSingular`` compares ``theta`` (the factor relative to ``sigma`` for Gaussian
        models) with ``1e-4``; here each diagonal entry ``theta_jj`` is first multiplied by the root
        mean square of its design column ``z_j``, which makes the test free of the predictor's
        units (``theta_jj rms(z_j)`` is the random effect's share of the linear predictor, relative
        to the residual SD).
        """
        from ..optimise.start import rms_columns

        vals = self._opt["value_cholesky"]
        diag = np.zeros(vals.size, bool)
        size = np.ones(vals.size)
        k = self.spec.fixed_index.size
        for t in self.spec.terms:
            rms = rms_columns(t.z, t.codes)
            for col in range(t.r):
                for row in range(col, t.r):
                    diag[k] = row == col
                    size[k] = rms[row]
                    k += 1
        return diag & (np.abs(vals) * size < SINGULAR_TOL)

    def _boundary_terms(self) -> tuple[list[str], list[str]]:
        """What is at the boundary, term by term: ``(SDs at 0, rank-deficient covariances)``.

        A diagonal entry ``L_jj`` of a term's relative Cholesky factor below ``SINGULAR_TOL``
        (lme4's ``isSingular``) means one of two things. If the whole row ``j`` of ``L`` is
        below it, effect ``j``'s SD is 0. Otherwise effect ``j`` is a linear combination of the
        effects before it, with an SD that is not 0: the term's covariance ``L L^T`` has rank
        below its dimension (the number of singular values of ``L`` of at least
        ``SINGULAR_TOL``), which for two effects is a correlation of +-1. Correlations within
        ``SINGULAR_TOL`` of +-1 are named with their sign. As in :meth:`_small_theta`, row ``j`` of
        ``L`` is first multiplied by the root mean square of design column ``z_j``, so that none of
        these tests depends on the predictors' units.
        """
        from ..optimise.start import rms_columns

        values = np.asarray(self._opt["value_cholesky"], float)
        sd_values = np.asarray(self._opt["value_sd"], float)
        sd_labels = self._scales.labels("sd")
        small = self._small_theta()
        zero_sds: list[str] = []
        deficient: list[str] = []
        k = self.spec.fixed_index.size
        for t in self.spec.terms:
            r, index = t.r, {}
            L = np.zeros((r, r))
            for col in range(r):
                for row in range(col, r):
                    index[row, col] = k
                    L[row, col] = values[k]
                    k += 1
            L *= rms_columns(t.z, t.codes)[:, None]
            flagged = [j for j in range(r) if small[index[j, j]]]
            if not flagged:
                continue
            row_sd = np.sqrt(np.sum(L**2, axis=1))  # SDs relative to sigma, times rms(z_j)
            zero_sds += [sd_labels[index[j, j]] for j in flagged if row_sd[j] < SINGULAR_TOL]
            combined = [j for j in flagged if row_sd[j] >= SINGULAR_TOL]
            if not combined:
                continue
            live = np.flatnonzero(row_sd >= SINGULAR_TOL)
            rank = int(np.sum(np.linalg.svd(L[live], compute_uv=False) >= SINGULAR_TOL))
            if rank == live.size:
                continue  # the SDs at 0 account for the whole deficiency
            cov = L[live] @ L[live].T
            cor = cov / np.outer(row_sd[live], row_sd[live])
            at_one, largest = [], None
            for a in range(live.size):
                for b in range(a):
                    i, j = live[a], live[b]
                    label = sd_labels[index[i, j]]
                    if largest is None or abs(cor[a, b]) > abs(largest[1]):
                        largest = (label, cor[a, b])
                    if 1 - abs(cor[a, b]) < SINGULAR_TOL:
                        at_one.append(f"{label} estimated at {np.sign(cor[a, b]):+.0f}")
            if at_one:
                what = ", ".join(at_one)
            else:
                what = "no correlation is at +-1, but a linear combination of the effects has variance 0" + (
                    f" (largest correlation {largest[0]} = {largest[1]:+.4f})" if largest is not None else ""
                )
            nonzero = ", ".join(f"{sd_labels[index[j, j]]} = {sd_values[index[j, j]]:.4g}" for j in combined)
            deficient.append(
                f"the covariance of the {t.group} term ({', '.join(map(str, t.effects))}) has rank {rank} of {r}: "
                f"{what} (the Cholesky factor's diagonal is 0 for an SD that is not: {nonzero})"
            )
        return zero_sds, deficient

    def _warn_boundary(self) -> None:
        if not self.singular:
            return
        zero_sds, deficient = self._boundary_terms()
        held = [self.spec.natural_labels[i] for i in np.flatnonzero(self.at_bound)]
        if held:
            consequence = (
                "the covariance is computed with the boundary parameters held fixed, so it is conditional on "
                "them, and entries that involve them are NaN"
            )
        else:
            consequence = (
                "the estimate is interior only numerically, so its standard error (and any sandwich, whose "
                "scores vanish there) is not a reliable measure of its uncertainty; summary() reports its "
                "interval as [0, estimate + z se]"
            )
        parts = ([", ".join(zero_sds) + " estimated at 0"] if zero_sds else []) + deficient
        if not parts:
            parts = [f"{', '.join(held)} at {'its bound' if len(held) == 1 else 'their bounds'}"]
        advice = []
        if zero_sds:
            advice.append("removing the random effect whose SD is 0")
        if deficient:
            advice.append("a simpler covariance for that term (fewer effects, or independent ones)")
        bound = f" (natural parameter {', '.join(held)} at its bound)" if held and (zero_sds or deficient) else ""
        warnings.warn(
            f"boundary (singular) fit: {'; '.join(parts)}{bound}. "
            f"The usual asymptotics do not hold on the boundary: {consequence}. "
            f"Consider {' or '.join(advice) or 'removing that random-effect term'}.",
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
    def information(self, information: Information = "observed", *, reml_cross: RemlCross = "zero") -> pd.DataFrame:
        """Information matrix on the natural scale (observed: ``-d2 log L``; expected: Fisher).

        Parameters
        ----------
        information : {"observed", "expected"}
        reml_cross : {"zero", "ml"}
            REML fits: the fixed/variance cross block of the observed information, see :meth:`vcov`.
        """
        _check_information(information)
        _check_reml_cross(reml_cross)
        lab = self.spec.natural_labels
        return pd.DataFrame(self._information(information, reml_cross), index=lab, columns=lab)

    def _information_key(self, information: str, reml_cross: str) -> str:
        ml_cross = reml_cross == "ml" and information == "observed" and self.method == "REML"
        return "observed_ml_cross" if ml_cross else information

    def _information(self, information: str, reml_cross: str = "zero") -> np.ndarray | None:
        """The information matrix on the natural scale; the expected one is computed on first use
        (``None`` where it is not available: non-Gaussian likelihoods, MAP fits), as is a REML
        fit's observed one with merDeriv's cross block (``reml_cross="ml"``)."""
        key = self._information_key(information, reml_cross)
        if key == "observed_ml_cross" and key not in self._opt:
            self._opt[key] = self._functions.reml_observed_ml_cross(self._opt["nat"], self._information("observed"))
        if key not in self._opt:
            info = self._functions.information(self._opt["nat"], expected=True)
            self._opt[information] = info.get(information)
        return self._opt[key]

    def _vcov_natural(self, information: str, reml_cross: str = "zero") -> np.ndarray:
        if self._information(information) is None:
            if self.method == "MAP":
                raise MixVcovError(
                    f"{information} information is not defined for MAP fits: the criterion's prior term has no "
                    "expectation over the data. Use information='observed' (the negative Hessian of the log "
                    "marginal posterior)"
                )
            raise MixVcovError(
                f"{information} information is available for Gaussian models only; this model's "
                f"{self.spec.family} likelihood is fitted by the Laplace approximation: use information='observed'"
            )
        key = self._information_key(information, reml_cross)
        if key not in self._vcov_nat:
            self._vcov_nat[key] = invert_information(
                self._information(information, reml_cross), self.at_bound, self.spec.natural_labels
            )
        return self._vcov_nat[key]

    def _dependence(self, scale: str) -> np.ndarray:
        """Which scale entries depend on which natural parameters (Jacobian pattern off the boundary)."""
        nat = self._opt["nat"].copy()
        lower = self.spec.lower
        bump = 0.1 * (1.0 + np.nanmean(np.abs(nat)))
        nat = np.where(np.isfinite(lower) & (nat <= lower + 1e-12), lower + bump, nat)
        nat = nat + 1e-3 * bump * np.random.default_rng(0).uniform(size=nat.size)
        return np.abs(self._functions.scales(nat)[f"jac_{scale}"]) > 0

    def vcov(
        self, scale: str = "var", information: Information = "observed", *, reml_cross: RemlCross = "zero"
    ) -> pd.DataFrame:
        """Covariance matrix of all parameters: fixed effects and variance components.

        Parameters
        ----------
        scale : {"var", "sd", "cholesky", "natural", "unconstrained"}
            Reporting scale (see :mod:`pymc_mixvcov.inference.scales`); converted with the exact Jacobian.
        information : {"observed", "expected"}
            Inverse observed information (exact Hessian) or inverse expected (Fisher)
            information (closed form, zero fixed/variance cross block).
        reml_cross : {"zero", "ml"}
            The fixed-effect/variance cross block of a REML fit's observed information. The REML
            criterion ``l_R(psi) = -1/2 (log|V| + log|X^T V^-1 X| + y^T P y)``,
            ``P = V^-1 - V^-1 X (X^T V^-1 X)^-1 X^T V^-1``, does not involve ``beta``, so
            ``"zero"`` (default) takes the information as block-diagonal,
            ``[[X^T V^-1 X, 0], [0, -d2 l_R / d psi2]]``. ``"ml"`` reproduces merDeriv's
            ``vcov(full = TRUE, information = "observed")`` for REML fits: the cross block of the
            ML observed information at the REML estimates,
            ``X^T V^-1 (dV / d psi_j) V^-1 (y - X beta_hat)``. The two agree where that vanishes
            (every cluster with the same design and the random-effect columns in the span of the
            fixed-effect ones, as in sleepstudy). No effect on ML and MAP fits (the information of their own criterion)
            or on expected information (zero cross block either way).

        Returns
        -------
        pandas.DataFrame
            Labelled ``P x P`` matrix.
        """
        check_scale(scale)
        _check_information(information)
        _check_reml_cross(reml_cross)
        V = self._vcov_natural(information, reml_cross)
        if scale != "natural":
            held = np.isnan(np.diag(V))
            V = delta_method(V, self._opt[f"jac_{scale}"], self._dependence(scale) if held.any() else None)
        lab = self.labels(scale)
        return pd.DataFrame(V, index=lab, columns=lab)

    def se(
        self, scale: str = "sd", information: Information = "observed", *, reml_cross: RemlCross = "zero"
    ) -> pd.Series:
        """Standard errors on ``scale``: square roots of the diagonal of :meth:`vcov` (same arguments)."""
        V = self.vcov(scale, information, reml_cross=reml_cross)
        return pd.Series(np.sqrt(np.diag(V.to_numpy())), index=V.index, name="se")

    # -- scores and log-likelihood contributions -----------------------------------------------
    def _refuse_reml(self, what: str) -> None:
        """Refuse REML fits, whose criterion is not a sum of cluster contributions (ML and MAP fits
        have a log-likelihood that is: MAP's priors enter the bread only)."""
        if self.method == "REML":
            raise MixVcovError(
                f"{what} are defined for maximum-likelihood fits (and MAP fits): the REML criterion is not a "
                "sum of cluster contributions. Refit with method='ML' (or 'MAP')."
            )

    def _pieces(self, expected: bool = False) -> dict[str, np.ndarray]:
        """Per-cluster log-likelihoods, scores and information contributions (natural scale)."""
        key = "clusters_expected" if expected else "clusters"
        if key not in self._cache:
            fns, nat = self._functions, self._opt["nat"]
            self._cache[key] = fns.clusters_expected(nat) if expected else fns.clusters(nat)
        return self._cache[key]

    def _cluster_rows(self) -> tuple[np.ndarray, list[str], str]:
        """Clusters in the row order of the cluster-level output, with their labels.

        A grouping factor defines the rows when each cluster holds exactly one of its levels: the
        factor itself for one grouping factor, the outermost factor of a nested design.
        """
        st = self.structure
        if st.free[3] > 0:
            raise MixVcovError(
                f"{st.free[3]} observations use no random effect and belong to no cluster; cluster-level "
                "scores need every observation in a cluster (use level='observation')"
            )
        best = None
        for k, t in enumerate(self.spec.terms):
            owner = np.full(len(t.levels), -1)
            per_cluster = np.zeros(st.n_clusters, int)
            for c, blocks in enumerate(st.clusters):
                for tk, lev in blocks:
                    if tk == k:
                        owner[lev] = c
                        per_cluster[c] += 1
            if np.all(per_cluster == 1) and (best is None or len(t.levels) < len(best[1])):
                best = (owner, t.levels, t.group)
        if best is None and st.n_clusters == 1:
            raise MixVcovError(
                "this model's random effects are crossed: all observations form one cluster of the marginal "
                "likelihood, which does not split into independent cluster contributions. Use "
                "scores(level='observation'), or sandwich(cluster=[...]) with one or more grouping columns "
                "(multi-way clustering)."
            )
        if best is None:
            raise MixVcovError(
                f"this model's random effects are partially crossed: its {st.n_clusters} independent clusters "
                "(connected components of the random effects) are not the levels of any one grouping factor, "
                "so there are no labels for cluster-level rows. Use scores(level='observation'), or "
                "sandwich(cluster=...) with a column that groups whole clusters, or several grouping columns "
                "(multi-way clustering)."
            )
        return best

    def _scores_to_scale(self, S: np.ndarray, scale: str) -> np.ndarray:
        """Scores with respect to ``scale``: ``S J^{-1}``, ``J`` the Jacobian of ``scale`` in ``natural``."""
        if scale == "natural":
            return S
        J = self._opt[f"jac_{scale}"]
        if J.shape[0] != J.shape[1]:
            raise MixVcovError(
                f"scale {scale!r} has {J.shape[0]} parameters and the model {J.shape[1]}; scores on it are not "
                "defined (use scale='natural')"
            )
        if not np.all(np.isfinite(J)) or np.linalg.cond(J) > 1e12:
            raise MixVcovError(
                f"the map from the model's parameters to scale {scale!r} is singular at this estimate (a "
                "variance at its boundary?); scores on it are not defined (use scale='natural')"
            )
        return np.linalg.solve(J.T, S.T).T

    def scores(self, level: Level = "cluster", scale: str = "var") -> pd.DataFrame:
        """Score contributions: gradients of the log-likelihood contributions (ML and MAP fits).

        Parameters
        ----------
        level : {"cluster", "observation"}
            ``"cluster"``: one row per level of the grouping factor (the outermost factor of a
            nested design), in its level order; row ``j`` is the gradient of cluster ``j``'s
            marginal log-likelihood (symbolic, exact). ``"observation"``: one row per data row,
            in data order, from merDeriv's casewise decomposition (see
            :mod:`pymc_mixvcov.inference.scores`; non-Gaussian models fitted by the blocked Laplace
            engine: :mod:`pymc_mixvcov.engines.blocked_laplace`); rows sum within clusters to the
            cluster scores.
        scale : str
            Parameterisation (``"var"``, ``"sd"``, ``"cholesky"``, ``"natural"``,
            ``"unconstrained"``): scores are ``s_natural J^{-1}`` with ``J`` the exact Jacobian of
            the scale, so that ``J^{-T}`` carries gradients as ``J`` carries covariances.

        Returns
        -------
        pandas.DataFrame
            Columns labelled as in :meth:`vcov`.

        Raises
        ------
        MixVcovError
            For REML fits, for cluster-level scores of crossed designs, and for observation-level
            scores of models without a casewise decomposition.

        Notes
        -----
        MAP fits: the scores are those of the log-likelihood alone, ``s_g = d l_g / d theta``,
        priors excluded (a prior is not a sum over clusters), at the marginal posterior mode.
        There the gradient of ``sum_g l_g + log p(theta)`` vanishes, so the columns sum to
        ``-d log p(theta) / d theta``, not to zero; they are returned as they are, and
        :meth:`sandwich` centres them.
        """
        check_scale(scale)
        _check_level(level)
        self._refuse_reml("scores")
        labels = self.labels(scale)
        if level == "cluster":
            owner, lev, group = self._cluster_rows()
            S = self._scores_to_scale(self._pieces()["scores"][owner], scale)
            return pd.DataFrame(S, index=pd.Index(lev, name=group), columns=labels)
        S = self._scores_to_scale(self._observation_scores(), scale)
        return pd.DataFrame(S, index=pd.RangeIndex(S.shape[0], name="row"), columns=labels)

    def _observation_scores(self) -> np.ndarray:
        if not self.spec.gaussian and not hasattr(self._base_functions(), "observation_scores"):
            raise MixVcovError(
                f"observation-level scores need a casewise decomposition of the cluster scores, which exists "
                f"for Gaussian models and for the blocked Laplace engine (engine='blocked'); this "
                f"{self.spec.family} model was fitted by the cluster Laplace engine: use level='cluster', cluster by "
                "columns that group whole clusters, or refit with engine='blocked'"
            )
        if "obs_scores" not in self._cache:
            self._cache["obs_scores"] = self._functions.observation_scores(self._opt["nat"])
        return self._cache["obs_scores"]

    def _base_functions(self):
        """The engine's functions (a MAP fit's base engine)."""
        return getattr(self._functions, "base", self._functions)

    def loglik_contributions(self, level: Literal["cluster"] = "cluster") -> pd.Series:
        """Marginal log-likelihood of every cluster (merDeriv's ``llcont``); they sum to :attr:`loglik`
        (for MAP fits the log-likelihood at the posterior mode, priors excluded)."""
        if level != "cluster":
            raise MixVcovError(
                f"unknown level {level!r}; log-likelihood contributions exist per cluster only ('cluster'): "
                "a cluster's marginal likelihood does not factor over its observations"
            )
        self._refuse_reml("log-likelihood contributions")
        owner, lev, group = self._cluster_rows()
        return pd.Series(self._pieces()["loglik"][owner], index=pd.Index(lev, name=group), name="loglik")

    # -- sandwich ------------------------------------------------------------------------------------
    def _cluster_codes(self, cluster) -> list[np.ndarray]:
        """Integer codes of the observations for each clustering variable in ``cluster``."""
        items = list(cluster) if isinstance(cluster, list | tuple) else [cluster]
        if not items:
            raise MixVcovError("`cluster` is an empty list; give one or more column names")
        n = self.nobs
        out = []
        for item in items:
            if isinstance(item, str):
                if self.data is None:
                    raise MixVcovError(
                        f"cluster={item!r} names a column, but this fit has no data frame; pass the cluster "
                        "labels as an array with one entry per observation"
                    )
                if item not in self.data.columns:
                    raise MixVcovError(
                        f"cluster column {item!r} is not in the data; available columns: {list(self.data.columns)}"
                    )
                values, name = self.data[item], item
            else:
                values, name = item, "cluster"
            values = pd.Series(np.asarray(values))
            if len(values) != n:
                raise MixVcovError(
                    f"the {name} labels have {len(values)} entries but the model has {n} observations; give "
                    "one label per observation, in the data's row order"
                )
            missing = values.isna().to_numpy()
            if missing.any():
                raise MixVcovError(
                    f"the {name} labels are missing for {int(missing.sum())} observation(s) (rows "
                    f"{np.flatnonzero(missing)[:10].tolist()}); every observation needs a cluster"
                )
            codes = pd.factorize(values)[0]
            if codes.max() < 1:
                raise MixVcovError(
                    f"the {name} labels form a single cluster; a cluster-robust covariance needs several"
                )
            out.append(codes)
        return out

    def sandwich(
        self,
        scale: str = "var",
        information: Information = "observed",
        adjust: Adjust = "CR1",
        cluster=None,
    ) -> pd.DataFrame:
        """Cluster-robust (sandwich) covariance of all parameters (ML and MAP fits).

        Parameters
        ----------
        scale : str
            Reporting scale, converted with the exact Jacobian as in :meth:`vcov`.
        information : {"observed", "expected"}
            The bread ``A``: observed (exact Hessian) or expected information (ML fits of
            Gaussian models only).
        adjust : {"CR0", "CR1", "CR3"}
            ``CR0 = A^{-1} B A^{-1}`` with ``B = sum_g s_g s_g^T``; ``CR1 = G/(G-1) CR0``; ``CR3`` the
            one-step leave-one-cluster-out jackknife ``(G-1)/G sum_g d_g d_g^T`` with
            ``d_g = (A - A_g)^{-1} s_g`` and ``A_g`` cluster ``g``'s own information contribution
            (see :mod:`pymc_mixvcov.inference.sandwich`). For MAP fits see the Notes.
        cluster : None, str, array_like, or list of them
            ``None``: the clusters given to :func:`pymc_mixvcov.optimise.fit`, else the model's clusters
            (cluster-level scores). A column name of the data or an
            array of labels (one per observation): observation-level scores summed within those
            clusters. A list: multi-way clustering by inclusion-exclusion (Cameron, Gelbach and
            Miller, 2011), which is how crossed designs get a sandwich.

        Returns
        -------
        pandas.DataFrame

        Notes
        -----
        MAP fits (``theta_hat`` the marginal posterior mode, random effects integrated out) get
        the sandwich posterior covariance of Mueller (2013) and the Bayesian sandwich of Szpiro,
        Rice and Lumley (2010):

        * bread: ``A = -d2 [l(theta) + log p(theta)] / d theta2`` at ``theta_hat``, the negative
          Hessian of the log marginal posterior, priors included (:meth:`information`; its
          inverse is the Laplace covariance :meth:`vcov`);
        * meat: the cluster scores of the log-likelihood alone, ``s_g = d l_g / d theta``
          (:meth:`scores`), which sum to ``-d log p / d theta`` at the mode, not to zero, and
          are therefore centred: ``B = sum_g (s_g - s_bar)(s_g - s_bar)^T``,
          ``s_bar = G^{-1} sum_g s_g``, i.e. ``G`` times their empirical covariance;
        * ``CR1 = G/(G-1) A^{-1} B A^{-1}``; multi-way clustering centres each clustering's
          scores at its own mean;
        * ``CR3``: ``d_g = (A - A_g)^{-1} (s_g - s_bar)``, ``A_g`` cluster ``g``'s observed
          information contribution of the likelihood (so ``A - A_g`` is the negative Hessian of
          the posterior without cluster ``g``), and ``(G-1)/G sum_g d_g d_g^T``. Without the
          centring ``d_g`` would include the prior's pull that removing any one cluster
          strengthens equally: ``G^{-1} sum_g d_g`` is ``A^{-1} grad log p / G`` to first order, a
          shift common to every leave-one-out estimate, which the jackknife's variance about the
          mean of the leave-one-out estimates does not count.

        Where the prior is flat (``grad log p = 0``, ``d2 log p = 0``) every one of these is the
        ML sandwich. Expected information is not defined for MAP fits (a prior has no
        expectation over the data).

        References
        ----------
        Mueller, U. K. (2013). Risk of Bayesian inference in misspecified models, and the
        sandwich covariance matrix. Econometrica 81(5), 1805-1849.

        Szpiro, A. A., Rice, K. M. and Lumley, T. (2010). Model-robust regression and a
        Bayesian "sandwich" estimator. Annals of Applied Statistics 4(4), 2099-2113.
        """
        check_scale(scale)
        _check_information(information)
        check_adjust(adjust)
        self._refuse_reml("sandwich covariances")
        centre = self.method == "MAP"  # the likelihood's scores do not sum to zero at a posterior mode
        P = self.spec.n_params
        keep = ~self.at_bound
        idx = np.ix_(keep, keep)
        if self._information(information) is None:
            self._vcov_natural(information)  # raises: not available for this model
        A = self._information(information)[idx]
        need_ai = adjust == "CR3"
        if cluster is None:
            cluster = self._default_cluster
        if cluster is None:
            owner, levels, _ = self._cluster_rows()
            S = self._pieces()["scores"][owner][:, keep]
            Ag = self._cluster_information(information)[owner][:, keep][:, :, keep] if need_ai else None
            Vk = vcov_cluster(A, S, adjust, Ag, labels=levels, centre=centre)
        else:
            codes = self._cluster_codes(cluster)
            S_obs = self._observation_scores()[:, keep]
            if len(codes) == 1:
                S, labels = estfun(S_obs, codes[0])
                Ag = self._union_information(codes[0], information)[:, keep][:, :, keep] if need_ai else None
                Vk = vcov_cluster(A, S, adjust, Ag, labels=labels, centre=centre)
            else:
                Vk = vcov_multiway(A, S_obs, codes, adjust, centre=centre)
        V = np.full((P, P), np.nan)
        V[idx] = Vk
        if scale != "natural":
            held = np.isnan(np.diag(V))
            V = delta_method(V, self._opt[f"jac_{scale}"], self._dependence(scale) if held.any() else None)
        lab = self.labels(scale)
        return pd.DataFrame(V, index=lab, columns=lab)

    # -- derived quantities ---------------------------------------------------------------------------
    def derived(
        self,
        fn,
        scale: str = "sd",
        vcov: Literal["model", "CR0", "CR1", "CR3"] | pd.DataFrame | None = None,
        *,
        level: float | None = None,
        information: Information = "observed",
        cluster=None,
        names: list[str] | None = None,
    ) -> pd.DataFrame:
        """Estimate and delta-method standard error of any smooth function of the parameters.

        Parameters
        ----------
        fn : callable
            Receives a mapping from the labels of ``scale`` (:meth:`labels`) to symbolic scalars and
            returns the quantity built from them with arithmetic, NumPy ufuncs (``np.exp``) or
            ``pytensor.tensor`` functions (``pt.log``, ``pt.switch``): a scalar, a list of scalars,
            or a mapping from names to scalars (which names the rows). E.g. the share of the
            variance at ``Days = 0``:
            ``lambda p: p["sd_(Intercept)|Subject"]**2 / (p["sd_(Intercept)|Subject"]**2 + p["sigma"]**2)``.
        scale : str
            The scale whose labels ``fn`` uses (default ``"sd"``). The standard error does not
            depend on it: the scales' covariances are related by exact Jacobians.
        vcov : None, {"model", "CR0", "CR1", "CR3"}, or DataFrame
            ``None``/``"model"``: :meth:`vcov`; an adjustment name: :meth:`sandwich` with it (ML fits);
            a DataFrame: a covariance on ``scale`` labelled with its labels.
        level : float, optional
            Adds a Wald interval ``estimate -+ z_{(1+level)/2} se`` (columns ``lower``, ``upper``).
        information : {"observed", "expected"}
        cluster :
            Passed to :meth:`sandwich`.
        names : list of str, optional
            Row names (default: the mapping's keys, else ``fn``'s name, ``fn`` for a lambda).

        Returns
        -------
        pandas.DataFrame
            One row per quantity: ``estimate`` ``h(theta_hat)``, ``se`` (and ``lower``, ``upper``).

        Notes
        -----
        Delta method with the exact gradient ``g = dh/dtheta`` (pytensor's reverse mode, no finite
        differences): ``se = sqrt(g^T V g)``; for several quantities their covariance is
        ``G V G^T``. A quantity that depends on a parameter held at a boundary (NaN in ``V``)
        gets a NaN standard error. Functions that cannot be evaluated symbolically, return
        non-scalars or integers, or whose derivative is not finite or is 0 at the estimates
        raise a :class:`~pymc_mixvcov.errors.MixVcovError`.
        """
        from .derived import derived

        return derived(self, fn, scale, vcov, level=level, information=information, cluster=cluster, names=names)

    def confint(
        self,
        method: Literal["profile", "wald"] = "profile",
        level: float = 0.95,
        parm: str | list[str] | None = None,
        *,
        criterion: Literal["ML", "REML"] | None = None,
    ) -> pd.DataFrame:
        """Confidence intervals on the sd scale: profile likelihood (lme4's ``confint``) or Wald.

        Parameters
        ----------
        method : {"profile", "wald"}
            ``"profile"``: ``{t : |zeta(t)| <= z}`` with ``zeta`` the signed square root of the profile
            deviance, its roots found by Newton's method with exact derivatives (see
            :mod:`pymc_mixvcov.inference.profile`). An SD whose profile stays within ``-z`` down
            to 0 gets the lower bound 0, a correlation whose profile stays within ``z`` gets +-1.
            ``"wald"``: ``estimate -+ z se`` with ``se`` from :meth:`vcov` on the sd scale.
        level : float
            Confidence level; ``z = Phi^{-1}((1 + level) / 2)``.
        parm : str or list of str, optional
            Labels of :meth:`labels` (``"sd"``); default all.
        criterion : {"ML", "REML"}, optional
            Profile intervals: ML fits profile the ML log-likelihood; REML fits by default too,
            after a refit by ML, as lme4 does; ``"REML"`` profiles a REML fit's REML criterion
            (variance parameters only). GLMMs profile their Laplace (quadrature) log-likelihood.

        Returns
        -------
        pandas.DataFrame
            One row per parameter: ``estimate`` (of the profiled criterion: the ML estimates when
            a REML fit is refitted), ``lower``, ``upper``; ``attrs`` says the method, level and
            criterion, and which bounds are limits of the parameter space.
        """
        from .profile import confint

        return confint(self, method, level, parm, criterion=criterion)

    def icc(
        self,
        vcov: Literal["model", "CR0", "CR1", "CR3"] | None = None,
        *,
        level: float | None = None,
        information: Information = "observed",
        cluster=None,
    ) -> pd.DataFrame:
        """Intraclass correlation with its delta-method standard error (one row, ``ICC``).

        ``ICC = sum_k s_k^2 / (sum_k s_k^2 + s_e^2)``, with ``s_k`` the SDs of the random
        intercepts: for one term the correlation of two observations of a cluster, for several
        the adjusted ICC of Nakagawa, Johnson and Schielzeth (2017, J. R. Soc. Interface 14:
        20170213), the share of the variance (given the fixed effects) due to all random
        effects. ``s_e^2`` is ``sigma^2`` for Gaussian models and ``pi^2 / 3``, the variance of the
        standard logistic distribution, for binomial GLMMs with the logit link (the latent-scale
        ICC). Models with random slopes (whose variance depends on the covariate) and other
        families or links are refused: write the definition with :meth:`derived`.
        ``vcov``, ``level``, ``information`` and ``cluster`` as in :meth:`derived`.
        """
        from .derived import icc

        return icc(self, vcov, level=level, information=information, cluster=cluster)

    def mor(
        self,
        vcov: Literal["model", "CR0", "CR1", "CR3"] | None = None,
        *,
        level: float | None = None,
        information: Information = "observed",
        cluster=None,
    ) -> pd.DataFrame:
        """Median odds ratio of a logit GLMM with one random intercept, with its delta-method SE.

        ``MOR = exp(sqrt(2 s_u^2) Phi^{-1}(0.75))`` (Larsen and Merlo 2005, Am. J. Epidemiol.
        161: 81-88): the median of the odds ratio between two observations with the same
        covariates in two randomly chosen clusters, higher to lower. Binomial (or Bernoulli)
        likelihoods with the logit link only, and one random-intercept term; anything else is
        refused. ``vcov``, ``level``, ``information`` and ``cluster`` as in :meth:`derived`.
        """
        from .derived import mor

        return mor(self, vcov, level=level, information=information, cluster=cluster)

    # -- parametric bootstrap ----------------------------------------------------------------------
    def bootstrap(self, n: int, *, seed=None, n_jobs: int | None = None, client=None, progress: bool | None = None):
        """Parametric bootstrap: simulate ``n`` responses from the fitted model and refit each.

        Random effects are drawn from their fitted distribution, the response from the model's
        likelihood given the linear predictor (any PyMC likelihood with a sampler); each replicate
        is refitted by the fit's method, warm-started at the estimate with the fit's compiled
        functions. As lme4's ``bootMer(type = "parametric")`` and MixedModels.jl's
        ``parametricbootstrap`` (formulas and references: :mod:`pymc_mixvcov.inference.bootstrap`).

        Parameters
        ----------
        n : int
            Number of replicates.
        seed : int, numpy.random.SeedSequence or None
            Replicate ``b`` uses ``SeedSequence(seed).spawn(n)[b]``: the replicates depend on the seed
            alone, whatever ``n_jobs`` or ``client``. ``None`` draws fresh entropy, recorded in the
            result's ``dataset.attrs["seed_entropy"]``.
        n_jobs : int, optional
            Processes on this machine (joblib's loky backend): ``1`` runs in this process, ``-1`` (the
            default) one per CPU. The model goes to each worker once, pickled.
        client : dask.distributed.Client, optional
            Run the replicates on that dask cluster instead (``pip install 'pymc-mixvcov[dask]'``).
        progress : bool or None
            A progress line (:mod:`pymc_mixvcov.output.progress`) once the run has taken two seconds:
            ``True`` always, ``False`` never, ``None`` (default) as the environment variable
            ``PYMC_MIXVCOV_PROGRESS`` says, else on a terminal.

        Returns
        -------
        BootstrapResult
            ``.dataset``: an ``xarray.Dataset`` with a ``replicate`` dimension, the estimates on the
            sd scale (labelled as ``vcov(scale="sd")``), log-likelihoods and convergence flags;
            ``.confint(level)`` percentile intervals, ``.se()``, ``.summary()``.

        Warns
        -----
        ConvergenceWarning
            With the count of replicates that did not converge or failed; they are kept, flagged.
        """
        from .bootstrap import bootstrap

        return bootstrap(self, n, seed=seed, n_jobs=n_jobs, client=client, progress=progress)

    def simulate(self, n: int, *, seed=None) -> np.ndarray:
        """``n`` responses simulated from the fitted model, shape ``(n, nobs)`` (lme4's ``simulate``).

        Random effects are drawn from their fitted distribution, then the response given the linear
        predictor. With the same ``seed``, row ``b`` is the response that :meth:`bootstrap` refits as
        its replicate ``b``.
        """
        from .bootstrap import simulate

        return simulate(self, n, seed=seed)

    def _cluster_information(self, information: str) -> np.ndarray:
        if not self.spec.gaussian:
            if information == "expected":
                self._vcov_natural("expected")  # raises: not available
            if "observed_clusters" not in self._cache:
                self._cache["observed_clusters"] = self._functions.cluster_observed(self._opt["nat"])
            return self._cache["observed_clusters"]
        pieces = self._pieces(expected=information == "expected")
        return pieces["expected_clusters" if information == "expected" else "observed_clusters"]

    def _union_information(self, codes: np.ndarray, information: str) -> np.ndarray:
        """Information contributions of clusters that are unions of the model's clusters (for CR3)."""
        oc = self.structure.obs_cluster
        G = int(codes.max()) + 1
        pairs = np.unique(np.stack([oc[oc >= 0], codes[oc >= 0]], axis=1), axis=0)
        if np.unique(pairs[:, 0]).size != pairs.shape[0]:
            raise MixVcovError(
                "CR3 needs each cluster's own information contribution, which exists when every cluster is "
                "a union of the model's clusters; these clusters split a cluster of the model. Use 'CR0' "
                "or 'CR1'."
            )
        owner = np.full(self.structure.n_clusters, -1)
        owner[pairs[:, 0]] = pairs[:, 1]
        if self.structure.free[3] > 0:
            raise MixVcovError("CR3 is not available when some observations use no random effect")
        Ai = self._cluster_information(information)
        out = np.zeros((G, *Ai.shape[1:]))
        used = owner >= 0
        np.add.at(out, owner[used], Ai[used])
        return out

    def covariance(
        self,
        vcov: Literal["model", "CR0", "CR1", "CR3"] = "model",
        scale: str = "sd",
        information: Information = "observed",
        cluster=None,
        *,
        reml_cross: RemlCross = "zero",
    ) -> pd.DataFrame:
        """The model-based covariance (``vcov="model"``, :meth:`vcov`, with ``reml_cross``) or a
        sandwich (:meth:`sandwich`, ML and MAP fits)."""
        if vcov not in ("model", *ADJUSTS):
            raise MixVcovError(f"unknown vcov {vcov!r}; valid values are: {', '.join(map(repr, ('model', *ADJUSTS)))}")
        _check_reml_cross(reml_cross)
        if vcov == "model":
            return self.vcov(scale, information, reml_cross=reml_cross)
        return self.sandwich(scale, information, adjust=vcov, cluster=cluster)

    # -- summary -------------------------------------------------------------------------------------
    def summary(
        self,
        vcov: Literal["model", "CR0", "CR1", "CR3"] = "model",
        scale: str = "sd",
        level: float = 0.95,
        information: Information = "observed",
        cluster=None,
        *,
        reml_cross: RemlCross = "zero",
        ddf: DDF | None = None,
    ) -> pd.DataFrame:
        """Table of estimates, standard errors, Wald tests and confidence intervals.

        Parameters
        ----------
        vcov : {"model", "CR0", "CR1", "CR3"}
            Model-based covariance (:meth:`vcov`) or a sandwich (:meth:`sandwich`).
        scale : str
            Reporting scale (default ``"sd"``: SDs and correlations).
        level : float
            Confidence level of the intervals.
        information : {"observed", "expected"}
        cluster :
            Passed to :meth:`sandwich`.
        reml_cross : {"zero", "ml"}
            REML fits: the fixed/variance cross block of the observed information, see :meth:`vcov`.
        ddf : {"satterthwaite", "kenward-roger"} or None
            Gaussian ML/REML fits with ``vcov="model"``: the fixed effects get t tests with these
            denominator degrees of freedom (:meth:`ttest`; Kenward-Roger also its adjusted standard
            errors) and ``t``-quantile intervals ``est +- t_{df} se``; the columns are then
            ``Estimate, Std. Error, df, t value, Pr(>|t|)`` and the variance parameters keep their
            Wald ``z`` (``df`` infinite).

        Returns
        -------
        Summary
            A ``DataFrame`` (:class:`pymc_mixvcov.output.summary.Summary`) with ``Estimate``,
            ``Std. Error``, ``z value``, ``Pr(>|z|)`` and the interval bounds, one row per
            parameter; it prints (and shows in notebooks) as lme4's ``summary(lmer)``: fit
            criteria, scaled residuals, random-effects table, numbers of observations and
            groups, fixed-effects table, then this table and the full covariance matrix.

        Notes
        -----
        Intervals are Wald intervals on a scale where the parameter is unbounded, mapped back:
        SDs, variances, ``sigma`` and diagonal Cholesky entries on the log scale
        (``est * exp(+-q se / est)``, so they stay positive), correlations on Fisher's ``atanh``
        scale (``tanh(atanh(r) +- q se / (1 - r^2))``, so they stay in ``(-1, 1)``), everything else
        on its own scale. A positive parameter estimated at (or numerically next to) 0, where
        ``q se / est > 50`` and the log-scale interval degenerates, gets ``[0, est + q se]``.
        ``z`` and ``Pr(>|z|)`` are plain Wald statistics; for a variance component the null
        value 0 is on the boundary of the parameter space, where the Wald
        test is not valid (the likelihood-ratio test with a mixture null is).
        """
        from scipy.stats import norm

        if not 0 < level < 1:
            raise MixVcovError(f"level must be between 0 and 1, got {level!r}")
        if ddf is not None and vcov != "model":
            raise MixVcovError(
                f"ddf={ddf!r} gives model-based small-sample tests; it cannot be combined with vcov={vcov!r}"
            )
        est = self.params(scale).to_numpy()
        V = self.covariance(vcov, scale, information, cluster, reml_cross=reml_cross)
        se = np.sqrt(np.where(np.diag(V.to_numpy()) >= 0, np.diag(V.to_numpy()), np.nan))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = est / se
            p = 2 * norm.sf(np.abs(z))
            q = norm.ppf(0.5 + level / 2)
            lo, hi = est - q * se, est + q * se
            kinds = np.array(self._scales.kinds(scale))
            pos = kinds == "positive"
            width = q * se / est
            f = np.exp(np.minimum(width, 700.0))
            # at (or next to) the boundary the log-scale interval degenerates: report [0, est + q se]
            edge = pos & (est >= 0) & ~(width < 50.0) & np.isfinite(se)
            lo = np.where(pos, np.where(est > 0, est / f, np.nan), lo)
            hi = np.where(pos, np.where(est > 0, est * f, np.nan), hi)
            lo, hi = np.where(edge, 0.0, lo), np.where(edge, est + q * se, hi)
            cor = kinds == "correlation"
            zr = np.arctanh(np.clip(est, -1, 1))
            d = q * se / (1 - est**2)
            lo = np.where(cor, np.tanh(zr - d), lo)
            hi = np.where(cor, np.tanh(zr + d), hi)
        a = 100 * (1 - level) / 2
        options = {
            "vcov": vcov,
            "scale": scale,
            "information": information,
            "cluster": cluster,
            "reml_cross": reml_cross,
            "ddf": ddf,
        }
        if ddf is None:
            return _laid_out(
                self,
                pd.DataFrame(
                    {
                        "Estimate": est,
                        "Std. Error": se,
                        "z value": z,
                        "Pr(>|z|)": p,
                        f"{a:g} %": lo,
                        f"{100 - a:g} %": hi,
                    },
                    index=self.labels(scale),
                ),
                options,
            )
        from scipy.stats import t as student

        tt = self.ttest(ddf)
        k = len(tt)
        df = np.full(est.size, np.inf)
        df[:k] = tt["df"].to_numpy()
        se[:k], z[:k], p[:k] = tt["se"].to_numpy(), tt["t"].to_numpy(), tt["p"].to_numpy()
        qt = student.ppf(0.5 + level / 2, df[:k])
        lo[:k], hi[:k] = est[:k] - qt * se[:k], est[:k] + qt * se[:k]
        table = pd.DataFrame(
            {
                "Estimate": est,
                "Std. Error": se,
                "df": df,
                "t value": z,
                "Pr(>|t|)": p,
                f"{a:g} %": lo,
                f"{100 - a:g} %": hi,
            },
            index=self.labels(scale),
        )
        return _laid_out(self, table, options)

    def tidy(
        self,
        scale: str = "sd",
        vcov: Literal["model", "CR0", "CR1", "CR3"] | None = None,
        conf_level: float = 0.95,
        ddf: DDF | None = None,
        *,
        information: Information = "observed",
        cluster=None,
        reml_cross: RemlCross = "zero",
    ) -> pd.DataFrame:
        """One row per parameter, as ``broom.mixed::tidy`` and pyfixest's ``tidy()`` give them.

        Columns ``effect`` (``"fixed"``, ``"ran_pars"``, ``"fam_pars"``), ``group``, ``term``,
        ``estimate``, ``std_error``, ``statistic``, (``df`` with ``ddf``), ``p_value``,
        ``conf_low``, ``conf_high``, ``scale``, ``vcov``; the numbers are :meth:`summary`'s. See
        :func:`pymc_mixvcov.output.tidy.tidy`.
        """
        from ..output.tidy import tidy

        return tidy(
            self,
            scale=scale,
            vcov=vcov,
            conf_level=conf_level,
            ddf=ddf,
            information=information,
            cluster=cluster,
            reml_cross=reml_cross,
        )

    # -- ArviZ output ---------------------------------------------------------------------------------
    def to_datatree(self, *, information: Information = "observed", cluster=None, adjust=ADJUSTS):
        """Estimates, covariances, scores, diagnostics and data as an ArviZ ``xarray.DataTree``.

        See :func:`pymc_mixvcov.output.datatree.to_datatree` for the groups. Next to MCMC draws of the
        same model: ``idata = pm.sample(model=model); idata.update(fit.to_datatree())``.
        """
        from ..output.datatree import to_datatree

        return to_datatree(self, information=information, cluster=cluster, adjust=adjust)

    def sample_normal(
        self,
        draws: int = 1000,
        *,
        scale: str = "sd",
        vcov: Literal["model", "CR0", "CR1", "CR3"] = "model",
        chains: int = 4,
        information: Information = "observed",
        cluster=None,
        random_seed=None,
    ):
        """Draws from the normal approximation ``N(estimate, V)`` as a DataTree with ``(chain, draw)`` dims.

        See :func:`pymc_mixvcov.output.datatree.sample_normal`; ``az.summary`` and ArviZ's plots work on
        the result directly.
        """
        from ..output.datatree import sample_normal

        return sample_normal(
            self,
            draws,
            scale=scale,
            vcov=vcov,
            chains=chains,
            information=information,
            cluster=cluster,
            random_seed=random_seed,
        )

    def __str__(self) -> str:
        """The fit as lme4's ``print(fit)`` shows it (:func:`pymc_mixvcov.output.summary.fit_text`)."""
        from ..output.summary import fit_text

        return fit_text(self)

    def _repr_html_(self) -> str:
        from ..output.summary import fit_html

        return fit_html(self)

    def __repr__(self) -> str:
        return (
            f"MixedFit(method={self.method!r}, loglik={self.loglik:.4f}, nobs={self.nobs}, "
            f"clusters={self.n_clusters}, converged={self.converged})"
        )


def _laid_out(fit, table: pd.DataFrame, options: dict):
    """``table`` as a :class:`pymc_mixvcov.output.summary.Summary` that prints as lme4's summary."""
    from ..output.summary import Summary

    return Summary.of(fit, table, options)
