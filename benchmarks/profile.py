"""Profile-likelihood intervals: ``fit.confint(method="profile")`` against lme4's
``confint(method = "profile")``, timed in the same run.

Workloads (all bundled data, every parameter profiled, level 0.95):

* sleepstudy ``Reaction ~ Days + (Days | Subject)``, ML (6 parameters);
* Pastes ``strength ~ 1 + (1 | batch) + (1 | batch:cask)``, ML (4 parameters, one lower bound at 0);
* cbpp ``cbind(incidence, size - incidence) ~ period + (1 | herd)``, binomial, Laplace (5 parameters).

Ours: the seconds of one ``confint()`` call on a fitted model (the fit excluded, compiled graphs
warm), median of ``--rounds``; the number of criterion evaluations (exact log-likelihood, gradient
and Hessian) it took. lme4: ``system.time(confint(fit, method = "profile"))`` in one R process
(Rscript, lme4 from the system library), median of the same number of rounds after one warm-up
call. Prints a table of both and their ratio, and the largest relative difference between the
bounds (lme4 interpolates a spline through its profile, see tests/test_profile.py).

Run from the repository root: ``python benchmarks/profile.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import pymc_mixvcov as pmv
from pymc_mixvcov.inference.profile import ProfileLikelihood

DATA = Path(pmv.__file__).parent / "datasets" / "data"

WORKLOADS = {
    "sleepstudy": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", None),
    "pastes": ("pastes", "strength ~ 1 + (1 | batch) + (1 | batch:cask)", None),
    "cbpp": ("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial"),
}

R_SCRIPT = r"""
suppressMessages(library(lme4)); library(jsonlite)
args <- commandArgs(TRUE); rounds <- as.integer(args[1]); dir <- args[2]; out <- args[3]
read <- function(name) read.csv(file.path(dir, paste0(name, ".csv")), stringsAsFactors = TRUE)
sl <- read("sleepstudy"); pa <- read("pastes"); cb <- read("cbpp")
cb$herd <- factor(cb$herd); cb$period <- factor(cb$period)
fits <- list(
  sleepstudy = lmer(Reaction ~ Days + (Days | Subject), sl, REML = FALSE),
  pastes = lmer(strength ~ 1 + (1 | batch) + (1 | batch:cask), pa, REML = FALSE),
  cbpp = glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, family = binomial))
res <- list()
for (n in names(fits)) {
  prof <- function() suppressMessages(confint(fits[[n]], method = "profile", oldNames = FALSE))
  ci <- prof()
  t <- replicate(rounds, system.time(prof())[["elapsed"]])
  res[[n]] <- list(seconds = median(t), rownames = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
}
res$lme4 <- as.character(packageVersion("lme4"))
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE), out)
"""


def ours(rounds: int) -> dict:
    out = {}
    for name, (data, formula, family) in WORKLOADS.items():
        d = pmv.datasets.load(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pmv.SingularFitWarning)
            model = pmv.lmm(formula, d) if family is None else pmv.glmm(formula, d, family=family)
            fit = model.fit("ML")
        fit.confint()  # warm: any graph not yet in the compile cache
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            ci = fit.confint()
            times.append(time.perf_counter() - t0)
        prof = ProfileLikelihood(fit)
        count = [0]
        criterion = prof._criterion

        def counted(x, criterion=criterion, count=count):
            count[0] += 1
            return criterion(x)

        prof._criterion = counted
        for label in prof.labels:
            prof.interval(label)
        out[name] = {"seconds": float(np.median(times)), "evaluations": count[0], "ci": ci}
    return out


def lme4(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "profile.R"
        script.write_text(R_SCRIPT)
        result = Path(tmp) / "out.json"
        subprocess.run(["Rscript", str(script), str(rounds), str(DATA), str(result)], check=True)
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    py = ours(args.rounds)
    r = lme4(args.rounds)
    print(f"confint(method='profile'), seconds, medians of {args.rounds} (lme4 {r['lme4']})")
    print(f"{'workload':12s} {'ours':>8s} {'evaluations':>12s} {'lme4':>8s} {'ours/lme4':>10s} {'max rel. diff':>14s}")
    for name in WORKLOADS:
        ci = py[name]["ci"].loc[r[name]["rownames"]]
        want = np.c_[r[name]["lower"], r[name]["upper"]]
        got = ci[["lower", "upper"]].to_numpy()
        rel = np.max(np.where(want != 0, np.abs(got - want) / np.abs(np.where(want != 0, want, 1.0)), np.abs(got)))
        s, e, t = py[name]["seconds"], py[name]["evaluations"], r[name]["seconds"]
        print(f"{name:12s} {s:8.2f} {e:12d} {t:8.2f} {s / t:10.2f} {rel:14.1e}")


if __name__ == "__main__":
    main()
