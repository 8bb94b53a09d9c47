"""Negative log-likelihoods and asymmetric regression losses."""

import sympy as sp

from lossgen import Loss, Param, Tensor

input = Tensor("input")
target = Tensor("target")
var = Tensor("var")

tau = Param("tau", default=0.5)
sigma = Param("sigma", default=1.0, learnable=True)
nu = Param("nu", default=3.0)
rate_eps = Param("rate_eps", default=1e-8)

gaussian_nll = Loss(
    "GaussianNLL",
    (sp.log(var) + (input - target) ** 2 / var) / 2,
    doc="Gaussian NLL with predicted variance, as torch.nn.GaussianNLLLoss(full=False) "
    "for var above its eps.",
)
_u = target - input
asymmetric_laplace_nll = Loss(
    "AsymmetricLaplaceNLL",
    sp.log(sigma) - sp.log(tau * (1 - tau)) + sp.Max(tau * _u, (tau - 1) * _u) / sigma,
    doc="NLL of the asymmetric Laplace distribution (Yu & Zhang, 2005) with location input, "
    "quantile tau and learnable scale.",
)
student_nll = Loss(
    "StudentNLL",
    # The -log Gamma((nu+1)/2) + log Gamma(nu/2) + log(nu pi)/2 term depends on nu alone and is
    # left out (lossgen has no lgamma): exact gradients for input, target and sigma.
    sp.log(sigma) + (nu + 1) / 2 * sp.log(1 + ((target - input) / sigma) ** 2 / nu),
    doc="Student's t NLL with location input, learnable scale and nu degrees of freedom, "
    "up to a constant in nu.",
)
expectile = Loss(
    "Expectile",
    sp.Piecewise((tau * _u**2, _u >= 0), ((1 - tau) * _u**2, True)),
    doc="Asymmetric least squares for the tau-expectile (Newey & Powell, 1987): "
    "|tau - 1(u < 0)| u^2, u = target - input.",
)
poisson_nll_rate = Loss(
    "PoissonNLLRate",
    input - target * sp.log(input + rate_eps),
    doc="Poisson NLL with rate input, as torch.nn.PoissonNLLLoss(log_input=False, full=False).",
)
kl_div = Loss(
    "KLDiv",
    sp.Piecewise((target * sp.log(target), target > 0), (0, True)) - target * input,
    reduction="sum",
    doc="Pointwise KL divergence with log-probability input, as "
    "torch.nn.functional.kl_div(input, target, log_target=False).",
)
