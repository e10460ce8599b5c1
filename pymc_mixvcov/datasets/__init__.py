"""Datasets from lme4 (and nlme's Orthodont), bundled as CSV, loaded with R's column types.

Factors become :class:`pandas.Categorical` with the level order R uses (ordered where R's
factor is ordered), so that contrasts and their baselines, random-effect ordering and labels
agree with lme4.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

import pandas as pd

from ..errors import MixVcovError

__all__ = ["load", "available"]

Order = Literal["numeric", "lexical", "appearance"]

# column -> level order: "numeric" (levels are integers, sorted as numbers, as lme4 stores them),
# "lexical" (R's default factor() sort), "appearance" (first-appearance order), or an explicit list.
# Ordered factors are marked with a leading "ordered:" on the rule.
_SPECS: dict[str, tuple[str, dict[str, str | list[str]]]] = {
    "sleepstudy": ("sleepstudy.csv", {"Subject": "numeric"}),
    # lme4's cake: temperature is an ordered factor (polynomial contrasts in lme4)
    "cake": ("cake.csv", {"replicate": "numeric", "recipe": "lexical", "temperature": "ordered:numeric"}),
    # nlme's Orthodont as lme4's examples use it: Sex re-levelled so that Male is the baseline
    "orthodont": ("orthodont.csv", {"Subject": "lexical", "Sex": ["Male", "Female"]}),
    "cbpp": ("cbpp.csv", {"herd": "numeric", "period": "numeric"}),
    "penicillin": ("penicillin.csv", {"plate": "lexical", "sample": "lexical"}),
    "dyestuff": ("dyestuff.csv", {"Batch": "lexical"}),
    "pastes": ("pastes.csv", {"batch": "lexical", "cask": "lexical", "sample": "lexical"}),
    "grouseticks": (
        "grouseticks.csv",
        {"INDEX": "numeric", "BROOD": "numeric", "YEAR": "numeric", "LOCATION": "numeric"},
    ),
    "insteval": (
        "insteval.csv.gz",
        {
            "s": "numeric",
            "d": "numeric",
            "studage": "ordered:numeric",
            "lectage": "ordered:numeric",
            "service": "numeric",
            # lme4's InstEval stores the department codes in this (non-sorted) order.
            "dept": ["15", "5", "10", "12", "6", "7", "4", "8", "9", "14", "1", "3", "11", "2"],
        },
    ),
    "verbagg": (
        "verbagg.csv.gz",
        {
            "Gender": ["F", "M"],
            "item": "appearance",
            "resp": "ordered:" + ",".join(["no", "perhaps", "yes"]),
            "id": "numeric",
            "btype": ["curse", "scold", "shout"],
            "situ": ["other", "self"],
            "mode": ["want", "do"],
            "r2": ["N", "Y"],
        },
    ),
}


def available() -> list[str]:
    """Names of the bundled datasets."""
    return sorted(_SPECS)


def _levels(values: pd.Series, rule: str | list[str]) -> tuple[list[str], bool]:
    ordered = False
    if isinstance(rule, str) and rule.startswith("ordered:"):
        ordered, rule = True, rule.removeprefix("ordered:")
        if "," in rule:
            rule = rule.split(",")
    present = pd.unique(values.dropna())
    if isinstance(rule, list):
        missing = set(present) - set(rule)
        if missing:  # pragma: no cover - guards the bundled files
            raise MixVcovError(f"levels {sorted(missing)} are not in the declared level list")
        return list(rule), ordered
    if rule == "numeric":
        return sorted(present, key=float), ordered
    if rule == "lexical":
        return sorted(present), ordered
    return list(present), ordered


def load(name: str) -> pd.DataFrame:
    """Load a bundled lme4 dataset as a DataFrame with lme4's column types.

    Parameters
    ----------
    name : str
        One of :func:`available` (case-insensitive): sleepstudy, cbpp, penicillin, dyestuff,
        pastes, grouseticks, insteval, verbagg, cake (lme4), orthodont (nlme, with ``Sex``
        levels Male, Female as in lme4's examples).

    Returns
    -------
    pandas.DataFrame
        Factors are :class:`pandas.Categorical` in R's level order (ordered where R's are).

    Raises
    ------
    MixVcovError
        If ``name`` is not a bundled dataset; the message lists the available names.
    """
    key = str(name).lower()
    if key not in _SPECS:
        raise MixVcovError(f"unknown dataset {name!r}; available datasets are: {', '.join(available())}")
    filename, factors = _SPECS[key]
    path = resources.files(__package__) / "data" / filename
    with resources.as_file(path) as p:
        frame = pd.read_csv(p, dtype={col: str for col in factors})
    for col, rule in factors.items():
        levels, ordered = _levels(frame[col], rule)
        frame[col] = pd.Categorical(frame[col], categories=levels, ordered=ordered)
    return frame
