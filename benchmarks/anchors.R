# R anchors of the benchmarks: in-process seconds (system.time, elapsed) of
#   lme4:    fit + vcov (fixed effects only: lme4 has no covariance of the variance components)
#   glmmTMB: fit + vcov(full = TRUE) (fixed effects and variance components, as our workflow)
# for one workload, on the same rows as the Python scripts (series.py writes the simulated ones);
# for bootstrap_sleepstudy / bootstrap_cbpp, lme4::bootMer (serial and on 2 processes) instead.
# Usage: Rscript benchmarks/anchors.R <workload> [csv]
# Prints one line per anchor: "<anchor> <seconds>". PMV_ANCHORS (e.g. "glmmTMB") limits the anchors
# timed (glmer takes minutes on InstEval's binary response).
suppressPackageStartupMessages({
  library(lme4)
  have_tmb <- requireNamespace("glmmTMB", quietly = TRUE)
  if (have_tmb) library(glmmTMB)
})
args <- commandArgs(trailingOnly = TRUE)
workload <- args[1]
if (startsWith(workload, "bootstrap_")) {
  # parametric bootstrap (benchmarks/bootstrap.py): bootMer(type = "parametric", use.u = FALSE) of the
  # fitted model, the estimates on the sd scale (fixed effects, SDs, correlations, sigma) per replicate;
  # serially (bootMer's default) and on 2 forked processes; the fit is not timed
  sdcor <- function(m) c(fixef(m), as.data.frame(VarCorr(m))$sdcor)
  if (workload == "bootstrap_sleepstudy") {
    m <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)
    nsim <- 1000
  } else {
    m <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
    nsim <- 500
  }
  # elapsed seconds, and CPU seconds of the process and its (forked) children
  report <- function(name, st) {
    cat(name, unname(st["elapsed"]), "\n")
    cat(paste0(name, "_cpu"), sum(st[c("user.self", "sys.self", "user.child", "sys.child")], na.rm = TRUE), "\n")
  }
  report("bootMer", system.time(bootMer(m, sdcor, nsim = nsim, seed = 1, type = "parametric", use.u = FALSE),
                                gcFirst = TRUE))
  report("bootMer_2cores", system.time(bootMer(m, sdcor, nsim = nsim, seed = 1, type = "parametric", use.u = FALSE,
                                               parallel = "multicore", ncpus = 2), gcFirst = TRUE))
  quit(save = "no")
}
data <- switch(workload,
  sleepstudy = lme4::sleepstudy,
  verbagg = lme4::VerbAgg,
  insteval = lme4::InstEval,
  insteval_binary = within(lme4::InstEval, yb <- as.integer(y >= 4)),
  insteval_3000 = lme4::InstEval[1:3000, ],
  read.csv(args[2], stringsAsFactors = TRUE)
)
spec <- switch(workload,
  sleepstudy = list(f = Reaction ~ Days + (Days | Subject), family = NULL),
  lmm_100k = list(f = y ~ x + (x | g), family = NULL),
  glmm_100k = list(f = y ~ x + (x | g), family = binomial),
  verbagg = list(f = r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), family = binomial),
  insteval = list(f = y ~ service + (1 | s) + (1 | d) + (1 | dept:service), family = NULL),
  insteval_binary = list(f = yb ~ service + (1 | s) + (1 | d), family = binomial),
  insteval_3000 = list(f = y ~ service + (1 | s) + (1 | d), family = NULL),
  kb07 = list(f = rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item), family = NULL),
  # glmmTMB is not timed here: lme4 alone takes many minutes on a million rows
  movielens = list(f = y ~ x + (1 | user) + (1 | item), family = NULL, tmb = FALSE)
)
if (identical(spec$tmb, FALSE)) have_tmb <- FALSE
timed <- function(expr) unname(system.time(expr, gcFirst = TRUE)["elapsed"])
wanted <- strsplit(Sys.getenv("PMV_ANCHORS", "lme4,glmmTMB"), ",")[[1]]
if ("lme4" %in% wanted) {
  if (is.null(spec$family)) {
    cat("lme4", timed({ m <- lmer(spec$f, data, REML = FALSE); v <- vcov(m) }), "\n")
  } else {
    cat("lme4", timed({ m <- glmer(spec$f, data, family = spec$family); v <- vcov(m) }), "\n")
  }
}
if (have_tmb && "glmmTMB" %in% wanted) {
  fam <- if (is.null(spec$family)) gaussian() else spec$family()
  cat("glmmTMB", timed({ m <- glmmTMB(spec$f, data, family = fam, REML = FALSE); v <- vcov(m, full = TRUE) }), "\n")
}
