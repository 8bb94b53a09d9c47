"""Every loss in specs/: gradcheck, gradgradcheck, vs autograd, at kinks and extremes, and
against PyTorch's own implementation where one exists."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import generated
from conftest import repository_derived, repository_files
from lossgen.verify import CheckResult, load_generated, verify_loss

CHECKS = (
    "gradcheck",
    "gradgradcheck",
    "autograd",
    "interfaces",
    "kinks",
    "extremes",
    "fastpath",
)


@functools.cache
def all_results() -> dict[tuple[str, str], CheckResult]:
    files = {f.name: f for f in repository_files()}
    results = {}
    for derived in repository_derived():
        module = load_generated(files[f"{derived.model.snake_name}.py"])
        for result in verify_loss(derived, module):
            results[(result.loss, result.check)] = result
    return results


LOSS_NAMES = [d.model.name for d in repository_derived()]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_verification(loss: str, check: str) -> None:
    result = all_results()[(loss, check)]
    assert result.ok, result.detail


def test_kinks_are_actually_sampled() -> None:
    # A kink check that finds no kink would pass vacuously.
    for loss in ("L1", "Huber", "Quantile", "BCEWithLogits", "CustomLoss"):
        assert "kink samples" in all_results()[(loss, "kinks")].detail


# --- against PyTorch's own losses ------------------------------------------------------------

REDUCTIONS = ("none", "mean", "sum")


def _compare(ours, theirs, *tensors: torch.Tensor, reduction: str) -> None:
    leaves_a = [t.detach().clone().requires_grad_() for t in tensors]
    leaves_b = [t.detach().clone().requires_grad_() for t in tensors]
    value_a = ours(*leaves_a, reduction=reduction)
    value_b = theirs(*leaves_b, reduction=reduction)
    torch.testing.assert_close(value_a, value_b)
    seed = torch.rand_like(value_a)
    grads_a = torch.autograd.grad(value_a, leaves_a, seed)
    grads_b = torch.autograd.grad(value_b, leaves_b, seed)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def _points(
    seed: int, kinks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(64, generator=generator)
    input = torch.randn(64, generator=generator) * 2
    if kinks is not None:  # put every fourth input exactly on a kink
        input[::4] = target[::4] + kinks
    return input, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("offset", [None, 0.0, 1.0, -1.0, 0.5])
def test_regression_losses_match_torch(reduction: str, offset: float | None) -> None:
    kinks = None if offset is None else torch.tensor(offset)
    input, target = _points(0, kinks)
    _compare(generated.mse, F.mse_loss, input, target, reduction=reduction)
    _compare(generated.l1, F.l1_loss, input, target, reduction=reduction)
    for delta in (1.0, 0.5):
        _compare(
            functools.partial(generated.huber, delta=delta),
            functools.partial(F.huber_loss, delta=delta),
            input,
            target,
            reduction=reduction,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch(reduction: str) -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.cat(
        [torch.randn(60, generator=generator) * 5, torch.tensor([0.0, 0.0, 80, -80])]
    )
    target = torch.rand(64, generator=generator)
    target[60:62] = torch.tensor([1.0, 0.0])  # exactly at the kink x = 0
    _compare(
        generated.bce_with_logits,
        F.binary_cross_entropy_with_logits,
        logits,
        target,
        reduction=reduction,
    )


def test_bce_with_logits_gradient_at_zero_is_sigmoid_minus_target() -> None:
    # A hand-written Piecewise can give -1.0 here; the truth is sigmoid(0) - 1 = -0.5.
    x = torch.zeros(1, requires_grad=True)
    generated.bce_with_logits(x, torch.ones(1), reduction="sum").backward()
    assert x.grad.item() == -0.5


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poisson_nll_matches_torch(reduction: str) -> None:
    generator = torch.Generator().manual_seed(2)
    log_rate = torch.randn(64, generator=generator)
    counts = torch.poisson(torch.full((64,), 3.0), generator=generator)
    _compare(
        generated.poisson_nll,
        functools.partial(F.poisson_nll_loss, log_input=True, full=False),
        log_rate,
        counts,
        reduction=reduction,
    )


def test_abs_kink_follows_torch_abs() -> None:
    x = torch.zeros(3, requires_grad=True)
    generated.l1(x, torch.zeros(3), reduction="sum").backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]


def test_quantile_tie_splits_like_torch_maximum() -> None:
    # max(tau*r, (tau-1)*r) at r = 0: torch.maximum sends half the gradient to each side.
    tau = 0.3
    x = torch.zeros(1, requires_grad=True)
    generated.quantile(x, torch.zeros(1), tau=tau, reduction="sum").backward()
    r = torch.zeros(1, requires_grad=True)
    u = 0 - r  # u = target - input
    torch.maximum(tau * u, (tau - 1) * u).sum().backward()
    assert x.grad.item() == pytest.approx(r.grad.item())
    assert x.grad.item() == pytest.approx(0.5 - tau)
