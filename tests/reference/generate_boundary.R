# Boundary fits whose relative Cholesky factor has a zero diagonal entry while no SD is 0.
# Run from tests/reference:  Rscript generate_boundary.R   (writes boundary.json next to it)
# Made with R 4.2.2, lme4 1.1-31 (Debian packages).
#
# The data were simulated with NumPy (numpy.random.default_rng) and are stored as CSV:
#   boundary_cor.csv: 30 groups g of 8 rows, x ~ U(-1, 1), u0 ~ N(0, 1) per group (seed 1),
#     y_pos = 1 + x + u0 + 0.5 u0 x + N(0, 0.5^2) and y_neg the same with -0.5 u0 x: a random
#     intercept and slope with correlation +1 and -1.
#   boundary_rank.csv: 40 groups of 10 rows (seed 0), x, z ~ U(-1, 1), u0, u1 ~ N(0, 1) and
#     u2 = u0 + u1 per group, y = 1 + x + z + u0 + u1 x + u2 z + N(0, 0.5^2): a 3 x 3 random-effect
#     covariance of rank 2 with no correlation of +-1.
suppressMessages({library(lme4); library(jsonlite)})
save <- function(x, name) writeLines(toJSON(x, digits=NA, auto_unbox=TRUE, pretty=TRUE), paste0(name, ".json"))
summarise <- function(f) {
  vc <- as.data.frame(VarCorr(f), order="lower.tri")
  label <- ifelse(vc$grp == "Residual", "sigma",
                  ifelse(is.na(vc$var2), paste0("sd_", vc$var1, "|", vc$grp),
                         paste0("cor_", vc$var2, ".", vc$var1, "|", vc$grp)))
  list(formula=deparse(formula(f)), logLik=as.numeric(logLik(f)), beta=as.list(fixef(f)),
       sdcor=setNames(as.list(vc$sdcor), label), theta=as.list(getME(f, "theta")),
       isSingular=isSingular(f), rank=as.list(sapply(VarCorr(f), function(m) qr(m, tol=1e-6)$rank)))
}
d <- read.csv("boundary_cor.csv"); d$g <- factor(d$g)
r <- read.csv("boundary_rank.csv"); r$g <- factor(r$g)
out <- list(package="lme4 1.1-31", REML=FALSE,
            cor_pos=summarise(lmer(y_pos ~ x + (x | g), d, REML=FALSE)),
            cor_neg=summarise(lmer(y_neg ~ x + (x | g), d, REML=FALSE)),
            rank=summarise(lmer(y ~ x + z + (x + z | g), r, REML=FALSE)))
save(out, "boundary")
