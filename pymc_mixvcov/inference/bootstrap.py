"""Parametric bootstrap: simulate from the fitted model, refit, and collect the estimates.

For ``b = 1, ..., B`` (Efron and Tibshirani 1993, ch. 6; Davison and Hinkley 1997, sec. 2.2):

1. draw the random effects from their fitted distribution, ``u*_k[l] = L_k z``, ``z ~ N(0, I)``,
   for every level ``l`` of every term ``k`` (``G_k = L_k L_k^T`` at the estimate);
2. form the linear predictor ``eta* = offset + X beta_hat + Z u*`` and draw the response from the
   model's likelihood given it: ``y* = eta* + sigma_hat e`` for Gaussian models (``e_i`` scaled by
   ``w_i^{-1/2}`` with precision weights), and for any other
   likelihood a draw of the model's own observed random variable (binomial with its trials,
   Poisson, negative binomial, Gamma, Student-t, ...) at ``eta*`` and the fitted likelihood
   parameters;
3. refit the model to ``y*`` by the fit's method, warm-started at the estimate, with the fit's
   compiled functions (only the statistics of the response change:
   :mod:`pymc_mixvcov.engines.response`; :func:`pymc_mixvcov.optimise.warm.warm_refit`), and keep the
   estimates on the sd scale (standard deviations, correlations, ``sigma``, fixed effects), the
   log-likelihood and the convergence flag.

This is lme4's ``bootMer(type = "parametric", use.u = FALSE)`` and MixedModels.jl's
``parametricbootstrap``. Replicate ``b`` draws everything from its own generator,
``numpy.random.default_rng(SeedSequence(seed).spawn(B)[b])``, so the replicates depend on the seed
alone, not on how they are split among processes.

The percentile interval (:meth:`BootstrapResult.confint`) is that of ``boot::boot.ci(type = "perc")``,
which ``lme4::confint(method = "boot")`` reports: with ``R`` finite replicates sorted,
``t*_(1)<= ... <= t*_(R)``, the endpoint for tail probability ``a`` is ``t*_(k)`` when
``k = (R + 1) a`` is an integer, and otherwise interpolated on the normal quantile scale between
``t*_(k)`` and ``t*_(k+1)``, ``k = floor((R + 1) a)`` (Davison and Hinkley 1997, eq. 5.8).

References
----------
Efron, B. and Tibshirani, R. J. (1993). An Introduction to the Bootstrap. Chapman & Hall.
Davison, A. C. and Hinkley, D. V. (1997). Bootstrap Methods and their Application. Cambridge
University Press.
Bates, D., Maechler, M., Bolker, B. and Walker, S. (2015). Fitting linear mixed-effects models
using lme4. JSS 67(1); ``lme4::bootMer``.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConvergenceWarning, MixVcovError

__all__ = ["bootstrap", "simulate", "BootstrapResult", "Simulator", "percentile_interval", "sd_values"]

#: Seconds after which a run shows its progress line (shorter runs stay silent).
PROGRESS_DELAY = 2.0

#: Most replicates per task sent to a worker (iterated 25 at a time, :func:`newton_lockstep`): the
#: progress bar moves at least this often.
MAX_CHUNK = 100


# -- simulation --------------------------------------------------------------------------------------
class _Draw:
    """Draws of a non-Gaussian model's observed variable given the linear predictor.

    A PyMC random variable's distribution parameters are a graph of ``eta`` and ``nat``
    (:attr:`GaussianSpec.draw`), evaluated with the package's evaluator; the draw is the random
    variable's own sampler (``op.rng_fn``, what ``pm.draw`` calls) with the replicate's generator.
    Symbolic random variables (``pm.Censored``, mixtures) are compiled with pytensor instead.
    """

    def __init__(self, spec):
        from pytensor.tensor.random.op import RandomVariable

        from ..compilation.evaluator import light_function

        if spec.draw is None:
            raise MixVcovError(
                "the model's likelihood is a pm.Potential, which has no sampler: a parametric bootstrap needs an "
                "observed variable to simulate from. Write the likelihood as an observed distribution"
            )
        eta, rv, shape = spec.draw
        self.shape = tuple(int(k) for k in shape)
        self.name = spec.observed_name
        node = rv.owner
        self._eta, self._rv, self._nat = eta, rv, spec.nat
        self._compiled = None
        if isinstance(node.op, RandomVariable):
            self.op = node.op
            self._params = light_function([eta, spec.nat], list(node.inputs[2:]))
        else:
            self.op = None
            self._params = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_compiled"] = None  # compiled again where it is used
        return state

    def __call__(self, eta: np.ndarray, nat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.op is not None:
            params = self._params(eta, nat)
            out = self.op.rng_fn(rng, *params, self.shape)
        else:
            out = self._symbolic()(eta, nat, rng)
        return np.asarray(out, float).reshape(-1)

    def _symbolic(self):
        if self._compiled is None:
            import pytensor
            from pytensor.compile.sharedvalue import SharedVariable
            from pytensor.graph.replace import graph_replace
            from pytensor.graph.traversal import graph_inputs
            from pytensor.tensor.random.type import RandomType

            from ..compilation.evaluator import freeze_shared

            rngs = [v for v in graph_inputs([self._rv]) if isinstance(v.type, RandomType)]
            new = [v.type() for v in rngs]
            rv = graph_replace(self._rv, dict(zip(rngs, new, strict=True)), strict=False) if rngs else self._rv
            (rv,) = freeze_shared([rv])
            left = [v for v in graph_inputs([rv]) if isinstance(v, SharedVariable)]
            if left:
                raise MixVcovError(f"cannot simulate from {self.name!r}: its graph holds shared variables {left}")
            mode = pytensor.compile.mode.Mode(linker="py", optimizer="fast_compile")
            fn = pytensor.function([self._eta, self._nat, *new], rv, mode=mode, on_unused_input="ignore")
            self._compiled = lambda eta, nat, rng: fn(eta, nat, *([rng] * len(new)))
        return self._compiled


class Simulator:
    """Simulates responses from a fitted model (steps 1 and 2 of the module docstring).

    Parameters
    ----------
    functions :
        The fit's engine functions (``MixedFit._functions``): their model map gives the core
        parameters ``phi = (beta, theta, sigma | psi)`` of the estimate.
    nat : numpy.ndarray
        The estimate on the natural scale.
    """

    def __init__(self, functions, nat: np.ndarray):
        spec = functions.spec
        self.nat = np.asarray(nat, float)
        phi = np.asarray(functions.map(self.nat, second=False)[0], float)
        p = spec.fixed_index.size
        self.gaussian = bool(spec.gaussian)
        self.mean = np.asarray(spec.offset, float) + np.asarray(spec.X, float) @ phi[:p]
        self.terms = []
        off = p
        for t in spec.terms:
            r = t.r
            L = np.zeros((r, r))
            for j in range(r):  # lower triangle, column-major (the core parameters' order)
                for i in range(j, r):
                    L[i, j] = phi[off]
                    off += 1
            used = np.flatnonzero(t.codes >= 0)
            self.terms.append((len(t.levels), L, used, t.codes[used], np.asarray(t.z, float)[used]))
        self.sigma = float(phi[off]) if self.gaussian else None
        # precision weights: residual SD sigma / sqrt(w_i) (pymc_mixvcov.model.weights)
        w = getattr(spec, "weights", None)
        self.residual_scale = None if w is None else 1.0 / np.sqrt(np.asarray(w, float))
        self.draw = None if self.gaussian else _Draw(spec)

    def eta(self, rng: np.random.Generator) -> np.ndarray:
        """The linear predictor with random effects drawn from their fitted distribution."""
        eta = self.mean.copy()
        for n_levels, L, used, codes, z in self.terms:
            u = rng.standard_normal((n_levels, L.shape[0])) @ L.T
            eta[used] += np.sum(z * u[codes], axis=1)
        return eta

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """One simulated response (the observed variable's values, offset included)."""
        eta = self.eta(rng)
        if self.gaussian:
            e = self.sigma * rng.standard_normal(eta.size)
            return eta + (e if self.residual_scale is None else e * self.residual_scale)
        return self.draw(eta, self.nat, rng)


# -- one replicate, a chunk of them ------------------------------------------------------------------
@dataclass
class _Kit:
    """What a worker needs: the fit's functions ready for new responses, the simulator, the start."""

    swap: object
    simulator: Simulator
    start: np.ndarray
    n_out: int
    map_fit: bool
    stacked: bool
    affine: tuple | None
    cold: bool


def sd_values(phi: np.ndarray, spec) -> np.ndarray:
    """The sd scale (fixed effects, per term SDs and correlations, then ``sigma`` or the likelihood's
    own parameters) from the core parameters ``phi``, in the order of ``fit.labels("sd")``."""
    p = spec.fixed_index.size
    out = [np.asarray(phi[:p], float)]
    off = p
    for t in spec.terms:
        r = t.r
        idx = [(i, j) for j in range(r) for i in range(j, r)]
        L = np.zeros((r, r))
        for k, (i, j) in enumerate(idx):
            L[i, j] = phi[off + k]
        off += len(idx)
        G = L @ L.T
        sd = np.sqrt(np.maximum(np.diag(G), 1e-300))
        out.append(np.array([sd[i] if i == j else G[i, j] / (sd[i] * sd[j]) for i, j in idx]))
    out.append(np.asarray(phi[off : off + 1] if spec.gaussian else phi[off:], float))
    return np.concatenate(out)


_ERRORS = (MixVcovError, np.linalg.LinAlgError, FloatingPointError, ValueError, ZeroDivisionError)


def _failed(err: Exception) -> str:
    return f"failed: {type(err).__name__}: {err}"


def _run_chunk(kit: _Kit, seeds: list, first: int) -> tuple:
    """Replicates ``first, first + 1, ...`` with their seeds: simulate, refit, collect.

    The refits take their Newton steps together (:func:`pymc_mixvcov.optimise.warm.newton_lockstep`),
    evaluated in one call per step where the engine can stack responses
    (:class:`pymc_mixvcov.engines.response.StackedResponses`), one by one otherwise; a replicate that
    does not converge so goes through :func:`pymc_mixvcov.optimise.warm.warm_refit`'s fallbacks.
    """
    from ..engines.response import StackedResponses
    from ..optimise.warm import LINE_TRIALS, newton_lockstep, warm_refit

    m = len(seeds)
    values = np.full((m, kit.n_out), np.nan)
    loglik = np.full(m, np.nan)
    converged = np.zeros(m, bool)
    failed = np.zeros(m, bool)
    messages = [""] * m
    ys, fns, ok = [], [], []
    with np.errstate(all="ignore"):
        for i, s in enumerate(seeds):
            try:
                y = kit.simulator(np.random.default_rng(s))
                fns.append(kit.swap(y))
                ys.append(y)
                ok.append(i)
            except _ERRORS as err:
                failed[i], messages[i] = True, _failed(err)
        if not ok:
            return first, values, loglik, converged, failed, messages

        def one_by_one(rows, nats):
            out = []
            for r, x in zip(rows, nats, strict=True):
                try:
                    out.append(fns[r][0].information(x))
                except _ERRORS:
                    out.append({"loglik": -np.inf, "grad": np.full(x.size, np.nan), "observed": np.eye(x.size)})
            return out

        evaluate, stack = one_by_one, None
        if kit.stacked:
            stack = StackedResponses(kit.swap, np.stack(ys), kit.affine)

            def evaluate(rows, nats):
                try:
                    return stack.information(rows, nats)
                except _ERRORS:
                    return one_by_one(rows, nats)

        spec0 = fns[0][1]
        steps = [None] * len(ok)
        if not kit.cold:
            starts = np.broadcast_to(kit.start, (len(ok), kit.start.size))
            trials = LINE_TRIALS if stack else 1
            try:
                steps = newton_lockstep(evaluate, spec0, fns[0][0].method, starts, line_trials=trials)
            except _ERRORS:  # then each replicate on its own, below
                steps = [None] * len(ok)
        for j, i in enumerate(ok):
            f, spec = fns[j]
            lock = steps[j]
            if lock is not None and stack is not None and not stack.check(lock.nat):
                lock = None  # the model map is not affine after all: steps again with the true one
            try:
                out = warm_refit(f, spec, kit.start, first=lock, cold=kit.cold)
                phi = f.map(out.nat, second=False)[0]
                values[i] = sd_values(phi, spec)
                loglik[i] = float(out.info["loglik_only"] if kit.map_fit else out.info["loglik"])
                converged[i], messages[i] = bool(out.converged), str(out.message)
            except _ERRORS as err:
                failed[i], messages[i] = True, _failed(err)
    return first, values, loglik, converged, failed, messages


#: A worker process's kit, by token: unpickled once per process, not once per task.
_WORKER_KIT: tuple[str, _Kit] | None = None


def _run_chunk_pickled(token: str, blob: bytes, seeds: list, first: int) -> tuple:
    """:func:`_run_chunk` in a worker process, from the kit's pickle (kept for the next task)."""
    global _WORKER_KIT
    if _WORKER_KIT is None or _WORKER_KIT[0] != token:
        import cloudpickle

        _WORKER_KIT = (token, cloudpickle.loads(blob))
    return _run_chunk(_WORKER_KIT[1], seeds, first)


# -- the runners -------------------------------------------------------------------------------------
def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    size = max(1, min(MAX_CHUNK, math.ceil(n / (2 * max(workers, 1)))))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _run_local(kit, seeds):
    for a, b in _chunks(len(seeds), 1):
        yield _run_chunk(kit, seeds[a:b], a)


def _run_joblib(kit, seeds, n_jobs):
    import cloudpickle
    from joblib import Parallel, cpu_count, delayed

    blob = cloudpickle.dumps(kit)
    token = hashlib.sha256(blob).hexdigest()
    workers = max(1, cpu_count() + 1 + n_jobs) if n_jobs < 0 else n_jobs
    chunks = _chunks(len(seeds), workers)
    tasks = (delayed(_run_chunk_pickled)(token, blob, seeds[a:b], a) for a, b in chunks)
    with Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered") as parallel:
        yield from parallel(tasks)


def _run_dask(kit, seeds, client):
    from distributed import as_completed

    workers = max(1, sum(client.nthreads().values()))
    kit_future = client.scatter(kit, broadcast=True)
    chunks = _chunks(len(seeds), workers)
    futures = [client.submit(_run_chunk, kit_future, seeds[a:b], a, pure=False) for a, b in chunks]
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        client.cancel([*futures, kit_future])


# -- checks ------------------------------------------------------------------------------------------
def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise MixVcovError(f"n must be a positive integer (the number of bootstrap replicates), got {n!r}")
    return int(n)


def _seed_sequence(seed) -> np.random.SeedSequence:
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, np.random.SeedSequence):
        # a copy: spawning from the caller's object would change what it spawns next
        return np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key, pool_size=seed.pool_size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MixVcovError(
            f"seed must be a non-negative integer, a numpy.random.SeedSequence or None, got {seed!r}: the "
            "replicates are drawn from SeedSequence(seed).spawn(n), one stream per replicate"
        )
    return np.random.SeedSequence(int(seed))


