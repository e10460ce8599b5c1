"""Scores, log-likelihood contributions and sandwich covariances.

References: tests/reference/sleepstudy_ml.json, written by tests/reference/generate.R with
lme4 1.1-31, merDeriv 0.2-4 and sandwich 3.0 (R 4.2.2): merDeriv's ``estfun.lmerMod`` at levels 2
(clusters) and 1 (cases), and ``sandwich(fit, bread = bread.lmerMod(fit, full = TRUE,
information = ...), meat = meat(fit, level = 2))``, which is CR0. merDeriv evaluates everything at
lme4's optimum, which differs from ours in the fifth or sixth digit (the optimisers stop at
different points of a flat likelihood); that, not arithmetic, bounds the agreement, hence the
issue's tolerance of 5e-3 relative to the scale of each quantity.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import ref_matrix, reference, scaled_error

import pymc_mixvcov as pmv
from pymc_mixvcov.inference import sandwich

TOL = 5e-3


@pytest.fixture(scope="module")
def ref():
    return reference("sleepstudy_ml")


def _columns_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Entrywise error relative to each column's largest magnitude."""
    return np.abs(got - want) / np.max(np.abs(want), axis=0)


def test_cluster_scores_match_merderiv(sleep_ml, ref):
    want = ref["merDeriv_scores_cluster"]
    got = sleep_ml.scores(level="cluster", scale="var")
    assert list(got.columns) == want["colnames"]
    assert list(got.index) == [str(r) for r in want["rownames"]]
    assert got.index.name == "Subject"
    assert np.max(_columns_error(got.to_numpy(), np.array(want["values"]))) < TOL


def test_case_scores_match_merderiv(sleep_ml, ref):
    want = np.array(ref["merDeriv_scores_case_first5"]["values"])
    got = sleep_ml.scores(level="observation", scale="var")
    assert got.shape == (180, 6)
    assert np.max(_columns_error(got.to_numpy()[:5], want)) < TOL


@pytest.mark.parametrize("information", ["expected", "observed"])
def test_sandwich_matches_merderiv(sleep_ml, ref, information):
    want = ref_matrix(ref, f"merDeriv_sandwich_{information}")
    got = sleep_ml.sandwich(scale="var", information=information, adjust="CR0")
    assert list(got.index) == list(want.index)
    assert np.max(scaled_error(got.to_numpy(), want.to_numpy())) < TOL


def test_paper_table2_value(sleep_ml):
    # Wang and Merkle (2018), Table 2: robust variance of the intercept variance, expected bread
    got = sleep_ml.sandwich("var", "expected", adjust="CR0").loc["cov_Subject.(Intercept)", "cov_Subject.(Intercept)"]
    np.testing.assert_allclose(got, 45232.13, rtol=1e-5)


# -- identities ---------------------------------------------------------------------------------
def test_scores_sum_to_zero_at_the_optimum(sleep_ml):
    total = sleep_ml.scores("cluster", "natural").sum().to_numpy()
    se = np.sqrt(np.diag(sleep_ml.vcov("natural")))
    # the log-likelihood changes by |g| * se per standard error of movement: ~0 at the MLE
    assert np.max(np.abs(total) * se) < 1e-4


def test_observation_scores_sum_to_cluster_scores(sleep_ml, sleepstudy):
    obs = sleep_ml.scores("observation", "var")
    agg = obs.groupby(sleepstudy["Subject"].to_numpy(), observed=True).sum()
    clus = sleep_ml.scores("cluster", "var")
    agg.index = agg.index.astype(str)
    agg = agg.loc[clus.index]
    scale = np.max(np.abs(clus.to_numpy()), axis=0)
    np.testing.assert_allclose(agg.to_numpy() / scale, clus.to_numpy() / scale, atol=1e-10)


def test_loglik_contributions_sum_to_loglik(sleep_ml):
    ll = sleep_ml.loglik_contributions()
    assert len(ll) == 18 and ll.index.name == "Subject"
    np.testing.assert_allclose(ll.sum(), sleep_ml.loglik, rtol=1e-12)


