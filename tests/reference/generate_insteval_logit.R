# InstEval binary logit reference (glmmTMB fit, logLik, estimates and full covariance; glmer's
# logLik and estimates), for tests/test_blocked_laplace.py. Run from this folder:
#   cd tests/reference && Rscript generate_insteval_logit.R
# Model: I(y >= 4) ~ service + (1 | s) + (1 | d), binomial (logit), Laplace, on lme4::InstEval.
suppressMessages({library(lme4); library(jsonlite); library(glmmTMB)})

M <- function(m) { m <- as.matrix(m); list(rownames=rownames(m), colnames=colnames(m), values=unname(m)) }
d <- InstEval
d$yb <- as.integer(d$y >= 4)
t_tmb <- system.time({
  g <- glmmTMB(yb ~ service + (1 | s) + (1 | d), d, family = binomial)
  v <- vcov(g, full = TRUE)
})
# glmmTMB's parameters: beta, then theta = log SD of each random-effect term (s, then d)
beta <- unname(fixef(g)$cond)
log_sd <- unname(g$fit$par[names(g$fit$par) == "theta"])
t_glmer <- system.time(m <- glmer(yb ~ service + (1 | s) + (1 | d), d, family = binomial))
out <- list(
  case = "tmb_insteval_logit",
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  glmmTMB = as.character(packageVersion("glmmTMB"))),
  logLik = as.numeric(logLik(g)), par = unname(g$fit$par), beta = beta, log_sd = log_sd,
  beta_names = names(fixef(g)$cond), sd_names = c("s", "d"),
  convergence = g$fit$convergence, max_abs_gradient = max(abs(g$sdr$gradient.fixed)),
  tmb_seconds = t_tmb[["elapsed"]], vcov_full = M(v),
  glmer_logLik = as.numeric(logLik(m)), glmer_beta = unname(fixef(m)),
  glmer_sd = unname(sqrt(unlist(lapply(VarCorr(m), function(x) x[1, 1])))),
  glmer_sd_names = names(VarCorr(m)), glmer_seconds = t_glmer[["elapsed"]]
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tmb_insteval_logit.json")
