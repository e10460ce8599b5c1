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
# anova type III and II (lmerTest) with terms contained in others: Orthodont, and the unbalanced
# sleepstudy with a three-level phase factor (Days 0-2 early, 3-5 mid, 6-9 late)
an <- function(fit, type, ddf) { a <- anova(fit, type=type, ddf=ddf); list(terms=rownames(a), F=a[["F value"]], ndf=a$NumDF, ddf=a$DenDF, p=a[["Pr(>F)"]]) }
data(Orthodont, package="nlme"); o <- as.data.frame(Orthodont); o$Sex <- factor(as.character(o$Sex), levels=c("Male", "Female"))
o$Subject <- factor(as.character(o$Subject))
fo <- lmerTest::lmer(distance ~ age * Sex + (age | Subject), o, REML=TRUE)
d$phase <- factor(ifelse(d$Days <= 2, "early", ifelse(d$Days <= 5, "mid", "late")), levels=c("early", "mid", "late"))
fp <- lmerTest::lmer(Reaction ~ Days * phase + (Days | Subject), d, REML=TRUE)
cp <- contest(fp, c(0, 0, 1, -1, 0, 0), joint=FALSE, ddf="Satterthwaite"); ckp <- contest(fp, c(0, 0, 1, -1, 0, 0), joint=FALSE, ddf="Kenward-Roger")
save(list(case="anova_types", versions=list(lmerTest=as.character(packageVersion("lmerTest")), pbkrtest=as.character(packageVersion("pbkrtest"))),
          orthodont=list(III_satt=an(fo, "III", "Satterthwaite"), III_kr=an(fo, "III", "Kenward-Roger"),
                         II_satt=an(fo, "II", "Satterthwaite"), II_kr=an(fo, "II", "Kenward-Roger")),
          phase=list(names=names(fixef(fp)), III_satt=an(fp, "III", "Satterthwaite"), III_kr=an(fp, "III", "Kenward-Roger"),
                     II_satt=an(fp, "II", "Satterthwaite"), II_kr=an(fp, "II", "Kenward-Roger"),
                     mid_vs_late_satt=list(t=cp[["t value"]], df=cp$df, p=cp[["Pr(>|t|)"]]),
                     mid_vs_late_kr=list(t=ckp[["t value"]], df=ckp$df, p=ckp[["Pr(>|t|)"]]))),
     "ddf_anova_types")
cat("done anova\n")
# several random-effect terms: crossed (Penicillin) and two terms on one grouping factor (unbalanced sleepstudy)
fpen <- lmerTest::lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin, REML=TRUE)
fun <- lmerTest::lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), d, REML=TRUE)
save(list(penicillin=list(satterthwaite=coefs(fpen, "Satterthwaite"), kenward_roger=coefs(fpen, "Kenward-Roger")),
          uncorrelated=list(satterthwaite=coefs(fun, "Satterthwaite"), kenward_roger=coefs(fun, "Kenward-Roger"))),
     "ddf_several_terms")
cat("done several terms\n")
# type III with a non-treatment coding (ordered temperature: contr.poly) and two contained factors: lme4's cake
fc <- lmerTest::lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, REML=TRUE)
save(list(cake=list(III_satt=an(fc, "III", "Satterthwaite"), III_kr=an(fc, "III", "Kenward-Roger"),
                    II_satt=an(fc, "II", "Satterthwaite"), II_kr=an(fc, "II", "Kenward-Roger"))), "ddf_cake")
cat("done cake\n")
