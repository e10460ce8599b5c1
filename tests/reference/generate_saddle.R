# Random-intercept fits whose profiled likelihood has a saddle at SD 0 that an optimiser started
# far above the optimum can stop at (the gradient in an SD vanishes at 0 for any data).
# Run from tests/reference:  Rscript generate_saddle.R   (writes saddle.json next to it)
# Made with R 4.2.2, lme4 1.1-31 (Debian packages).
#
# saddle.csv: two data sets on the same 40 clusters g (sizes 5-20, 498 rows), simulated with NumPy
# as benchmarks/coverage_study.py's lmm_hetero scenario (replicates 3 and 6 of seed 2026):
# x ~ N(0, s_g^2), y = 1 + 0.5 x + u_g + N(0, s_g^2), u_g ~ N(0, 1), s_g = 1 or 3 in alternate
# clusters; columns x_a, y_a and x_b, y_b. The random-intercept ML fit has SD about 0.74-0.76,
# and 0 is a minimum of the profiled likelihood along the SD (lme4's deviance rises from theta = 0).
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv("saddle.csv"); d$g <- factor(d$g)
fit1 <- function(x, y) {
  f <- lmer(y ~ x + (1 | g), data.frame(x = x, y = y, g = d$g), REML = FALSE)
  dev <- lmer(y ~ x + (1 | g), data.frame(x = x, y = y, g = d$g), REML = FALSE, devFunOnly = TRUE)
  list(logLik = as.numeric(logLik(f)), beta = as.list(setNames(fixef(f), c("(Intercept)", "x"))),
       sdcor = list(`sd_(Intercept)|g` = as.data.frame(VarCorr(f))$sdcor[1], sigma = sigma(f)),
       logLik_theta0 = -dev(0) / 2)
}
out <- list(package = "lme4 1.1-31", REML = FALSE, a = fit1(d$x_a, d$y_a), b = fit1(d$x_b, d$y_b))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "saddle.json")
