"""The losses of specs/reductions.py against an independent reference: PyTorch's own loss where
one exists, else the published formula written out here with torch ops (never through lossgen).

Values and gradients (torch.autograd.grad with a non-uniform grad_output) for every reduction,
on (N, C) and (N, C, H, W) where the torch op takes both, in float64 with a tight tolerance;
logits of magnitude 1000 in float32 for the cross-entropy family; double backward against
torch's; ties of Max/Min; the three interfaces (Module, Function, functional).
gradcheck and gradgradcheck of every loss run in `lossgen check specs/*.py` (tests/test_check.py,
tests/test_generated_losses.py).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling
from torch.func import grad, jacrev, vmap

import generated
from lossgen.api import load_models

SPEC = "specs/reductions.py"
Tensors = list[torch.Tensor]
REDUCTIONS = ("none", "mean", "sum")
TIGHT = dict(rtol=1e-9, atol=1e-12)  # float64: the same math, summed in another order
NC = (6, 5)
NCHW = (2, 4, 3, 5)
NHWC = (2, 3, 5, 4)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def per_row(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A written-out reference giving one value per row / position, reduced like a torch loss."""
    return lambda *tensors, reduction: _reduce(fn(*tensors), reduction)


# --- random arguments ------------------------------------------------------------------------


def logits(
    g: torch.Generator, shape: Sequence[int], scale: float = 2.0
) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64) * scale


def probabilities(
    g: torch.Generator, shape: Sequence[int], dim: int = 1
) -> torch.Tensor:
    return torch.softmax(logits(g, shape), dim)


def classes(g: torch.Generator, shape: Sequence[int], dim: int = 1) -> torch.Tensor:
    """int64 class indices into `dim` of `shape`, shaped like it without that dim."""
    shape = list(shape)
    count = shape.pop(dim)
    return torch.randint(0, count, tuple(shape), generator=g)


def class_weights(g: torch.Generator, count: int) -> torch.Tensor:
    return 0.5 + 1.5 * torch.rand(count, generator=g, dtype=torch.float64)


def mask(g: torch.Generator, shape: Sequence[int], soft: bool = False) -> torch.Tensor:
    if soft:
        return torch.rand(tuple(shape), generator=g, dtype=torch.float64)
    return (torch.rand(tuple(shape), generator=g) < 0.4).double()


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


# --- written-out references ------------------------------------------------------------------


