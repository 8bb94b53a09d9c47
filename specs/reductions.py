"""Losses that reduce over a class, feature or spatial dimension before the final reduction.

Cross-entropy and its relatives over the class dim 1, divergences between distributions along
dim 1, overlap losses over the spatial dims (2, 3), margin losses over classes (Max) and between
point sets (Min). Each is checked against PyTorch's own loss, or the published formula written
out with torch ops, in tests/test_reductions_zoo.py.
"""

import sympy as sp

from lossgen import (
    LogSumExp,
    Loss,
    Max,
    Mean,
    Min,
    OneHot,
    Param,
    Pick,
    Sum,
    Tensor,
    clamp,
    logsumexp,
    relu,
    sigmoid,
    softplus,
    xlogy,
)

# logits (log-probabilities for NLL and KL), classes along dim 1
input = Tensor("input")
# probabilities / soft labels / masks, the input's shape
target = Tensor("target")
# class indices: the input's shape without dim 1
label = Tensor("target", index_of=1)

# one weight per class, as torch's weight=
weight = Param("weight", default=1.0, along=1)
label_smoothing = Param("label_smoothing", default=0.0)
ignore_index = Param("ignore_index", default=-100.0)

log_softmax = input - LogSumExp(input, 1)
counted = sp.Ne(label, ignore_index)

# --- cross-entropy and relatives over the class dim ------------------------------------------

soft_cross_entropy = Loss(
    "SoftCrossEntropy",
    -Sum(target * log_softmax, 1),
    doc="Cross-entropy of logits against class probabilities along dim 1, as "
    "torch.nn.CrossEntropyLoss with probability targets: one value per row (N,) or "
    "position (N, H, W).",
)
cross_entropy = Loss(
    "CrossEntropy",
    sp.Piecewise(
        (
            -(1 - label_smoothing) * Pick(weight * log_softmax, label)
            - label_smoothing * Mean(weight * log_softmax, 1),
            counted,
        ),
        (0, True),
    ),
    mean_weight=sp.Piecewise((Pick(weight, label), counted), (0, True)),
    doc="Cross-entropy of logits against class indices, as torch.nn.CrossEntropyLoss with "
    "class weights, label smoothing and ignore_index, including its weighted mean.",
)
nll = Loss(
    "NLL",
    sp.Piecewise((-Pick(weight * input, label), counted), (0, True)),
    mean_weight=sp.Piecewise((Pick(weight, label), counted), (0, True)),
    doc="Negative log-likelihood of log-probabilities against class indices, as "
    "torch.nn.NLLLoss with class weights and ignore_index.",
)
# A negative dim: classes last, as channels-last logits (N, H, W, C) are laid out.
last_label = Tensor("target", index_of=-1)
channels_last_cross_entropy = Loss(
    "ChannelsLastCrossEntropy",
    LogSumExp(input, -1) - Pick(input, last_label),
    doc="Cross-entropy with the classes along the last dim (dim=-1): "
    "F.cross_entropy(input.movedim(-1, 1), target).",
)
temperature = Param("temperature", default=0.07)
similarity = Tensor("similarity")  # (N, M) scores of N queries against M keys
positive = Tensor("positive", index_of=1)  # the key that matches each query
info_nce = Loss(
    "InfoNCE",
    LogSumExp(similarity / temperature, 1) - Pick(similarity, positive) / temperature,
    doc="InfoNCE / NT-Xent (van den Oord et al., 2018) over a batch similarity matrix with "
    "a temperature: F.cross_entropy(similarity / temperature, positive), positive = "
    "arange(N) for in-batch negatives.",
)

# --- divergences between distributions along dim 1 ------------------------------------------

categorical_kl_div = Loss(
    "CategoricalKLDiv",
    Sum(xlogy(target, target) - target * input, 1),
    doc="KL(target || exp(input)) summed over the classes of dim 1, for log-probability input: "
    "its mean over (N, C) rows is F.kl_div(input, target, reduction='batchmean').",
)
logits_p = Tensor("logits_p")
logits_q = Tensor("logits_q")
_log_p = logits_p - LogSumExp(logits_p, 1)
_log_q = logits_q - LogSumExp(logits_q, 1)
_log_m = logsumexp(_log_p, _log_q) - sp.log(2)  # log of the mixture (p + q) / 2
jensen_shannon = Loss(
    "JensenShannon",
    Sum(sp.exp(_log_p) * (_log_p - _log_m) + sp.exp(_log_q) * (_log_q - _log_m), 1) / 2,
    doc="Jensen-Shannon divergence (nats) between softmax(logits_p) and softmax(logits_q) "
    "along dim 1: (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2.",
)

# --- multi-label and embedding losses over the feature dim -----------------------------------

