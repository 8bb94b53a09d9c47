"""A loss that learns one of its own parameters."""

import sympy as sp

from lossgen import Loss, Param, Tensor

input = Tensor("input")
target = Tensor("target")
log_variance = Param("log_variance", default=0.0, learnable=True)

uncertainty_weighted_mse = Loss(
    "UncertaintyWeightedMSE",
    (input - target) ** 2 / 2 * sp.exp(-log_variance) + log_variance / 2,
    doc="Squared error weighted by a learned homoscedastic uncertainty (Kendall et al., 2018).",
)
