"""A survival frailty model, two ways, with the same covariance.

Exponential survival times with a cluster frailty on the intercept and on the slope of X:
``lambda_i = lambda_0 exp(b_j + a_j X_i + beta Z_i)``, ``b_j ~ N(0, s_b^2)``, ``a_j ~ N(0, s_a^2)``
independent. With event indicator ``d_i`` and follow-up time ``t_i`` the log-likelihood is
``sum_i d_i log lambda_i - lambda_i t_i``, which is, up to the constant ``sum_i d_i log t_i``,
the Poisson log-likelihood of ``d_i`` with mean ``t_i lambda_i``. So:

1. a Poisson GLMM with ``offset(log(time))`` through the formula front end, and
2. the exponential likelihood written by hand in PyMC (``pm.CustomDist``) and fitted with
   ``pmv.fit``

give the same estimates and the same full covariance matrix (the log-likelihoods differ by
that constant). Both are Laplace fits with exact derivatives.

Run: ``python examples/frailty_survival.py``.
"""

import warnings

import numpy as np
import pandas as pd
import pymc as pm

import pymc_mixvcov as pmv

warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")


#: The values :func:`simulate` draws from: baseline hazard ``lambda_0``, mean effect of ``X``,
#: effect of ``Z``, SDs of the intercept and slope frailties, and the censoring time.
LAMBDA_0, BETA_X, BETA_Z, SD_B, SD_A, CENSOR = 0.5, 0.4, -0.3, 0.5, 0.3, 2.0

#: The same values as :func:`poisson_fit` labels its parameters on the ``"sd"`` scale.
TRUTH = {
    "(Intercept)": float(np.log(LAMBDA_0)),
    "X": BETA_X,
    "Z": BETA_Z,
    "sd_(Intercept)|cluster": SD_B,
    "sd_X|cluster": SD_A,
}


def simulate(n_clusters: int = 100, size: int = 20, seed: int = 1) -> pd.DataFrame:
    """Exponential survival times with intercept and slope frailties, censored at time 2.

    ``X`` is binary (probability 1/2), ``Z`` standard normal; the parameters are the module's
    ``LAMBDA_0``, ``BETA_X``, ``BETA_Z``, ``SD_B``, ``SD_A`` and ``CENSOR`` (about 70% of the
    times are events).
    """
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), size)
    X = rng.binomial(1, 0.5, size=g.size).astype(float)
    Z = rng.normal(size=g.size)
    b = rng.normal(0, SD_B, n_clusters)
    a = rng.normal(0, SD_A, n_clusters)
    lam = LAMBDA_0 * np.exp(b[g] + (BETA_X + a[g]) * X + BETA_Z * Z)
    t_event = rng.exponential(1 / lam)
    time = np.minimum(t_event, CENSOR)
    return pd.DataFrame(
        {"time": time, "event": (t_event <= CENSOR).astype(int), "X": X, "Z": Z, "cluster": pd.Categorical(g)}
    )


def poisson_fit(df: pd.DataFrame):
    formula = "event ~ X + Z + offset(log(time)) + (1 | cluster) + (0 + X | cluster)"
    return pmv.glmm(formula, df, family="poisson").fit()


def exponential_fit(df: pd.DataFrame):
    g = df["cluster"].cat.codes.to_numpy()
    X, Z, t = df["X"].to_numpy(), df["Z"].to_numpy(), df["time"].to_numpy()

    def logp(d, log_lam):
        return d * log_lam - pm.math.exp(log_lam) * t

    with pm.Model(coords={"cluster": list(df["cluster"].cat.categories)}) as model:
        beta = pm.Normal("beta", 0, 5, shape=3)  # log lambda_0, X, Z
        sd_b = pm.HalfNormal("sd_b", 2.0)
        sd_a = pm.HalfNormal("sd_a", 2.0)
        b = pm.Normal("b", 0, sd_b, dims="cluster")
        a = pm.Normal("a", 0, sd_a, dims="cluster")
        log_lam = beta[0] + (beta[1] + a[g]) * X + beta[2] * Z + b[g]
        pm.CustomDist("event", log_lam, logp=logp, observed=df["event"].to_numpy())
    return pmv.fit(model, random=["b", "a"])


if __name__ == "__main__":
    df = simulate()
    p, e = poisson_fit(df), exponential_fit(df)
    const = float(np.sum(df["event"] * np.log(df["time"])))
    print(
        f"Poisson GLMM logLik {p.loglik:.6f}; exponential logLik {e.loglik:.6f}; difference "
        f"{p.loglik - e.loglik:.6f} = sum d log t = {const:.6f}"
    )
    with pd.option_context("display.width", 160, "display.precision", 6):
        table = pd.DataFrame(
            {
                "Poisson (formula)": p.params("sd").to_numpy(),
                "se": p.se("sd").to_numpy(),
                "exponential (hand-written)": e.params("sd").to_numpy(),
                "se ": e.se("sd").to_numpy(),
            },
            index=p.labels("sd"),
        )
        print(table.to_string())
        print("\nFull covariance (sd scale), Poisson GLMM:")
        print(p.vcov("sd").to_string())
        print(
            "\nlargest difference between the two covariance matrices:",
            float(np.max(np.abs(p.vcov("sd").to_numpy() - e.vcov("sd").to_numpy()))),
        )
