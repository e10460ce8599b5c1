# Profile-likelihood confidence intervals: lme4's confint(method = "profile") and the exact roots of
# lme4's own profile zeta.
# Run from tests/reference:
#   Rscript generate_profile.R   (writes profile.json and dyestuff2.csv next to it)
# Made with R 4.2.2, lme4 1.1-31 (Debian packages).
#
# For every case two sets of bounds are stored:
#   * "lme4": confint(fit, method = "profile", oldNames = FALSE), which evaluates zeta on a grid
#     (profile.merMod) and inverts an interpolating spline (confint.thpr);
#   * "exact": the roots of zeta(t) = -+z found here with uniroot (tolerance 1e-12 relative) on lme4's
#     own deviance, minimised over the other parameters at every t by nlminb (rel.tol 1e-15) and
#     optim's L-BFGS-B (factr 1), from several starts (see make_zeta):
#     lme4:::devfun2 (sd, cor and sigma; the deviance profiled over the fixed effects) for the variance
#     parameters of an LMM, the deviance of the model with x_j beta_j as an offset (lme4's own method,
#     devFunOnly = TRUE) for a fixed effect of an LMM, and getME(fit, "devfun") (theta, beta) for a GLMM.
#     The base deviance is the minimum found the same way (below lme4's own optimum by up to 1e-7).
#     An SD whose zeta at 0 does not reach -z gets 0, as lme4 reports.
# The difference between the two is the error of lme4's spline interpolation ("max_rel_lme4_vs_exact").
suppressMessages({library(lme4); library(jsonlite)})
data_dir <- "../../pymc_mixvcov/datasets/data"
z_of <- function(level) qnorm((1 + level) / 2)

tight_min <- function(f, start, lower, upper) {
  # nlminb twice, then optim's L-BFGS-B (factr = 1) from nlminb's point; the best is kept
  ctl <- list(rel.tol = 1e-15, x.tol = 1e-13, eval.max = 5000, iter.max = 2000)
  best <- nlminb(start, f, lower = lower, upper = upper, control = ctl)
  again <- nlminb(best$par, f, lower = lower, upper = upper, control = ctl)
  if (again$objective < best$objective) best <- again
  lb <- tryCatch(optim(best$par, f, method = "L-BFGS-B", lower = lower, upper = upper,
                       control = list(factr = 1, pgtol = 0, maxit = 10000)), error = function(e) NULL)
  if (!is.null(lb) && is.finite(lb$value) && lb$value < best$objective) best <- list(par = lb$par, objective = lb$value)
  best
}

# zeta of parameter w of a deviance function `dev(par)` over `npar` parameters (others free). The
# minimisation starts from the optimum, from the last solution and, where there are correlations
# (bounds -1 and 1), with each of them at -1, -0.999, 0, 0.999 and 1; the best is kept (near a correlation
# of +-1 a single start can stop 1e-3 above the minimum)
make_zeta <- function(dev, opt, w, lower, upper, base) {
  force(opt); force(w)
  last <- opt[-w]
  cors <- which(lower[-w] == -1 & upper[-w] == 1)
  function(x) {
    if (length(opt) == 1) {
      val <- dev(x)
    } else {
      f <- function(q) { par <- numeric(length(opt)); par[w] <- x; par[-w] <- q; dev(par) }
      starts <- list(opt[-w], last)
      for (c in cors) for (v in c(-1, -0.999, 0, 0.999, 1)) { s <- opt[-w]; s[c] <- v; starts[[length(starts) + 1]] <- s }
      best <- NULL
      for (s in starts) {
        r <- tryCatch(tight_min(f, s, lower[-w], upper[-w]), error = function(e) NULL)
        if (!is.null(r) && is.finite(r$objective) && (is.null(best) || r$objective < best$objective)) best <- r
      }
      val <- best$objective
      last <<- best$par
    }
    sign(x - opt[w]) * sqrt(max(val - base, 0))
  }
}

root <- function(zeta, est, target, far, edge = NA) {
  # the root of zeta = target between the estimate and `far` (a point beyond the root); where zeta
  # at `far` has not reached the target, between the estimate and the edge of the parameter space,
  # or the edge itself when zeta there has not reached the target either
  zf <- if (is.na(far)) NA else zeta(far)
  if (is.na(zf) || abs(zf) < abs(target)) {
    if (is.na(edge)) stop("no point beyond the root")
    ze <- zeta(edge)
    if (abs(ze) < abs(target)) return(edge)
    far <- edge
  }
  uniroot(function(x) zeta(x) - target, sort(c(est, far)), tol = 1e-12 * abs(est) + 1e-14,
          maxiter = 200)$root
}