def jensen_shannon_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The textbook form: (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, p = softmax(a).
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    m = (p + q) / 2
    kl_pm = (p * (torch.log(p) - torch.log(m))).sum(1)
    kl_qm = (q * (torch.log(q) - torch.log(m))).sum(1)
    return (kl_pm + kl_qm) / 2


def jensen_shannon_log_space(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # The same in log space, finite in float64 even where softmax underflows to 0.
    lp, lq = torch.log_softmax(a, 1), torch.log_softmax(b, 1)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    return ((lp.exp() * (lp - lm)) + (lq.exp() * (lq - lm))).sum(1) / 2


def one_hot(t: torch.Tensor, count: int, dim: int = 1) -> torch.Tensor:
    return F.one_hot(t, count).movedim(-1, dim).double()


def crammer_singer_reference(x: torch.Tensor, t: torch.Tensor, margin: float):
    # Crammer & Singer (2001): max(0, margin + max_{i != y} x_i - x_y)
    x_y = x.gather(1, t.unsqueeze(1)).squeeze(1)
    others = x.masked_fill(one_hot(t, x.shape[1]).bool(), -math.inf).amax(1)
    return torch.clamp_min(margin + others - x_y, 0)


def chamfer_reference(d: torch.Tensor) -> torch.Tensor:
    return d.amin(2).mean(1) + d.amin(1).mean(1)


def overlap_counts(x: torch.Tensor, y: torch.Tensor):
    """Soft true positives, false positives and false negatives per (N, C)."""
    s = torch.sigmoid(x)
    tp = (s * y).sum((2, 3))
    fp = (s * (1 - y)).sum((2, 3))
    fn = ((1 - s) * y).sum((2, 3))
    return s, tp, fp, fn


def dice_reference(x, y, smooth=1.0):
    # Milletari et al. (2016), with additive smoothing: 1 - (2 |S Y| + s) / (|S| + |Y| + s)
    s, tp, _, _ = overlap_counts(x, y)
    return 1 - (2 * tp + smooth) / (s.sum((2, 3)) + y.sum((2, 3)) + smooth)


def tversky_reference(x, y, alpha=0.3, beta=0.7, smooth=1.0):
    # Salehi et al. (2017): TI = TP / (TP + alpha FP + beta FN), smoothed
    _, tp, fp, fn = overlap_counts(x, y)
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def focal_tversky_reference(x, y, alpha=0.3, beta=0.7, gamma=0.75, smooth=1.0):
    # Abraham & Khan (2019): (1 - TI)^gamma
    return tversky_reference(x, y, alpha, beta, smooth) ** gamma


def kl_batchmean(x: torch.Tensor, p: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean" and x.dim() == 2:
        return F.kl_div(x, p, reduction="batchmean")
    return _reduce(F.kl_div(x, p, reduction="none").sum(1), reduction)


def cross_entropy_reference(x, t, w, smoothing, ignore_index, reduction):
    """F.cross_entropy's documented formula with torch ops, differentiable in the weights too."""
    count = x.shape[1]
    valid = t != ignore_index
    safe_t = torch.where(valid, t, 0)
    logp = torch.log_softmax(x, 1)
    w_view = w.reshape((1, count) + (1,) * (x.dim() - 2))
    picked = (w_view * logp).gather(1, safe_t.unsqueeze(1)).squeeze(1)
    smoothed = (w_view * logp).mean(1)
    loss = -(1 - smoothing) * picked - smoothing * smoothed
    loss = torch.where(valid, loss, 0.0)
    if reduction == "mean":
        return loss.sum() / torch.where(valid, w[safe_t], 0.0).sum()
    return _reduce(loss, reduction)


def generated_loss(name: str) -> Callable[..., torch.Tensor]:
    """generated.<name>, looked up at call time (a loss that failed to build fails its tests)."""
    return lambda *args, **kwargs: getattr(generated, name)(*args, **kwargs)


# --- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    loss: str
    name: str
    ours: Callable[..., torch.Tensor]  # (*tensors, reduction=...) -> loss
    theirs: Callable[..., torch.Tensor]
    make: Callable[[torch.Generator], Tensors]  # float64 (or int64 index) tensors
    grads: tuple[int, ...]  # which tensors to differentiate

    @property
    def id(self) -> str:
        return f"{self.loss}-{self.name}"


def _cross_entropy_variants() -> list[Variant]:
    variants = []
    settings = [
        # name, shape, weighted, label smoothing, ignore_index (None: default), ignored share
        ("NC", NC, False, 0.0, None, 0.0),
        ("NCHW", NCHW, False, 0.0, None, 0.0),
        ("NC-weight", NC, True, 0.0, None, 0.0),
        ("NCHW-weight", NCHW, True, 0.0, None, 0.0),
        ("NC-smoothing", NC, False, 0.1, None, 0.0),
        ("NCHW-weight-smoothing", NCHW, True, 0.2, None, 0.0),
        ("NCHW-weight-ignore-default", NCHW, True, 0.0, None, 0.3),
        ("NC-weight-smoothing-ignore-class-1", NC, True, 0.1, 1, 0.0),
        ("NCHW-smoothing-ignore-default", NCHW, False, 0.1, None, 0.3),
    ]
    for name, shape, weighted, smoothing, ignore, ignored in settings:
        ignore_index = -100 if ignore is None else ignore

        def make(g, shape=shape, weighted=weighted, ignored=ignored, ignore=ignore):
            x, t = logits(g, shape), classes(g, shape)
            if ignored:
                t[torch.rand(t.shape, generator=g) < ignored] = -100
            if ignore is not None:
                t.view(-1)[::3] = ignore  # a real class, ignored: some targets take it
            return [x, t, class_weights(g, shape[1])] if weighted else [x, t]

        params = {}
        if smoothing:
            params["label_smoothing"] = smoothing
        if ignore is not None:
            params["ignore_index"] = float(ignore)

        def ours(x, t, w=None, *, reduction, params=params):
            if w is None:
                return generated.cross_entropy(x, t, **params, reduction=reduction)
            return generated.cross_entropy(x, t, w, **params, reduction=reduction)

        def theirs(x, t, w=None, *, reduction, s=smoothing, i=ignore_index):
            return F.cross_entropy(
                x, t, w, ignore_index=i, label_smoothing=s, reduction=reduction
            )

        variants.append(Variant("CrossEntropy", name, ours, theirs, make, (0,)))
    return variants


def _nll_variants() -> list[Variant]:
    variants = []
    for name, shape, weighted, ignore, ignored in [
        ("NC", NC, False, None, 0.0),
        ("NCHW", NCHW, False, None, 0.0),
        ("NC-weight-ignore-class-2", NC, True, 2, 0.0),
        ("NCHW-weight-ignore-default", NCHW, True, None, 0.3),
    ]:
        ignore_index = -100 if ignore is None else ignore

        def make(g, shape=shape, weighted=weighted, ignored=ignored, ignore=ignore):
            x, t = torch.log_softmax(logits(g, shape), 1), classes(g, shape)
            if ignored:
                t[torch.rand(t.shape, generator=g) < ignored] = -100
            if ignore is not None:
                t.view(-1)[::3] = ignore  # a real class, ignored: some targets take it
            return [x, t, class_weights(g, shape[1])] if weighted else [x, t]

        params = {} if ignore is None else {"ignore_index": float(ignore)}

        def ours(x, t, w=1.0, *, reduction, params=params):
            return generated.nll(x, t, w, **params, reduction=reduction)

        def theirs(x, t, w=None, *, reduction, i=ignore_index):
            return F.nll_loss(x, t, w, ignore_index=i, reduction=reduction)

        variants.append(Variant("NLL", name, ours, theirs, make, (0,)))
    return variants


def _info_nce_variants() -> list[Variant]:
    def in_batch(g):
        return [logits(g, (6, 6), 0.5), torch.arange(6), scalar(0.1)]

    def queue(g):  # 4 queries against 7 keys (a MoCo-style queue), positives anywhere
        return [logits(g, (4, 7), 0.5), classes(g, (4, 7)), scalar(0.3)]

    def ours(s, t, tau, *, reduction):
        return generated.info_nce(s, t, tau, reduction=reduction)

    def theirs(s, t, tau, *, reduction):
        return F.cross_entropy(s / tau, t, reduction=reduction)

    return [
        Variant("InfoNCE", "in-batch", ours, theirs, in_batch, (0, 2)),
        Variant("InfoNCE", "queue", ours, theirs, queue, (0, 2)),
        Variant(
            "InfoNCE",
            "default-temperature",
            lambda s, t, *, reduction: generated.info_nce(s, t, reduction=reduction),
            lambda s, t, *, reduction: F.cross_entropy(
                s / 0.07, t, reduction=reduction
            ),
            lambda g: in_batch(g)[:2],
            (0,),
        ),
    ]


def _shaped(
    loss: str,
    ours: Callable[..., torch.Tensor],
    theirs: Callable[..., torch.Tensor],
    make: Callable[[torch.Generator, tuple[int, ...]], Tensors],
    grads: tuple[int, ...],
    shapes: Sequence[tuple[str, tuple[int, ...]]] = (("NC", NC), ("NCHW", NCHW)),
) -> list[Variant]:
    return [
        Variant(loss, name, ours, theirs, lambda g, s=shape: make(g, s), grads)
        for name, shape in shapes
    ]


def _variants() -> list[Variant]:
    variants: list[Variant] = []
    variants += _shaped(
        "SoftCrossEntropy",
        generated_loss("soft_cross_entropy"),
        F.cross_entropy,
        lambda g, s: [logits(g, s), probabilities(g, s)],
        (0, 1),
    )
    variants += _cross_entropy_variants()
    variants += _nll_variants()
    variants += _shaped(
        "ChannelsLastCrossEntropy",
        generated_loss("channels_last_cross_entropy"),
        lambda x, t, reduction: F.cross_entropy(
            x.movedim(-1, 1), t, reduction=reduction
        ),
        lambda g, s: [logits(g, s), classes(g, s, dim=-1)],
        (0,),
        shapes=(("NC", NC), ("NHWC", NHWC)),
    )
    variants += _info_nce_variants()
    variants += _shaped(
        "CategoricalKLDiv",
        generated_loss("categorical_kl_div"),
        kl_batchmean,
        lambda g, s: [torch.log_softmax(logits(g, s), 1), probabilities(g, s)],
        (0, 1),
    )
    variants += _shaped(
        "JensenShannon",
        generated_loss("jensen_shannon"),
        per_row(jensen_shannon_reference),
        lambda g, s: [logits(g, s), logits(g, s)],
        (0, 1),
    )
    # torch's multilabel_soft_margin_loss takes the classes along the last dim: (N, C) only.
    only_nc = (("NC", NC),)
    variants += _shaped(
        "MultiLabelSoftMargin",
        generated_loss("multi_label_soft_margin"),
        F.multilabel_soft_margin_loss,
        lambda g, s: [logits(g, s), mask(g, s)],
        (0, 1),
        shapes=only_nc,
    )
    variants += _shaped(
        "MultiLabelSoftMargin",
        lambda x, y, w, reduction: generated.multi_label_soft_margin(
            x, y, w, reduction=reduction
        ),
        lambda x, y, w, reduction: F.multilabel_soft_margin_loss(
            x, y, weight=w, reduction=reduction
        ),
        lambda g, s: [logits(g, s), mask(g, s, soft=True), class_weights(g, s[1])],
        (0, 1, 2),
        shapes=(("NC-weight-soft-labels", NC),),
    )

    def pairs(g, s):
        labels = torch.where(torch.rand(s[0], 1, generator=g) < 0.5, 1.0, -1.0)
        return [logits(g, s), logits(g, s), labels.double()]

    for margin in (0.0, 0.3):
        variants += _shaped(
            "CosineEmbedding",
            lambda x1, x2, y, reduction, m=margin: generated.cosine_embedding(
                x1, x2, y, m, reduction=reduction
            ),
            lambda x1, x2, y, reduction, m=margin: F.cosine_embedding_loss(
                x1, x2, y.squeeze(1), margin=m, reduction=reduction
            ),
            pairs,
            (0, 1),
            shapes=((f"ND-margin-{margin}", (8, 5)),),
        )
    for margin in (1.0, 0.5, 0.0):  # margin 0: the multiclass perceptron
        variants += _shaped(
            "MulticlassHinge",
            lambda x, t, reduction, m=margin: generated.multiclass_hinge(
                x, t, m, reduction=reduction
            ),
            per_row(lambda x, t, m=margin: crammer_singer_reference(x, t, m)),
            lambda g, s: [logits(g, s, 1.0), classes(g, s)],
            (0,),
            shapes=((f"NC-margin-{margin}", NC), (f"NCHW-margin-{margin}", NCHW)),
        )
    # torch's multi_margin_loss takes (N, C) only; it has no gradient for its weight.
    variants += _shaped(
        "MultiMargin",
        generated_loss("multi_margin"),
        lambda x, t, reduction: F.multi_margin_loss(x, t, reduction=reduction),
        lambda g, s: [logits(g, s, 1.0), classes(g, s)],
        (0,),
        shapes=only_nc,
    )
    variants += _shaped(
        "MultiMargin",
        lambda x, t, w, reduction: generated.multi_margin(
            x, t, w, 0.7, reduction=reduction
        ),
        lambda x, t, w, reduction: F.multi_margin_loss(
            x, t, margin=0.7, weight=w, reduction=reduction
        ),
        lambda g, s: [logits(g, s, 1.0), classes(g, s), class_weights(g, s[1])],
        (0,),
        shapes=(("NC-weight-margin-0.7", NC),),
    )
    variants += _shaped(
        "Chamfer",
        generated_loss("chamfer"),
        per_row(chamfer_reference),
        lambda g, s: [torch.rand(s, generator=g, dtype=torch.float64) * 3],
        (0,),
        shapes=(("BNM", (3, 5, 4)),),
    )
    variants += _shaped(
        "DirectedChamfer",
        generated_loss("directed_chamfer"),
        lambda d, reduction: _reduce(d.amin(2), reduction),
        lambda g, s: [torch.rand(s, generator=g, dtype=torch.float64) * 3],
        (0,),
        shapes=(("BNM", (3, 5, 4)),),
    )
    segmentation = (("NCHW", NCHW),)
    variants += _shaped(
        "Dice",
        generated_loss("dice"),
        per_row(dice_reference),
        lambda g, s: [logits(g, s), mask(g, s)],
        (0, 1),
        shapes=segmentation,
    )
    variants += _shaped(
        "Dice",
        lambda x, y, reduction: generated.dice(x, y, smooth=0.5, reduction=reduction),
        per_row(lambda x, y: dice_reference(x, y, smooth=0.5)),
        lambda g, s: [logits(g, s), mask(g, s, soft=True)],
        (0, 1),
        shapes=(("NCHW-soft-smooth-0.5", NCHW),),
    )
    variants += _shaped(
        "Tversky",
        generated_loss("tversky"),
        per_row(tversky_reference),
        lambda g, s: [logits(g, s), mask(g, s)],
        (0, 1),
        shapes=segmentation,
    )
    variants += _shaped(
        "Tversky",
        # alpha, beta and smooth as tensors that require grad: their gradients too
        lambda x, y, a, b, s, reduction: generated.tversky(
            x, y, s, a, b, reduction=reduction
        ),
        per_row(lambda x, y, a, b, s: tversky_reference(x, y, a, b, s)),
        lambda g, s: [logits(g, s), mask(g, s), scalar(0.6), scalar(0.4), scalar(0.5)],
        (0, 1, 2, 3, 4),
        shapes=(("NCHW-param-tensors", NCHW),),
    )
    variants += _shaped(
        "FocalTversky",
        generated_loss("focal_tversky"),
        per_row(focal_tversky_reference),
        lambda g, s: [logits(g, s), mask(g, s)],
        (0, 1),
        shapes=segmentation,
    )
    variants += _shaped(
        "FocalTversky",
        lambda x, y, reduction: generated.focal_tversky(
            x, y, smooth=0.25, alpha=0.5, beta=0.5, gamma=2.0, reduction=reduction
        ),
        per_row(lambda x, y: focal_tversky_reference(x, y, 0.5, 0.5, 2.0, 0.25)),
        lambda g, s: [logits(g, s), mask(g, s, soft=True)],
        (0, 1),
        shapes=(("NCHW-gamma-2", NCHW),),
    )
    return variants


VARIANTS = {variant.id: variant for variant in _variants()}


def _seeded(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))


def _run(
    fn: Callable[..., torch.Tensor],
    tensors: Tensors,
    grads: Sequence[int],
    reduction: str,
    create_graph: bool = False,
):
    leaves = [
        t.detach().clone().requires_grad_(i in grads) for i, t in enumerate(tensors)
    ]
    value = fn(*leaves, reduction=reduction)
    seed = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(
        value.shape
    )
    gradients = torch.autograd.grad(
        value, [leaves[i] for i in grads], seed, create_graph=create_graph
    )
    return value, gradients, leaves


def _compare(
    ours_fn, theirs_fn, tensors: Tensors, grads: Sequence[int], reduction: str, **tol
) -> None:
    ours, our_grads, _ = _run(ours_fn, tensors, grads, reduction)
    theirs, their_grads, _ = _run(theirs_fn, tensors, grads, reduction)
    torch.testing.assert_close(ours, theirs, **tol)
    for index, a, b in zip(grads, our_grads, their_grads):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=index: f"grad {i}: {m}")


def test_every_reduction_loss_has_a_case() -> None:
    names = {model.name for model in load_models([SPEC])}
    assert names == {variant.loss for variant in VARIANTS.values()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_against_torch(variant: str, reduction: str) -> None:
    case = VARIANTS[variant]
    tensors = case.make(_seeded(variant))
    _compare(case.ours, case.theirs, tensors, case.grads, reduction, **TIGHT)


def test_ignored_targets_are_actually_sampled() -> None:
    # The ignore_index variants would pass vacuously if no target were ignored.
    for name in (
        "CrossEntropy-NCHW-weight-ignore-default",
        "NLL-NCHW-weight-ignore-default",
    ):
        targets = VARIANTS[name].make(_seeded(name))[1]
        assert 0 < int((targets == -100).sum()) < targets.numel()
    for name, ignored in (
        ("CrossEntropy-NC-weight-smoothing-ignore-class-1", 1),
        ("NLL-NC-weight-ignore-class-2", 2),
    ):
        targets = VARIANTS[name].make(_seeded(name))[1]
        assert 0 < int((targets == ignored).sum()) < targets.numel()


# --- the cross-entropy family at logits of magnitude 1000, in float32 ------------------------

EXTREME = {
    # loss: (ours, reference, make float32 tensors, which to differentiate)
    "SoftCrossEntropy": (
        generated_loss("soft_cross_entropy"),
        F.cross_entropy,
        lambda g: [logits(g, NC, 1000.0), probabilities(g, NC)],
        (0, 1),
    ),
    "CrossEntropy": (
        lambda x, t, w, reduction: generated.cross_entropy(
            x, t, w, 0.1, reduction=reduction
        ),
        lambda x, t, w, reduction: F.cross_entropy(
            x, t, w, label_smoothing=0.1, reduction=reduction
        ),
        lambda g: [logits(g, NCHW, 1000.0), classes(g, NCHW), class_weights(g, 4)],
        (0,),
    ),
    "ChannelsLastCrossEntropy": (
        generated_loss("channels_last_cross_entropy"),
        lambda x, t, reduction: F.cross_entropy(
            x.movedim(-1, 1), t, reduction=reduction
        ),
        lambda g: [logits(g, NHWC, 1000.0), classes(g, NHWC, dim=-1)],
        (0,),
    ),
    "InfoNCE": (
        lambda s, t, reduction: generated.info_nce(s, t, 1.0, reduction=reduction),
        F.cross_entropy,
        lambda g: [logits(g, (6, 6), 1000.0), torch.arange(6)],
        (0,),
    ),
    "JensenShannon": (
        generated_loss("jensen_shannon"),
        per_row(jensen_shannon_log_space),
        lambda g: [logits(g, NC, 1000.0), logits(g, NC, 1000.0)],
        (0, 1),
    ),
    "MulticlassHinge": (
        generated_loss("multiclass_hinge"),
        per_row(lambda x, t: crammer_singer_reference(x, t, 1.0)),
        lambda g: [logits(g, NC, 1000.0), classes(g, NC)],
        (0,),
    ),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", sorted(EXTREME))
def test_logits_of_magnitude_1000_in_float32(loss: str, reduction: str) -> None:
    ours_fn, theirs_fn, make, grads = EXTREME[loss]
    tensors = make(_seeded(loss))
    single = [t.float() if t.is_floating_point() else t for t in tensors]
    ours, our_grads, _ = _run(ours_fn, single, grads, reduction)
    # The reference runs in float64 on the same (float32-representable) values.
    theirs, their_grads, _ = _run(
        theirs_fn,
        [t.double() if t.is_floating_point() else t for t in single],
        grads,
        reduction,
    )
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    # Losses reach ~1e3 here: float32 keeps ~7 digits of them.
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-4)
    for index, a, b in zip(grads, our_grads, their_grads):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), f"grad {index}"
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


# --- double backward, gradients of class weights, ties --------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        "CrossEntropy-NCHW-weight-smoothing",
        "SoftCrossEntropy-NC",
        "CategoricalKLDiv-NC",
        "MultiLabelSoftMargin-NC-weight-soft-labels",
        "InfoNCE-in-batch",
        "CosineEmbedding-ND-margin-0.3",
    ],
)
def test_double_backward_matches_torch(variant: str) -> None:
    case = VARIANTS[variant]
    tensors = case.make(_seeded(variant))
    direction = None
    results = []
    for fn in (case.ours, case.theirs):
        value, grads, leaves = _run(fn, tensors, case.grads, "sum", create_graph=True)
        if direction is None:
            g = torch.Generator().manual_seed(1)
            direction = [
                torch.randn(d.shape, generator=g, dtype=d.dtype) for d in grads
            ]
        hvp = torch.autograd.grad(
            grads, [leaves[i] for i in case.grads], direction, allow_unused=True
        )
        results.append(
            [
                torch.zeros_like(leaves[i]) if h is None else h
                for i, h in zip(case.grads, hvp)
            ]
        )
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_weight_gradient(reduction: str) -> None:
    # torch has no gradient for F.cross_entropy's weight; the written-out formula has one.
    g = _seeded("weight gradient")
    x, t, w = logits(g, NCHW), classes(g, NCHW), class_weights(g, 4)
    t[0, 0] = -100

    def reference(x, t, w, reduction):
        return cross_entropy_reference(x, t, w, 0.2, -100, reduction)

    # The written-out reference is F.cross_entropy itself first.
    torch.testing.assert_close(
        reference(x, t, w, reduction),
        F.cross_entropy(x, t, w, label_smoothing=0.2, reduction=reduction),
        **TIGHT,
    )
    _compare(
        lambda x, t, w, reduction: generated.cross_entropy(
            x, t, w, 0.2, reduction=reduction
        ),
        reference,
        [x, t, w],
        (0, 2),
        reduction,
        **TIGHT,
    )


