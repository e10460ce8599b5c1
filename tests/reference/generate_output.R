# lme4's summary() pieces and broom.mixed's tidy() for the layout of summary(), tidy() and the
# command line: fit criteria, scaled residuals, VarCorr, numbers of groups, fixed-effect tables.
# Run from this folder: Rscript generate_output.R (writes output_summary.json and output_summary.txt)
suppressMessages({library(lme4); library(lmerTest); library(broom.mixed); library(jsonlite)})
versions <- list(R=paste(R.version$major, R.version$minor, sep="."), lme4=as.character(packageVersion("lme4")),
                 lmerTest=as.character(packageVersion("lmerTest")), broom.mixed=as.character(packageVersion("broom.mixed")))
coefs <- function(cf) c(list(names=rownames(cf)), setNames(lapply(seq_len(ncol(cf)), function(j) unname(cf[, j])), colnames(cf)))
tidy_list <- function(td) lapply(as.list(as.data.frame(td)), function(x) if (is.factor(x)) as.character(x) else x)
pieces <- function(fit, lmer_test = NULL) {
  s <- summary(fit)
  vc <- as.data.frame(VarCorr(fit), order="lower.tri")
  out <- list(title=s$methTitle, AICtab=as.list(s$AICtab), logLik=as.numeric(logLik(fit)), df=attr(logLik(fit), "df"),
              nobs=nobs(fit), ngrps=as.list(ngrps(fit)),
              resid_scaled_quantiles=unname(quantile(residuals(fit, type="pearson", scaled=TRUE))),
              resid_scaled=unname(residuals(fit, type="pearson", scaled=TRUE)),
              varcorr=list(grp=vc$grp, var1=vc$var1, var2=vc$var2, vcov=vc$vcov, sdcor=vc$sdcor),
              coefficients=coefs(coef(s)),
              tidy=tidy_list(tidy(fit, conf.int=TRUE)),
              tidy_vcov=tidy_list(tidy(fit, effects="ran_pars", scales="vcov")))
  if (!is.null(lmer_test)) {
    out$satterthwaite <- coefs(coef(summary(lmer_test)))
    out$tidy_satterthwaite <- tidy_list(tidy(lmer_test, conf.int=TRUE))
  }
  out
}
ss <- sleepstudy
cases <- list()
cases$sleepstudy_ml <- pieces(lme4::lmer(Reaction ~ Days + (Days | Subject), ss, REML=FALSE),
                              lmerTest::lmer(Reaction ~ Days + (Days | Subject), ss, REML=FALSE))
cases$sleepstudy_reml <- pieces(lme4::lmer(Reaction ~ Days + (Days | Subject), ss, REML=TRUE),
                                lmerTest::lmer(Reaction ~ Days + (Days | Subject), ss, REML=TRUE))
pen <- read.csv("../../pymc_mixvcov/datasets/data/penicillin.csv", stringsAsFactors=TRUE)
cases$penicillin_ml <- pieces(lme4::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen, REML=FALSE))
cbpp <- read.csv("../../pymc_mixvcov/datasets/data/cbpp.csv"); cbpp$herd <- factor(cbpp$herd); cbpp$period <- factor(cbpp$period)
cases$cbpp <- pieces(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family=binomial))
save <- list(versions=versions, cases=cases)
writeLines(toJSON(save, digits=NA, auto_unbox=TRUE, pretty=TRUE, na="null"), "output_summary.json")
sink("output_summary.txt")
print(summary(lme4::lmer(Reaction ~ Days + (Days | Subject), ss, REML=FALSE)))
print(summary(lmerTest::lmer(Reaction ~ Days + (Days | Subject), ss, REML=TRUE)))
print(summary(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family=binomial)))
print(tidy(lme4::lmer(Reaction ~ Days + (Days | Subject), ss, REML=FALSE), conf.int=TRUE))
sink()
cat("done\n")
