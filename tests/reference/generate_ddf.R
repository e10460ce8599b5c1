# Satterthwaite (lmerTest) and Kenward-Roger (pbkrtest) tests on an unbalanced design:
# sleepstudy REML without every 7th row. Run from this folder: Rscript generate_ddf.R
suppressMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), paste0(name, ".json"))
coefs <- function(fit, ddf) { s <- summary(fit, ddf=ddf)$coefficients; list(names=rownames(s), estimate=unname(s[,1]), se=unname(s[,2]), df=unname(s[,3]), t=unname(s[,4]), p=unname(s[,5])) }
d <- sleepstudy[-seq(7, nrow(sleepstudy), by=7), ]
f <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), d, REML=TRUE)
L <- rbind(c(1, 0), c(0, 1))
cs <- contest(f, L, joint=TRUE, ddf="Satterthwaite"); ck <- contest(f, L, joint=TRUE, ddf="Kenward-Roger")
c1 <- contest(f, c(1, 5), joint=FALSE, ddf="Satterthwaite", rhs=300); c2 <- contest(f, c(1, 5), joint=FALSE, ddf="Kenward-Roger", rhs=300)
save(list(case="sleepstudy_unbalanced_reml", rows_dropped="every 7th row (7, 14, ..., 175)",
          versions=list(lme4=as.character(packageVersion("lme4")), lmerTest=as.character(packageVersion("lmerTest")), pbkrtest=as.character(packageVersion("pbkrtest"))),
          satterthwaite=coefs(f, "Satterthwaite"), kenward_roger=coefs(f, "Kenward-Roger"),
          vcov_kr=unname(as.matrix(vcovAdj(f))),
          joint_satt=list(F=cs[["F value"]], ndf=cs$NumDF, ddf=cs$DenDF, p=cs[["Pr(>F)"]]),
          joint_kr=list(F=ck[["F value"]], ndf=ck$NumDF, ddf=ck$DenDF, p=ck[["Pr(>F)"]]),
          contrast_satt=list(L=c(1, 5), rhs=300, estimate=c1$Estimate, se=c1[["Std. Error"]], df=c1$df, t=c1[["t value"]], p=c1[["Pr(>|t|)"]]),
          contrast_kr=list(L=c(1, 5), rhs=300, estimate=c2$Estimate, se=c2[["Std. Error"]], df=c2$df, t=c2[["t value"]], p=c2[["Pr(>|t|)"]])),
     "ddf_sleepstudy_unbalanced")
# ML fit: lmerTest's Satterthwaite for ML fits
m <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), d, REML=FALSE)
save(list(case="sleepstudy_unbalanced_ml", satterthwaite=coefs(m, "Satterthwaite")), "ddf_sleepstudy_unbalanced_ml")
cat("done\n")