def test_cluster_scores_are_gradients_of_cluster_logliks(sleep_ml):
    """Central differences of each cluster's log-likelihood (test only) equal the symbolic scores."""
    nat = sleep_ml.params("natural").to_numpy()
    fns = sleep_ml._functions
    got = fns.clusters(nat)["scores"]
    fd = np.empty_like(got)
    for i in range(nat.size):
        h = 1e-5 * max(abs(nat[i]), 1.0)
        e = np.zeros_like(nat)
        e[i] = h
        fd[:, i] = (fns.clusters(nat + e)["loglik"] - fns.clusters(nat - e)["loglik"]) / (2 * h)
    scale = np.max(np.abs(got), axis=0)
    # O(h^2) truncation ~1e-10 relative plus rounding ~1e-16 * |l_j| / h ~ 1e-9
    np.testing.assert_allclose(fd / scale, got / scale, atol=1e-6)


def test_cr1_is_cr0_times_g_over_g_minus_1(sleep_ml):
    cr0 = sleep_ml.sandwich("var", adjust="CR0").to_numpy()
    cr1 = sleep_ml.sandwich("var", adjust="CR1").to_numpy()
    np.testing.assert_allclose(cr1, cr0 * 18 / 17, rtol=1e-12)


def test_named_cluster_column_equals_model_clusters(sleep_ml):
    for adjust in ("CR0", "CR1", "CR3"):
        a = sleep_ml.sandwich("var", adjust=adjust).to_numpy()
        b = sleep_ml.sandwich("var", adjust=adjust, cluster="Subject").to_numpy()
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10 * np.max(np.abs(a)))


def test_cr3_one_step_jackknife(sleep_ml):
    """CR3 = (G-1)/G sum_g d_g d_g^T with d_g = (A - A_g)^{-1} s_g, from the documented pieces."""
    nat = sleep_ml.params("natural").to_numpy()
    c = sleep_ml._functions.clusters(nat)
    A = sleep_ml.information("observed").to_numpy()
    d = np.stack([np.linalg.solve(A - Ag, s) for Ag, s in zip(c["observed_clusters"], c["scores"], strict=True)])
    want = 17 / 18 * d.T @ d
    got = sleep_ml.sandwich("natural", adjust="CR3").to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8)
    # the per-cluster information contributions add up to the total
    np.testing.assert_allclose(c["observed_clusters"].sum(0), A, rtol=1e-10, atol=1e-10 * np.abs(A).max())


def test_scores_on_a_scale_carry_back_with_its_jacobian(sleep_ml):
    J = sleep_ml._opt["jac_sd"]
    back = sleep_ml.scores("cluster", "sd").to_numpy() @ J
    nat = sleep_ml.scores("cluster", "natural").to_numpy()
    np.testing.assert_allclose(back, nat, rtol=1e-9, atol=1e-9 * np.abs(nat).max())


def test_summary_table(sleep_ml):
    tab = sleep_ml.summary(vcov="CR1", scale="sd", level=0.95)
    assert list(tab.columns) == ["Estimate", "Std. Error", "z value", "Pr(>|z|)", "2.5 %", "97.5 %"]
    se = np.sqrt(np.diag(sleep_ml.sandwich("sd", adjust="CR1")))
    np.testing.assert_allclose(tab["Std. Error"].to_numpy(), se, rtol=1e-12)
    q = 1.959963984540054
    fixed = tab.loc[["(Intercept)", "Days"]]
    np.testing.assert_allclose(fixed["97.5 %"], fixed["Estimate"] + q * fixed["Std. Error"], rtol=1e-12)
    sd = tab.loc["sd_(Intercept)|Subject"]
    # log-scale interval: positive, and symmetric on the log scale
    assert sd["2.5 %"] > 0
    np.testing.assert_allclose(np.log(sd["97.5 %"] / sd["Estimate"]), np.log(sd["Estimate"] / sd["2.5 %"]))
    cor = tab.loc["cor_Days.(Intercept)|Subject"]
    assert -1 < cor["2.5 %"] < cor["Estimate"] < cor["97.5 %"] < 1
    model = sleep_ml.summary()
    np.testing.assert_allclose(model["Std. Error"], sleep_ml.se("sd"), rtol=1e-12)