def _check_jobs(n_jobs, client):
    if client is not None:
        if n_jobs is not None:
            raise MixVcovError(
                "give either n_jobs (processes on this machine) or client (a dask.distributed cluster), not both"
            )
        if not all(callable(getattr(client, k, None)) for k in ("submit", "scatter", "nthreads")):
            raise MixVcovError(
                f"client must be a dask.distributed.Client, got {type(client).__name__}; create one with "
                "distributed.Client(address) (pip install 'pymc-mixvcov[dask]'), or leave client=None for "
                "processes on this machine"
            )
        return None
    if n_jobs is None:
        return -1
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        raise MixVcovError(
            f"n_jobs must be a non-zero integer (1: this process; k > 1: k processes; -1: one per CPU), got {n_jobs!r}"
        )
    return int(n_jobs)


# -- the entry points --------------------------------------------------------------------------------
def simulate(fit, n: int, *, seed=None) -> np.ndarray:
    """``n`` responses simulated from a fit, ``(n, nobs)``: replicate ``b`` is the response that
    :func:`bootstrap` with the same ``seed`` refits as its replicate ``b`` (lme4's ``simulate``)."""
    n = _check_n(n)
    ss = _seed_sequence(seed)
    simulator = _simulator(fit)
    return np.stack([simulator(np.random.default_rng(s)) for s in ss.spawn(n)])


