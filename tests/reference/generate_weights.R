# Prior weights (weights.json): lme4's lmer(..., weights = w) (precision weights) and
# glmer(prop ~ ..., family = binomial, weights = n) (proportions with their trials).
# Run from tests/reference:   Rscript generate_weights.R
# Made with R 4.2.2, lme4 1.1-31, lmerTest 3.1-3, pbkrtest 0.5.2, numDeriv 2016.8-1.1, glmmTMB 1.1.5 (Debian packages).
#
# Gaussian cases: lme4 gives logLik, estimates and vcov() of the fixed effects. The full covariance
# (fixed effects and variance components, merDeriv's "var" scale: the covariance entries of each
# term, column-major lower triangle, then the residual variance) comes from the weighted marginal
# likelihood written out densely below, y ~ N(X beta, Z G Z' + s2 W^-1), evaluated at lme4's
# estimates (it reproduces lme4's logLik, the check `dense_minus_lme4` below):
#   observed: numDeriv's Richardson Hessian of that log-likelihood (ML), or of the REML
#             log-likelihood in the variance parameters with beta profiled (REML; the beta block
#             is then lme4's vcov(), the cross block 0);
#   expected: closed forms X' V^-1 X and tr(V^-1 V_a V^-1 V_b) / 2 (REML: P for V^-1), exact;
#   scores:   per cluster, X_j' V_j^-1 r_j and -tr(V_j^-1 V_ja)/2 + r_j' V_j^-1 V_ja V_j^-1 r_j / 2,
#             and per observation merDeriv's casewise split of them (exact, at lme4's estimates).
# lme4 runs with bobyqa and tight tolerances so that its optimum is within about 1e-7 of the
# maximum (the gradient of the dense log-likelihood there is recorded as `grad_at_lme4`).
suppressMessages({library(lme4); library(numDeriv); library(glmmTMB); library(jsonlite)})
M <- function(m) { m <- as.matrix(m); list(rownames=I(rownames(m)), colnames=I(colnames(m)), values=unname(m)) }
data_dir <- "../../pymc_mixvcov/datasets/data"
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 numDeriv = as.character(packageVersion("numDeriv")),
                 glmmTMB = as.character(packageVersion("glmmTMB")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 pbkrtest = as.character(packageVersion("pbkrtest")))

