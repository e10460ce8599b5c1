# kb07-shaped crossed vector design (kb07_sim.csv, written by benchmarks/_data.py kb07()):
# rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item), ML.
# merDeriv is not installable here (no Debian package; its observed vcov also takes about an hour on
# 1,792 rows and mislabels 4 x 4 terms, see the design notes), so the reference observed covariance is
# built the way merDeriv's "var" scale is defined: minus the inverse Hessian of the full ML
# log-likelihood in (beta, the variances and covariances of each term, the residual variance), at
# lme4's ML estimates. The log-likelihood is evaluated exactly with lme4's Z (Woodbury / determinant
# lemma on M = Lambda' Z'Z Lambda + s2 I, Lambda = blockdiag L_k). Its Hessian is taken by numDeriv's
# Richardson extrapolation in the parameters (beta, the lower triangles of the Cholesky factors L_k,
# sigma), in coordinates scaled to unit curvature (a first, coarser numDeriv pass gives the scales):
# on the variance scale itself the curvatures span 12 orders of magnitude and the differences drown
# in rounding. The covariance is then mapped to the variance scale with the exact Jacobian of
# (beta, vech(L_k L_k'), sigma^2) in (beta, vech(L_k), sigma) (at the maximum the gradient is 0, so the
# observed information transforms with the Jacobian alone). Parameters are ordered as pymc_mixvcov's
# "var" scale: beta, each term's lower triangle column by column, the residual variance.
# Run from this folder: Rscript generate_kb07.R
suppressMessages({library(lme4); library(Matrix); library(jsonlite); library(numDeriv)})
M <- function(m, nm) { m <- as.matrix(m); list(rownames=nm, colnames=nm, values=unname(m)) }
d <- read.csv("kb07_sim.csv", stringsAsFactors = TRUE)
f <- rt ~ S + T + U + (1 + S + T + U | subj) + (1 + S + T + U | item)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
t_fit <- system.time(m <- lmer(f, d, REML = FALSE, control = ctrl))[["elapsed"]]
stopifnot(!isSingular(m))
X <- getME(m, "X"); y <- getME(m, "y"); Z <- getME(m, "Z")
# lme4 orders the terms by its own rule; find each term's columns and size
cnms <- getME(m, "cnms"); flist <- getME(m, "flist"); Gp <- getME(m, "Gp")
terms <- names(cnms)
n <- length(y); p <- ncol(X); ZtZ <- crossprod(Z); ZtX <- crossprod(Z, X); Zty <- crossprod(Z, y)
lowtri <- function(G) G[lower.tri(G, diag = TRUE)]  # column-major lower triangle
ours <- c("subj", "item")  # pymc_mixvcov's order of the terms (the formula's)
r <- 4L; nv <- r * (r + 1) / 2
loglik_theta <- function(par) {
  beta <- par[1:p]
  Ls <- list()
  for (k in seq_along(ours)) {
    L <- matrix(0, r, r); L[lower.tri(L, diag = TRUE)] <- par[p + (k - 1) * nv + seq_len(nv)]
    Ls[[ours[k]]] <- L
  }
  s2 <- par[length(par)]^2
  blocks <- lapply(terms, function(tn) { nl <- nlevels(flist[[tn]]); kronecker(Diagonal(nl), Ls[[tn]]) })
  Lam <- bdiag(blocks)
  Mm <- as.matrix(crossprod(Lam, ZtZ %*% Lam)) + s2 * diag(ncol(Z))
  R <- chol(Mm)
  res <- y - X %*% beta
  w <- as.numeric(crossprod(Lam, crossprod(Z, res)))
  v <- backsolve(R, forwardsolve(t(R), w))
  q <- ncol(Z)
  -0.5 * n * log(2 * pi) - 0.5 * (n - q) * log(s2) - sum(log(diag(R))) - (sum(res^2) - sum(w * v)) / (2 * s2)
}
vc <- VarCorr(m)
chols <- lapply(ours, function(tn) t(chol(as.matrix(vc[[tn]]))))
par0 <- c(fixef(m), unlist(lapply(chols, lowtri)), sigma(m))
ll0 <- loglik_theta(par0)
stopifnot(abs(ll0 - as.numeric(logLik(m))) < 1e-6 * abs(ll0))
t_hess <- system.time({
  H0 <- numDeriv::hessian(loglik_theta, par0, method.args = list(d = 1e-3, r = 2))
  sc <- 1 / sqrt(abs(diag(H0)))
  Hz <- numDeriv::hessian(function(z) loglik_theta(par0 + sc * z), rep(0, length(par0)),
                          method.args = list(eps = 1e-2, zero.tol = 1e-8, r = 4))
  H <- Hz / outer(sc, sc)
})[["elapsed"]]
Vt <- solve(-H)
# Jacobian of (beta, vech(L L'), sigma^2) in (beta, vech(L), sigma)
Jac <- diag(length(par0))
idx <- which(lower.tri(diag(r), diag = TRUE), arr.ind = TRUE)  # column-major (row, col)
for (k in seq_along(ours)) {
  L <- chols[[k]]; off <- p + (k - 1) * nv
  for (a in seq_len(nv)) for (b in seq_len(nv)) {
    i <- idx[a, 1]; j <- idx[a, 2]  # G_ij
    u <- idx[b, 1]; v <- idx[b, 2]  # L_uv
    Jac[off + a, off + b] <- (i == u) * L[j, v] + (j == u) * L[i, v]
  }
}
Jac[length(par0), length(par0)] <- 2 * sigma(m)
V <- Jac %*% Vt %*% t(Jac)
par_var <- c(fixef(m), unlist(lapply(ours, function(tn) lowtri(as.matrix(vc[[tn]])))), sigma(m)^2)
labs <- c(colnames(X), unlist(lapply(ours, function(tn) {
  cn <- cnms[[tn]]; out <- character(0)
  for (j in 1:r) for (i in j:r) out <- c(out, if (i == j) paste0("cov_", tn, ".", cn[i]) else paste0("cov_", tn, ".", cn[i], ".", cn[j]))
  out })), "residual")
out <- list(case = "kb07_sim_ml", lme4_logLik = as.numeric(logLik(m)), loglik_at_par = ll0, par = setNames(as.list(par_var), labs),
            lme4_seconds = t_fit, hessian_seconds = t_hess, vcov_var_numderiv = M(V, labs),
            method = paste("numDeriv::hessian (Richardson, r = 4) of the exact ML log-likelihood in (beta, Cholesky factors,",
                           "sigma), coordinates scaled to unit curvature, mapped to the var scale by the exact Jacobian"))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "kb07_numderiv.json")
