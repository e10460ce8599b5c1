"""Exceptions and warnings of pymc_mixvcov (one root each)."""

from __future__ import annotations


class MixVcovError(Exception):
    """Root of every error raised by pymc_mixvcov.

    Messages say what went wrong, why, and how to fix it.
    """


class MixVcovWarning(UserWarning):
    """Root of every warning issued by pymc_mixvcov."""


class SingularFitWarning(MixVcovWarning):
    """A variance parameter sits on its boundary, or the information is singular."""


class ConvergenceWarning(MixVcovWarning):
    """The optimiser did not reach a stationary point."""


class DataWarning(MixVcovWarning):
    """Rows were dropped or data were altered before fitting."""