# ---- the dense weighted Gaussian likelihood on the var scale -----------------------------------
dense_model <- function(fit, w) {
  Z <- as.matrix(getME(fit, "Z")); Gp <- getME(fit, "Gp")   # columns of term k: Gp[k] + 1 .. Gp[k + 1]
  cn <- getME(fit, "cnms")
  Zl <- lapply(seq_along(cn), function(k) Z[, (Gp[k] + 1):Gp[k + 1], drop = FALSE])
  groups <- names(cn)
  terms <- lapply(seq_along(cn), function(k) {
    r <- length(cn[[k]]); g <- groups[k]; e <- cn[[k]]
    idx <- which(lower.tri(diag(r), diag = TRUE), arr.ind = TRUE)   # column-major lower triangle
    idx <- idx[order(idx[, 2], idx[, 1]), , drop = FALSE]
    labs <- apply(idx, 1, function(ij) if (ij[1] == ij[2]) paste0("cov_", g, ".", e[ij[1]])
                                       else paste0("cov_", g, ".", e[ij[1]], ".", e[ij[2]]))
    list(Z = Zl[[k]], r = r, nlev = ncol(Zl[[k]]) / r, idx = idx, labels = labs)
  })
  X <- getME(fit, "X"); y <- getME(fit, "y")
  list(terms = terms, X = X, y = y, w = w, n = length(y), p = ncol(X),
       labels = c(colnames(X), unlist(lapply(terms, `[[`, "labels")), "residual"))
}
# dV / d(var parameter a): Z_k (I (x) (E_ij + E_ji)) Z_k', or W^-1 for the residual variance
dV_list <- function(m) {
  out <- list()
  for (t in m$terms) for (a in seq_len(nrow(t$idx))) {
    E <- matrix(0, t$r, t$r); i <- t$idx[a, 1]; j <- t$idx[a, 2]; E[i, j] <- 1; E[j, i] <- 1
    out[[length(out) + 1]] <- t$Z %*% kronecker(diag(t$nlev), E) %*% t(t$Z)
  }
  out[[length(out) + 1]] <- diag(1 / m$w)
  out
}
V_of <- function(m, vpar) {
  V <- diag(vpar[length(vpar)] / m$w); k <- 0
  for (t in m$terms) {
    S <- matrix(0, t$r, t$r)
    for (a in seq_len(nrow(t$idx))) { S[t$idx[a, 1], t$idx[a, 2]] <- vpar[k + a]; S[t$idx[a, 2], t$idx[a, 1]] <- vpar[k + a] }
    k <- k + nrow(t$idx)
    V <- V + t$Z %*% kronecker(diag(t$nlev), S) %*% t(t$Z)
  }
  V
}
ll_ml <- function(m, par) {
  beta <- par[1:m$p]; V <- V_of(m, par[-(1:m$p)])
  R <- chol(V); z <- backsolve(R, m$y - m$X %*% beta, transpose = TRUE)
  -0.5 * m$n * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(z^2)
}
ll_reml <- function(m, vpar) {
  V <- V_of(m, vpar); Vi <- solve(V); XVX <- t(m$X) %*% Vi %*% m$X
  beta <- solve(XVX, t(m$X) %*% Vi %*% m$y); r <- m$y - m$X %*% beta
  -0.5 * ((m$n - m$p) * log(2 * pi) + determinant(V)$modulus + determinant(XVX)$modulus + sum(r * (Vi %*% r)))
}
var_params <- function(fit) {  # (covariance entries of each term, column-major lower triangle), sigma^2
  vc <- VarCorr(fit); out <- c()
  for (g in names(vc)) { S <- vc[[g]]; r <- nrow(S)
    for (j in 1:r) for (i in j:r) out <- c(out, S[i, j]) }
  c(out, sigma(fit)^2)
}
# scores (per cluster and per observation) of the ML log-likelihood, exact
scores_of <- function(m, par, cluster) {
  beta <- par[1:m$p]; V <- V_of(m, par[-(1:m$p)]); dV <- dV_list(m)
  r <- as.vector(m$y - m$X %*% beta)
  obs <- matrix(0, m$n, length(par)); cl <- matrix(0, nlevels(cluster), length(par))
  ll <- numeric(nlevels(cluster))
  for (c in seq_len(nlevels(cluster))) {
    rows <- which(as.integer(cluster) == c)
    Vi <- solve(V[rows, rows, drop = FALSE]); rc <- r[rows]; e <- as.vector(Vi %*% rc)
    ViX <- Vi %*% m$X[rows, , drop = FALSE]
    obs[rows, 1:m$p] <- rc * ViX
    for (a in seq_along(dV)) {
      A <- Vi %*% dV[[a]][rows, rows, drop = FALSE]
      obs[rows, m$p + a] <- -0.5 * diag(A) + 0.5 * rc * as.vector(A %*% e)
    }
    R <- chol(V[rows, rows, drop = FALSE])
    ll[c] <- -0.5 * length(rows) * log(2 * pi) - sum(log(diag(R))) - 0.5 * sum(rc * e)
    cl[c, ] <- colSums(obs[rows, , drop = FALSE])
  }
  colnames(obs) <- colnames(cl) <- m$labels; rownames(cl) <- levels(cluster)
  list(obs = obs, cluster = cl, loglik = setNames(ll, levels(cluster)))
}
expected_info <- function(m, par, reml) {
  V <- V_of(m, par[-(1:m$p)]); Vi <- solve(V); dV <- dV_list(m)
  XVX <- t(m$X) %*% Vi %*% m$X
  P <- if (reml) Vi - Vi %*% m$X %*% solve(XVX, t(m$X) %*% Vi) else Vi
  k <- length(dV); E <- matrix(0, k, k); PV <- lapply(dV, function(D) P %*% D)
  for (a in 1:k) for (b in a:k) E[a, b] <- E[b, a] <- 0.5 * sum(PV[[a]] * t(PV[[b]]))
  out <- matrix(0, m$p + k, m$p + k); out[1:m$p, 1:m$p] <- XVX; out[-(1:m$p), -(1:m$p)] <- E
  dimnames(out) <- list(m$labels, m$labels); out
}
gaussian_case <- function(name, formula, data, w, REML, cluster = NULL) {
  data$wt <- w
  fit <- lmer(formula, data, weights = wt, REML = REML, control = tight)
  m <- dense_model(fit, w)
  par <- c(fixef(fit), var_params(fit)); names(par) <- m$labels
  p <- m$p; vp <- par[-(1:p)]
  dense_ll <- if (REML) ll_reml(m, vp) else ll_ml(m, par)
  out <- list(case = name, formula = deparse(formula), REML = REML, versions = versions,
              n = nrow(data), weights = w, logLik = as.numeric(logLik(fit)),
              dense_minus_lme4 = as.numeric(dense_ll) - as.numeric(logLik(fit)),
              beta = fixef(fit), theta = getME(fit, "theta"), sigma = sigma(fit),
              params_var = as.list(par), vcov_beta = M(vcov(fit)))
  if (REML) {
    f <- function(v) ll_reml(m, v)
    H <- hessian(f, vp); out$grad_at_lme4 <- grad(f, vp)
    Vobs <- matrix(0, length(par), length(par)); dimnames(Vobs) <- list(m$labels, m$labels)
    Vobs[1:p, 1:p] <- as.matrix(vcov(fit)); Vobs[-(1:p), -(1:p)] <- solve(-H)
  } else {
    f <- function(x) ll_ml(m, x)
    H <- hessian(f, par); out$grad_at_lme4 <- grad(f, par)
    Vobs <- solve(-H); dimnames(Vobs) <- list(m$labels, m$labels)
  }
  if (REML) {  # lmerTest's Satterthwaite t-table (its deviance function carries the weights)
    lt <- lmerTest::as_lmerModLmerTest(fit)
    out$lmerTest_coefficients <- M(summary(lt)$coefficients)
  }
  out$vcov_observed_var <- M(Vobs)
  out$vcov_expected_var <- M(solve(expected_info(m, par, REML)))
  if (!REML && !is.null(cluster)) {
    s <- scores_of(m, par, data[[cluster]])
    out$scores_cluster_var <- M(s$cluster)
    out$scores_observation_var <- list(colnames = m$labels, values = unname(s$obs))
    out$loglik_cluster <- as.list(s$loglik)
    meat <- crossprod(s$cluster)
    out$sandwich_observed_var_CR0 <- M(Vobs %*% meat %*% Vobs)
  }
  out
}

