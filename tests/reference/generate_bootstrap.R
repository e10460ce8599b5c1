# Reference values for tests/test_bootstrap.py (R 4.2, lme4 1.1-31, boot 1.3-28.1).
#   Rscript tests/reference/generate_bootstrap.R   (from the repository root; about a minute)
# 1. boot::boot.ci(type = "perc") endpoints for fixed vectors t_j = qnorm(j / (R + 1)) + 0.3 * sin(j):
#    the percentile rule (order statistics, interpolated on the normal scale) of lme4's
#    confint(method = "boot").
# 2. lme4::bootMer parametric bootstraps (use.u = FALSE) of sleepstudy (ML) and cbpp (binomial), with
#    the estimates on the sd scale: mean, SD and percentile interval of each parameter. Another
#    implementation with other random numbers agrees with these within Monte Carlo error only.
suppressPackageStartupMessages({
  library(lme4)
  library(boot)
  library(jsonlite)
})
perc <- list()
for (R in c(39L, 50L, 123L, 999L)) {
  t <- qnorm(seq_len(R) / (R + 1)) + 0.3 * sin(seq_len(R))
  b <- list(t0 = 0, t = matrix(t, ncol = 1), R = R)
  class(b) <- "boot"
  for (conf in c(0.95, 0.9)) {
    ci <- boot.ci(b, conf = conf, type = "perc")$percent[4:5]
    perc[[length(perc) + 1]] <- list(R = R, conf = conf, lower = ci[1], upper = ci[2])
  }
}
sdcor <- function(m, labels) {
  vc <- as.data.frame(VarCorr(m))
  out <- c(fixef(m), vc$sdcor)
  names(out) <- labels
  out
}
summarise <- function(bb, labels) {
  ok <- stats::complete.cases(bb$t)
  ci <- confint(bb, type = "perc", level = 0.95)
  list(
    labels = labels,
    t0 = unname(bb$t0),
    mean = unname(colMeans(bb$t[ok, , drop = FALSE])),
    sd = unname(apply(bb$t[ok, , drop = FALSE], 2, sd)),
    lower = unname(ci[, 1]),
    upper = unname(ci[, 2]),
    R = sum(ok)
  )
}
set.seed(20261127)
m1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)
lab1 <- c("(Intercept)", "Days", "sd_(Intercept)|Subject", "sd_Days|Subject", "cor_Days.(Intercept)|Subject", "sigma")
bb1 <- bootMer(m1, function(m) sdcor(m, lab1), nsim = 1000, type = "parametric", use.u = FALSE)
m2 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
lab2 <- c("(Intercept)", "period2", "period3", "period4", "sd_(Intercept)|herd")
bb2 <- bootMer(m2, function(m) sdcor(m, lab2), nsim = 1000, type = "parametric", use.u = FALSE)
out <- list(
  source = paste0("R ", R.version$major, ".", R.version$minor, ", lme4 ", packageVersion("lme4"), ", boot ",
                  packageVersion("boot"), "; tests/reference/generate_bootstrap.R"),
  percentile = perc,
  sleepstudy_ml = summarise(bb1, lab1),
  cbpp = summarise(bb2, lab2)
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/reference/bootstrap.json")