def _simulator(fit) -> Simulator:
    simulator = Simulator(fit._functions, np.asarray(fit._opt["nat"], float))
    try:  # a first draw here: a likelihood without a sampler fails now, with its reason
        simulator(np.random.default_rng(0))
    except NotImplementedError as err:
        raise MixVcovError(
            f"cannot simulate from the likelihood of {fit.spec.observed_name!r}: {err}. A parametric bootstrap "
            "needs a sampler (pm.CustomDist(..., random=...), or a built-in distribution)"
        ) from err
    return simulator


def bootstrap(fit, n: int, *, seed=None, n_jobs: int | None = None, client=None, progress: bool | None = None):
    """Parametric bootstrap of a fit; see :meth:`pymc_mixvcov.inference.results.MixedFit.bootstrap`."""
    from ..engines.response import ResponseSwap, StackedResponses, affine_map
    from ..output.progress import task

    n = _check_n(n)
    ss = _seed_sequence(seed)
    n_jobs = _check_jobs(n_jobs, client)
    if progress is not None and not isinstance(progress, bool):
        raise MixVcovError(f"progress must be True, False or None, got {progress!r}")
    nat = np.asarray(fit._opt["nat"], float)
    fns = fit._functions
    simulator = _simulator(fit)
    labels = fit.labels("sd")
    spec = fit.spec
    # a start on a bound of the support (a singular fit) would let Newton steps stall at a saddle
    cold = bool(np.any((nat <= spec.lower) | (nat >= spec.upper)))
    stacked = StackedResponses.applies(fns)
    kit = _Kit(
        ResponseSwap(fns),
        simulator,
        nat,
        len(labels),
        fit.method == "MAP",
        stacked,
        affine_map(fns.map, nat, spec.lower, spec.upper) if stacked and not cold else None,
        cold,
    )
    seeds = ss.spawn(n)
    values = np.full((n, len(labels)), np.nan)
    loglik = np.full(n, np.nan)
    converged = np.zeros(n, bool)
    failed = np.zeros(n, bool)
    messages = [""] * n
    if client is not None:
        runs = _run_dask(kit, seeds, client)
    elif n_jobs == 1:
        runs = _run_local(kit, seeds)
    else:
        runs = _run_joblib(kit, seeds, n_jobs)
    t0 = time.perf_counter()
    with task("bootstrap", detail="replicates", total=n, progress=progress, delay=PROGRESS_DELAY) as bar:
        for first, v, ll, conv, fail, msg in runs:
            sl = slice(first, first + len(ll))
            values[sl], loglik[sl], converged[sl], failed[sl] = v, ll, conv, fail
            messages[sl] = msg
            bar.advance(len(ll))
    seconds = time.perf_counter() - t0
    result = BootstrapResult._build(fit, labels, values, loglik, converged, failed, messages, ss, seconds)
    bad = int(np.sum(~converged))
    if bad:
        warnings.warn(
            f"{bad} of {n} bootstrap replicates did not converge ({int(failed.sum())} of them failed outright); "
            "they are kept, flagged by the variables 'converged' and 'failed' (reasons in 'message'), and left "
            "out of confint() and se()",
            ConvergenceWarning,
            stacklevel=3,
        )
    return result


