"""Acceptance: losses written naively (specs/naive.py) are as stable as PyTorch's built-ins.

Float32 values and gradients match the built-ins for inputs up to |x| = 100 with no inf/NaN,
bfloat16 stays finite, and where the built-in itself overflows (F.soft_margin_loss) the
generated loss still equals the stable mathematical form.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

import generated
from conftest import ROOT
from lossgen.api import derive_all
from lossgen.functions import sigmoid

REDUCTIONS = ("none", "mean", "sum")
FLOAT32_EXP_LIMIT = 88.0  # exp(x) overflows float32 just above 88.72
# The one exponential a stable form may compute: exp(-|u|) is in (0, 1] for every u. The fused
# body torch.compile runs computes softplus(u) and sigmoid(u) through it (one exp, not two).
STABLE_EXP = "torch.exp(-torch.abs("


def logits(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every integer in [-100, 100] (0 included) and random values of every magnitude."""
    generator = torch.Generator().manual_seed(5)
    grid = torch.linspace(-100, 100, 201)
    spread = torch.randn(200, generator=generator) * torch.logspace(-3, 2, 200)
    return torch.cat([grid, spread]).to(dtype)


def probabilities(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(6)
    y = torch.rand(n, generator=generator)
    y[::3] = 0.0  # hard labels too: log(0) terms of the naive form must not leak
    y[1::3] = 1.0
    return y.to(dtype)


def value_and_grads(
    loss, *tensors: torch.Tensor, reduction: str, wrt: int | None = None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The loss and its gradients in the first `wrt` tensors (all by default)."""
    wrt = len(tensors) if wrt is None else wrt
    leaves = [t.detach().clone().requires_grad_(i < wrt) for i, t in enumerate(tensors)]
    value = loss(*leaves, reduction=reduction)
    seed = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(
        value.shape
    )
    return value.detach(), torch.autograd.grad(value, leaves[:wrt], seed)


def assert_finite(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert torch.isfinite(tensor).all(), tensor[~torch.isfinite(tensor)]


def assert_match(
    ours, theirs, *tensors: torch.Tensor, reduction: str, **tolerance
) -> None:
    """Same value and gradients (torch.testing's default float32 tolerances), all finite."""
    value, grads = value_and_grads(ours, *tensors, reduction=reduction)
    expected, expected_grads = value_and_grads(theirs, *tensors, reduction=reduction)
    assert_finite(value, *grads)
    torch.testing.assert_close(value, expected, **tolerance)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance)


# --- binary cross-entropy written as -(y log s + (1-y) log(1-s)), s = 1/(1+exp(-x)) -----------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_naive_bce_matches_bce_with_logits_in_float32(reduction: str) -> None:
    x = logits()
    y = probabilities(len(x))
    assert_match(
        generated.naive_bce,
        F.binary_cross_entropy_with_logits,
        x,
        y,
        reduction=reduction,
    )


def test_naive_bce_gradient_is_sigmoid_minus_target() -> None:
    (derived,) = [
        d for d in derive_all(["specs/naive.py"]) if d.model.name == "NaiveBCE"
    ]
    input, target = (a.symbol for a in derived.model.arguments)
    by_name = {g.argument.name: g.derivative for g in derived.gradients}
    assert by_name["input"] == sigmoid(input) - target
    source = (ROOT / "generated" / "naive_bce.py").read_text()
    backward = source[source.index("def backward") :]
    assert "torch.sigmoid(input)" in backward
    # exp(-|u|) <= 1 cannot overflow: the fused body's shared exponential (see below)
    source = source.replace(STABLE_EXP, "")
    assert "torch.exp" not in source and "torch.log(" not in source


def test_naive_bce_docstring_counts_operations() -> None:
    source = (ROOT / "generated" / "naive_bce.py").read_text()
    # forward: -input * target + softplus(input); backward: -target + sigmoid(input), -input
    assert "Operations per element: 4 in the forward, 4 in the backward" in source


# --- Poisson NLL of a log-rate: rate - target * log(rate), rate = exp(input) -------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_naive_poisson_nll_matches_torch_in_float32(reduction: str) -> None:
    x = logits()
    # exp(x) itself exceeds float32's range above x = 88.72: no float32 code can return that
    # loss, so the comparison stops at 88 (below, nothing is inf); see the next test for beyond.
    x = x[x <= FLOAT32_EXP_LIMIT]
    counts = torch.poisson(
        torch.full(x.shape, 3.0), generator=torch.Generator().manual_seed(7)
    )
    builtin = functools.partial(F.poisson_nll_loss, log_input=True, full=False)
    assert_match(generated.naive_poisson_nll, builtin, x, counts, reduction=reduction)


def test_naive_poisson_nll_overflows_only_where_the_true_value_does() -> None:
    x = logits()
    counts = torch.full(x.shape, 2.0)
    value, (grad, _) = value_and_grads(
        generated.naive_poisson_nll, x, counts, reduction="none"
    )
    truth = torch.exp(x.double()) - counts.double() * x.double()
    representable = truth.abs() < torch.finfo(torch.float32).max
    assert (torch.isfinite(value) == representable).all()
    assert not torch.isnan(value).any() and not torch.isnan(grad).any()
    builtin = F.poisson_nll_loss(
        x, counts, log_input=True, full=False, reduction="none"
    )
    assert (
        torch.isinf(builtin) == ~representable
    ).all()  # the built-in overflows the same way


# --- Gaussian NLL: 0.5 * (log(var) + (input - target)**2 / var) ----------------------------------


def gaussian_points(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    x = logits()
    generator = torch.Generator().manual_seed(8)
    target = torch.randn(x.shape, generator=generator) * 10
    # F.gaussian_nll_loss clamps var at eps=1e-6 under no_grad (the value uses max(var, eps),
    # the gradient passes straight through). The naive spec has no clamp, so both agree for
    # var >= eps; here var spans 1e-4 .. 1e4.
    var = torch.exp(torch.empty(x.shape).uniform_(-9.2, 9.2, generator=generator))
    return tuple(t.to(dtype) for t in (x, target, var))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_naive_gaussian_nll_matches_torch_in_float32(reduction: str) -> None:
    def builtin(input, target, var, reduction):
        return F.gaussian_nll_loss(
            input, target, var, full=False, eps=1e-6, reduction=reduction
        )

    assert_match(
        generated.naive_gaussian_nll, builtin, *gaussian_points(), reduction=reduction
    )


# --- soft margin: log(1 + exp(-y x)) -------------------------------------------------------------


def soft_margin_points() -> tuple[torch.Tensor, torch.Tensor]:
    x = logits()
    y = torch.where(torch.arange(len(x)) % 2 == 0, 1.0, -1.0)
    return x, y


def stable_soft_margin(input, target, reduction):
    loss = F.softplus(-target * input)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_naive_soft_margin_equals_softplus_everywhere(reduction: str) -> None:
    x, y = soft_margin_points()
    assert_match(
        generated.naive_soft_margin, stable_soft_margin, x, y, reduction=reduction
    )


def test_naive_soft_margin_is_finite_where_torch_soft_margin_loss_is_not() -> None:
    x, y = soft_margin_points()
    overflow = y * x < -FLOAT32_EXP_LIMIT - 0.5
    assert overflow.sum() > 10
    # PyTorch's built-in: inf loss and NaN gradient once exp(-y*x) overflows float32.
    theirs, (their_grad,) = value_and_grads(
        F.soft_margin_loss, x, y, reduction="none", wrt=1
    )
    assert (
        torch.isinf(theirs[overflow]).all() and torch.isnan(their_grad[overflow]).all()
    )
    # Ours: equal to softplus(-y*x) = -y*x there (to float32 precision), gradient -y.
    ours, (our_grad,) = value_and_grads(
        generated.naive_soft_margin, x, y, reduction="none", wrt=1
    )
    torch.testing.assert_close(ours[overflow], (-y * x)[overflow])
    seed = torch.linspace(0.5, 1.5, len(x))
    torch.testing.assert_close(our_grad[overflow], (-y * seed)[overflow])
    # Where the built-in is finite, it agrees with ours. (torch 2.5's is inf already at
    # y*x = -88, where exp(88) is still a float32: that point is left out.)
    finite = torch.isfinite(theirs) & torch.isfinite(their_grad)
    assert finite.sum() >= (~overflow).sum() - 1
    torch.testing.assert_close(ours[finite], theirs[finite])
    torch.testing.assert_close(our_grad[finite], their_grad[finite])


# --- bfloat16 --------------------------------------------------------------------------------


def bf16_cases():
    x = logits(torch.bfloat16)
    y = probabilities(len(x), torch.bfloat16)
    sign = torch.where(torch.arange(len(x)) % 2 == 0, 1.0, -1.0).to(torch.bfloat16)
    counts = torch.full(x.shape, 2.0, dtype=torch.bfloat16)
    small = x[x.float() <= FLOAT32_EXP_LIMIT]  # bfloat16 has float32's exponent range
    return {
        "bce": (generated.naive_bce, F.binary_cross_entropy_with_logits, (x, y)),
        "soft margin": (generated.naive_soft_margin, stable_soft_margin, (x, sign)),
        "poisson": (
            generated.naive_poisson_nll,
            functools.partial(F.poisson_nll_loss, log_input=True, full=False),
            (small, counts[: len(small)]),
        ),
        "gaussian": (
            generated.naive_gaussian_nll,
            lambda i, t, v, reduction: F.gaussian_nll_loss(
                i, t, v, reduction=reduction
            ),
            gaussian_points(torch.bfloat16),
        ),
    }


@pytest.mark.parametrize("case", ["bce", "soft margin", "poisson", "gaussian"])
def test_naive_losses_stay_finite_and_close_in_bfloat16(case: str) -> None:
    ours, reference, tensors = bf16_cases()[case]
    value, grads = value_and_grads(ours, *tensors, reduction="none")
    assert value.dtype == torch.bfloat16
    assert_finite(value, *grads)
    # Against the stable reference evaluated in float32 on the same (bfloat16) inputs: bfloat16
    # keeps 8 significant bits, and softplus(x) - x*y cancels terms of size |x|, so the error is
    # bounded by a few units in the last place of the largest term, not of the result. Only
    # the first argument's gradient is compared: others (d/d var = 1/(2 var) - r^2/(2 var^2))
    # cancel terms that bfloat16 cannot resolve, and are only required to be finite.
    upcast = [t.float() for t in tensors]
    expected, (expected_grad, *_) = value_and_grads(
        reference, *upcast, reduction="none"
    )
    scale = 1 + sum(t.abs() for t in upcast) + expected.abs()
    assert ((value.float() - expected).abs() <= 2**-6 * scale).all()
    error = (grads[0].float() - expected_grad).abs()
    assert (error <= 2**-6 * (scale + expected_grad.abs())).all()


def test_generated_naive_losses_use_no_unstable_spelling() -> None:
    # The naive spellings are gone from the code (they remain in the docstring formulas).
    for name in ("naive_bce", "naive_soft_margin"):
        source = (ROOT / "generated" / f"{name}.py").read_text()
        code = source[source.index("class ") :].replace(STABLE_EXP, "")
        assert "torch.log(" not in code and "torch.exp(" not in code, name
