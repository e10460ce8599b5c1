# Satterthwaite (lmerTest) and Kenward-Roger (pbkrtest) tests on a crossed subject x item design:
# ddf_crossed.csv (20 subjects x 10 items, one row per pair, simulated with NumPy: a three-level
# between-subject factor `group`, a two-level factor `cond` that varies within items and within
# subjects), REML fit of y ~ group * cond + (1 | subj) + (1 + cond | item).
# Run from this folder: Rscript generate_ddf_crossed.R  (writes ddf_crossed.json)
suppressMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), paste0(name, ".json"))
coefs <- function(fit, ddf) { s <- summary(fit, ddf=ddf)$coefficients; list(names=rownames(s), estimate=unname(s[,1]), se=unname(s[,2]), df=unname(s[,3]), t=unname(s[,4]), p=unname(s[,5])) }
an <- function(fit, type, ddf) { a <- anova(fit, type=type, ddf=ddf); list(terms=rownames(a), F=a[["F value"]], ndf=a$NumDF, ddf=a$DenDF, p=a[["Pr(>F)"]]) }
d <- read.csv("ddf_crossed.csv", stringsAsFactors=TRUE)
ctrl <- lmerControl(optimizer="bobyqa", optCtrl=list(rhobeg=2e-4, rhoend=1e-12, maxfun=1e5))
f <- lmerTest::lmer(y ~ group * cond + (1 | subj) + (1 + cond | item), d, REML=TRUE, control=ctrl)
stopifnot(!isSingular(f))
# groupB = groupC (one contrast, rhs 0) and the two group effects jointly
Lc <- c(0, 1, -1, 0, 0, 0)
Lj <- rbind(c(0, 1, 0, 0, 0, 0), c(0, 0, 1, 0, 0, 0))
c1 <- contest(f, Lc, joint=FALSE, ddf="Satterthwaite"); c2 <- contest(f, Lc, joint=FALSE, ddf="Kenward-Roger")
j1 <- contest(f, Lj, joint=TRUE, ddf="Satterthwaite"); j2 <- contest(f, Lj, joint=TRUE, ddf="Kenward-Roger")
save(list(case="ddf_crossed", model="y ~ group * cond + (1 | subj) + (1 + cond | item), REML",
          versions=list(R=paste(R.version$major, R.version$minor, sep="."), lme4=as.character(packageVersion("lme4")),
                        lmerTest=as.character(packageVersion("lmerTest")), pbkrtest=as.character(packageVersion("pbkrtest"))),
          logLik=as.numeric(logLik(f)), theta=unname(getME(f, "theta")), sigma=sigma(f),
          satterthwaite=coefs(f, "Satterthwaite"), kenward_roger=coefs(f, "Kenward-Roger"),
          vcov_kr=unname(as.matrix(vcovAdj(f))),
          III_satt=an(f, "III", "Satterthwaite"), III_kr=an(f, "III", "Kenward-Roger"),
          II_satt=an(f, "II", "Satterthwaite"), II_kr=an(f, "II", "Kenward-Roger"),
          contrast_satt=list(L=Lc, estimate=c1$Estimate, se=c1[["Std. Error"]], df=c1$df, t=c1[["t value"]], p=c1[["Pr(>|t|)"]]),
          contrast_kr=list(L=Lc, estimate=c2$Estimate, se=c2[["Std. Error"]], df=c2$df, t=c2[["t value"]], p=c2[["Pr(>|t|)"]]),
          joint_satt=list(F=j1[["F value"]], ndf=j1$NumDF, ddf=j1$DenDF, p=j1[["Pr(>F)"]]),
          joint_kr=list(F=j2[["F value"]], ndf=j2$NumDF, ddf=j2$DenDF, p=j2[["Pr(>F)"]])),
     "ddf_crossed")
cat("done\n")
# InstEval (lme4), REML, y ~ service + (1 | s) + (1 | d) + (1 | dept:service): lmerTest's Satterthwaite
# t-table (pbkrtest's Kenward-Roger forms n x n matrices: out of reach at 73,421 rows). Writes ddf_insteval.json
fi <- lmerTest::lmer(y ~ service + (1|s) + (1|d) + (1|dept:service), InstEval, REML=TRUE,
                     control=lmerControl(optimizer="bobyqa", optCtrl=list(rhoend=1e-10, maxfun=1e5), calc.derivs=FALSE))
save(list(case="ddf_insteval", model="y ~ service + (1 | s) + (1 | d) + (1 | dept:service), REML",
          versions=list(R=paste(R.version$major, R.version$minor, sep="."), lme4=as.character(packageVersion("lme4")),
                        lmerTest=as.character(packageVersion("lmerTest"))),
          logLik=as.numeric(logLik(fi)), satterthwaite=coefs(fi, "Satterthwaite")),
     "ddf_insteval")
cat("done insteval\n")
