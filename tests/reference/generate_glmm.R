# GLMM anchors: glmmTMB (TMB: Hessian by automatic differentiation of the Laplace gradient) and
# lme4's glmer with adaptive Gauss-Hermite quadrature. Run from tests/reference:
#   Rscript generate_glmm.R   (writes the JSON files next to it)
# Made with R 4.2.2, lme4 1.1-31, glmmTMB 1.1.5 (Debian packages).
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
M <- function(m) { m <- as.matrix(m); list(rownames=rownames(m), colnames=colnames(m), values=unname(m)) }
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), paste0(name, ".json"))
data_dir <- "../../pymc_mixvcov/datasets/data"

cbpp <- read.csv(file.path(data_dir, "cbpp.csv"))
cbpp$herd <- factor(cbpp$herd, levels=as.character(1:15))
cbpp$period <- factor(cbpp$period, levels=as.character(1:4))
f <- cbind(incidence, size - incidence) ~ period + (1 | herd)

# glmmTMB: vcov(full = TRUE) is on (beta, log SD)
tm <- glmmTMB(f, data=cbpp, family=binomial)
out <- list(case="cbpp_glmmTMB", formula=deparse(f), family="binomial", package="glmmTMB 1.1.5",
            logLik=as.numeric(logLik(tm)), beta=fixef(tm)$cond, log_sd=getME(tm, "theta"),
            vcov_full_beta_logsd=M(vcov(tm, full=TRUE)))
# AGQ in lme4: logLik drops no constants for binomial with nAGQ > 1? Record deviance too.
for (q in c(1, 9, 25)) {
  g <- glmer(f, data=cbpp, family=binomial, nAGQ=q)
  out[[paste0("glmer_nAGQ", q)]] <- list(beta=fixef(g), theta=getME(g, "theta"),
                                          logLik=as.numeric(logLik(g)), deviance=deviance(g))
}
save(out, "cbpp_glmmtmb")

# VerbAgg: crossed subjects and items (7,584 rows)
va <- read.csv(gzfile(file.path(data_dir, "verbagg.csv.gz")))
va$r2 <- factor(va$r2, levels=c("N", "Y"))
va$Gender <- factor(va$Gender, levels=c("F", "M"))
va$btype <- factor(va$btype, levels=c("curse", "scold", "shout"))
va$situ <- factor(va$situ, levels=c("other", "self"))
va$id <- factor(va$id); va$item <- factor(va$item)
fv <- r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)
t0 <- proc.time()[["elapsed"]]
tv <- glmmTMB(fv, data=va, family=binomial)
vv <- vcov(tv, full=TRUE)
t_tmb <- proc.time()[["elapsed"]] - t0
t0 <- proc.time()[["elapsed"]]
gv <- glmer(fv, data=va, family=binomial)
t_glmer <- proc.time()[["elapsed"]] - t0
save(list(case="verbagg_glmmTMB", formula=deparse(fv), family="binomial", package="glmmTMB 1.1.5",
          logLik=as.numeric(logLik(tv)), beta=fixef(tv)$cond, log_sd=getME(tv, "theta"),
          vcov_full_beta_logsd=M(vv), seconds_fit_vcov=t_tmb,
          glmer=list(logLik=as.numeric(logLik(gv)), beta=fixef(gv), theta=getME(gv, "theta"), seconds_fit=t_glmer)),
     "verbagg_glmmtmb")
