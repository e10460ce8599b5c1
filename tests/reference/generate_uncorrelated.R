# Uncorrelated random effects, lme4's double bar: (x || g) is (1 | g) + (0 + x | g).
# Run from tests/reference:
#   Rscript generate_uncorrelated.R   (writes uncorrelated.json next to it)
# Made with R 4.2.2, lme4 1.1-31 (Debian packages); reads the bundled CSV files.
suppressMessages({library(lme4); library(jsonlite)})
M <- function(m) { m <- as.matrix(m); list(rownames=rownames(m), colnames=colnames(m), values=unname(m)) }
data_dir <- "../../pymc_mixvcov/datasets/data"

ss <- read.csv(file.path(data_dir, "sleepstudy.csv"))
ss$Subject <- factor(ss$Subject)
cbpp <- read.csv(file.path(data_dir, "cbpp.csv"))
cbpp$herd <- factor(cbpp$herd, levels=as.character(1:15))
cbpp$p <- cbpp$period - 2.5  # period as a centred number (with 1 to 4 the slope SD is 0: a singular fit)

record <- function(fit, formula, explicit) {
  vc <- as.data.frame(VarCorr(fit), order="lower.tri")
  list(formula=deparse(formula), lme4_formula=paste(deparse(formula(fit)), collapse=" "),
       explicit_logLik=as.numeric(logLik(explicit)),
       logLik=as.numeric(logLik(fit)), beta=fixef(fit), theta=getME(fit, "theta"),
       theta_names=names(getME(fit, "theta")), groups=vc$grp, names=vc$var1, sdcor=vc$sdcor,
       vcov_beta=M(vcov(fit)))
}
out <- list(package="lme4 1.1-31")
f <- Reaction ~ Days + (Days || Subject)
e <- Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)
out$sleepstudy_ml <- record(lmer(f, ss, REML=FALSE), f, lmer(e, ss, REML=FALSE))
out$sleepstudy_reml <- record(lmer(f, ss, REML=TRUE), f, lmer(e, ss, REML=TRUE))
f <- cbind(incidence, size - incidence) ~ p + (p || herd)
e <- cbind(incidence, size - incidence) ~ p + (1 | herd) + (0 + p | herd)
out$cbpp_ml <- record(glmer(f, cbpp, family=binomial), f, glmer(e, cbpp, family=binomial))
writeLines(toJSON(out, digits=NA, auto_unbox=TRUE, pretty=TRUE), "uncorrelated.json")