ss <- read.csv(file.path(data_dir, "sleepstudy.csv"))
ss$Subject <- factor(ss$Subject, levels = as.character(sort(unique(ss$Subject))))
set.seed(20260417)
w_ss <- round(runif(nrow(ss), 0.25, 4), 6)   # precision weights, 6 decimals as written to JSON
fs <- Reaction ~ Days + (Days | Subject)
res <- list()
res$sleepstudy_ml <- gaussian_case("sleepstudy_ml", fs, ss, w_ss, REML = FALSE, cluster = "Subject")
res$sleepstudy_reml <- gaussian_case("sleepstudy_reml", fs, ss, w_ss, REML = TRUE)
# unbalanced: every 7th row dropped, weights from a gamma distribution (a wider spread)
drop <- seq(1, nrow(ss), by = 7)
ssu <- ss[-drop, ]
set.seed(7)
w_u <- round(rgamma(nrow(ssu), shape = 2, rate = 2), 6)
res$unbalanced_ml <- gaussian_case("unbalanced_ml", fs, ssu, w_u, REML = FALSE, cluster = "Subject")
res$unbalanced_ml$dropped_rows_1based <- drop
res$unbalanced_reml <- gaussian_case("unbalanced_reml", fs, ssu, w_u, REML = TRUE)
res$unbalanced_reml$dropped_rows_1based <- drop
# Kenward-Roger: pbkrtest 0.5.2 builds V from Z G Z' + sigma^2 I and ignores lme4's weights, so it is
# run on the weighted model written as an unweighted one, every row scaled by sqrt(w):
# sqrt(w) y ~ 0 + sqrt(w) + sqrt(w) Days + (0 + sqrt(w) + sqrt(w) Days | Subject), the same likelihood
# up to sum(log w) / 2 (recorded as whitened_logLik)
for (k in c("sleepstudy_reml", "unbalanced_reml")) {
  d <- if (k == "sleepstudy_reml") ss else ssu
  w <- res[[k]]$weights
  d$sw <- sqrt(w); d$swDays <- sqrt(w) * d$Days; d$swReaction <- sqrt(w) * d$Reaction
  fw <- lmer(swReaction ~ 0 + sw + swDays + (0 + sw + swDays | Subject), d, REML = TRUE, control = tight)
  lt <- lmerTest::as_lmerModLmerTest(fw)
  kr <- summary(lt, ddf = "Kenward-Roger")$coefficients
  rownames(kr) <- c("(Intercept)", "Days")
  vk <- as.matrix(pbkrtest::vcovAdj(fw)); dimnames(vk) <- list(rownames(kr), rownames(kr))
  res[[k]]$whitened_logLik <- as.numeric(logLik(fw))
  res[[k]]$kenward_roger_coefficients <- M(kr)
  res[[k]]$kenward_roger_vcov <- M(vk)
}
# crossed: Penicillin (one cluster of 30 random effects)
pen <- read.csv(file.path(data_dir, "penicillin.csv"))
pen$plate <- factor(pen$plate); pen$sample <- factor(pen$sample)
set.seed(11)
w_p <- round(runif(nrow(pen), 0.5, 3), 6)
res$penicillin_ml <- gaussian_case("penicillin_ml", diameter ~ 1 + (1 | plate) + (1 | sample), pen, w_p,
                                   REML = FALSE)

