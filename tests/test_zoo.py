"""Every zoo loss against an independent reference: PyTorch's own loss where one exists, else
the published formula written out here with plain torch ops (never the spec through lossgen).

Values and gradients (for every differentiable tensor, and for params passed as tensors) are
compared for all three reductions, in float64 and float32, at random points and, for losses with
kinks or branch seams, with some elements placed exactly on them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

import generated
from conftest import SPEC_ARGS
from lossgen.api import load_models

Tensors = list[torch.Tensor]
REDUCTIONS = ("none", "mean", "sum")
DTYPES = (torch.float64, torch.float32)
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
}


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def elementwise(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A written-out elementwise reference, reduced like a torch loss."""
    return lambda *tensors, reduction: _reduce(fn(*tensors), reduction)


@dataclass
class Case:
    ours: Callable[..., torch.Tensor]  # (*tensors, reduction=...) -> loss
    theirs: Callable[..., torch.Tensor]
    make: Callable[[torch.Generator], Tensors]  # float64 tensors, random points
    kinks: Callable[[torch.Generator], Tensors] | None = (
        None  # some elements exactly on kinks
    )
    grads: Sequence[int] | None = None  # which tensors to differentiate (default: all)
    # The reference on `kinks` where `theirs` takes another subgradient there than lossgen's
    # contract (see clamp_passes_its_bounds); None: `theirs`.
    theirs_at_kinks: Callable[..., torch.Tensor] | None = None


def clamp_passes_its_bounds() -> bool:
    """Whether torch.clamp passes gradient 1 at a bound, as lossgen's clamp does. torch 2.14
    changed it to 0 there, so built-ins written with clamp_min (F.margin_ranking_loss,
    F.hinge_embedding_loss) no longer pass the margin's gradient."""
    x = torch.zeros((), requires_grad=True)
    torch.clamp(x, min=0.0).backward()
    return x.grad.item() == 1.0


def clamp_with_gradient_at_zero(u: torch.Tensor) -> torch.Tensor:
    """max(u, 0) passing gradient 1 at u = 0, as torch.clamp_min did before torch 2.14."""
    return torch.where(u >= 0, u, 0.0)


N = 32


def normal(g: torch.Generator, scale: float = 1.0, n: int = N) -> torch.Tensor:
    return torch.randn(n, generator=g, dtype=torch.float64) * scale


def uniform(g: torch.Generator, low: float, high: float, n: int = N) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def labels(g: torch.Generator, n: int = N) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def residual_pair(*offsets: float) -> Callable[[torch.Generator], Tensors]:
    """(input, target) with input - target exactly at each offset in turn (dyadic values)."""

    def make(g: torch.Generator) -> Tensors:
        target = torch.round(normal(g) * 8) / 8
        input = torch.round(normal(g, 2.0) * 8) / 8
        for index, offset in enumerate(offsets):
            input[index :: len(offsets) + 1] = (
                target[index :: len(offsets) + 1] + offset
            )
        return [input, target]

    return make


def regression_pair(g: torch.Generator) -> Tensors:
    return [normal(g, 2.0), normal(g)]


# --- written-out references ------------------------------------------------------------------


