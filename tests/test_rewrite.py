"""The rewrite stage, rule by rule, and the stable functions it rewrites into."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sympy as sp
import torch
from sympy.codegen.cfunctions import expm1, log1p

from lossgen import rewrite as rw
from lossgen.api import derive_all, generate
from lossgen.derive import (
    _no_new_overflow,
    guard_piecewise_branches,
    simplest,
    stablest,
)
from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.printer import print_torch
from lossgen.reference import evaluate
from lossgen.render import count_operations
from lossgen.verify import load_generated, verify_loss
from lossgen.vocabulary import guarded, relu

x, y, z = sp.symbols("x y z", real=True)
u = sp.Symbol("u", positive=True)
E = sp.exp


def numerically_equal(a: sp.Expr, b: sp.Expr, points: int = 7) -> bool:
    """Evaluate both with torch (float64) at moderate points, where naive forms are exact."""
    generator = torch.Generator().manual_seed(0)
    values = {
        s: torch.rand(points, generator=generator, dtype=torch.float64) * 4 + 0.1
        for s in sorted(a.free_symbols | b.free_symbols, key=lambda s: s.name)
    }
    return torch.allclose(
        evaluate(a, values), evaluate(b, values), rtol=1e-12, atol=1e-12
    )


# --- each rule alone: what it matches, what it leaves alone ------------------------------------

RULE_CASES = [
    (rw.tanh_from_exp, (E(x) - E(-x)) / (E(x) + E(-x)), sp.tanh(x)),
    (rw.tanh_from_exp, (1 - E(-2 * x)) / (1 + E(-2 * x)), sp.tanh(x)),
    (rw.tanh_from_exp, y * (E(-x) - E(x)) / (E(x) + E(-x)), -y * sp.tanh(x)),
    (rw.sigmoid_from_exp, 1 / (1 + E(-x)), sigmoid(x)),
    (rw.sigmoid_from_exp, (1 + E(y - x)) ** -2, sigmoid(x - y) ** 2),
    (rw.sigmoid_from_exp, (1 + E(-x)) ** (-z), sigmoid(x) ** z),
    (rw.sigmoid_from_exp, sp.Mul(E(x), sigmoid(-x), y, evaluate=False), y * sigmoid(x)),
    (rw.tanh_from_sigmoid, 2 * sigmoid(2 * x) - 1, sp.tanh(x)),
    (rw.tanh_from_sigmoid, y - 2 * y * sigmoid(2 * x), -y * sp.tanh(x)),
    (rw.one_minus_sigmoid, 1 - sigmoid(x), sigmoid(-x)),
    (rw.one_minus_sigmoid, y * sigmoid(x) - y, -y * sigmoid(-x)),
    (rw.logsigmoid_from_log, sp.log(sigmoid(x)), logsigmoid(x)),
    (rw.logsigmoid_from_log, sp.log(sigmoid(x) ** 2), 2 * logsigmoid(x)),
    (rw.softplus_from_log, sp.log(1 + E(x)), softplus(x)),
    (rw.softplus_from_log, sp.log(E(-x * y) + 1), softplus(-x * y)),
    (rw.softplus_from_log, sp.log(E(x) + E(y) + E(z)), logsumexp(x, y, z)),
    (rw.softplus_from_log, sp.log(1 + E(x) + E(y)), logsumexp(0, x, y)),
    (rw.softplus_from_log, sp.log(2 + 3 * E(x)), logsumexp(x + sp.log(3), sp.log(2))),
    (
        rw.softplus_from_max_shift,
        sp.Max(x, 0) + softplus(-sp.Abs(x)) + y,
        softplus(x) + y,
    ),
    (rw.softplus_from_max_shift, relu(x) + softplus(-sp.Abs(x)), softplus(x)),
    (rw.log1p_from_log, sp.log(1 + x**2), log1p(x**2)),
    (rw.log1p_from_log, sp.log(1 - x / 8), log1p(-x / 8)),
    (rw.expm1_from_exp, E(x) - 1, expm1(x)),
    (rw.expm1_from_exp, 1 - E(x) + y, y - expm1(x)),
    (rw.xlogy_from_mul, x * sp.log(x), xlogy(x, x)),
    (rw.xlogy_from_mul, -2 * y * z * sp.log(x), -2 * xlogy(y * z, x)),
    (rw.xlogy_from_mul, y * (sp.log(y) - x), xlogy(y, y) - x * y),
]


@pytest.mark.parametrize(("rule", "before", "after"), RULE_CASES)
def test_rule_rewrites(rule, before: sp.Expr, after: sp.Expr) -> None:
    got = rw.apply_rule(rule, before)
    assert got == after
    if not got.has(sigmoid) or before.has(sigmoid):
        assert numerically_equal(got, before)


NON_MATCHES = [
    (rw.tanh_from_exp, (E(x) - E(y)) / (E(x) + E(-x))),
    (rw.sigmoid_from_exp, 1 / (2 + E(-x))),
    (rw.sigmoid_from_exp, 1 / (1 + x)),
    (rw.tanh_from_sigmoid, 2 * sigmoid(2 * x) - 2),
    (rw.one_minus_sigmoid, 2 - sigmoid(x)),
    (rw.softplus_from_log, sp.log(1 - E(x))),
    (rw.softplus_from_log, sp.log(x + E(y))),
    (rw.softplus_from_max_shift, sp.Max(x, 0) + softplus(-sp.Abs(y))),
    (rw.log1p_from_log, sp.log(2 + x)),
    (rw.expm1_from_exp, E(x) - 2),
    (rw.expm1_from_exp, 2 * E(x) - 1),
    (rw.xlogy_from_mul, 3 * sp.log(x)),
    (rw.xlogy_from_mul, sp.log(x) * sp.log(y)),
    (rw.xlogy_from_mul, y * (x + z)),
]


@pytest.mark.parametrize(("rule", "expr"), NON_MATCHES)
def test_rule_leaves_other_forms_alone(rule, expr: sp.Expr) -> None:
    assert rw.apply_rule(rule, expr) == expr


# --- all rules together ------------------------------------------------------------------------

s = 1 / (1 + E(-x))
WHOLE_CASES = [
    (sp.log(1 + E(x)), softplus(x)),
    (sp.log(s), logsigmoid(x)),
    (sp.log(1 - s), logsigmoid(-x)),
    (E(x) / (1 + E(x)), sigmoid(x)),
    (s * (1 - s), sigmoid(-x) * sigmoid(x)),
    (sp.log(E(x) + E(y)), logsumexp(x, y)),
    (sp.Max(x, 0) + sp.log(1 + E(-sp.Abs(x))), softplus(x)),
    (y * sp.log(y) - y * x, xlogy(y, y) - x * y),
    (sp.log(1 + (x / y) ** 2), log1p(x**2 / y**2)),
    (sp.log(E(x) - 1), sp.log(expm1(x))),
]


@pytest.mark.parametrize(("before", "after"), WHOLE_CASES)
def test_rewrite_reaches_the_stable_form(before: sp.Expr, after: sp.Expr) -> None:
    got = rw.rewrite(before)
    assert got == after
    assert numerically_equal(got, before)
    assert rw.rewrite(got) == got  # a fixed point


def test_rewrite_keeps_numbers_numbers() -> None:
    # log(1 + exp(2)) is a constant: rewriting it would only loop through softplus's eval.
    assert rw.rewrite(sp.log(1 + E(2)) * x) == sp.log(1 + E(2)) * x


def test_naive_bce_becomes_softplus_minus_xy() -> None:
    naive = -(y * sp.log(s) + (1 - y) * sp.log(1 - s))
    assert stablest(naive) == softplus(x) - x * y
    assert numerically_equal(stablest(naive), naive)


def test_simplification_does_not_bring_in_overflowing_sinh() -> None:
    # log(cosh(x)) written naively: the softmax-weight derivative stays in [-1, 1], while
    # simplify would turn it into exp(-logsumexp) * sinh(x), inf * 0 = NaN at x = 100.
    loss = stablest(sp.log((E(x) + E(-x)) / 2))
    assert loss.has(logsumexp)
    gradient = simplest(sp.diff(loss, x))
    assert not gradient.has(sp.sinh) and not gradient.has(sp.cosh)
    at = torch.tensor([-100.0, -1.0, 0.0, 1.0, 100.0])
    torch.testing.assert_close(evaluate(gradient, {x: at}), torch.tanh(at))


def test_a_stable_form_inside_an_exponent_is_not_a_new_exponent() -> None:
    # A focal loss exponentiates softplus written out by hand: exp(-y * softplus(x)) has the
    # same exponent, and the loss then shares softplus and its exps with the gradients.
    written = sp.Max(x, 0) + sp.log(1 + E(-sp.Abs(x)))
    assert stablest(written * E(-y * written)) == softplus(x) * E(-y * softplus(x))


def test_an_exponent_is_new_by_its_value_not_its_spelling() -> None:
    # exp(x) - exp(y) = exp(y) * expm1(x - y) overflows at x - y = 100 where the left does not
    assert not _no_new_overflow(E(y) * expm1(x - y), E(x) - E(y))
    assert _no_new_overflow(E(-y * softplus(x)), E(-y * (sp.log(1 + E(-x)) + x)))


def test_derivatives_are_rewritten_after_simplification() -> None:
    # d/dx (logsumexp(x, y) - x) = softmax weight - 1: exp(w) - 1 becomes expm1(w).
    gradient = simplest(sp.diff(logsumexp(x, y) - x, x))
    assert gradient == expm1(x - logsumexp(x, y))


def test_normalize_signs_lets_terms_cancel() -> None:
    assert rw.normalize_signs(softplus(-x)) == softplus(x) - x
    assert rw.normalize_signs(sigmoid(-x)) == 1 - sigmoid(x)
    assert rw.normalize_signs(logsigmoid(x)) == x - softplus(x)
    assert rw.normalize_signs(logsigmoid(-x)) == -softplus(x)
    assert softplus(x) - x * y in rw.candidates(
        y * softplus(-x) + (1 - y) * softplus(x)
    )


# --- the stable functions ----------------------------------------------------------------------

ELEMENTARY = [
    (sigmoid(x), 1 / (1 + E(-x))),
    (softplus(x), sp.log(1 + E(x))),
    (logsigmoid(x), -sp.log(1 + E(-x))),
    (xlogy(x, y), x * sp.log(y)),
    (logsumexp(x, y, z), sp.log(E(x) + E(y) + E(z))),
]


@pytest.mark.parametrize(("function", "elementary"), ELEMENTARY)
def test_derivatives_match_the_elementary_forms(
    function: sp.Expr, elementary: sp.Expr
) -> None:
    for symbol in sorted(function.free_symbols, key=lambda s: s.name):
        ours = sp.diff(function, symbol)
        theirs = sp.diff(elementary, symbol)
        for point in ({x: 0.3, y: 1.7, z: -0.4}, {x: -2.5, y: 0.2, z: 1.1}):
            assert float(ours.subs(point)) == pytest.approx(
                float(theirs.subs(point)), rel=1e-12
            )


def test_derivatives_stay_in_the_family() -> None:
    assert sp.diff(softplus(x), x) == sigmoid(x)
    assert sp.diff(logsigmoid(x), x) == sigmoid(-x)
    assert sp.diff(sigmoid(x), x) == sigmoid(x) * (1 - sigmoid(x))
    assert sp.diff(xlogy(x, y), x) == xlogy(sp.Max(sp.Abs(sp.sign(x)), sp.sign(y)), y)
    assert sp.diff(xlogy(x, x), x) == xlogy(sp.Abs(sp.sign(x)), x) + 1
    assert sp.diff(logsumexp(x, y), x) == E(x - logsumexp(x, y))


def test_numbers_evaluate_to_elementary_values() -> None:
    assert sigmoid(0) == sp.Rational(1, 2)
    assert softplus(0) == sp.log(2)
    assert logsigmoid(0) == -sp.log(2)
    assert xlogy(0, y) == 0 and xlogy(0, 0) == 0
    assert logsumexp(x) == x
    assert float(logsumexp(1, 2)) == pytest.approx(math.log(math.e + math.e**2))
    assert sigmoid(x).is_positive and logsigmoid(x).is_negative


TORCH = {
    sigmoid(x): "torch.sigmoid(x)",
    softplus(x): "torch.nn.functional.softplus(x)",
    logsigmoid(x): "(-torch.nn.functional.softplus(-x))",
    xlogy(x, y): "torch.xlogy(x, y)",
    logsumexp(0, x, y): "torch.logaddexp(torch.logaddexp(x.new_full((), 0), x), y)",
}


@pytest.mark.parametrize("expr", list(TORCH), ids=str)
def test_printed_code_and_reference_agree_with_torch(expr: sp.Expr) -> None:
    code = print_torch(expr, {x: "x", y: "y"}, "x")
    assert code == TORCH[expr]
    a = torch.tensor([-100.0, -1.0, 0.0, 2.0, 100.0], dtype=torch.float64)
    b = torch.tensor([[0.5], [3.0]], dtype=torch.float64)  # broadcasts against a
    printed = eval(
        code, {"torch": torch, "x": a, "y": b}
    )  # noqa: S307 - our own test string
    referenced = evaluate(expr, {x: a, y: b})
    elementary = evaluate(
        expr.rewrite(sp.exp) if not isinstance(expr, xlogy) else x * sp.log(y),
        {x: a.clamp(-30, 30), y: b},
    )
    torch.testing.assert_close(printed, referenced)
    assert torch.isfinite(printed).all()  # even at |x| = 100
    inside = a.abs() < 30
    torch.testing.assert_close(printed[..., inside], elementary[..., inside])


def test_xlogy_gradient_follows_torch_at_zero() -> None:
    # torch: d/dx xlogy(x, y) = log(y), masked to 0 where x == 0 and y <= 0.
    gradient = sp.diff(xlogy(x, y), x)
    a = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.0, -1.0, 3.0, 3.0], dtype=torch.float64)
    (theirs,) = torch.autograd.grad(torch.xlogy(a, b).sum(), a)
    assert theirs[:2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(evaluate(gradient, {x: a.detach(), y: b}), theirs)
    # x * log(x) at 0: torch's own autograd gives NaN (0/0 from d/dy); ours is finite.
    entropy_gradient = sp.diff(xlogy(x, x), x)
    assert (
        evaluate(entropy_gradient, {x: torch.zeros(1, dtype=torch.float64)}).item()
        == 1.0
    )


def test_safe_where_masks_the_new_unsafe_ops() -> None:
    expr = sp.Piecewise((log1p(x) + xlogy(y, x) + expm1(x), x > -1), (0, True))
    guarded_expr = guard_piecewise_branches(expr)
    taken = guarded_expr.args[0].expr
    assert taken.has(log1p(guarded(x, x > -1)))
    assert taken.has(xlogy(y, guarded(x, x > -1)))
    assert taken.has(expm1(guarded(x, x > -1)))


def test_count_operations_counts_tensor_ops_only() -> None:
    assert (
        count_operations(["-input * target + torch.nn.functional.softplus(input)"]) == 4
    )
    assert count_operations(["math.log(2) * x", "torch.sigmoid(x)"]) == 2
    assert count_operations(["x"]) == 0


# --- users may write the stable functions themselves ---------------------------------------------

SPEC = """
import sympy as sp
from lossgen import Loss, Tensor, logsumexp, sigmoid, softplus, logsigmoid, xlogy

input = Tensor("input")
target = Tensor("target")
other = Tensor("other")

three = Loss("ThreeWayLSE", logsumexp(input, other, 0) - input * target)
kl = Loss("KLTerm", xlogy(target, target) - target * sp.log(sp.exp(input) + sp.exp(other)))
stable = Loss("Stable", softplus(input) - logsigmoid(other) + sigmoid(target) * input)
"""


def test_user_written_stable_functions_generate_and_verify(tmp_path: Path) -> None:
    spec = tmp_path / "stable_spec.py"
    spec.write_text(SPEC)
    files = {f.name: f for f in generate([spec])}
    derived = {d.model.name: d for d in derive_all([spec])}
    assert derived["KLTerm"].loss.has(logsumexp)  # log(exp + exp) rewritten
    for name, loss in derived.items():
        module = load_generated(files[f"{loss.model.snake_name}.py"])
        failures = [r for r in verify_loss(loss, module) if not r.ok]
        assert not failures, (name, failures)
