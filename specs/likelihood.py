"""Losses on logits and log-rates, written in their numerically stable forms."""

import sympy as sp

from lossgen import Loss, Tensor

input = Tensor("input")
target = Tensor("target")

bce_with_logits = Loss(
    "BCEWithLogits",
    sp.Max(input, 0) - input * target + sp.log(1 + sp.exp(-sp.Abs(input))),
    doc="Binary cross-entropy on logits, as torch.nn.BCEWithLogitsLoss.",
)
poisson_nll = Loss(
    "PoissonNLL",
    sp.exp(input) - target * input,
    doc="Poisson negative log-likelihood with log-rate input, as "
    "torch.nn.PoissonNLLLoss(log_input=True, full=False).",
)