def barron_reference(
    r: torch.Tensor, alpha: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    # Barron (2019), eq. 1: |a-2|/a * (((x/c)^2 / |a-2| + 1)^(a/2) - 1)
    b = torch.abs(alpha - 2)
    return b / alpha * (torch.pow((r / c) ** 2 / b + 1, alpha / 2) - 1)


def wing_reference(r: torch.Tensor, w: float = 10.0, e: float = 2.0) -> torch.Tensor:
    # Feng et al. (2018), eq. 5: w ln(1 + |x|/e) if |x| < w, else |x| - C, C = w - w ln(1 + w/e)
    x = r.abs()
    return torch.where(
        x < w, w * torch.log(1 + x / e), x - (w - w * math.log(1 + w / e))
    )


def adaptive_wing_reference(
    y_hat: torch.Tensor, y: torch.Tensor, omega=14.0, theta=0.5, epsilon=1.0, alpha=2.1
) -> torch.Tensor:
    # Wang et al. (2019), eq. 8 and the A, C below it.
    d = (y - y_hat).abs()
    p = alpha - y
    a = (
        omega
        * (1 / (1 + (theta / epsilon) ** p))
        * p
        * (theta / epsilon) ** (p - 1)
        / epsilon
    )
    c = theta * a - omega * torch.log(1 + (theta / epsilon) ** p)
    return torch.where(d < theta, omega * torch.log(1 + (d / epsilon) ** p), a * d - c)


def pinball(u: torch.Tensor, tau) -> torch.Tensor:
    # Koenker & Bassett (1978): rho_tau(u) = u (tau - 1(u < 0))
    return u * (tau - (u < 0).to(u.dtype))


def asymmetric_laplace_density(y, mu, tau, sigma) -> torch.Tensor:
    # Yu & Zhang (2005): f(y) = tau (1 - tau) / sigma * exp(-rho_tau((y - mu) / sigma))
    return tau * (1 - tau) / sigma * torch.exp(-pinball((y - mu) / sigma, tau))


def student_nll_reference(mu, y, sigma, nu: float) -> torch.Tensor:
    # The spec leaves out the constant log Gamma((nu+1)/2) - log Gamma(nu/2) - log(nu pi)/2.
    nll = -torch.distributions.StudentT(nu, mu, sigma).log_prob(y)
    constant = (
        math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - math.log(nu * math.pi) / 2
    )
    return nll + constant


def torchvision_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0) -> torch.Tensor:
    # torchvision.ops.sigmoid_focal_loss (v0.20) written out: torchvision does not import beside
    # the torch this project pins, so its function body is reproduced here.
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def modified_huber_reference(x, y) -> torch.Tensor:
    # Zhang (2004), as scikit-learn's ModifiedHuber: (max(0, 1 - z))^2 for z >= -1, else -4 z
    z = x * y
    return torch.where(z >= -1, torch.clamp(1 - z, min=0) ** 2, -4 * z)


def kl_div(log_target: bool):
    def reference(input, target, reduction):
        with warnings.catch_warnings():  # 'mean' warns that it is not 'batchmean'
            warnings.simplefilter("ignore")
            return F.kl_div(input, target, reduction=reduction, log_target=log_target)

    return reference


def partial_kw(
    fn: Callable[..., torch.Tensor], **params: float
) -> Callable[..., torch.Tensor]:
    return lambda *tensors, reduction: fn(*tensors, **params, reduction=reduction)


def _kornia_binary_focal(alpha: float, gamma: float):
    kornia_losses = pytest.importorskip("kornia.losses")

    def reference(x, y, reduction):
        return kornia_losses.binary_focal_loss_with_logits(
            x[None], y[None], alpha=alpha, gamma=gamma, reduction=reduction
        ).reshape(() if reduction != "none" else x.shape)

    return reference


def generalized_box_iou_reference(x1, y1, x2, y2, tx1, ty1, tx2, ty2, eps=1e-7):
    # torchvision.ops.generalized_box_iou_loss written out (PyPI torchvision does not import
    # beside this torch): intersection masked where the boxes do not overlap.
    xkis1, ykis1 = torch.max(x1, tx1), torch.max(y1, ty1)
    xkis2, ykis2 = torch.min(x2, tx2), torch.min(y2, ty2)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk = torch.where(overlap, (xkis2 - xkis1) * (ykis2 - ykis1), 0.0)
    unionk = (x2 - x1) * (y2 - y1) + (tx2 - tx1) * (ty2 - ty1) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1, yc1 = torch.min(x1, tx1), torch.min(y1, ty1)
    xc2, yc2 = torch.max(x2, tx2), torch.max(y2, ty2)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1 - (iouk - (area_c - unionk) / (area_c + eps))


