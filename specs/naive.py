"""Losses written the way papers write them; lossgen makes them numerically stable.

Each is compared with PyTorch's stable built-in in tests/test_stability.py, in float32 up to
|x| = 100 and in bfloat16.
"""

import sympy as sp

from lossgen import Loss, Tensor

input = Tensor("input")
target = Tensor("target")
var = Tensor("var")

probability = 1 / (1 + sp.exp(-input))  # the sigmoid, as written in a textbook
naive_bce = Loss(
    "NaiveBCE",
    -(target * sp.log(probability) + (1 - target) * sp.log(1 - probability)),
    doc="Binary cross-entropy of sigmoid probabilities, written naively; "
    "lossgen derives softplus(x) - y*x and the gradient sigmoid(x) - y "
    "(as torch.nn.functional.binary_cross_entropy_with_logits).",
)

rate = sp.exp(input)  # a log-rate input
naive_poisson_nll = Loss(
    "NaivePoissonNLL",
    rate - target * sp.log(rate),
    doc="Poisson negative log-likelihood (without the log(target!) term) of a log-rate, "
    "as torch.nn.functional.poisson_nll_loss(log_input=True, full=False).",
)

naive_gaussian_nll = Loss(
    "NaiveGaussianNLL",
    sp.Rational(1, 2) * (sp.log(var) + (input - target) ** 2 / var),
    doc="Gaussian negative log-likelihood with a predicted variance, "
    "as torch.nn.functional.gaussian_nll_loss(full=False) for var above its eps.",
)

naive_soft_margin = Loss(
    "NaiveSoftMargin",
    sp.log(1 + sp.exp(-target * input)),
    doc="Soft margin loss log(1 + exp(-y*x)), written naively; lossgen generates "
    "softplus(-y*x), finite where torch.nn.functional.soft_margin_loss overflows.",
)
