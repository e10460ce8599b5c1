# Derived-quantity references: ICC and median odds ratio with delta-method SEs from glmmTMB's full
# covariance (vcov(full = TRUE)) and numDeriv's gradient. Run from this folder: Rscript generate_derived.R
suppressMessages({library(lme4); library(jsonlite); library(numDeriv); library(glmmTMB)})

save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), file.path(".", paste0(name, ".json")))
# ICC of a random-intercept model, sleepstudy ML
g <- glmmTMB(Reaction ~ Days + (1 | Subject), sleepstudy, REML=FALSE)
par <- g$fit$par; V <- vcov(g, full=TRUE)
# glmmTMB 1.1.5 stores betad = log(sigma^2) for gaussian and theta = log(sd_b)
nm <- names(par); bd <- which(nm == "betadisp" | nm == "betad"); th <- which(nm == "theta")
icc_f <- function(p) { s2e <- exp(p[bd]); s2b <- exp(2*p[th]); s2b / (s2b + s2e) }
gr <- numDeriv::grad(icc_f, par); icc <- icc_f(par)
save(list(case="icc_sleepstudy_ri", icc=icc, se=sqrt(drop(t(gr) %*% V %*% gr)), par_names=nm), "inference_icc")
# median odds ratio of cbpp (binomial, logit) with its delta-method SE
gc <- glmmTMB(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family=binomial)
pc <- gc$fit$par; Vc <- vcov(gc, full=TRUE); thc <- which(names(pc) == "theta")
mor_f <- function(p) exp(sqrt(2) * exp(p[thc]) * qnorm(0.75))
grc <- numDeriv::grad(mor_f, pc)
save(list(case="mor_cbpp", mor=mor_f(pc), se=sqrt(drop(t(grc) %*% Vc %*% grc))), "inference_mor")
cat("done\n")