def boxes(g: torch.Generator) -> Tensors:
    """Predicted and target boxes (x1, y1, x2, y2): overlapping, disjoint and nested ones."""
    corners = [normal(g) for _ in range(2)]
    sizes = [uniform(g, 0.5, 2.0) for _ in range(2)]
    target = [corners[0], corners[1], corners[0] + sizes[0], corners[1] + sizes[1]]
    shift = [normal(g, 0.7) for _ in range(2)]
    scale = [uniform(g, 0.5, 1.5) for _ in range(2)]
    predicted = [
        target[0] + shift[0],
        target[1] + shift[1],
        target[0] + shift[0] + sizes[0] * scale[0],
        target[1] + shift[1] + sizes[1] * scale[1],
    ]
    return [*predicted, *target]


def boxes_on_kinks(g: torch.Generator) -> Tensors:
    """Boxes sharing edges exactly (Max/Min ties) and touching (zero-width overlap)."""
    target = [torch.zeros(N, dtype=torch.float64) for _ in range(2)]
    target += [
        torch.ones(N, dtype=torch.float64),
        torch.full((N,), 2.0, dtype=torch.float64),
    ]
    offset = torch.round(normal(g) * 4) / 4
    offset[::3] = 0.0  # same left edge: ties in max(x1, tx1) and min(x1, tx1)
    offset[1::3] = 1.0  # touching: the intersection's width is exactly 0
    predicted = [target[0] + offset, target[1], target[2] + offset, target[3] + 0.5]
    return [*predicted, *target]


