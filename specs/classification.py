"""Binary classification losses on probabilities and logits, in numerically stable forms."""

import sympy as sp

from lossgen import Loss, Param, Tensor, relu

input = Tensor("input")
target = Tensor("target")
label = Tensor("label", differentiable=False)  # +1 / -1

pos_weight = Param("pos_weight", default=1.0)
alpha = Param("alpha", default=0.25)
gamma = Param("gamma", default=2.0)


def softplus(z: sp.Expr) -> sp.Expr:
    """log(1 + exp(z)) in a form that never overflows."""
    return sp.Max(z, 0) + sp.log(1 + sp.exp(-sp.Abs(z)))


bce = Loss(
    "BCE",
    -(target * sp.log(input) + (1 - target) * sp.log(1 - input)),
    doc="Binary cross-entropy on probabilities in (0, 1), as torch.nn.BCELoss "
    "(without its clamp of log at -100).",
)
weighted_bce_with_logits = Loss(
    "WeightedBCEWithLogits",
    (1 - target) * input + (1 + (pos_weight - 1) * target) * softplus(-input),
    doc="Binary cross-entropy on logits with a positive-class weight, as "
    "torch.nn.BCEWithLogitsLoss(pos_weight=...).",
)
soft_margin = Loss(
    "SoftMargin",
    softplus(-label * input),
    doc="Logistic loss log(1 + exp(-y x)) for labels y in {-1, 1}, as torch.nn.SoftMarginLoss "
    "(which overflows for y x < -88 in float32; this form does not).",
)
sigmoid_focal = Loss(
    "SigmoidFocal",
    # log sigmoid(x) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x), and
    # softplus(-x) = softplus(x) - x: one Max and one Abs, which halves the derive time.
    alpha * sp.exp(-gamma * softplus(input)) * target * (softplus(input) - input)
    + (1 - alpha)
    * sp.exp(-gamma * (softplus(input) - input))
    * (1 - target)
    * softplus(input),
    doc="Focal loss on logits (Lin et al., 2017), as kornia's binary_focal_loss_with_logits "
    "and, for targets in {0, 1}, torchvision.ops.sigmoid_focal_loss.",
)
binary_focal = Loss(
    "BinaryFocal",
    -alpha * (1 - input) ** gamma * target * sp.log(input)
    - (1 - alpha) * input**gamma * (1 - target) * sp.log(1 - input),
    doc="Focal loss on probabilities in (0, 1) (Lin et al., 2017).",
)
hinge = Loss(
    "Hinge",
    relu(1 - label * input),
    doc="SVM hinge loss max(0, 1 - y x) for labels y in {-1, 1}; gradient 0 at the hinge.",
)
squared_hinge = Loss(
    "SquaredHinge",
    relu(1 - label * input) ** 2,
    doc="Squared hinge max(0, 1 - y x)^2 for labels y in {-1, 1}.",
)
modified_huber = Loss(
    "ModifiedHuber",
    sp.Piecewise(
        (relu(1 - label * input) ** 2, label * input >= -1), (-4 * label * input, True)
    ),
    doc="Modified Huber loss (Zhang, 2004; scikit-learn's SGDClassifier) for labels in {-1, 1}.",
)