exact_lmm <- function(fm, data, yname, random, level = 0.95) {
  z <- z_of(level)
  dd <- lme4:::devfun2(fm, useSc = TRUE, signames = FALSE)
  nv <- length(attr(dd, "optimum")) - length(fixef(fm))
  nm <- names(attr(dd, "optimum"))[seq_len(nv)]
  lower <- ifelse(grepl("^cor_", nm), -1, 0)
  lower[nm == "sigma"] <- 1e-6 * sigma(fm)  # the deviance is not finite at sigma = 0
  upper <- ifelse(grepl("^cor_", nm), 1, Inf)
  best <- tight_min(dd, attr(dd, "optimum")[seq_len(nv)], lower, upper)
  base <- best$objective
  opt <- best$par
  ci <- confint(fm, method = "profile", oldNames = FALSE, level = level)
  out <- list()
  for (w in seq_len(nv)) {
    zeta <- make_zeta(dd, opt, w, lower, upper, base)
    lo_ci <- ci[nm[w], 1]
    hi_ci <- ci[nm[w], 2]
    if (grepl("^cor_", nm[w])) {
      lo <- root(zeta, opt[w], -z, lo_ci - 0.1 * (1 + lo_ci), edge = -1)
      hi <- root(zeta, opt[w], z, hi_ci + 0.1 * (1 - hi_ci), edge = 1)
    } else {
      lo <- root(zeta, opt[w], -z, if (lo_ci > 0) 0.9 * lo_ci else NA, edge = if (nm[w] == "sigma") NA else 0)
      hi <- root(zeta, opt[w], z, 2 * hi_ci - opt[w])
    }
    out[[nm[w]]] <- c(lo, hi)
  }
  # fixed effects: x_j beta_j as an offset, the deviance minimised over theta of the reduced model
  X <- getME(fm, "X")
  beta <- fixef(fm)
  se <- sqrt(diag(vcov(fm)))
  for (j in seq_along(beta)) {
    if (ncol(X) > 1) data$.Xd <- X[, -j, drop = FALSE]
    fixed_dev <- function(b) {
      data$.o <- b * X[, j]
      rhs <- if (ncol(X) > 1) "0 + .Xd" else "0"
      df <- lmer(as.formula(paste(yname, "~", rhs, "+ offset(.o) +", random)), data, REML = FALSE,
                 devFunOnly = TRUE)
      th <- getME(fm, "theta")
      tight_min(df, th, getME(fm, "lower"), rep(Inf, length(th)))$objective
    }
    zeta <- function(b) sign(b - beta[j]) * sqrt(max(fixed_dev(b) - base, 0))
    lo <- root(zeta, beta[j], -z, beta[j] - 3 * z * se[j])
    hi <- root(zeta, beta[j], z, beta[j] + 3 * z * se[j])
    out[[names(beta)[j]]] <- c(lo, hi)
  }
  list(ci = ci, exact = out, base = base, estimates = c(setNames(opt, nm), beta))
}

exact_glmm <- function(g, level = 0.95) {
  z <- z_of(level)
  d0 <- getME(g, "devfun")
  th <- getME(g, "theta")
  beta <- fixef(g)
  nt <- length(th)
  par0 <- c(th, beta)
  lower <- c(getME(g, "lower"), rep(-Inf, length(beta)))
  upper <- rep(Inf, length(par0))
  best <- tight_min(d0, par0, lower, upper)
  base <- best$objective
  opt <- best$par
  ci <- confint(g, method = "profile", oldNames = FALSE, level = level)
  nm <- rownames(ci)
  se <- c(rep(NA, nt), sqrt(diag(vcov(g))))
  out <- list()
  for (w in seq_along(opt)) {
    zeta <- make_zeta(d0, opt, w, lower, upper, base)
    if (w <= nt) {
      lo <- root(zeta, opt[w], -z, if (ci[w, 1] > 0) 0.9 * ci[w, 1] else NA, edge = 0)
      hi <- root(zeta, opt[w], z, 2 * ci[w, 2] - opt[w])
    } else {
      lo <- root(zeta, opt[w], -z, opt[w] - 3 * z * se[w])
      hi <- root(zeta, opt[w], z, opt[w] + 3 * z * se[w])
    }
    out[[nm[w]]] <- c(lo, hi)
  }
  list(ci = ci, exact = out, base = base, estimates = setNames(opt, nm))
}

pack <- function(case, res, extra = list()) {
  nm <- rownames(res$ci)
  ex <- do.call(rbind, res$exact[nm])
  rel <- abs(res$ci - ex) / pmax(abs(ex), 1e-300)
  rel[ex == 0 & res$ci == 0] <- 0
  c(list(case = case, rownames = nm,
         lme4_lower = unname(res$ci[, 1]), lme4_upper = unname(res$ci[, 2]),
         exact_lower = unname(ex[, 1]), exact_upper = unname(ex[, 2]),
         estimates = unname(res$estimates[nm]), base_deviance = res$base,
         max_rel_lme4_vs_exact = max(rel)), extra)
}

sl <- read.csv(file.path(data_dir, "sleepstudy.csv"))
sl$Subject <- factor(sl$Subject, levels = sort(unique(sl$Subject)))
cases <- list()

