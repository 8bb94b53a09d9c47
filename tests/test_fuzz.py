"""Fuzzing the generator: random elementwise losses through the real pipeline, against autograd.

Hypothesis draws expressions over two tensors and one param from the supported vocabulary,
kept inside their domains (log and fractional powers only of positive expressions). Each one is
validated, differentiated, printed, rendered and black-formatted exactly as `lossgen build`
does, executed, and its value and gradients are compared with autograd of the expression as
written (`lossgen.reference`) at random float64 points away from kinks; gradcheck runs on a
small input. The profile (tests/conftest.py) sets the number of examples: 200 by default,
thousands with HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import math
import types

import pytest
import sympy as sp
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from lossgen.derive import derive
from lossgen.emit import GeneratedFile, header
from lossgen.errors import SpecError
from lossgen.format import format_source
from lossgen.model import LossModel, build_model
from lossgen.reference import evaluate
from lossgen.render import render_loss
from lossgen.verify import Errors, LossCase, _leaves, load_generated
from lossgen.vocabulary import Loss, Param, Tensor, clamp, relu

X = Tensor("x")
Y = Tensor("y")
P = Param("p")
ONE = sp.S.One

# --- the expressions ---------------------------------------------------------------------------

numbers = st.sampled_from(
    [sp.Rational(1, 2), sp.Integer(2), sp.Integer(3), sp.Rational(-3, 4), sp.Float(1.5)]
    + [sp.Float(-0.25), sp.Integer(-1)]
)
leaves = st.one_of(st.sampled_from([X, Y, P]), numbers)


def positive(e: sp.Expr) -> st.SearchStrategy[sp.Expr]:
    """Expressions of e that are > 0 for every real e, for log, sqrt and division."""
    return st.sampled_from(
        [
            1 + e**2,
            sp.exp(e) + ONE / 2,
            1 + sp.exp(-sp.Abs(e)),
            2 + sp.tanh(e),
            1 + relu(e),
        ]
    )


def unary(e: sp.Expr) -> st.SearchStrategy[sp.Expr]:
    return st.one_of(
        st.sampled_from(
            [
                sp.exp(sp.tanh(e)),  # exp of a bounded argument: never overflows
                sp.exp(-(e**2)),
                sp.Abs(e),
                sp.sign(e) * e**2,
                sp.tanh(e),
                sp.sin(e),
                sp.cos(e),
                1 / (1 + sp.exp(-e)),  # sigmoid, written out
                relu(e),
                clamp(e, -1, ONE / 2),
                clamp(e, -sp.oo, 1),
                clamp(e, Y, sp.oo),  # tensor bounds: torch.clamp's other overload
                clamp(e, X - 1, Y + 1),
                sp.Heaviside(e) * e,
                e**2,
                e**3,
                -e,
            ]
        ),
        positive(e).map(sp.log),
        positive(e).map(sp.sqrt),
        positive(e).map(lambda d: d ** sp.Rational(3, 2)),
        positive(e).map(lambda d: 1 / d),
    )


def binary(a: sp.Expr, b: sp.Expr) -> st.SearchStrategy[sp.Expr]:
    return st.one_of(
        st.sampled_from(
            [
                a + b,
                a - b,
                a * b,
                sp.Max(a, b),
                sp.Min(a, b),
                sp.Piecewise((a, b > 0), (b, True)),
                sp.Piecewise((a * b, a < b), (a - b, True)),
                sp.log(sp.exp(a) + sp.exp(b)),  # logsumexp: its argument is positive
            ]
        ),
        positive(b).map(lambda d: a / d),
    )


def _extend(children: st.SearchStrategy[sp.Expr]) -> st.SearchStrategy[sp.Expr]:
    return st.one_of(
        children.flatmap(unary),
        st.tuples(children, children).flatmap(lambda ab: binary(*ab)),
    )


expressions = st.recursive(leaves, _extend, max_leaves=4).filter(
    lambda e: isinstance(e, sp.Expr) and bool(e.free_symbols & {X, Y})
)

# --- the pipeline ------------------------------------------------------------------------------


def _note(text: str) -> None:
    """Shown with a failing example; the regression tests call the same code outside one."""
    if currently_in_test_context():
        note(text)


def _assume(condition: bool) -> None:
    """Discard a drawn example; a concrete regression example must never be discarded."""
    if currently_in_test_context():
        assume(condition)
    else:
        assert condition, "this example compares nothing: it cannot catch a regression"


def generated_source(expr: sp.Expr) -> tuple[LossModel, str]:
    """The model of `expr` and its generated file, by the same stages as `lossgen build`."""
    model = build_model(Loss("Fuzzed", expr), "fuzz.py")
    source = format_source(
        header(["fuzz.py"]) + render_loss(derive(model)), origin="fuzz"
    )
    _note(source)
    return model, source


def generate_module(expr: sp.Expr) -> tuple[LossCase, types.ModuleType]:
    """The generated module for `expr`, executed from its source."""
    model, source = generated_source(expr)
    module = load_generated(GeneratedFile("fuzzed.py", source))
    return LossCase(model, module), module


def comparable(expected: tuple[torch.Tensor, list[torch.Tensor]]) -> bool:
    """Whether a value and its gradients are finite and within what float64 rounding
    tolerances are set for."""
    values = [expected[0], *expected[1]]
    if not all(bool(torch.isfinite(v).all()) for v in values):
        return False
    return max(float(v.abs().max()) for v in values) <= 1e8


def check_against_autograd(expr: sp.Expr) -> int:
    """Compares the generated Function, and its fast path where that applies, with autograd;
    returns how many comparisons ran on the fast path."""
    _note(f"expr = {sp.srepr(expr)}")
    try:
        case, module = generate_module(expr)
    except AssertionError as error:
        if "no sampling domain" in str(error):
            assume(
                False
            )  # nowhere finite to compare (e.g. overflow everywhere): no test
        raise
    errors = Errors(rtol=1e-6, atol=1e-8)
    compared = fused = 0
    # the fast path at any size, its body uncompiled (the same text torch.compile gets)
    module.FUSED_MIN_NUMEL = 0
    module.COMPILE = False
    for index, shapes in enumerate(case.shape_cases):
        sample = case.away_from_kinks(shapes, seed=index)
        if case.kink_distance(sample) <= 1e-3:
            continue  # every draw lands next to a kink: skip this shape case
        for reduction in ("none", "sum"):
            expected = case.reference(sample, reduction)
            if not comparable(expected):
                continue
            errors.compare(case.generated(sample, reduction), expected)
            compared += 1
            if reduction == "sum":  # the fast path reduces; grad_output 0.5 rescales
                nodes: list[str] = []
                call = case.functional_noting(reduction, nodes)
                errors.compare(case.generated(sample, reduction, call), expected)
                fused += nodes == ["_FuzzedFusedBackward"]
    _assume(compared > 0)
    assert (
        errors.ok
    ), f"{errors.detail} (max abs {errors.max_abs}, max rel {errors.max_rel})"

    # gradcheck on a small input, params as tensors so their gradients are checked too.
    # (losses over dims: the first shape case, whose dims they reduce)
    small = (case.shape_cases[0][0], ()) if case.model.reduces else (((3,),), ())
    sample = case.away_from_kinks(small, seed=11)
    if case.kink_distance(sample) > 1e-3:
        leaves_ = _leaves(sample)
        positions = sample.grad_positions

        def call(*differentiable: torch.Tensor) -> torch.Tensor:
            args = list(leaves_)
            for position, tensor in zip(positions, differentiable):
                args[position] = tensor
            return case.function.apply(*args, "sum")

        inputs = tuple(leaves_[i] for i in positions)
        with torch.no_grad():
            value = call(*inputs)
        if bool(torch.isfinite(value)) and abs(float(value)) < 1e8:
            assert torch.autograd.gradcheck(
                call, inputs, eps=1e-6, atol=1e-5, rtol=1e-4
            )
    return fused


# 60 examples in CI, the same ones each run (the "ci" profile is derandomized), beside the
# fuzzers of tests/test_fuzz_reductions.py and tests/test_fuzz_triton.py: ~1.2 s each with the
# fast path compared too; the profile's own count where it sets one, e.g. 5000 with
# HYPOTHESIS_PROFILE=thorough (tests/conftest.py), which explores.
FUZZ_EXAMPLES = (
    60 if settings.default.max_examples == 100 else settings.default.max_examples
)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(expressions)
def test_random_losses_match_autograd(expr: sp.Expr) -> None:
    check_against_autograd(expr)


# --- regressions: expressions the fuzzer found, kept as concrete cases ---------------------------

_G = sp.log(sp.tanh(X) + 2)  # real, but SymPy cannot prove it
REGRESSIONS: list[sp.Expr] = [
    # `Loss("L", x)`: was rejected as "not number-valued" (a SymPy Symbol is also a Boolean),
    # then its forward returned its input as-is, which autograd refuses to save for backward.
    X,
    # SymPy left Derivative(sign(g), x) unevaluated for a g it cannot prove real: "needs
    # Derivative, which lossgen cannot generate". Abs(g) differentiated into a form that
    # divides by g.
    _G**2 * sp.sign(_G),
    sp.Abs(_G - Y),
    # CSE made the constant sqrt(tanh(1/2) + 2) an intermediate `tmp1 = math.sqrt(...)`, and
    # Min/Max of it printed as torch.minimum(tmp0, tmp1): a TypeError on a Python float.
    sp.Min(sp.sqrt(sp.tanh(ONE / 2) + 2), sp.exp(-(X**2))) ** 2,
    sp.sqrt(relu(sp.Max(X + Y, sp.sqrt(sp.tanh(ONE / 2) + 2))) + 1),
    # SymPy folded this Piecewise (its condition is a > a) to 0 during CSE: the forward
    # returned the Python int 0 (no .mean()) after two unused intermediates.
    sp.Piecewise(
        (
            sp.Rational(9, 16) / (sp.tanh(X) + 2) ** 2,
            1 / (sp.tanh(X) + 2) > 1 / (sp.tanh(X) + 2),
        ),
        (0, True),
    ),
    # A tensor bound: the reference evaluator compared it with -inf, "Boolean value of Tensor
    # with more than one value is ambiguous".
    clamp(X, Y, sp.oo),
    clamp(sp.tanh(X), Y - 1, Y + 1),
    # torch.clamp's backward failed in the reference where x was smaller than its two tensor
    # bounds ("output with shape [5, 1] doesn't match the broadcast shape [5, 4]").
    clamp(X, X - 1, Y + 1),
    # Bounds the wrong way round give the upper one (torch.clamp's value); the derivative sent
    # gradient to the lower one too.
    clamp(X, Y + 1, Y - 1),
    clamp(P / (relu(sp.Max(X, Y)) + 1), X - 1, Y + 1),
    # A condition on a Piecewise: SymPy writes it as an ITE, which no printer knew ("unsupported
    # in a loss expression: ITE").
    sp.Piecewise(
        (X, sp.Piecewise((X / 2, X < ONE / 2), (X - ONE / 2, True)) > 0),
        (sp.Piecewise((X / 2, X < ONE / 2), (X - ONE / 2, True)), True),
    ),
]


@pytest.mark.parametrize("expr", REGRESSIONS, ids=str)
def test_fuzz_regression(expr: sp.Expr) -> None:
    check_against_autograd(expr)


def test_the_pipeline_rejects_nothing_in_the_vocabulary() -> None:
    # A sanity check of the harness itself: a loss that uses every kind of node builds and
    # matches autograd, so a fuzz run that passes is not passing by rejecting everything.
    expr = (
        sp.Max(X, Y) * P
        + sp.log(1 + sp.exp(-sp.Abs(X)))
        + sp.Piecewise((X**2, X > Y), (sp.sqrt(1 + Y**2), True))
        + relu(X - 1) * clamp(Y, -1, 1)
        + sp.Heaviside(Y) * sp.tanh(X)
    )
    try:
        fused = check_against_autograd(expr)
    except SpecError as error:
        pytest.fail(str(error))
    assert fused > 0  # the fast path was compared too


def test_abs_of_an_expression_has_torchs_gradient_at_its_kink() -> None:
    # abs'(0) = 0 as in torch, where SymPy's own rule for Abs(g) divided by g (0/0 = NaN).
    case, _ = generate_module(sp.Abs(_G - Y))
    x = torch.tensor([0.5, -0.25], dtype=torch.float64, requires_grad=True)
    y = torch.log(torch.tanh(x) + 2).detach()  # exactly on the kink
    value = case.function.apply(x, y, "sum")
    (grad,) = torch.autograd.grad(value, [x])
    assert grad.tolist() == [0.0, 0.0]


# --- clamp's gradient at its bounds --------------------------------------------------------------

_TORCH_CLAMP = torch.clamp


def _clamp_as_torch_2_14(x, min=None, max=None):  # noqa: A002 - torch.clamp's keywords
    """torch.clamp's value, differentiated as torch 2.14 and later do at a bound: no gradient
    to x there (before 2.14 it passed 1). Ties with a tensor bound give it none either.
    """
    bounds = [b.detach() if isinstance(b, torch.Tensor) else b for b in (min, max)]
    value = _TORCH_CLAMP(x.detach(), *bounds)
    strictly_inside = torch.ones_like(value, dtype=torch.bool)
    for bound, beyond in ((min, torch.lt), (max, torch.gt)):
        if bound is None:
            continue
        strictly_inside = strictly_inside & ~beyond(x, bound) & (x != bound)
        if isinstance(bound, torch.Tensor):
            value = value + (bound - bound.detach()) * beyond(x, bound)
    return value + (x - x.detach()) * strictly_inside


@pytest.mark.parametrize(
    "expr", [clamp(X, -1, ONE / 2), clamp(X, Y, sp.oo), clamp(X, Y - 1, Y + 1)], ids=str
)
def test_clamp_passes_gradient_1_at_its_bounds_whatever_torch_clamp_does(
    expr: sp.Expr, monkeypatch: pytest.MonkeyPatch
) -> None:
    # lossgen's clamp passes all of the gradient to x at a bound (the vocabulary's contract),
    # and `lossgen check` must see that on every torch. torch 2.14 changed torch.clamp's own
    # gradient there, which the reference evaluator had inherited: stood in for here.
    monkeypatch.setattr(torch, "clamp", _clamp_as_torch_2_14)
    case, _ = generate_module(expr)
    y = torch.tensor([0.0, 0.25, -1.5, 2.0, 0.5], dtype=torch.float64)
    low, high = {
        "clamp(x, -1, 1/2)": (torch.full_like(y, -1.0), torch.full_like(y, 0.5)),
        "clamp(x, y, oo)": (y, torch.full_like(y, math.inf)),
        "clamp(x, y - 1, y + 1)": (y - 1, y + 1),
    }[str(expr)]
    finite_high = torch.where(high.isinf(), y + 3, high)
    # x on each finite bound, then inside, below and above: one of each per element
    x = torch.stack(
        [low, finite_high, (low + finite_high) / 2, low - 1, finite_high + 1]
    )
    x, y, low, high = (t.flatten() for t in torch.broadcast_tensors(x, y, low, high))
    inside = ((x >= low) & (x <= high)).double()
    leaves = [t.clone().requires_grad_() for t in ((x, y) if expr.has(Y) else (x,))]
    reference = evaluate(expr, dict(zip((X, Y), leaves))).sum()
    generated = case.function.apply(*leaves, "sum")
    for loss in (reference, generated):
        gradients = torch.autograd.grad(loss, leaves)
        assert gradients[0].tolist() == inside.tolist()
        if expr.has(Y):  # the bounds' gradient: where x is beyond them, never at a tie
            assert gradients[1].tolist() == (1 - inside).tolist()