# ---- binomial proportions with their trials ------------------------------------------------------
cbpp <- read.csv(file.path(data_dir, "cbpp.csv"))
cbpp$herd <- factor(cbpp$herd, levels = as.character(1:15))
cbpp$period <- factor(cbpp$period, levels = as.character(1:4))
cbpp$prop <- cbpp$incidence / cbpp$size
g <- glmer(prop ~ period + (1 | herd), cbpp, family = binomial, weights = size,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
gc <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial,
            control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
tm <- glmmTMB(prop ~ period + (1 | herd), cbpp, family = binomial, weights = size)
res$cbpp_proportions <- list(
  case = "cbpp_proportions", formula = "prop ~ period + (1 | herd), weights = size", versions = versions,
  logLik = as.numeric(logLik(g)), beta = fixef(g), theta = getME(g, "theta"), vcov_beta = M(vcov(g)),
  cbind_logLik = as.numeric(logLik(gc)), cbind_beta = fixef(gc), cbind_theta = getME(gc, "theta"),
  glmmTMB_logLik = as.numeric(logLik(tm)), glmmTMB_beta = fixef(tm)$cond, glmmTMB_log_sd = getME(tm, "theta"),
  glmmTMB_vcov_full_beta_logsd = M(vcov(tm, full = TRUE)))
# Poisson with prior weights: glmer and glmmTMB multiply each observation's log-likelihood by its
# weight (glmer: poisson()$aic, -2 sum(dpois(y, mu, log = TRUE) * wt)); the package fits this as a
# hand-written model whose likelihood is pm.Potential("loglik", (w * logp).sum())
set.seed(2)
cbpp$pw <- round(runif(nrow(cbpp), 0.5, 2), 6)
gp <- glmer(incidence ~ period + (1 | herd), cbpp, family = poisson, weights = pw,
            control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
tp <- glmmTMB(incidence ~ period + (1 | herd), cbpp, family = poisson, weights = pw)
res$cbpp_poisson_prior_weights <- list(
  case = "cbpp_poisson_prior_weights", formula = "incidence ~ period + (1 | herd), poisson, weights = pw",
  versions = versions, weights = cbpp$pw,
  logLik = as.numeric(logLik(gp)), beta = fixef(gp), theta = getME(gp, "theta"), vcov_beta = M(vcov(gp)),
  glmmTMB_logLik = as.numeric(logLik(tp)), glmmTMB_beta = fixef(tp)$cond, glmmTMB_log_sd = getME(tp, "theta"),
  glmmTMB_vcov_full_beta_logsd = M(vcov(tp, full = TRUE)))
# glmer's own behaviour with a non-integer number of successes: a warning, and a different fit
cbpp$prop2 <- cbpp$prop; cbpp$prop2[1] <- cbpp$prop2[1] + 0.01
warn <- NULL
g2 <- withCallingHandlers(glmer(prop2 ~ period + (1 | herd), cbpp, family = binomial, weights = size),
                          warning = function(w) { warn <<- conditionMessage(w); invokeRestart("muffleWarning") })
res$cbpp_proportions$noninteger_row1_warning <- warn
res$cbpp_proportions$noninteger_row1_logLik <- as.numeric(logLik(g2))
# lmer with a zero weight: no error, a log-likelihood of -Inf
ss0 <- ss; ss0$w0 <- w_ss; ss0$w0[3] <- 0
f0 <- suppressWarnings(lmer(fs, ss0, weights = w0, REML = FALSE))
res$zero_weight_lme4_logLik <- as.character(as.numeric(logLik(f0)))

writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE), "weights.json")
for (k in names(res)) if (is.list(res[[k]]) && !is.null(res[[k]]$dense_minus_lme4))
  cat(k, "dense - lme4 logLik:", res[[k]]$dense_minus_lme4, " max |grad|:", max(abs(res[[k]]$grad_at_lme4)), "\n")
