import pandas as pd
import pytest

import pymc_mixvcov as pmv


@pytest.mark.parametrize(
    ("name", "rows", "factors"),
    [
        ("sleepstudy", 180, {"Subject": ["308", "309", "310"]}),
        ("cbpp", 56, {"herd": ["1", "2", "3"], "period": ["1", "2", "3", "4"]}),
        ("penicillin", 144, {"plate": ["a", "b", "c"], "sample": ["A", "B", "C", "D", "E", "F"]}),
        ("dyestuff", 30, {"Batch": ["A", "B", "C", "D", "E", "F"]}),
        ("pastes", 60, {"batch": ["A", "B"], "cask": ["a", "b", "c"], "sample": ["A:a", "A:b"]}),
        ("grouseticks", 403, {"BROOD": ["501", "502"], "YEAR": ["95", "96", "97"]}),
        ("insteval", 73421, {"dept": ["15", "5", "10"], "service": ["0", "1"]}),
        ("verbagg", 7584, {"resp": ["no", "perhaps", "yes"], "mode": ["want", "do"]}),
        ("cake", 270, {"recipe": ["A", "B", "C"], "temperature": ["175", "185", "195", "205", "215", "225"]}),
        ("orthodont", 108, {"Sex": ["Male", "Female"], "Subject": ["F01", "F02"]}),
    ],
)
def test_load_has_lme4_types(name, rows, factors):
    # row counts and level orders as in lme4's data sets (str() in R)
    d = pmv.datasets.load(name)
    assert len(d) == rows
    for col, first in factors.items():
        assert isinstance(d[col].dtype, pd.CategoricalDtype)
        assert list(d[col].cat.categories[: len(first)]) == first


def test_numeric_levels_sort_as_numbers():
    herd = pmv.datasets.load("cbpp")["herd"].cat.categories
    assert list(herd) == [str(i) for i in range(1, 16)]


def test_ordered_factors():
    # ordered as in R: str(lme4::VerbAgg), str(lme4::cake), str(lme4::InstEval)
    assert pmv.datasets.load("verbagg")["resp"].cat.ordered
    cake = pmv.datasets.load("cake")
    assert cake["temperature"].cat.ordered and not cake["recipe"].cat.ordered
    insteval = pmv.datasets.load("insteval")
    assert insteval["studage"].cat.ordered and insteval["lectage"].cat.ordered and not insteval["dept"].cat.ordered


def test_unknown_dataset_lists_names():
    with pytest.raises(pmv.MixVcovError, match="sleepstudy") as err:
        pmv.datasets.load("iris")
    assert "verbagg" in str(err.value)