# -- crossed designs and multi-way clustering --------------------------------------------------------
def test_crossed_cluster_scores_raise(penicillin_ml):
    with pytest.raises(pmv.MixVcovError, match="crossed.*level='observation'.*multi-way"):
        penicillin_ml.scores(level="cluster")
    with pytest.raises(pmv.MixVcovError, match="crossed"):
        penicillin_ml.sandwich()


@pytest.mark.filterwarnings("ignore:the multi-way sandwich has a negative variance")
def test_multiway_inclusion_exclusion(penicillin_ml):
    data = pmv.datasets.load("penicillin")
    both = penicillin_ml.sandwich("var", adjust="CR0", cluster=["plate", "sample"]).to_numpy()
    plate = penicillin_ml.sandwich("var", adjust="CR0", cluster="plate").to_numpy()
    sample = penicillin_ml.sandwich("var", adjust="CR0", cluster="sample").to_numpy()
    cell = data["plate"].astype(str) + ":" + data["sample"].astype(str)
    inter = penicillin_ml.sandwich("var", adjust="CR0", cluster=cell.to_numpy()).to_numpy()
    np.testing.assert_allclose(both, plate + sample - inter, rtol=1e-9, atol=1e-12 * np.abs(both).max())
    # observation-level scores of the crossed model sum to ~0 (the MLE)
    total = penicillin_ml.scores("observation", "natural").sum().to_numpy()
    se = np.sqrt(np.diag(penicillin_ml.vcov("natural")))
    assert np.max(np.abs(total) * se) < 1e-4