CASES: dict[str, Callable[[], Case]] = {
    # --- specs/detection.py ------------------------------------------------------------------
    "GeneralizedBoxIOU": lambda: Case(
        lambda *t, reduction: generated.generalized_box_iou(*t, reduction=reduction),
        elementwise(generalized_box_iou_reference),
        boxes,
        boxes_on_kinks,
        grads=(0, 1, 2, 3),  # the target box is declared non-differentiable
    ),
    # --- regression (specs/regression.py, specs/tutorial.py, specs/learnable.py) -------------
    "MSE": lambda: Case(generated.mse, F.mse_loss, regression_pair),
    "L1": lambda: Case(generated.l1, F.l1_loss, regression_pair, residual_pair(0.0)),
    "Huber": lambda: Case(
        partial_kw(generated.huber, delta=0.5),
        partial_kw(F.huber_loss, delta=0.5),
        regression_pair,
        residual_pair(0.0, 0.5, -0.5),
    ),
    "LogCosh": lambda: Case(
        generated.log_cosh,
        elementwise(lambda x, y: torch.log(torch.cosh(x - y))),
        regression_pair,
        residual_pair(0.0),
    ),
    "Charbonnier": lambda: Case(
        partial_kw(generated.charbonnier, eps=0.25),
        # Barron's alpha = 1 (pseudo-Huber) scaled by c: c (sqrt((x/c)^2 + 1) - 1), c = eps
        elementwise(lambda x, y: 0.25 * (torch.sqrt(((x - y) / 0.25) ** 2 + 1) - 1)),
        regression_pair,
    ),
    "Cauchy": lambda: Case(
        partial_kw(generated.cauchy, c=0.7),
        elementwise(lambda x, y: 0.7**2 / 2 * torch.log1p(((x - y) / 0.7) ** 2)),
        regression_pair,
    ),
    "Quantile": lambda: Case(
        partial_kw(generated.quantile, tau=0.9),
        elementwise(lambda x, y: pinball(y - x, 0.9)),
        regression_pair,
        # Exactly at u = 0 the pinball's (u < 0) indicator picks a one-sided slope, while the
        # spec's max() splits the tie like torch.maximum: kinks are checked in their own test.
        None,
    ),
    "CustomLoss": lambda: Case(
        lambda x, y, w, reduction: generated.custom_loss(x, y, w, reduction=reduction),
        elementwise(lambda x, y, w: w * F.l1_loss(x, y, reduction="none")),
        lambda g: [*regression_pair(g), uniform(g, 0.5, 2.0)],
        lambda g: [*residual_pair(0.0)(g), uniform(g, 0.5, 2.0)],
    ),
    "UncertaintyWeightedMSE": lambda: Case(
        lambda x, y, s, reduction: generated.uncertainty_weighted_mse(
            x, y, s, reduction=reduction
        ),
        # Kendall et al. (2018), eq. 8 with s = log sigma^2: exp(-s) r^2 / 2 + s / 2
        elementwise(lambda x, y, s: torch.exp(-s) * (x - y) ** 2 / 2 + s / 2),
        lambda g: [*regression_pair(g), scalar(0.3)],
    ),
    # --- specs/robust.py ---------------------------------------------------------------------
    "SmoothL1": lambda: Case(
        partial_kw(generated.smooth_l1, beta=0.5),
        partial_kw(F.smooth_l1_loss, beta=0.5),
        regression_pair,
        residual_pair(0.0, 0.5, -0.5),
    ),
    "GemanMcclure": lambda: Case(
        partial_kw(generated.geman_mcclure, c=0.8),
        # Barron's general loss at alpha = -2 is Geman-McClure.
        elementwise(lambda x, y: barron_reference(x - y, scalar(-2.0), scalar(0.8))),
        regression_pair,
    ),
    "Welsch": lambda: Case(
        partial_kw(generated.welsch, c=0.8),
        elementwise(lambda x, y: 1 - torch.exp(-0.5 * ((x - y) / 0.8) ** 2)),
        regression_pair,
    ),
    "TukeyBiweight": lambda: Case(
        partial_kw(generated.tukey_biweight, c=1.5),
        # Beaton & Tukey (1974): c^2/6 (1 - (1 - (r/c)^2)^3) for |r| <= c, c^2/6 beyond
        elementwise(
            lambda x, y: torch.where(
                (x - y).abs() <= 1.5,
                1.5**2 / 6 * (1 - (1 - ((x - y) / 1.5) ** 2) ** 3),
                torch.full_like(x, 1.5**2 / 6),
            )
        ),
        regression_pair,
        residual_pair(0.0, 1.5, -1.5),
    ),
    "Barron": lambda: Case(
        lambda x, y, a, c, reduction: generated.barron(x, y, a, c, reduction=reduction),
        elementwise(lambda x, y, a, c: barron_reference(x - y, a, c)),
        lambda g: [*regression_pair(g), scalar(0.7), scalar(1.3)],
    ),
    "Wing": lambda: Case(
        generated.wing,
        elementwise(lambda x, y: wing_reference(x - y)),
        lambda g: [normal(g, 8.0), normal(g)],
        residual_pair(0.0, 10.0, -10.0),
    ),
    "AdaptiveWing": lambda: Case(
        generated.adaptive_wing,
        elementwise(adaptive_wing_reference),
        lambda g: [uniform(g, -0.5, 1.5), uniform(g, 0.0, 1.0)],
        lambda g: [
            torch.tensor([0.25, 0.75, 0.25, 1.0, 0.5, 0.125], dtype=torch.float64),
            torch.tensor([0.25, 0.25, 0.75, 0.5, 1.0, 0.5], dtype=torch.float64),
        ],  # |y - x| = 0, theta (0.5), theta, theta, theta, 0.375
        grads=(0,),
    ),
    # --- specs/probabilistic.py --------------------------------------------------------------
    "GaussianNLL": lambda: Case(
        lambda x, y, v, reduction: generated.gaussian_nll(x, y, v, reduction=reduction),
        lambda x, y, v, reduction: F.gaussian_nll_loss(x, y, v, reduction=reduction),
        lambda g: [*regression_pair(g), uniform(g, 0.05, 3.0)],
    ),
    "AsymmetricLaplaceNLL": lambda: Case(
        lambda x, y, t, s, reduction: generated.asymmetric_laplace_nll(
            x, y, t, s, reduction=reduction
        ),
        elementwise(
            lambda x, y, t, s: -torch.log(asymmetric_laplace_density(y, x, t, s))
        ),
        lambda g: [*regression_pair(g), scalar(0.2), scalar(0.7)],
        # Exactly at u = 0 the max() splits the tie like torch.maximum while the written-out
        # indicator picks a side: test_asymmetric_laplace_kink checks that point.
        None,
    ),
    "StudentNLL": lambda: Case(
        lambda x, y, s, reduction: generated.student_nll(
            x, y, s, nu=4.0, reduction=reduction
        ),
        elementwise(lambda x, y, s: student_nll_reference(x, y, s, 4.0)),
        lambda g: [*regression_pair(g), scalar(0.6)],
    ),
    "Expectile": lambda: Case(
        partial_kw(generated.expectile, tau=0.8),
        # Newey & Powell (1987): |tau - 1(u < 0)| u^2 with u = target - input
        elementwise(
            lambda x, y: torch.abs(0.8 - ((y - x) < 0).double().to(x.dtype))
            * (y - x) ** 2
        ),
        regression_pair,
        residual_pair(0.0),
    ),
    "PoissonNLLRate": lambda: Case(
        generated.poisson_nll_rate,
        partial_kw(F.poisson_nll_loss, log_input=False, full=False, eps=1e-8),
        lambda g: [
            uniform(g, 0.1, 5.0),
            torch.poisson(uniform(g, 0.5, 4.0), generator=g),
        ],
    ),
    "KLDiv": lambda: Case(
        generated.kl_div,
        kl_div(log_target=False),
        lambda g: [torch.log(uniform(g, 0.01, 1.0)), uniform(g, 0.01, 1.0)],
        lambda g: [
            normal(g),
            torch.where(torch.arange(N) % 3 == 0, 0.0, uniform(g, 0.01, 1.0)),
        ],
        grads=(0,),  # the target's gradient is -inf at target = 0 (log): compared below
    ),
    # --- specs/likelihood.py, specs/classification.py ----------------------------------------
    "BCEWithLogits": lambda: Case(
        generated.bce_with_logits,
        F.binary_cross_entropy_with_logits,
        lambda g: [normal(g, 5.0), uniform(g, 0.0, 1.0)],
        lambda g: [torch.zeros(N, dtype=torch.float64), uniform(g, 0.0, 1.0)],
    ),
    "PoissonNLL": lambda: Case(
        generated.poisson_nll,
        partial_kw(F.poisson_nll_loss, log_input=True, full=False),
        lambda g: [normal(g), torch.poisson(uniform(g, 0.5, 4.0), generator=g)],
    ),
    "BCE": lambda: Case(
        generated.bce,
        F.binary_cross_entropy,
        lambda g: [uniform(g, 0.02, 0.98), uniform(g, 0.0, 1.0)],
        grads=(0,),  # torch.nn.BCELoss has no gradient for its target
    ),
    "WeightedBCEWithLogits": lambda: Case(
        lambda x, y, w, reduction: generated.weighted_bce_with_logits(
            x, y, w, reduction=reduction
        ),
        lambda x, y, w, reduction: F.binary_cross_entropy_with_logits(
            x, y, pos_weight=w, reduction=reduction
        ),
        lambda g: [normal(g, 5.0), uniform(g, 0.0, 1.0), uniform(g, 0.5, 3.0)],
        lambda g: [
            torch.zeros(N, dtype=torch.float64),
            uniform(g, 0.0, 1.0),
            scalar(2.0),
        ],
        grads=(0, 1),  # torch has no gradient for pos_weight
    ),
    "SoftMargin": lambda: Case(
        generated.soft_margin,
        F.soft_margin_loss,
        lambda g: [normal(g, 5.0), labels(g)],
        lambda g: [torch.zeros(N, dtype=torch.float64), labels(g)],
        grads=(0,),
    ),
    # --- specs/naive.py: written as papers write them, generated in stable forms -------------
    "NaiveBCE": lambda: Case(
        generated.naive_bce,
        F.binary_cross_entropy_with_logits,
        lambda g: [normal(g, 5.0), uniform(g, 0.0, 1.0)],
    ),
    "NaivePoissonNLL": lambda: Case(
        generated.naive_poisson_nll,
        partial_kw(F.poisson_nll_loss, log_input=True, full=False),
        lambda g: [normal(g), torch.poisson(uniform(g, 0.5, 4.0), generator=g)],
    ),
    "NaiveGaussianNLL": lambda: Case(
        lambda x, y, v, reduction: generated.naive_gaussian_nll(
            x, y, v, reduction=reduction
        ),
        lambda x, y, v, reduction: F.gaussian_nll_loss(x, y, v, reduction=reduction),
        lambda g: [*regression_pair(g), uniform(g, 0.05, 3.0)],
    ),
    "NaiveSoftMargin": lambda: Case(
        generated.naive_soft_margin,
        F.soft_margin_loss,
        lambda g: [normal(g, 5.0), labels(g)],
        grads=(0,),
    ),
    "SigmoidFocal": lambda: Case(
        partial_kw(generated.sigmoid_focal, alpha=0.3, gamma=1.5),
        _kornia_binary_focal(0.3, 1.5),
        lambda g: [normal(g, 4.0), uniform(g, 0.0, 1.0)],
        lambda g: [torch.zeros(N, dtype=torch.float64), uniform(g, 0.0, 1.0)],
    ),
    "BinaryFocal": lambda: Case(
        # On probabilities: through a sigmoid it must equal the focal loss on logits.
        lambda x, y, reduction: generated.binary_focal(
            torch.sigmoid(x), y, alpha=0.25, gamma=2.0, reduction=reduction
        ),
        elementwise(lambda x, y: torchvision_sigmoid_focal(x, y, 0.25, 2.0)),
        lambda g: [normal(g, 3.0), labels(g).clamp_min(0)],
        grads=(0,),  # torchvision's formula matches only for targets in {0, 1}
    ),
    "Hinge": lambda: Case(
        generated.hinge,
        elementwise(lambda x, y: torch.relu(1 - y * x)),
        lambda g: [normal(g, 2.0), labels(g)],
        lambda g: [
            labels(g),
            labels(g),
        ],  # y x = +-1: exactly at the hinge for half of them
        grads=(0,),
    ),
    "SquaredHinge": lambda: Case(
        generated.squared_hinge,
        elementwise(lambda x, y: torch.clamp(1 - y * x, min=0) ** 2),
        lambda g: [normal(g, 2.0), labels(g)],
        lambda g: [labels(g), labels(g)],
        grads=(0,),
    ),
    "ModifiedHuber": lambda: Case(
        generated.modified_huber,
        elementwise(modified_huber_reference),
        lambda g: [normal(g, 2.0), labels(g)],
        lambda g: [labels(g), labels(g)],  # y x = +-1: both seams
        grads=(0,),
    ),
    # --- specs/ranking.py --------------------------------------------------------------------
    "MarginRanking": lambda: Case(
        partial_kw(generated.margin_ranking, margin=0.5),
        partial_kw(F.margin_ranking_loss, margin=0.5),
        lambda g: [normal(g), normal(g), labels(g)],
        lambda g: (lambda x2, y: [x2 + 0.5 * y, x2, y])(normal(g), labels(g)),
        grads=(0, 1),
        theirs_at_kinks=elementwise(
            lambda x1, x2, y: clamp_with_gradient_at_zero(-y * (x1 - x2) + 0.5)
        ),
    ),
    "HingeEmbedding": lambda: Case(
        partial_kw(generated.hinge_embedding, embedding_margin=1.5),
        partial_kw(F.hinge_embedding_loss, margin=1.5),
        lambda g: [uniform(g, 0.0, 3.0), labels(g)],
        lambda g: [torch.full((N,), 1.5, dtype=torch.float64), labels(g)],
        grads=(0,),
        theirs_at_kinks=elementwise(  # torch's formula, with clamp_min as before 2.14
            lambda x, y: torch.where(y != 1, clamp_with_gradient_at_zero(1.5 - x), 0.0)
            + torch.where(y != -1, x, 0.0)
        ),
    ),
}


