# R anchors of the benchmarks: in-process seconds (system.time, elapsed) of
#   lme4:    fit + vcov (fixed effects only: lme4 has no covariance of the variance components)
#   glmmTMB: fit + vcov(full = TRUE) (fixed effects and variance components, as our workflow)
# for one workload, on the same rows as the Python scripts (series.py writes the simulated ones).
# Usage: Rscript benchmarks/anchors.R <workload> [csv]
# Prints one line per anchor: "<anchor> <seconds>".
suppressPackageStartupMessages({
  library(lme4)
  have_tmb <- requireNamespace("glmmTMB", quietly = TRUE)
  if (have_tmb) library(glmmTMB)
})
args <- commandArgs(trailingOnly = TRUE)
workload <- args[1]
data <- switch(workload,
  sleepstudy = lme4::sleepstudy,
  verbagg = lme4::VerbAgg,
  insteval = lme4::InstEval,
  insteval_3000 = lme4::InstEval[1:3000, ],
  read.csv(args[2], stringsAsFactors = TRUE)
)
spec <- switch(workload,
  sleepstudy = list(f = Reaction ~ Days + (Days | Subject), family = NULL),
  lmm_100k = list(f = y ~ x + (x | g), family = NULL),
  glmm_100k = list(f = y ~ x + (x | g), family = binomial),
  verbagg = list(f = r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), family = binomial),
  insteval = list(f = y ~ service + (1 | s) + (1 | d) + (1 | dept:service), family = NULL),
  insteval_3000 = list(f = y ~ service + (1 | s) + (1 | d), family = NULL),
  kb07 = list(f = rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item), family = NULL),
  # glmmTMB is not timed here: lme4 alone takes many minutes on a million rows
  movielens = list(f = y ~ x + (1 | user) + (1 | item), family = NULL, tmb = FALSE)
)
if (identical(spec$tmb, FALSE)) have_tmb <- FALSE
timed <- function(expr) unname(system.time(expr, gcFirst = TRUE)["elapsed"])
if (is.null(spec$family)) {
  cat("lme4", timed({ m <- lmer(spec$f, data, REML = FALSE); v <- vcov(m) }), "\n")
} else {
  cat("lme4", timed({ m <- glmer(spec$f, data, family = spec$family); v <- vcov(m) }), "\n")
}
if (have_tmb) {
  fam <- if (is.null(spec$family)) gaussian() else spec$family()
  cat("glmmTMB", timed({ m <- glmmTMB(spec$f, data, family = fam, REML = FALSE); v <- vcov(m, full = TRUE) }), "\n")
}
