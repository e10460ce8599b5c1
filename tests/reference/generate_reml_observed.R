# merDeriv's REML observed information (sleepstudy_reml_observed.json,
# sleepstudy_unbalanced_reml_observed.json). merDeriv 0.2-4 (generate.R) fails on
# vcov(full = TRUE, information = "observed") for REML fits; 0.2-6 fixes it. Run with
# MERDERIV_DIR pointing at merDeriv 0.2-6's R sources:
#   cd tests/reference && MERDERIV_DIR=... Rscript generate_reml_observed.R
# lavaan is needed only for lav_matrix_trace, the trace of one square matrix; without lavaan
# the same sum of the diagonal is defined here.
suppressMessages({library(lme4); library(Matrix); library(jsonlite)})
source(file.path(Sys.getenv("MERDERIV_DIR"), "vcov.lmerMod.R"))
if (requireNamespace("lavaan", quietly = TRUE)) {
  lav_matrix_trace <- lavaan::lav_matrix_trace
} else {
  lav_matrix_trace <- function(x) sum(diag(x))
}
M <- function(m) { m <- as.matrix(m); list(rownames=rownames(m), colnames=colnames(m), values=unname(m)) }

reml_observed_case <- function(name, data, dropped) {
  fit <- lmer(Reaction ~ Days + (Days|Subject), data, REML = TRUE)
  out <- list(case = name, formula = "Reaction ~ Days + (Days | Subject)", REML = TRUE,
              dropped_rows_1based = dropped,
              versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                              merDeriv = "0.2-6 (sourced)"),
              logLik = as.numeric(logLik(fit)), beta = fixef(fit), theta = getME(fit, "theta"),
              sigma = sigma(fit), vcov_beta = M(vcov(fit)))
  for (info in c("expected", "observed"))
    out[[paste0("merDeriv_vcov_", info, "_var")]] <-
      M(vcov.lmerMod(fit, full = TRUE, information = info, ranpar = "var"))
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), paste0(name, ".json"))
}
# balanced: every subject has the same design, and the fixed/variance cross block of the
# observed information vanishes at the REML estimates (up to rounding)
reml_observed_case("sleepstudy_reml_observed", sleepstudy, integer(0))
# unbalanced (every 7th row dropped): the cross block does not vanish
drop <- seq(1, nrow(sleepstudy), by = 7)
reml_observed_case("sleepstudy_unbalanced_reml_observed", sleepstudy[-drop, ], drop)
