# Factor coding references (R's level order, contr.treatment / contr.poly, interaction column order),
# the bundled cake and Orthodont data, and an intercept-free model. Run from this folder:
#   cd tests/reference && Rscript generate_factors.R
suppressMessages({library(lme4); library(jsonlite)})
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), file.path(".", paste0(name, ".json")))
data_dir <- file.path("..", "..", "pymc_mixvcov", "datasets", "data")
versions <- list(R=R.version.string, lme4=as.character(packageVersion("lme4")), nlme=as.character(packageVersion("nlme")))
fe <- function(fit) list(names=names(fixef(fit)), estimate=unname(fixef(fit)), logLik=as.numeric(logLik(fit)))
MM <- function(formula, data) { m <- model.matrix(formula, data); list(formula=deparse(formula), names=colnames(m), colsums=unname(colSums(m))) }

# cake: temperature is an ordered factor (contr.poly), recipe unordered
write.csv(lme4::cake, file.path(data_dir, "cake.csv"), row.names=FALSE)
cake_poly <- lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, REML=TRUE)
cake_trt <- lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake, REML=TRUE,
                 contrasts=list(temperature="contr.treatment"))
# Orthodont (nlme), Sex re-levelled as lme4's examples use it: Male is the baseline
data(Orthodont, package="nlme"); o <- as.data.frame(Orthodont)
o$Sex <- factor(as.character(o$Sex), levels=c("Male", "Female")); o$Subject <- factor(as.character(o$Subject))
write.csv(o, file.path(data_dir, "orthodont.csv"), row.names=FALSE)
ortho <- lmer(distance ~ age * Sex + (age | Subject), o, REML=TRUE)
# intercept-free fixed part
sleep0 <- lmer(Reaction ~ 0 + (1 | Subject), sleepstudy, REML=FALSE)
# a call with a literal argument
sleep2 <- lmer(Reaction ~ Days + I(Days^2) + (1 | Subject), sleepstudy, REML=FALSE)

# a toy design: a (levels z, y, x: not sorted), b (q, p), o ordered (lo < mid < hi), x numeric,
# l logical (a factor with levels FALSE, TRUE in model.matrix)
toy <- data.frame(a=factor(rep(c("z", "y", "x"), 8), levels=c("z", "y", "x")),
                  b=factor(rep(c("q", "p"), each=12), levels=c("q", "p")),
                  o=factor(rep(c("hi", "lo", "mid", "lo"), 6), levels=c("lo", "mid", "hi"), ordered=TRUE),
                  x=(1:24) / 4, l=rep(c(TRUE, FALSE, FALSE), 8))
toy_formulas <- list(~ a * b, ~ b * a, ~ x * a, ~ x:a, ~ a + a:b, ~ 0 + a * b, ~ 0 + x + a, ~ a:x + b,
                     ~ o, ~ o * b, ~ 0 + o, ~ x + a + b + a:b + x:b, ~ a * b * x,
                     ~ l, ~ 0 + l, ~ x:l, ~ l * b)
toy_mm <- lapply(toy_formulas, function(f) { m <- model.matrix(f, toy); list(formula=deparse(f), names=colnames(m), values=unname(m)) })

save(list(versions=versions,
          cake_reml=c(list(formula="angle ~ recipe * temperature + (1 | recipe:replicate)"), fe(cake_poly)),
          cake_reml_treatment=c(list(formula="angle ~ recipe * temperature + (1 | recipe:replicate)",
                                     contrasts="temperature = contr.treatment"), fe(cake_trt)),
          orthodont_reml=c(list(formula="distance ~ age * Sex + (age | Subject)"), fe(ortho)),
          sleepstudy_no_fixed_ml=c(list(formula="Reaction ~ 0 + (1 | Subject)"), fe(sleep0), sd=as.data.frame(VarCorr(sleep0))$sdcor),
          sleepstudy_quadratic_ml=c(list(formula="Reaction ~ Days + I(Days^2) + (1 | Subject)"), fe(sleep2)),
          verbagg=MM(r2 ~ Anger + Gender + btype + situ + mode + mode:situ + btype:Gender, VerbAgg),
          insteval=MM(y ~ service + dept + studage + lectage + service:dept, InstEval),
          toy_data=list(a=as.character(toy$a), b=as.character(toy$b), o=as.character(toy$o), x=toy$x, l=toy$l),
          toy=toy_mm), "factor_coding")