multi_label_soft_margin = Loss(
    "MultiLabelSoftMargin",
    Mean(weight * (softplus(input) - target * input), 1),
    doc="Mean over the classes of dim 1 of the per-class binary cross-entropy on logits, as "
    "torch.nn.MultiLabelSoftMarginLoss with its class weights.",
)
input1 = Tensor("input1")
input2 = Tensor("input2")
pair = Tensor("y", differentiable=False)  # +1 (similar) / -1 (dissimilar), shape (N, 1)
cosine_margin = Param("margin", default=0.0)
_cosine = Sum(input1 * input2, 1) / sp.sqrt(
    (Sum(input1**2, 1) + sp.Float(1e-12)) * (Sum(input2**2, 1) + sp.Float(1e-12))
)
# the label reduced over dim 1 too, so `none` gives one value per pair
_y = Mean(pair, 1)
cosine_embedding = Loss(
    "CosineEmbedding",
    # torch's clamp_min(0) passes gradient 1 at the margin itself: so does clamp.
    (1 + _y) / 2 * (1 - _cosine)
    + (1 - _y) / 2 * clamp(_cosine - cosine_margin, 0, sp.oo),
    doc="1 - cos(x1, x2) for y = 1, max(0, cos(x1, x2) - margin) for y = -1, with the "
    "cosine along dim 1, as torch.nn.CosineEmbeddingLoss (labels y of shape (N, 1)).",
)

# --- margin losses over classes (Max) and between point sets (Min) --------------------------

hinge_margin = Param("margin", default=1.0)
multiclass_hinge = Loss(
    "MulticlassHinge",
    # max over classes of x_i + margin [i != y], minus x_y: max(0, margin + max_{i!=y} x_i - x_y)
    Max(input + hinge_margin * (1 - OneHot(label)), dim=1) - Pick(input, label),
    doc="Crammer-Singer multiclass hinge max(0, margin + max_{i != y} x_i - x_y) over the "
    "classes of dim 1 (Crammer & Singer, 2001; margin 0 is the multiclass perceptron); ties "
    "split the gradient like torch.amax.",
)
multi_margin_margin = Param("margin", default=1.0)
multi_margin = Loss(
    "MultiMargin",
    Pick(weight, label)
    * Mean(
        (1 - OneHot(label)) * relu(multi_margin_margin - Pick(input, label) + input), 1
    ),
    doc="Sum over the other classes of max(0, margin - x_y + x_i), divided by the number of "
    "classes and weighted by the target's class weight, as torch.nn.MultiMarginLoss(p=1).",
)
# (B, N, M): distance from point n of one set to point m of the other
distances = Tensor("distances")
directed_chamfer = Loss(
    "DirectedChamfer",
    Min(distances, dim=2),
    doc="Distance from each point of one set to its nearest neighbour in the other, given "
    "the pairwise distances (B, N, M): one value per point (B, N); the mean over a batch of "
    "equal-sized sets is their mean directed Chamfer distance. Ties split the gradient like "
    "torch.amin.",
)
chamfer = Loss(
    "Chamfer",
    Mean(Min(distances, dim=2), 1) + Mean(Min(distances, dim=1), 2),
    doc="Symmetric Chamfer distance between two point sets given their pairwise distances "
    "(B, N, M): the mean nearest-neighbour distance both ways, one value per batch element. "
    "Ties split the gradient like torch.amin.",
)

# --- overlap losses over the spatial dims (2, 3) of (N, C, H, W) -----------------------------

smooth = Param("smooth", default=1.0)
tversky_alpha = Param("alpha", default=0.3)
tversky_beta = Param("beta", default=0.7)
focal_gamma = Param("gamma", default=0.75)
_prob = sigmoid(input)
_spatial = (2, 3)
_tp = Sum(_prob * target, _spatial)
_fp = Sum(_prob * (1 - target), _spatial)
_fn = Sum((1 - _prob) * target, _spatial)
_tversky_index = (_tp + smooth) / (
    _tp + tversky_alpha * _fp + tversky_beta * _fn + smooth
)
dice = Loss(
    "Dice",
    1 - (2 * _tp + smooth) / (Sum(_prob, _spatial) + Sum(target, _spatial) + smooth),
    doc="Soft Dice loss (Milletari et al., 2016) of sigmoid(input) against a mask, over the "
    "spatial dims of (N, C, H, W): one value per (N, C), with additive smoothing.",
)
tversky = Loss(
    "Tversky",
    1 - _tversky_index,
    doc="Tversky loss (Salehi et al., 2017): 1 - (TP + s) / (TP + alpha FP + beta FN + s) of "
    "sigmoid(input) against a mask, over the spatial dims of (N, C, H, W).",
)
focal_tversky = Loss(
    "FocalTversky",
    (1 - _tversky_index) ** focal_gamma,
    doc="Focal Tversky loss (Abraham & Khan, 2019): (1 - Tversky index)^gamma, gamma = 3/4 "
    "by default, over the spatial dims of (N, C, H, W).",
)