def _run(
    fn: Callable[..., torch.Tensor],
    tensors: Tensors,
    grads: Sequence[int],
    reduction: str,
):
    leaves = [
        t.detach().clone().requires_grad_(i in grads) for i, t in enumerate(tensors)
    ]
    value = fn(*leaves, reduction=reduction)
    seed = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(
        value.shape
    )
    gradients = torch.autograd.grad(value, [leaves[i] for i in grads], seed)
    return value, gradients


def _compare(case: Case, tensors: Tensors, dtype: torch.dtype, reduction: str) -> None:
    tensors = [t.to(dtype) for t in tensors]
    grads = tuple(range(len(tensors))) if case.grads is None else tuple(case.grads)
    ours, our_grads = _run(case.ours, tensors, grads, reduction)
    theirs, their_grads = _run(case.theirs, tensors, grads, reduction)
    tolerance = TOLERANCES[dtype]
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, **tolerance)
    for index, a, b in zip(grads, our_grads, their_grads):
        torch.testing.assert_close(
            a, b, **tolerance, msg=lambda m, i=index: f"grad {i}: {m}"
        )


def test_the_zoo_has_at_least_30_losses_and_each_has_a_case() -> None:
    # specs/reductions.py has its own cases, with shapes, in tests/test_reductions_zoo.py.
    names = [
        model.name
        for model in load_models(SPEC_ARGS)
        if model.spec_path != "specs/reductions.py"
    ]
    assert len(names) >= 30
    assert sorted(names) == sorted(CASES)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", sorted(CASES))