# -- the result --------------------------------------------------------------------------------------
def percentile_interval(t: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates ``t``, as ``boot::boot.ci(type = "perc")``.

    ``R`` finite replicates sorted; for each tail probability ``a`` in ``((1 - level) / 2,
    (1 + level) / 2)``, ``k = (R + 1) a``: the ``k``-th order statistic when ``k`` is an integer,
    else the interpolation between order statistics ``floor(k)`` and ``floor(k) + 1`` that is linear
    in ``Phi^{-1}(k / (R + 1))`` (boot's ``norm.inter``; Davison and Hinkley 1997, eq. 5.8), the
    extreme order statistic where ``k < 1`` or ``k >= R``. ``(nan, nan)`` without finite replicates.
    """
    from scipy.special import ndtri

    t = np.sort(np.asarray(t, float)[np.isfinite(t)])
    R = t.size
    if R == 0:
        return (np.nan, np.nan)
    out = []
    for a in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        rk = (R + 1) * a
        k = int(math.floor(rk + 1e-9 * rk))  # R's trunc, robust to rounding of (R + 1) a
        if abs(k - rk) <= 1e-9 * rk and 1 <= k <= R:
            out.append(float(t[k - 1]))
        elif k < 1:
            out.append(float(t[0]))
        elif k >= R:
            out.append(float(t[R - 1]))
        else:
            z, z0, z1 = ndtri(a), ndtri(k / (R + 1)), ndtri((k + 1) / (R + 1))
            out.append(float(t[k - 1] + (z - z0) / (z1 - z0) * (t[k] - t[k - 1])))
    return out[0], out[1]


class BootstrapResult:
    """Replicates of a parametric bootstrap (:meth:`MixedFit.bootstrap`).

    Attributes
    ----------
    dataset : xarray.Dataset
        Dimensions ``replicate`` and ``param_sd`` (the labels of ``fit.vcov(scale="sd")``). Variables:
        ``estimate`` (replicate x param_sd: each replicate's estimates on the sd scale), ``loglik``,
        ``converged``, ``failed`` (the refit raised an error; its estimates are NaN) and ``message``
        per replicate, and ``fit_estimate`` (param_sd: the fitted model's estimates, from which the
        replicates were simulated). Attributes: the seed's entropy (reproduces the run with
        ``seed=entropy``), the method, the family, the fit's log-likelihood, the run's seconds.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    @classmethod
    def _build(cls, fit, labels, values, loglik, converged, failed, messages, ss, seconds) -> BootstrapResult:
        import xarray as xr

        n = values.shape[0]
        coords = {"replicate": np.arange(n), "param_sd": list(labels)}
        ds = xr.Dataset(
            {
                "estimate": (("replicate", "param_sd"), values),
                "loglik": ("replicate", loglik),
                "converged": ("replicate", converged),
                "failed": ("replicate", failed),
                "message": ("replicate", np.array(messages, dtype=object).astype(str)),
                "fit_estimate": ("param_sd", np.asarray(fit.params("sd").to_numpy(), float)),
            },
            coords=coords,
            attrs={
                "kind": "parametric bootstrap",
                "method": fit.method,
                "family": fit.spec.family,
                "fit_loglik": float(fit.loglik),
                "seed_entropy": str(ss.entropy),
                "n_replicates": n,
                "n_converged": int(converged.sum()),
                "seconds": float(seconds),
            },
        )
        return cls(ds)

    @property
    def n(self) -> int:
        return int(self.dataset.sizes["replicate"])

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.dataset["converged"].values, bool)

    def estimates(self, converged_only: bool = True) -> pd.DataFrame:
        """The replicates' estimates (sd scale), one row per replicate (the converged ones by default)."""
        df = self.dataset["estimate"].to_pandas()
        df.columns.name = None
        return df[self.converged] if converged_only else df

    def se(self, converged_only: bool = True) -> pd.Series:
        """Bootstrap standard errors: the SD (divisor ``R - 1``) of the replicates' estimates."""
        return self.estimates(converged_only).std(ddof=1).rename("se")

    def confint(self, level: float = 0.95, converged_only: bool = True) -> pd.DataFrame:
        """Percentile intervals (:func:`percentile_interval`, ``boot::boot.ci(type = "perc")``).

        Parameters
        ----------
        level : float
            Coverage, in ``(0, 1)``.
        converged_only : bool
            Use the converged replicates only (default); failed ones (NaN) are never used.

        Returns
        -------
        pandas.DataFrame
            ``lower``, ``upper``, one row per parameter (the labels of ``fit.vcov(scale="sd")``).
        """
        if isinstance(level, bool) or not isinstance(level, float | int) or not 0 < level < 1:
            raise MixVcovError(f"level must be a number in (0, 1), got {level!r}")
        est = self.estimates(converged_only)
        rows = [percentile_interval(est[c].to_numpy(), float(level)) for c in est.columns]
        return pd.DataFrame(rows, index=est.columns, columns=["lower", "upper"])

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Per parameter: the fit's estimate, the bootstrap mean, bias and SE, and the percentile interval."""
        est = self.estimates()
        fit_est = self.dataset["fit_estimate"].to_pandas()
        out = pd.DataFrame({"estimate": fit_est, "mean": est.mean(), "bias": est.mean() - fit_est, "se": self.se()})
        return out.join(self.confint(level))

    def to_datatree(self):
        """The replicates as an ``xarray.DataTree`` with one group, ``bootstrap``."""
        import xarray as xr

        return xr.DataTree.from_dict({"bootstrap": self.dataset})

    def __repr__(self) -> str:
        a = self.dataset.attrs
        return (
            f"<BootstrapResult: {self.n} replicates of a {a['method']} fit ({a['family']}), "
            f"{a['n_converged']} converged, {a['seconds']:.1f} s>"
        )