# -- bad input -----------------------------------------------------------------------------------------
def test_cluster_column_with_missing_labels(sleep_ml):
    labels = np.where(np.arange(180) < 5, np.nan, np.arange(180) // 10)
    with pytest.raises(pmv.MixVcovError, match="missing for 5 observation"):
        sleep_ml.sandwich(cluster=labels)


def test_single_cluster(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="single cluster"):
        sleep_ml.sandwich(cluster=np.zeros(180))


def test_cluster_column_not_in_data(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="'school' is not in the data"):
        sleep_ml.sandwich(cluster="school")


def test_cluster_labels_not_aligned(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="179 entries but the model has 180 observations"):
        sleep_ml.sandwich(cluster=np.arange(179) % 9)


def test_fewer_clusters_than_parameters_warns(sleep_ml):
    with pytest.warns(pmv.MixVcovWarning, match="only 3 clusters for 6 parameters"):
        sleep_ml.sandwich(cluster=np.arange(180) % 3)


@pytest.fixture(scope="module")
def six_subjects(sleepstudy):
    """sleepstudy's first six subjects: six clusters for six parameters."""
    keep = sleepstudy["Subject"].isin(sleepstudy["Subject"].cat.categories[:6])
    data = sleepstudy[keep].copy()
    data["Subject"] = data["Subject"].cat.remove_unused_categories()
    return pmv.lmm("Reaction ~ Days + (Days | Subject)", data).fit("ML")


@pytest.mark.parametrize("adjust", ["CR0", "CR1"])
def test_as_many_clusters_as_parameters_warns(six_subjects, adjust):
    fit = six_subjects
    assert fit.n_clusters == fit.spec.n_params == 6
    with pytest.warns(pmv.MixVcovWarning, match=r"only 6 clusters for 6 parameters: .*rank at most 5 < 6"):
        V = fit.sandwich("natural", adjust=adjust).to_numpy()
    # the warning is right: the scores sum to zero, so the sandwich is singular. Its correlation
    # matrix has an eigenvalue of 0 up to the round-off of the optimum (scores summing to ~1e-6
    # of their size), far below the other eigenvalues
    d = np.sqrt(np.diag(V))
    w = np.linalg.eigvalsh(V / np.outer(d, d))
    assert w[0] < 1e-6 * w[1]


def test_cluster_rank_warning_thresholds():
    """Synthetic scores that sum to zero (as at an estimate): CR0/CR1 warn for G <= P, CR3 for G < P."""
    rng = np.random.default_rng(0)
    P = 4
    for G, warns_cr1, warns_cr3 in ((3, True, True), (4, True, False), (5, False, False)):
        S = rng.normal(size=(G, P))
        S -= S.mean(axis=0)
        Ag = np.stack([np.eye(P) * (1 + g) for g in range(G)])
        A = Ag.sum(axis=0)
        for adjust, warns in (("CR1", warns_cr1), ("CR0", warns_cr1), ("CR3", warns_cr3)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sandwich.vcov_cluster(A, S, adjust, Ag)
            assert any(f"only {G} clusters for {P} parameters" in str(w.message) for w in caught) == warns, (G, adjust)


@pytest.mark.filterwarnings("ignore:the multi-way sandwich has a negative variance")
def test_multiway_with_as_many_clusters_as_parameters_warns(penicillin_ml):
    assert penicillin_ml.spec.n_params == 4
    four = np.arange(penicillin_ml.nobs) % 4  # a second clustering variable with 4 clusters
    with pytest.warns(pmv.MixVcovWarning, match=r"only 4 clusters for 4 parameters in the clustering variable with"):
        penicillin_ml.sandwich(adjust="CR1", cluster=["plate", four])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="only")
        penicillin_ml.sandwich(adjust="CR1", cluster=["plate", np.arange(penicillin_ml.nobs) % 5])


def test_cr3_names_the_leave_one_cluster_out_information(sleepstudy):
    """A covariate non-zero in one subject only: without it, its coefficient is not identified."""
    data = sleepstudy.copy()
    data["x"] = (data["Subject"] == "308").astype(float)
    fit = pmv.lmm("Reaction ~ Days + x + (1 | Subject)", data).fit("ML")
    assert np.all(np.isfinite(fit.se("natural")))  # identified in the whole sample
    fit.sandwich(adjust="CR1")
    message = r"CR3: the leave-one-cluster-out information A - A_g without cluster '308' is not positive definite"
    with pytest.raises(pmv.MixVcovError, match=message + r".*although the information of the whole sample is"):
        fit.sandwich(adjust="CR3")
    A = fit.information().to_numpy()
    Ag = np.zeros((2, *A.shape))
    Ag[1] = A  # leaving cluster "b" out leaves nothing
    with (
        pytest.raises(pmv.MixVcovError, match="without cluster 'b' is not positive definite"),
        pytest.warns(pmv.MixVcovWarning, match="only 2 clusters"),
    ):
        sandwich.vcov_cluster(A, np.zeros((2, A.shape[0])), "CR3", Ag, labels=["a", "b"])


def test_cr3_needs_clusters_that_are_unions_of_model_clusters(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="split a cluster of the model"):
        sleep_ml.sandwich(cluster=np.arange(180) % 20, adjust="CR3")


def test_reml_fits_have_no_scores(sleep_reml):
    with pytest.raises(pmv.MixVcovError, match="maximum-likelihood fits.*method='ML'"):
        sleep_reml.scores()
    with pytest.raises(pmv.MixVcovError, match="maximum-likelihood fits"):
        sleep_reml.sandwich()


def test_unknown_options(sleep_ml):
    with pytest.raises(pmv.MixVcovError, match="unknown level 'case'.*'cluster', 'observation'"):
        sleep_ml.scores(level="case")
    with pytest.raises(pmv.MixVcovError, match="unknown adjust 'HC3'.*'CR0', 'CR1', 'CR3'"):
        sleep_ml.sandwich(adjust="HC3")
    with pytest.raises(pmv.MixVcovError, match="unknown vcov"):
        sleep_ml.summary(vcov="robust")


# -- statistical check (slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sandwich_agrees_with_model_based_under_the_model():
    """Data simulated from the model, 400 clusters: CR1 and model-based SEs agree (within sampling noise).

    The sandwich's own relative sampling error is about sqrt(2 / G) ~ 7% per variance entry, so a
    15% tolerance on the SEs is several of its standard deviations.
    """
    rng = np.random.default_rng(2026)
    G, m = 400, 8
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    b = rng.normal(size=(G, 2)) @ np.linalg.cholesky([[1.0, 0.2], [0.2, 0.5]]).T
    y = 2 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=G * m)
    df = pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g)})
    fit = pmv.lmm("y ~ x + (x | g)", df).fit("ML")
    model = fit.se("sd").to_numpy()
    robust = np.sqrt(np.diag(fit.sandwich("sd", adjust="CR1")))
    np.testing.assert_allclose(robust, model, rtol=0.15)
