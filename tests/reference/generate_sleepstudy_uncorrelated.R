# lme4's ML fit of sleepstudy with an uncorrelated intercept and slope (the model of
# tests/test_map_sandwich.py's flat-prior case). Run from this folder:
#   Rscript generate_sleepstudy_uncorrelated.R
library(lme4)
m <- lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sleepstudy, REML = FALSE)
vc <- as.data.frame(VarCorr(m))
out <- list(
  case = "sleepstudy_uncorrelated_ml",
  formula = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
  versions = list(R = as.character(getRversion()), lme4 = as.character(packageVersion("lme4"))),
  logLik = as.numeric(logLik(m)),
  beta = unname(fixef(m)),
  sd = setNames(as.list(vc$sdcor), c("sd_(Intercept)|Subject", "sd_Days|Subject", "sigma"))
)
writeLines(jsonlite::toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "sleepstudy_uncorrelated_ml.json")