def test_multiclass_hinge_ties_split_the_gradient_like_amax() -> None:
    # margin 1: rows where x_y = x_i + margin exactly, so the max over classes of
    # x_i + margin [i != y] is tied between the target and another class (or all three).
    x = torch.tensor(
        [[2.0, 1.0, -3.0], [0.5, 0.5, 0.5], [0.0, 3.0, 2.0]], dtype=torch.float64
    )
    t = torch.tensor([0, 1, 2])
    # margin 0 (the perceptron): ties between the target and class 1, among all three, and
    # between two classes other than the target.
    x0 = torch.tensor(
        [[2.0, 2.0, -3.0], [0.5, 0.5, 0.5], [0.0, 3.0, 3.0]], dtype=torch.float64
    )
    t0 = torch.tensor([0, 1, 0])

    def reference(margin):
        def written_out(x, t, reduction):
            augmented = x + margin * (1 - one_hot(t, 3))
            picked = x.gather(1, t.unsqueeze(1)).squeeze(1)
            return _reduce(augmented.amax(1) - picked, reduction)

        return written_out

    def ours(margin):
        return lambda x, t, reduction: generated.multiclass_hinge(
            x, t, margin, reduction=reduction
        )

    for reduction in REDUCTIONS:
        _compare(ours(1.0), reference(1.0), [x, t], (0,), reduction, **TIGHT)
        _compare(ours(0.0), reference(0.0), [x0, t0], (0,), reduction, **TIGHT)
    (grad,) = torch.autograd.grad(
        generated.multiclass_hinge(x.requires_grad_(), t, reduction="sum"), x
    )
    assert grad[0].tolist() == [-0.5, 0.5, 0.0]  # tied between the target and class 1
    (grad,) = torch.autograd.grad(
        generated.multiclass_hinge(x0.requires_grad_(), t0, 0.0, reduction="sum"), x0
    )
    assert grad[0].tolist() == [-0.5, 0.5, 0.0]
    assert grad[2].tolist() == [-1.0, 0.5, 0.5]


