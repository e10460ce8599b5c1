"""Choosing and building the engine of a model: the one place that knows the engines apart.

Three engines evaluate a model's criterion and its exact derivatives:

- ``"clusters"``: cluster by cluster (independent connected components of the random effects),
  the exact Gaussian marginal likelihood from cluster statistics
  (:class:`pymc_mixvcov.compilation.derivatives.LMMFunctions`, graphs of
  :mod:`pymc_mixvcov.engines.marginal`) or the Laplace approximation / adaptive Gauss-Hermite
  quadrature of other likelihoods (:class:`~pymc_mixvcov.compilation.derivatives.LaplaceFunctions`,
  :mod:`pymc_mixvcov.engines.jets`, :mod:`pymc_mixvcov.engines.laplace`); reported as
  ``"clusters"`` (Gaussian) or ``"laplace"``;
- ``"blocked"``: the whole model at once with a blocked factor of ``Lambda' Z' W Z Lambda + I``
  (first term's diagonal block eliminated, Schur complement of the others), Gaussian
  (:class:`pymc_mixvcov.engines.blocked.BlockedLMMFunctions`) or Laplace
  (:class:`pymc_mixvcov.engines.blocked_laplace.BlockedLaplaceFunctions`), for crossed designs;
- the MAP wrapper :class:`~pymc_mixvcov.compilation.derivatives.MAPFunctions` adds the log prior to
  any of them.

Every engine's functions object answers the same calls (``profiled``, ``profile`` where
``profiled``, ``information``, ``clusters``, ``observation_scores``, ``scales``, ``map`` and, where
the model can fail to have a finite optimum, ``diagnose``); the optimiser
(:mod:`pymc_mixvcov.optimise.fit`) and :class:`~pymc_mixvcov.inference.results.MixedFit` use only
these, through :func:`build_functions`.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..errors import MixVcovError
from .marginal import build_structure

__all__ = [
    "BLOCKED_MIN_EFFECTS",
    "BLOCKED_REPEAT_MIN_EFFECTS",
    "ENGINES",
    "Engine",
    "build_functions",
    "choose_engine",
    "diagnose",
    "engine_structure",
    "repeat_engine",
]

#: What ``engine=`` accepts (see :func:`pymc_mixvcov.optimise.fit.fit`).
Engine = Literal["auto", "clusters", "blocked"]
ENGINES: tuple[str, ...] = get_args(Engine)

#: ``engine="auto"`` uses the blocked engine for a model whose largest cluster (connected component
#: of the random effects: a crossed design is one) has more random effects than this (non-Gaussian
#: models: with ``nAGQ=1``). A dense factor of that size costs about as much as the blocked one.
BLOCKED_MIN_EFFECTS = 64
#: A Gaussian model evaluated many times at fixed data (profiling, :func:`repeat_engine`) uses the
#: blocked engine once its largest cluster has more random effects than this: its closed-form
#: evaluations cost less than the cluster engine's graphs from a few effects on (Penicillin's 30
#: crossed effects: 30 ms against 390 ms per value and gradient), and compile nothing.
BLOCKED_REPEAT_MIN_EFFECTS = 8


def choose_engine(spec, structure, engine: str, nagq: int = 1) -> str:
    """The engine that fits ``spec``: ``"clusters"``, ``"laplace"`` or ``"blocked"``.

    ``engine="auto"`` picks ``"blocked"`` when the largest cluster of ``structure`` has more than
    :data:`BLOCKED_MIN_EFFECTS` random effects (and, for non-Gaussian likelihoods, ``nAGQ = 1``);
    otherwise the cluster engine (``"laplace"`` for non-Gaussian likelihoods).
    """
    if engine not in ENGINES:
        raise MixVcovError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if not spec.gaussian:
        quadrature = isinstance(nagq, int | np.integer) and not isinstance(nagq, bool) and nagq > 1
        if engine == "blocked" and quadrature:
            raise MixVcovError(
                f"engine='blocked' evaluates the Laplace approximation (nAGQ=1) only; nAGQ={nagq} needs the "
                "cluster engine: use engine='auto' or 'clusters'"
            )
        if engine == "auto" and not quadrature and structure.largest > BLOCKED_MIN_EFFECTS:
            return "blocked"
        return "blocked" if engine == "blocked" else "laplace"
    if engine == "auto":
        return "blocked" if structure.largest > BLOCKED_MIN_EFFECTS else "clusters"
    return engine


def build_functions(spec, structure, engine: str, method: str, nagq: int = 1):
    """The functions object of ``engine`` (from :func:`choose_engine`) for ``spec``, and the
    cluster structure it uses.

    ``method`` is ``"ML"``, ``"REML"`` or ``"MAP"`` (the ML criterion plus the log prior:
    :class:`~pymc_mixvcov.compilation.derivatives.MAPFunctions` around the ML engine).
    ``structure`` is :func:`engine_structure`'s.
    """
    from ..compilation.derivatives import LaplaceFunctions, LMMFunctions, MAPFunctions

    base_method = "ML" if method == "MAP" else method
    if engine == "blocked" and not spec.gaussian:
        from .blocked_laplace import BlockedLaplaceFunctions

        fns = BlockedLaplaceFunctions(spec, structure, base_method)
    elif engine == "blocked":
        from .blocked import BlockedLMMFunctions

        fns = BlockedLMMFunctions(spec, structure, base_method)
    elif spec.gaussian:
        fns = LMMFunctions(spec, structure, base_method)
    else:
        fns = LaplaceFunctions(spec, structure, nagq=nagq)
    if method == "MAP":
        fns = MAPFunctions(fns)
    return fns, structure


def repeat_engine(spec, structure, engine: str) -> str:
    """The engine that evaluates a fitted model's criterion many times at fixed data (profile
    likelihoods), given the ``engine`` that fitted it.

    Gaussian models fitted by the cluster engine whose largest cluster has more than
    :data:`BLOCKED_REPEAT_MIN_EFFECTS` random effects move to the blocked engine: the same
    criterion with exact derivatives (the two agree to 1e-11, ``tests/test_crossed.py``) at a
    fraction of the cost per evaluation. Every other fit keeps its engine.
    """
    if spec.gaussian and engine == "clusters" and structure.largest > BLOCKED_REPEAT_MIN_EFFECTS:
        return "blocked"
    return engine


def engine_structure(spec, structure, engine: str):
    """The cluster structure ``engine`` works with: the blocked engines use the layout alone
    (:func:`build_structure` with ``statistics=False``, as given); the cluster engines need each
    cluster's statistics."""
    return structure if engine == "blocked" else build_structure(spec)


def diagnose(fns, nat: np.ndarray, labels: list[str]) -> list[str]:
    """The problems an engine finds at its optimum ``nat`` (messages for warnings; ``labels``:
    the fixed effects'): a non-Gaussian engine's inner mode search or separation. Engines whose
    criterion always has a finite optimum (Gaussian) have no ``diagnose`` and give none; a MAP
    wrapper asks the engine it wraps."""
    base = getattr(fns, "base", fns)
    check = getattr(base, "diagnose", None)
    return [] if check is None else list(check(nat, labels))