m1 <- lmer(Reaction ~ Days + (Days | Subject), sl, REML = FALSE)
r1 <- exact_lmm(m1, sl, "Reaction", "(Days | Subject)")
cases$sleepstudy_ml <- pack("lmer(Reaction ~ Days + (Days | Subject), REML = FALSE)", r1)
ci90 <- confint(m1, method = "profile", oldNames = FALSE, level = 0.90)
cases$sleepstudy_ml_90 <- list(case = "same, level = 0.90", rownames = rownames(ci90),
                               lme4_lower = unname(ci90[, 1]), lme4_upper = unname(ci90[, 2]))

m1r <- lmer(Reaction ~ Days + (Days | Subject), sl, REML = TRUE)
cir <- confint(m1r, method = "profile", oldNames = FALSE)
cases$sleepstudy_reml <- list(case = "lmer(Reaction ~ Days + (Days | Subject), REML = TRUE): lme4 profiles the ML refit",
                              rownames = rownames(cir), lme4_lower = unname(cir[, 1]), lme4_upper = unname(cir[, 2]))

m2 <- lmer(Reaction ~ Days + (1 | Subject), sl, REML = FALSE)
cases$sleepstudy_ri_ml <- pack("lmer(Reaction ~ Days + (1 | Subject), REML = FALSE)",
                               exact_lmm(m2, sl, "Reaction", "(1 | Subject)"))

pa <- read.csv(file.path(data_dir, "pastes.csv"), stringsAsFactors = TRUE)
m3 <- lmer(strength ~ 1 + (1 | batch) + (1 | batch:cask), pa, REML = FALSE)
cases$pastes_ml <- pack("lmer(strength ~ 1 + (1 | batch) + (1 | batch:cask), REML = FALSE): the batch SD's lower bound is 0",
                        exact_lmm(m3, pa, "strength", "(1 | batch) + (1 | batch:cask)"))

pe <- read.csv(file.path(data_dir, "penicillin.csv"), stringsAsFactors = TRUE)
m7 <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pe, REML = FALSE)
cases$penicillin_ml <- pack("lmer(diameter ~ 1 + (1 | plate) + (1 | sample), REML = FALSE): crossed",
                            exact_lmm(m7, pe, "diameter", "(1 | plate) + (1 | sample)"))

od <- read.csv(file.path(data_dir, "orthodont.csv"), stringsAsFactors = TRUE)
od$Sex <- factor(od$Sex, levels = c("Male", "Female"))
m8 <- suppressWarnings(lmer(distance ~ age * Sex + (age | Subject), od, REML = FALSE))
cases$orthodont_ml <- pack(paste("lmer(distance ~ age * Sex + (age | Subject), REML = FALSE): the correlation's profile",
                                 "stays within z (lme4 warns of a non-monotonic profile)"),
                           suppressWarnings(exact_lmm(m8, od, "distance", "(age | Subject)")))

dy <- read.csv(file.path(data_dir, "dyestuff.csv"), stringsAsFactors = TRUE)
m4 <- lmer(Yield ~ 1 + (1 | Batch), dy, REML = FALSE)
cases$dyestuff_ml <- pack("lmer(Yield ~ 1 + (1 | Batch), REML = FALSE)",
                          exact_lmm(m4, dy, "Yield", "(1 | Batch)"))

write.csv(Dyestuff2, "dyestuff2.csv", row.names = FALSE)
dy2 <- read.csv("dyestuff2.csv", stringsAsFactors = TRUE)
m5 <- lmer(Yield ~ 1 + (1 | Batch), dy2, REML = FALSE)
cases$dyestuff2_ml <- pack("lmer(Yield ~ 1 + (1 | Batch), Dyestuff2, REML = FALSE): the SD is estimated at 0",
                           exact_lmm(m5, dy2, "Yield", "(1 | Batch)"))

bc <- read.csv("boundary_cor.csv")
bc$g <- factor(bc$g)
m6 <- lmer(y_pos ~ x + (x | g), bc, REML = FALSE)
cases$boundary_cor_ml <- pack("lmer(y_pos ~ x + (x | g), boundary_cor.csv, REML = FALSE): the correlation is estimated at +1",
                              exact_lmm(m6, bc, "y_pos", "(x | g)"))

cb <- read.csv(file.path(data_dir, "cbpp.csv"))
cb$herd <- factor(cb$herd, levels = sort(unique(cb$herd)))
cb$period <- factor(cb$period)
g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cb, family = binomial)
t_glmm <- system.time(confint(g, method = "profile", oldNames = FALSE))[["elapsed"]]
cases$cbpp_laplace <- pack("glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), binomial), nAGQ = 1",
                           exact_glmm(g), list(lme4_confint_seconds = t_glmm))

t_lmm <- system.time(confint(m1, method = "profile", oldNames = FALSE))[["elapsed"]]
cases$sleepstudy_ml$lme4_confint_seconds <- t_lmm
cases$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")))
writeLines(toJSON(cases, digits = NA, auto_unbox = TRUE, pretty = TRUE), "profile.json")
for (n in names(cases)) if (!is.null(cases[[n]]$max_rel_lme4_vs_exact))
  cat(n, "max relative |lme4 - exact|:", cases[[n]]$max_rel_lme4_vs_exact, "\n")
