# Likelihood-ratio tests and information criteria: lme4's anova(), AIC(), BIC() and logLik()'s df.
# Run from tests/reference:
#   Rscript generate_anova.R   (writes anova.json next to it)
# Made with R 4.2.2, lme4 1.1-31 (Debian packages). The boundary-corrected p-values are
# 0.5 P(chi2_{d-1} > x) + 0.5 P(chi2_d > x) (Self and Liang 1987; Stram and Lee 1994), by pchisq.
suppressMessages({library(lme4); library(jsonlite)})
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE, na="null"), paste0(name, ".json"))
data_dir <- "../../pymc_mixvcov/datasets/data"

tab <- function(a) list(rownames=rownames(a), npar=a$npar, AIC=a$AIC, BIC=a$BIC, logLik=a$logLik,
                        deviance=a$deviance, Chisq=a$Chisq, Df=a$Df, p=a[["Pr(>Chisq)"]])
crit <- function(m) list(logLik=as.numeric(logLik(m)), df=attr(logLik(m), "df"), nobs=nobs(m),
                         AIC=AIC(m), BIC=BIC(m), REML=isREML(m))
mixture <- function(x, d) 0.5 * pchisq(x, d - 1, lower.tail=FALSE) + 0.5 * pchisq(x, d, lower.tail=FALSE)

sl <- read.csv(file.path(data_dir, "sleepstudy.csv"))
sl$Subject <- factor(sl$Subject, levels=sort(unique(sl$Subject)))
ri <- lmer(Reaction ~ Days + (1 | Subject), sl, REML=FALSE)
unc <- lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sl, REML=FALSE)
full <- lmer(Reaction ~ Days + (Days | Subject), sl, REML=FALSE)
nodays <- lmer(Reaction ~ 1 + (Days | Subject), sl, REML=FALSE)
a3 <- anova(ri, unc, full)
a_slope <- anova(ri, full)
a_cor <- anova(unc, full)
a_days <- anova(nodays, full)
unc_r <- lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sl, REML=TRUE)
full_r <- lmer(Reaction ~ Days + (Days | Subject), sl, REML=TRUE)
a_reml <- suppressMessages(anova(unc_r, full_r))
a_reml_norefit <- anova(unc_r, full_r, refit=FALSE)
sleep <- list(
  ri=crit(ri), unc=crit(unc), full=crit(full), nodays=crit(nodays), unc_reml=crit(unc_r), full_reml=crit(full_r),
  anova_ri_unc_full=tab(a3), anova_ri_full=tab(a_slope), anova_unc_full=tab(a_cor), anova_nodays_full=tab(a_days),
  anova_reml_refit=tab(a_reml), anova_reml_norefit=tab(a_reml_norefit),
  p_boundary_ri_full=mixture(a_slope$Chisq[2], 2),
  p_boundary_ri_unc=mixture(a3$Chisq[2], 1))

# pastes: a nested term on a new grouping factor (batch:cask), one variance on its boundary
pa <- read.csv(file.path(data_dir, "pastes.csv"))
pa$batch <- factor(pa$batch); pa$cask <- factor(pa$cask)
p0 <- lmer(strength ~ 1 + (1 | batch), pa, REML=FALSE)
p1 <- lmer(strength ~ 1 + (1 | batch) + (1 | batch:cask), pa, REML=FALSE)
ap <- anova(p0, p1)
pastes <- list(p0=crit(p0), p1=crit(p1), anova=tab(ap), p_boundary=mixture(ap$Chisq[2], 1))

# cbpp (binomial, Laplace): a fixed-effect term, and an observation-level random effect
cb <- read.csv(file.path(data_dir, "cbpp.csv"))
cb$herd <- factor(cb$herd, levels=as.character(1:15)); cb$period <- factor(cb$period, levels=as.character(1:4))
cb$obs <- factor(seq_len(nrow(cb)))
g0 <- glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), cb, family=binomial)
g1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, family=binomial)
g2 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs), cb, family=binomial)
ag <- anova(g0, g1)
ag2 <- anova(g1, g2)
cbpp <- list(g0=crit(g0), g1=crit(g1), g2=crit(g2), anova_period=tab(ag), anova_obs=tab(ag2),
             p_boundary_obs=mixture(ag2$Chisq[2], 1))

save(list(case="anova", versions=list(R=R.version.string, lme4=format(packageVersion("lme4"))),
          sleepstudy=sleep, pastes=pastes, cbpp=cbpp), "anova")
cat("done\n")
