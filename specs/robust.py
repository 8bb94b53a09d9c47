"""Robust regression losses over a residual `input - target` (the M-estimators of robust
statistics and of Barron's "A General and Adaptive Robust Loss Function", CVPR 2019)."""

import sympy as sp

from lossgen import Loss, Param, Tensor

input = Tensor("input")
target = Tensor("target")
residual = input - target

beta = Param("beta", default=1.0)
c = Param("c", default=1.0)
barron_alpha = Param("barron_alpha", default=1.0, learnable=True)
barron_scale = Param("barron_scale", default=1.0, learnable=True)
width = Param("width", default=10.0)
curvature = Param("curvature", default=2.0)

smooth_l1 = Loss(
    "SmoothL1",
    sp.Piecewise(
        (residual**2 / (2 * beta), sp.Abs(residual) < beta),
        (sp.Abs(residual) - beta / 2, True),
    ),
    doc="Quadratic below beta, linear above, as torch.nn.SmoothL1Loss(beta).",
)
geman_mcclure = Loss(
    "GemanMcclure",
    2 * (residual / c) ** 2 / ((residual / c) ** 2 + 4),
    doc="Geman-McClure, 2 (r/c)^2 / ((r/c)^2 + 4): Barron's loss at alpha = -2.",
)
welsch = Loss(
    "Welsch",
    1 - sp.exp(-((residual / c) ** 2) / 2),
    doc="Welsch (Leclerc), 1 - exp(-(r/c)^2 / 2): Barron's loss as alpha -> -inf.",
)
tukey_biweight = Loss(
    "TukeyBiweight",
    sp.Piecewise(
        (c**2 / 6 * (1 - (1 - (residual / c) ** 2) ** 3), sp.Abs(residual) <= c),
        (c**2 / 6, True),
    ),
    doc="Tukey's biweight: c^2/6 (1 - (1 - (r/c)^2)^3) inside |r| <= c, constant outside.",
)
barron = Loss(
    "Barron",
    # The general formula; alpha = 0 and alpha = 2 are removable singularities (the limits
    # are log(0.5 (r/c)^2 + 1) and 0.5 (r/c)^2): keep alpha away from them.
    sp.Abs(barron_alpha - 2)
    / barron_alpha
    * (
        ((residual / barron_scale) ** 2 / sp.Abs(barron_alpha - 2) + 1)
        ** (barron_alpha / 2)
        - 1
    ),
    doc="Barron's general robust loss rho(r, alpha, c) with learnable shape alpha "
    "(barron_alpha) and scale c (barron_scale); defined for alpha not in {0, 2}.",
)
wing = Loss(
    "Wing",
    sp.Piecewise(
        (width * sp.log(1 + sp.Abs(residual) / curvature), sp.Abs(residual) < width),
        (sp.Abs(residual) - (width - width * sp.log(1 + width / curvature)), True),
    ),
    doc="Wing loss for landmark regression (Feng et al., CVPR 2018), w = width, eps = curvature.",
)

heatmap = Tensor("heatmap", differentiable=False)
omega = Param("omega", default=14.0)
theta = Param("theta", default=0.5)
epsilon = Param("epsilon", default=1.0)
power = Param("power", default=2.1)

_distance = sp.Abs(heatmap - input)
_exponent = power - heatmap
_ratio = theta / epsilon
_slope = (
    omega
    * (1 / (1 + _ratio**_exponent))
    * _exponent
    * _ratio ** (_exponent - 1)
    / epsilon
)
adaptive_wing = Loss(
    "AdaptiveWing",
    sp.Piecewise(
        # The derivative at distance 0 is 0 (power - heatmap > 1); as its own branch it is not
        # 0 * |d|^(p - 1) / |d| = NaN, which is what the simplified general branch would give.
        (0, sp.Eq(_distance, 0)),
        (omega * sp.log(1 + (_distance / epsilon) ** _exponent), _distance < theta),
        (
            _slope * _distance
            - (theta * _slope - omega * sp.log(1 + _ratio**_exponent)),
            True,
        ),
    ),
    doc="Adaptive Wing loss for heatmap regression (Wang et al., ICCV 2019); its alpha is "
    "`power`, the target heatmap (in [0, 1]) is not differentiated.",
)
