"""Bounding-box regression losses; a box is four coordinate tensors (x1, y1, x2, y2)."""

import sympy as sp

from lossgen import Loss, Param, Tensor, relu

x1, y1, x2, y2 = (Tensor(name) for name in ("x1", "y1", "x2", "y2"))
target_x1, target_y1, target_x2, target_y2 = (
    Tensor(name, differentiable=False)
    for name in ("target_x1", "target_y1", "target_x2", "target_y2")
)
eps = Param("eps", default=1e-7)

_intersection = relu(sp.Min(x2, target_x2) - sp.Max(x1, target_x1)) * relu(
    sp.Min(y2, target_y2) - sp.Max(y1, target_y1)
)
_union = (
    (x2 - x1) * (y2 - y1)
    + (target_x2 - target_x1) * (target_y2 - target_y1)
    - _intersection
)
_hull = (sp.Max(x2, target_x2) - sp.Min(x1, target_x1)) * (
    sp.Max(y2, target_y2) - sp.Min(y1, target_y1)
)

generalized_box_iou = Loss(
    "GeneralizedBoxIOU",
    1 - _intersection / (_union + eps) + (_hull - _union) / (_hull + eps),
    doc="1 - GIoU (Rezatofighi et al., CVPR 2019), as "
    "torchvision.ops.generalized_box_iou_loss.",
)