def test_directed_chamfer_ties_split_the_gradient_like_amin() -> None:
    d = torch.tensor(
        [[[1.0, 1.0, 2.0], [0.0, 3.0, 0.0]], [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]],
        dtype=torch.float64,
    )
    for reduction in REDUCTIONS:
        _compare(
            generated.directed_chamfer,
            lambda d, reduction: _reduce(d.amin(2), reduction),
            [d],
            (0,),
            reduction,
            **TIGHT,
        )
    (grad,) = torch.autograd.grad(
        generated.directed_chamfer(d.requires_grad_(), reduction="sum"), d
    )
    assert grad[0].tolist() == [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]
    assert grad[1].tolist() == [[1 / 3] * 3] * 2


def test_chamfer_ties_split_the_gradient_like_amin() -> None:
    d = torch.tensor(
        [[[1.0, 1.0, 2.0], [0.0, 3.0, 0.0]], [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]],
        dtype=torch.float64,
    )
    for reduction in REDUCTIONS:
        _compare(
            generated.chamfer, per_row(chamfer_reference), [d], (0,), reduction, **TIGHT
        )


# --- the fused fast path (>= 65536 same-shaped elements), against torch ----------------------

BIG_NC = (256, 256)
BIG_NCHW = (4, 16, 32, 32)
FAST = {
    # loss: (reference, make float64 tensors of >= 65536 elements, which to differentiate)
    "SoftCrossEntropy": (
        F.cross_entropy,
        lambda g: [logits(g, BIG_NCHW), probabilities(g, BIG_NCHW)],
        (0, 1),
    ),
    "CategoricalKLDiv": (
        kl_batchmean,
        lambda g: [torch.log_softmax(logits(g, BIG_NC), 1), probabilities(g, BIG_NC)],
        (0, 1),
    ),
    "JensenShannon": (
        per_row(jensen_shannon_reference),
        lambda g: [logits(g, BIG_NC), logits(g, BIG_NC)],
        (0, 1),
    ),
    "MultiLabelSoftMargin": (
        F.multilabel_soft_margin_loss,
        lambda g: [logits(g, BIG_NC), mask(g, BIG_NC)],
        (0, 1),
    ),
    "Dice": (
        per_row(dice_reference),
        lambda g: [logits(g, BIG_NCHW), mask(g, BIG_NCHW)],
        (0, 1),
    ),
    "FocalTversky": (
        per_row(focal_tversky_reference),
        lambda g: [logits(g, BIG_NCHW), mask(g, BIG_NCHW)],
        (0, 1),
    ),
    "Chamfer": (
        per_row(chamfer_reference),
        lambda g: [torch.rand((4, 128, 128), generator=g, dtype=torch.float64)],
        (0,),
    ),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", sorted(FAST))
def test_fused_path_against_torch(loss: str, reduction: str, monkeypatch) -> None:
    # The fused Function, run eagerly (COMPILE = False: torch.compile's first call would take
    # longer than this whole file); tests/test_fast_path.py checks the compiled one.
    theirs, make, grads = FAST[loss]
    model = MODELS[loss]
    module = importlib.import_module(f"generated.{model.snake_name}")
    monkeypatch.setattr(module, "COMPILE", False)
    functional = getattr(module, model.snake_name)
    tensors = make(_seeded(loss))
    value, _, _ = _run(functional, tensors, grads, reduction)
    assert "Fused" in type(value.grad_fn).__name__  # the fast path was taken
    _compare(functional, theirs, tensors, grads, reduction, **TIGHT)


def _ignoring(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[::5] = -100  # ignored rows: not counted in the weighted mean
    return t


# loss: (torch's loss with weight=, make float64 (logits, labels, class weights) of >= 65536
# elements); torch has no gradient for a class weight, so that one is checked against the
# generated reference Function
WEIGHTED = {
    "CrossEntropy": (
        lambda x, t, w, reduction: F.cross_entropy(
            x, t, w, label_smoothing=0.1, reduction=reduction
        ),
        lambda x, t, w, reduction: generated.cross_entropy(
            x, t, w, 0.1, reduction=reduction
        ),
        lambda g: [logits(g, BIG_NC), _ignoring(classes(g, BIG_NC))],
    ),
    "NLL": (
        lambda x, t, w, reduction: F.nll_loss(x, t, w, reduction=reduction),
        lambda x, t, w, reduction: generated.nll(x, t, w, reduction=reduction),
        lambda g: [
            torch.log_softmax(logits(g, BIG_NC), 1),
            _ignoring(classes(g, BIG_NC)),
        ],
    ),
    "MultiLabelSoftMargin": (
        lambda x, y, w, reduction: F.multilabel_soft_margin_loss(
            x, y, weight=w, reduction=reduction
        ),
        lambda x, y, w, reduction: generated.multi_label_soft_margin(
            x, y, w, reduction=reduction
        ),
        lambda g: [logits(g, BIG_NC), mask(g, BIG_NC, soft=True)],
    ),
    "MultiMargin": (
        lambda x, t, w, reduction: F.multi_margin_loss(
            x, t, margin=0.7, weight=w, reduction=reduction
        ),
        lambda x, t, w, reduction: generated.multi_margin(
            x, t, w, 0.7, reduction=reduction
        ),
        lambda g: [logits(g, BIG_NC, 1.0), classes(g, BIG_NC)],
    ),
}


def _weighted_case(loss: str, monkeypatch):
    theirs, ours, make = WEIGHTED[loss]
    module = importlib.import_module(f"generated.{MODELS[loss].snake_name}")
    monkeypatch.setattr(module, "COMPILE", False)  # see test_fused_path_against_torch
    g = _seeded(f"{loss} weighted")
    return module, theirs, ours, [*make(g), class_weights(g, BIG_NC[1])]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", sorted(WEIGHTED))
def test_class_weights_take_the_fused_path(loss: str, reduction: str, monkeypatch):
    # A 1-D weight along the class dim (F.cross_entropy's weight=) is one value per class:
    # the fused path lays it along dim 1 as the reference does.
    module, theirs, ours, tensors = _weighted_case(loss, monkeypatch)
    value, _, _ = _run(ours, tensors, (0,), reduction)
    assert "Fused" in type(value.grad_fn).__name__
    _compare(ours, theirs, tensors, (0,), reduction, **TIGHT)
    # the weight's own gradient, against the reference Function's
    fused = _run(ours, tensors, (0, 2), reduction)
    monkeypatch.setattr(module, "FUSED", False)
    reference = _run(ours, tensors, (0, 2), reduction)
    assert "Fused" not in type(reference[0].grad_fn).__name__
    assert fused[1][1].shape == tensors[2].shape
    for a, b in zip(fused[:2], reference[:2]):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["CrossEntropy", "NLL"])
def test_class_weights_of_images_take_the_fused_path(loss, reduction, monkeypatch):
    # (N, C, H, W): the weight's gradient goes back to its own shape (C,) from the
    # (1, C, 1, 1) it was laid along dim 1 as; autograd refused that one ("invalid gradient").
    theirs, ours, _ = WEIGHTED[loss]
    module = importlib.import_module(f"generated.{MODELS[loss].snake_name}")
    monkeypatch.setattr(module, "COMPILE", False)  # see test_fused_path_against_torch
    g = _seeded(f"{loss} weighted images")
    x = logits(g, BIG_NCHW)
    if loss == "NLL":
        x = torch.log_softmax(x, 1)
    tensors = [x, _ignoring(classes(g, BIG_NCHW)), class_weights(g, BIG_NCHW[1])]
    fused = _run(ours, tensors, (0, 2), reduction)
    assert "Fused" in type(fused[0].grad_fn).__name__
    _compare(ours, theirs, tensors, (0,), reduction, **TIGHT)
    monkeypatch.setattr(module, "FUSED", False)
    reference = _run(ours, tensors, (0, 2), reduction)
    assert fused[1][1].shape == tensors[2].shape
    for a, b in zip(fused[:2], reference[:2]):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("loss", sorted(WEIGHTED))
def test_class_weights_of_another_length_are_left_to_the_reference(loss, monkeypatch):
    module, _, ours, tensors = _weighted_case(loss, monkeypatch)
    x, target, weight = tensors
    functional = getattr(module, MODELS[loss].snake_name)
    along = tuple(p.along for p in MODELS[loss].params)
    params = [weight[:-1]] + [p.default for p in MODELS[loss].params[1:]]
    assert module._use_fused([x], [weight] + params[1:], "mean", along)
    assert not module._use_fused([x], params, "mean", along)
    assert not module._use_fused([x], [weight[:, None]] + params[1:], "mean", along)
    with pytest.raises(RuntimeError):  # the reference Function's broadcast error
        functional(x, target, weight[:-1])


# --- the three interfaces --------------------------------------------------------------------

MODELS = {model.name: model for model in load_models([SPEC])}


def _plain_variant(name: str) -> Variant:
    """The first variant of a loss that passes only its tensors (params at their defaults)."""
    count = sum(argument.is_tensor for argument in MODELS[name].arguments)
    for variant in VARIANTS.values():
        if variant.loss == name and len(variant.make(_seeded(variant.id))) == count:
            return variant
    raise AssertionError(f"no variant of {name} with {count} tensors")


def _interface_tensors(name: str) -> Tensors:
    variant = _plain_variant(name)
    return variant.make(_seeded(variant.id))


def _applied(function, *tensors, reduction: str) -> torch.Tensor:  # noqa: ANN001
    """function.apply with the params' defaults and reduction passed by position: before torch
    2.13, Function.apply takes no keywords (test_torch_features checks them where torch does).
    """
    bound = inspect.signature(function.forward).bind(*tensors, reduction=reduction)
    bound.apply_defaults()
    return function.apply(*bound.args)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_module_function_and_functional_agree(name: str, reduction: str) -> None:
    model = MODELS[name]
    module_class = getattr(generated, model.name)
    function = getattr(generated, f"{model.name}Function")
    functional = getattr(generated, model.snake_name)
    tensors = _interface_tensors(name)
    grads = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    grads = [i for i in grads if model.arguments[i].differentiable]
    forms = [
        lambda *t, reduction: functional(*t, reduction=reduction),
        lambda *t, reduction: module_class(reduction=reduction)(*t),
        lambda *t, reduction: _applied(function, *t, reduction=reduction),
    ]
    first, first_grads, _ = _run(forms[0], tensors, grads, reduction)
    for form in forms[1:]:
        value, form_grads, _ = _run(form, tensors, grads, reduction)
        torch.testing.assert_close(value, first, rtol=0, atol=0)
        for a, b in zip(form_grads, first_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cross_entropy_params_positionally_in_declaration_order() -> None:
    g = _seeded("positional")
    x, t, w = logits(g, NC), classes(g, NC), class_weights(g, 5)
    expected = F.cross_entropy(
        x, t, w, ignore_index=3, label_smoothing=0.25, reduction="sum"
    )
    got = [
        generated.CrossEntropy(w, 0.25, 3.0, "sum")(x, t),
        generated.CrossEntropyFunction.apply(x, t, w, 0.25, 3.0, "sum"),
        generated.cross_entropy(x, t, w, 0.25, 3.0, "sum"),
    ]
    for value in got:
        torch.testing.assert_close(value, expected, **TIGHT)


# --- torch.func and dtypes, against torch's own losses (test_torch_features.py: vs autograd) -


def _samples(variant: Variant, count: int) -> list[Tensors]:
    return [variant.make(_seeded(f"{variant.id} {i}")) for i in range(count)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vmap_matches_a_loop(name: str) -> None:
    # vmap over a new leading dim: inside it each sample keeps its own dims (class dim 1).
    variant = _plain_variant(name)
    samples = _samples(variant, 3)
    batch = [torch.stack(column) for column in zip(*samples)]
    for reduction in REDUCTIONS:
        got = vmap(functools.partial(variant.ours, reduction=reduction))(*batch)
        expected = torch.stack(
            [variant.theirs(*s, reduction=reduction) for s in samples]
        )
        torch.testing.assert_close(got, expected, **TIGHT)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_grad_and_vmap_of_grad_match_torch(name: str) -> None:
    variant = _plain_variant(name)
    samples = _samples(variant, 3)
    for reduction in ("mean", "sum"):
        ours = functools.partial(variant.ours, reduction=reduction)
        expected = []
        for sample in samples:
            leaves = [
                t.clone().requires_grad_(i in variant.grads)
                for i, t in enumerate(sample)
            ]
            value = variant.theirs(*leaves, reduction=reduction)
            expected.append(
                torch.autograd.grad(value, [leaves[i] for i in variant.grads])
            )
        got = grad(ours, argnums=variant.grads)(*samples[0])
        for a, b in zip(got, expected[0]):
            torch.testing.assert_close(a, b, **TIGHT)
        batch = [torch.stack(column) for column in zip(*samples)]
        per_sample = vmap(grad(ours, argnums=variant.grads))(*batch)
        for position, a in enumerate(per_sample):
            b = torch.stack([e[position] for e in expected])
            torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jacrev_matches_torch(name: str) -> None:
    # reduction="none": one value per row/position, whose Jacobian spans its class dim.
    variant = _plain_variant(name)
    tensors = variant.make(_seeded(variant.id))
    ours = functools.partial(variant.ours, reduction="none")
    got = jacrev(ours, argnums=variant.grads)(*tensors)

    def theirs(*differentiated: torch.Tensor) -> torch.Tensor:
        filled = list(tensors)
        for position, tensor in zip(variant.grads, differentiated):
            filled[position] = tensor
        return variant.theirs(*filled, reduction="none")

    expected = torch.autograd.functional.jacobian(
        theirs, tuple(tensors[i] for i in variant.grads)
    )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_dtype_of_outputs_and_gradients(name: str, dtype: torch.dtype) -> None:
    variant = _plain_variant(name)
    tensors = [
        t.to(dtype) if t.is_floating_point() else t
        for t in variant.make(_seeded(variant.id))
    ]
    for reduction in REDUCTIONS:
        # params left at their float defaults: they must take the inputs' dtype
        value, grads, leaves = _run(variant.ours, tensors, variant.grads, reduction)
        assert value.dtype == dtype and torch.isfinite(value).all()
        for position, g in zip(variant.grads, grads):
            assert g.dtype == dtype and g.shape == leaves[position].shape
            assert torch.isfinite(g).all()
        # the value is float64's on the same (rounded) inputs, up to the dtype's precision
        rounded = [t.double() if t.is_floating_point() else t for t in tensors]
        tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(
            value.double(),
            variant.theirs(*rounded, reduction=reduction),
            rtol=tolerance,
            atol=tolerance,
        )
