"""pymc_mixvcov: frequentist inference for mixed models declared in PyMC.

Integrates the random effects of a PyMC model out, maximises the marginal likelihood, and
returns the full covariance matrix of fixed effects and variance components from exact
pytensor derivatives, on the scale you ask for.
"""

from __future__ import annotations

from ._startup import paused_gc

with paused_gc():
    import pymc  # noqa: F401  (every model is a pm.Model: imported with the package, see _startup)

    from . import datasets
    from .errors import (
        ConvergenceWarning,
        DataWarning,
        MixVcovError,
        MixVcovWarning,
        SingularFitWarning,
    )
    from .inference.anova import anova
    from .inference.results import MixedFit
    from .model.bambi import from_bambi
    from .model.formula import MixedModel, glmm, lmm
    from .optimise.fit import fit
    from .output.compare import compare, plot_compare, posterior_on_scale

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "DataWarning",
    "MixVcovError",
    "MixVcovWarning",
    "MixedFit",
    "MixedModel",
    "SingularFitWarning",
    "anova",
    "compare",
    "datasets",
    "fit",
    "from_bambi",
    "glmm",
    "lmm",
    "plot_compare",
    "posterior_on_scale",
    "__version__",
]