def test_against_reference(loss: str, dtype: torch.dtype, reduction: str) -> None:
    case = CASES[loss]()
    generator = torch.Generator().manual_seed(sum(map(ord, loss)))
    _compare(case, case.make(generator), dtype, reduction)
    if case.kinks is not None:
        kinks = case.kinks(generator)
        if case.theirs_at_kinks is not None:
            if clamp_passes_its_bounds():
                # the formula is the built-in here: so it is checked against it
                formula = dataclasses.replace(case, ours=case.theirs_at_kinks)
                _compare(formula, kinks, dtype, reduction)
            else:
                case = dataclasses.replace(case, theirs=case.theirs_at_kinks)
        _compare(case, kinks, dtype, reduction)


# --- loss-specific properties ----------------------------------------------------------------


def test_quantile_is_the_tau_quantile() -> None:
    # Minimising the pinball loss over a constant gives the tau-quantile of the targets.
    target = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    guesses = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    costs = [
        generated.quantile(q.expand(1001), target, tau=0.9, reduction="sum")
        for q in guesses
    ]
    assert guesses[int(torch.stack(costs).argmin())].item() == pytest.approx(0.9)


def test_quantile_and_expectile_gradients_at_zero_residual() -> None:
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    generated.quantile(
        x, torch.zeros(2, dtype=torch.float64), tau=0.9, reduction="sum"
    ).backward()
    assert (
        x.grad.tolist() == [pytest.approx(0.5 - 0.9)] * 2
    )  # torch.maximum splits the tie
    x.grad = None
    generated.expectile(
        x, torch.zeros(2, dtype=torch.float64), reduction="sum"
    ).backward()
    assert x.grad.tolist() == [0.0, 0.0]


