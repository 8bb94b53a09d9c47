"""LogCosh's compiled body (`_fused`): softplus(2|r|) in the loss and tanh(|r|) in the gradient
through one m = expm1(-2|r|) (compiled_body.shared_tanh), for the speed of torch.compile's naive
log(cosh(r)) without its overflow, and with at least the readable Function's accuracy.
Checked against 50-digit mpmath values, without timing anything.
"""

from __future__ import annotations

import importlib
import inspect
import math
import shutil

import mpmath
import pytest
import sympy as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

from lossgen.compiled_body import shared_tanh
from lossgen.functions import softplus
from lossgen.printer import print_torch

LOG_COSH = importlib.import_module("generated.log_cosh")
HAS_COMPILER = bool(
    shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
)
x = sp.Symbol("x", real=True)


def residuals(dtype: torch.dtype) -> torch.Tensor:
    """Both signs, from 1e-30 to past exp's overflow (cosh(r) overflows float32 past 89)."""
    limit = 800 if dtype == torch.float64 else 110
    magnitudes = torch.cat(
        [
            torch.logspace(-30, 0, 300, dtype=torch.float64),
            torch.linspace(1, limit, 400, dtype=torch.float64),
        ]
    )
    return torch.cat([magnitudes, -magnitudes, torch.zeros(1, dtype=torch.float64)]).to(
        dtype
    )


def exact(function: str, value: float) -> float:
    with mpmath.workdps(60):
        v = mpmath.mpf(value)
        if function == "log_cosh":
            return float(mpmath.log(mpmath.cosh(v)))
        if function == "tanh":
            return float(mpmath.tanh(v))
        return float(mpmath.log1p(mpmath.exp(v)))  # softplus


def relative_error(ours: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(ours.dtype).tiny
    return ((ours.double() - truth).abs() / truth.abs().clamp_min(tiny)).nan_to_num(0.0)


def run_printed(expr: sp.Expr, values: torch.Tensor) -> torch.Tensor:
    code = print_torch(expr, {x: "x"}, "x", compiled=True)
    # run eagerly: the printed _expm1 is torch.expm1 there (compiled, see test_compiled_body)
    return eval(
        code, {"torch": torch, "math": math, "x": values, "_expm1": torch.expm1}
    )  # noqa: S307 - our own printout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_shared_tanh_and_softplus_are_as_accurate_as_torch(dtype: torch.dtype) -> None:
    # tanh(x) and softplus(2|x|) through one expm1(-2|x|): each within torch's own error or
    # 4 ulp of the exact value, at every magnitude, and finite.
    exprs = [sp.tanh(x), softplus(2 * sp.Abs(x))]
    lowered = shared_tanh(exprs)
    assert not any(e.atoms(sp.tanh, softplus) for e in lowered)
    values = residuals(dtype)
    theirs = [torch.tanh(values), F.softplus(2 * values.abs())]
    names = ["tanh", "softplus"]
    ulp = torch.finfo(dtype).eps
    for expr, their, name, argument in zip(
        lowered, theirs, names, [values, 2 * values.abs()]
    ):
        ours = run_printed(expr, values)
        truth = torch.tensor(
            [exact(name, v) for v in argument.tolist()], dtype=torch.float64
        )
        our_error = relative_error(ours, truth)
        their_error = relative_error(their, truth)
        bad = our_error > torch.maximum(their_error, torch.full_like(truth, 4 * ulp))
        assert not bad.any(), (name, values[bad], ours[bad], truth[bad])
        assert torch.isfinite(ours).all()


def test_a_tanh_alone_is_left_as_it_is() -> None:
    # one transcendental either way: torch.tanh is cheaper than expm1 plus a division
    exprs = [sp.tanh(x) * x, softplus(x)]  # softplus(x) shares no |u| with tanh(x)
    assert shared_tanh(exprs) == exprs


def test_generated_log_cosh_fused_body_has_no_tanh_and_one_exponential() -> None:
    source = inspect.getsource(LOG_COSH._fused)
    assert "tanh" not in source and "softplus" not in source
    assert source.count("_expm1(") == 1 and "torch.exp(" not in source
    # the readable Function keeps torch.tanh
    assert "torch.tanh(" in inspect.getsource(LOG_COSH.LogCoshFunction.backward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_log_cosh_fused_body_is_accurate_at_every_magnitude(
    dtype: torch.dtype, monkeypatch
) -> None:
    # reduction="sum" of one residual at a time is the loss itself. The gradient within 4 ulp
    # of tanh at every magnitude; the loss |r| + log(2 + m) - log 2 within a few eps of
    # log(cosh(r)) times |r| + log 2 (the rounding of the terms it adds, as the readable
    # -|r| + softplus(2|r|) - log 2's), finite up to 800 (cosh overflows past 89 in float32).
    monkeypatch.setattr(LOG_COSH, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(LOG_COSH, "COMPILE", False)
    values = residuals(dtype)
    zero = torch.zeros((), dtype=dtype)
    losses, grads = [], []
    for value in values:
        loss, grad, _ = LOG_COSH._fused(value, zero, "sum", (True, False))
        losses.append(loss)
        grads.append(grad)
    loss, grad = torch.stack(losses), torch.stack(grads)
    ulp = torch.finfo(dtype).eps
    tanh = torch.tensor(
        [exact("tanh", v) for v in values.tolist()], dtype=torch.float64
    )
    assert float(relative_error(grad, tanh).max()) <= 4 * ulp
    log_cosh = torch.tensor(
        [exact("log_cosh", v) for v in values.tolist()], dtype=torch.float64
    )
    error = (loss.double() - log_cosh).abs()
    assert (error <= 4 * ulp * (values.abs().double() + math.log(2))).all()
    assert torch.isfinite(loss).all()
    readable = LOG_COSH.LogCoshFunction.apply(values, zero, "none")
    assert (error <= (readable.double() - log_cosh).abs() + 2 * ulp).all()


@pytest.mark.skipif(
    not HAS_COMPILER, reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_log_cosh_matches_the_reference_function(monkeypatch) -> None:
    monkeypatch.setattr(LOG_COSH, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(5)
    input = torch.randn(1 << 16, generator=generator) * torch.logspace(-4, 2.3, 1 << 16)
    target = torch.randn(1 << 16, generator=generator)
    ours = input.clone().requires_grad_()
    theirs = input.clone().requires_grad_()
    value = LOG_COSH.log_cosh(ours, target)
    assert "Fused" in type(value.grad_fn).__name__
    value.backward()
    assert LOG_COSH._compiled_fused is not LOG_COSH._fused  # compiled, not the fallback
    expected = LOG_COSH.LogCoshFunction.apply(theirs, target, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)
