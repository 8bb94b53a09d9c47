"""Regression losses over a residual `input - target`."""

import sympy as sp

from lossgen import Loss, Param, Tensor

input = Tensor("input")
target = Tensor("target")
residual = input - target

delta = Param("delta", default=1.0)
eps = Param("eps", default=1e-3)
c = Param("c", default=1.0)
tau = Param("tau", default=0.5)

mse = Loss("MSE", residual**2, doc="Squared error, as torch.nn.MSELoss.")
l1 = Loss("L1", sp.Abs(residual), doc="Absolute error, as torch.nn.L1Loss.")
huber = Loss(
    "Huber",
    sp.Piecewise(
        (residual**2 / 2, sp.Abs(residual) <= delta),
        (delta * (sp.Abs(residual) - delta / 2), True),
    ),
    doc="Quadratic near zero, linear beyond delta, as torch.nn.HuberLoss.",
)
log_cosh = Loss(
    "LogCosh",
    # log(cosh(r)) written so that cosh cannot overflow: |r| + log(1 + exp(-2|r|)) - log(2)
    sp.Abs(residual) + sp.log(1 + sp.exp(-2 * sp.Abs(residual))) - sp.log(2),
    doc="log(cosh(r)): smooth, L1-like in the tails.",
)
charbonnier = Loss(
    "Charbonnier",
    sp.sqrt(residual**2 + eps**2) - eps,
    doc="A smooth L1 (pseudo-Huber with scale eps), zero at r = 0.",
)
cauchy = Loss(
    "Cauchy",
    c**2 / 2 * sp.log(1 + (residual / c) ** 2),
    doc="Cauchy (Lorentzian) robust loss with scale c.",
)
quantile = Loss(
    "Quantile",
    # u = target - input: under-predicting costs tau per unit (Koenker & Bassett, 1978)
    sp.Max(tau * -residual, (tau - 1) * -residual),
    doc="Pinball loss for the tau-quantile: max(tau * u, (tau - 1) * u), u = target - input.",
)