def test_asymmetric_laplace_density_integrates_to_one() -> None:
    # The reference density itself, checked: exp(-NLL) of the generated loss integrates to 1.
    y = torch.linspace(-300.0, 300.0, 600001, dtype=torch.float64)
    mu = torch.zeros_like(y)
    for tau, scale in ((0.2, 0.7), (0.5, 1.0), (0.9, 1.5)):
        nll = generated.asymmetric_laplace_nll(mu, y, tau, scale, reduction="none")
        assert torch.trapezoid(torch.exp(-nll), y).item() == pytest.approx(
            1.0, abs=1e-6
        )


def test_asymmetric_laplace_kink() -> None:
    # At u = 0 the max() splits the gradient like torch.maximum: (tau + tau - 1) / 2 / -scale
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    generated.asymmetric_laplace_nll(
        x, torch.zeros(1), 0.2, 0.5, reduction="sum"
    ).backward()
    assert x.grad.item() == pytest.approx(-(0.2 + (0.2 - 1)) / 2 / 0.5)


def test_student_nll_density_integrates_to_one_with_the_constant() -> None:
    y = torch.linspace(-2000.0, 2000.0, 400001, dtype=torch.float64)
    nu, scale = 4.0, 0.6
    constant = (
        math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - math.log(nu * math.pi) / 2
    )
    nll = (
        generated.student_nll(torch.zeros_like(y), y, scale, nu, reduction="none")
        - constant
    )
    assert torch.trapezoid(torch.exp(-nll), y).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("alpha", [1.0, -2.0, 0.5, 1.999999, -50.0])
def test_barron_special_cases(alpha: float) -> None:
    r = torch.linspace(-4, 4, 81, dtype=torch.float64)
    c = 1.3
    got = generated.barron(r, torch.zeros_like(r), alpha, c, reduction="none")
    x = r / c
    closed_form = {
        1.0: torch.sqrt(x**2 + 1) - 1,  # pseudo-Huber / Charbonnier
        -2.0: 2 * x**2 / (x**2 + 4),  # Geman-McClure
        1.999999: x**2 / 2,  # L2 in the limit alpha -> 2
        -50.0: 1 - torch.exp(-(x**2) / 2),  # Welsch in the limit alpha -> -inf
    }.get(alpha)
    if closed_form is None:
        closed_form = barron_reference(r, scalar(alpha), scalar(c))
    # Near the limits the general formula differs from its limit by O(2 - alpha), O(1/|alpha|).
    atol, rtol = {1.999999: (1e-10, 2e-5), -50.0: (0.05, 0)}.get(alpha, (1e-12, 0))
    torch.testing.assert_close(got, closed_form, atol=atol, rtol=rtol)


def test_barron_module_learns_alpha_and_scale() -> None:
    module = generated.Barron(barron_alpha=0.5, barron_scale=2.0)
    assert {name for name, _ in module.named_parameters()} == {
        "barron_alpha",
        "barron_scale",
    }
    g = torch.Generator().manual_seed(0)
    x, y = normal(g).float(), normal(g).float()
    module(x, y).backward()
    a = torch.tensor(0.5, requires_grad=True)
    c = torch.tensor(2.0, requires_grad=True)
    barron_reference(x - y, a, c).mean().backward()
    torch.testing.assert_close(module.barron_alpha.grad, a.grad)
    torch.testing.assert_close(module.barron_scale.grad, c.grad)


def test_kl_div_target_gradient_matches_torch_where_target_is_positive() -> None:
    g = torch.Generator().manual_seed(3)
    input = torch.log(uniform(g, 0.01, 1.0)).requires_grad_()
    target = uniform(g, 0.01, 1.0).requires_grad_()
    (ours,) = torch.autograd.grad(generated.kl_div(input, target), target)
    (theirs,) = torch.autograd.grad(F.kl_div(input, target, reduction="sum"), target)
    torch.testing.assert_close(ours, theirs)


def test_soft_margin_stays_finite_where_torch_overflows() -> None:
    # F.soft_margin_loss overflows to inf in float32 once y x < -88; the truth is softplus(-y x).
    x = torch.tensor([-100.0, -90.0, 100.0], requires_grad=True)
    y = torch.ones(3)
    loss = generated.soft_margin(x, y, reduction="none")
    torch.testing.assert_close(loss, F.softplus(-x * y))
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(grad, -torch.sigmoid(-x))


def test_sigmoid_focal_matches_torchvision_for_binary_targets() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.cat(
        [normal(g, 4.0), torch.tensor([0.0, 0.0, 30.0, -30.0], dtype=torch.float64)]
    )
    y = torch.cat(
        [
            labels(g).clamp_min(0),
            torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        ]
    )
    for reduction in REDUCTIONS:
        # Only the logits' gradient: the two formulas differ off {0, 1}, so in the target too.
        case = Case(
            generated.sigmoid_focal,
            elementwise(torchvision_sigmoid_focal),
            lambda g: [x, y],
            grads=(0,),
        )
        _compare(case, [x, y], torch.float64, reduction)
        _compare(case, [x, y], torch.float32, reduction)


def test_sigmoid_focal_is_finite_at_extreme_logits() -> None:
    x = torch.tensor([-200.0, 200.0, -200.0, 200.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = generated.sigmoid_focal(x, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # Confidently wrong: focal weight ~1, loss ~ alpha * |x| (or (1 - alpha) * |x|)
    assert loss.item() == pytest.approx(0.25 * 200 + 0.75 * 200, rel=1e-6)
