"""Every node the printer supports, printed and then run: values and dtypes checked against an
independent expectation (lossgen.reference, or torch/math written out by hand here).

Strings are asserted only where the string is the contract (sqrt/rsqrt spelling, error messages).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import sympy as sp
import torch
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.printer import (
    ELEMENTWISE_FUNCTIONS,
    SUPPORTED_NODES,
    UnsupportedExpressionError,
    print_torch,
    unsupported_nodes,
)
from lossgen.reductions import Amax, Amin, LogSumExp, Mean, OneHot, Sum, Tie
from lossgen.reference import evaluate
from lossgen.vocabulary import Tensor, clamp, guarded, relu

x = sp.Symbol("x", real=True)
y = sp.Symbol("y", real=True)
z = sp.Symbol("z", real=True)  # positive values: logs, roots, symbolic exponents
u = sp.Symbol("u", real=True)  # values in (-1, 1): asin, acos, atanh
SYMBOLS = (x, y, z, u)

# x has a 0 (sign, Heaviside, Abs kinks) and ties with y at -0.5, 0 and 1.5 (Eq, Max ties).
VALUES = {
    x: [-2.0, -0.5, 0.0, 0.5, 1.5, 3.0],
    y: [1.0, -0.5, 0.0, 2.0, 1.5, -1.0],
    z: [0.25, 0.5, 1.0, 2.0, 3.0, 4.0],
    u: [-0.75, -0.5, 0.0, 0.25, 0.5, 0.875],
}
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# bfloat16 keeps 8 bits of mantissa: compare it loosely against a float64 expectation.
TOLERANCE = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}


def case_id(value: object) -> str | None:
    """Test ids from expressions and numbers; None (pytest's own) for the expected lambdas."""
    return None if callable(value) and not isinstance(value, sp.Basic) else str(value)


def tensors(dtype: torch.dtype = torch.float64) -> dict[sp.Symbol, torch.Tensor]:
    return {s: torch.tensor(v, dtype=dtype) for s, v in VALUES.items()}


def run(expr: sp.Basic, values: dict[sp.Symbol, torch.Tensor]) -> object:
    """Print `expr` and evaluate the code with torch, math and one tensor per symbol."""
    names = {s: s.name for s in values}
    code = print_torch(expr, names, like="x")
    namespace = {"torch": torch, "math": math, **{s.name: t for s, t in values.items()}}
    return eval(code, namespace)  # noqa: S307 - our own printer's output, in a test


def check(
    expr: sp.Basic,
    expected: Callable[[dict[sp.Symbol, torch.Tensor]], torch.Tensor] | None = None,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    result_dtype: torch.dtype | None = None,
) -> None:
    """Run `expr` in each dtype and compare with `expected` computed in float64.

    `expected` defaults to lossgen.reference.evaluate, which walks the tree with torch ops and
    shares no code with the printer. The result must keep the inputs' dtype (or `result_dtype`).
    """
    if expected is None:

        def expected(values: dict[sp.Symbol, torch.Tensor]) -> torch.Tensor:
            return evaluate(expr, values)

    truth = expected(tensors(torch.float64))
    for dtype in dtypes:
        got = run(expr, tensors(dtype))
        assert isinstance(got, torch.Tensor), f"{expr} printed a {type(got).__name__}"
        assert got.dtype == (result_dtype or dtype), (expr, dtype, got.dtype)
        assert got.shape == truth.shape
        if got.dtype == torch.bool:
            assert torch.equal(got, truth), (expr, got, truth)
        else:
            torch.testing.assert_close(
                got.double(), truth.double(), equal_nan=True, **TOLERANCE[dtype]
            )


def check_number(expr: sp.Basic, expected: float) -> None:
    """A symbol-free expression prints through `math` and gives a Python number."""
    got = run(expr, tensors())
    assert isinstance(got, (int, float)) and not isinstance(got, bool), (expr, got)
    assert got == pytest.approx(expected, rel=1e-15, abs=1e-15), (expr, got)


def code_of(expr: sp.Basic) -> str:
    return print_torch(expr, {s: s.name for s in SYMBOLS}, like="x")


# --- atoms ---------------------------------------------------------------------------------


def test_symbol_prints_its_name() -> None:
    values = tensors()
    assert run(x, values) is values[x]
    assert print_torch(x, {x: "input_"}, like="input_") == "input_"


def test_unknown_symbol_is_an_error() -> None:
    w = sp.Symbol("w", real=True)
    with pytest.raises(UnsupportedExpressionError, match="unknown symbol 'w'"):
        print_torch(x + w, {x: "x"}, like="x")


@pytest.mark.parametrize(
    "number, value",
    [
        (sp.Integer(3), 3),
        (sp.Integer(-7), -7),
        (sp.Rational(1, 3), 1 / 3),
        (sp.Rational(-5, 2), -2.5),
        (sp.Float(0.1), 0.1),
        (sp.Float("1e-30"), 1e-30),
        (sp.Float("-2.5e300"), -2.5e300),
        (sp.pi, math.pi),
        (sp.E, math.e),
        (2 * sp.pi, 2 * math.pi),
        (sp.sqrt(2), math.sqrt(2)),
        (
            1 / sp.sqrt(sp.pi),
            1 / math.sqrt(math.pi),
        ),  # Pow(pi, -1/2): not a bare sqrt(...)
        (sp.Integer(2) ** sp.Rational(1, 3), 2 ** (1 / 3)),
        (sp.pi**2, math.pi**2),
        (sp.pi ** sp.Rational(-3, 2), math.pi**-1.5),
        (sp.oo, math.inf),
        (-sp.oo, -math.inf),
    ],
    ids=case_id,
)
def test_numbers(number: sp.Expr, value: float) -> None:
    check_number(number, value)


def test_integer_is_exact_and_rational_is_not_floor_division() -> None:
    assert run(sp.Integer(2**60), tensors()) == 2**60
    check(x + sp.Rational(1, 3), lambda v: v[x] + 1 / 3)
    check(x * sp.Rational(-2, 7), lambda v: v[x] * (-2 / 7))


@pytest.mark.parametrize(
    "expr, expected",
    [
        (sp.pi * x, lambda v: math.pi * v[x]),
        (x + sp.E, lambda v: v[x] + math.e),
        (sp.Float(0.1) * x + sp.Float("1e-30"), lambda v: 0.1 * v[x] + 1e-30),
        (sp.oo * x, lambda v: v[x] * math.inf),  # oo * 0 is nan, as in torch
        (-sp.oo * z, lambda v: torch.full_like(v[z], -math.inf)),
    ],
    ids=case_id,
)
def test_constants_with_tensors(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


# --- arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        (x + y + 1, lambda v: v[x] + v[y] + 1),
        (x - 2 * y, lambda v: v[x] - 2 * v[y]),
        (3 * x * y, lambda v: 3 * v[x] * v[y]),
        (-x, lambda v: -v[x]),
        (x / z, lambda v: v[x] / v[z]),
        (-(x**2) / 2, lambda v: -(v[x] ** 2) / 2),
        (x**2, lambda v: v[x] * v[x]),
        (x**3, lambda v: v[x] * v[x] * v[x]),
        (z**-1, lambda v: 1 / v[z]),
        (z**-2, lambda v: 1 / (v[z] * v[z])),
        (x / z**3, lambda v: v[x] / (v[z] * v[z] * v[z])),
        (z ** sp.Rational(1, 3), lambda v: v[z].double() ** (1 / 3)),
        (z ** sp.Rational(3, 2), lambda v: v[z] * torch.sqrt(v[z])),
        (z ** sp.Rational(-2, 3), lambda v: v[z] ** (-2 / 3)),
        (z ** sp.Float(2.5), lambda v: v[z] ** 2.5),
        (z**x, lambda v: torch.exp(v[x] * torch.log(v[z]))),
        ((z + 1) ** (x - y), lambda v: torch.exp((v[x] - v[y]) * torch.log(v[z] + 1))),
        (2**x, lambda v: torch.exp(v[x] * math.log(2))),
        (sp.pi**x, lambda v: torch.exp(v[x] * math.log(math.pi))),
        (sp.Rational(1, 2) ** x, lambda v: torch.exp(-v[x] * math.log(2))),
        (sp.exp(x), lambda v: torch.exp(v[x])),
        (sp.E ** (2 * x), lambda v: torch.exp(2 * v[x])),
    ],
    ids=case_id,
)
def test_add_mul_pow(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


def test_square_root_prints_sqrt_and_rsqrt() -> None:
    # the spelling is the contract: one fused kernel, no pow(x, 0.5)
    check(sp.sqrt(z), lambda v: torch.sqrt(v[z]))
    assert code_of(sp.sqrt(z)) == "torch.sqrt(z)"
    check(1 / sp.sqrt(z), lambda v: 1 / torch.sqrt(v[z]))
    assert code_of(1 / sp.sqrt(z)) == "torch.rsqrt(z)"
    check(sp.sqrt(z**2 + x**2), lambda v: torch.sqrt(v[z] ** 2 + v[x] ** 2))
    check(x / sp.sqrt(z + 1), lambda v: v[x] / torch.sqrt(v[z] + 1))


def test_number_factors_inside_tensor_expressions() -> None:
    check(x / sp.sqrt(sp.pi), lambda v: v[x] / math.sqrt(math.pi))
    check(
        sp.Max(x, 1 / sp.sqrt(sp.pi)), lambda v: v[x].clamp(min=1 / math.sqrt(math.pi))
    )
    check(x * sp.exp(2) + sp.log(2), lambda v: v[x] * math.exp(2) + math.log(2))


# --- elementwise functions -----------------------------------------------------------------

# function -> (the symbol whose values are in its domain, torch op, math op), written out here
FUNCTIONS: dict[type, tuple[sp.Symbol, Callable, Callable | None]] = {
    sp.exp: (x, torch.exp, math.exp),
    sp.log: (z, torch.log, math.log),
    sp.Abs: (x, torch.abs, abs),
    sp.sin: (x, torch.sin, math.sin),
    sp.cos: (x, torch.cos, math.cos),
    sp.tan: (u, torch.tan, math.tan),
    sp.asin: (u, torch.asin, math.asin),
    sp.acos: (u, torch.acos, math.acos),
    sp.atan: (x, torch.atan, math.atan),
    sp.sinh: (x, torch.sinh, math.sinh),
    sp.cosh: (x, torch.cosh, math.cosh),
    sp.tanh: (x, torch.tanh, math.tanh),
    sp.asinh: (x, torch.asinh, math.asinh),
    sp.acosh: (z, lambda t: torch.acosh(t + 1), lambda n: math.acosh(n + 1)),
    sp.atanh: (u, torch.atanh, math.atanh),
    sp.erf: (x, torch.erf, math.erf),
    sp.erfc: (x, torch.erfc, math.erfc),
    log1p: (z, torch.log1p, math.log1p),
    expm1: (x, torch.expm1, math.expm1),
    relu: (x, lambda t: torch.clamp(t, min=0), None),  # relu of a number folds to Max
    # The stable functions fold plain numbers into elementary forms: no math spelling.
    sigmoid: (x, lambda t: 1 / (1 + torch.exp(-t)), None),
    softplus: (x, lambda t: torch.log(1 + torch.exp(t)), None),
}
BINARY_FUNCTIONS = {xlogy}


def test_function_table_covers_the_printer() -> None:
    assert set(FUNCTIONS) | BINARY_FUNCTIONS == set(ELEMENTWISE_FUNCTIONS)


@pytest.mark.parametrize(
    "expr, expected",
    [
        (xlogy(z, x + 3), lambda v: v[z] * torch.log(v[x] + 3)),
        (xlogy(x, z), lambda v: torch.where(v[x] == 0, 0.0, v[x] * torch.log(v[z]))),
        (logsigmoid(x), lambda v: torch.log(1 / (1 + torch.exp(-v[x])))),
        (
            logsumexp(x, y, z),
            lambda v: torch.log(torch.exp(v[x]) + torch.exp(v[y]) + torch.exp(v[z])),
        ),
    ],
    ids=case_id,
)
def test_stable_functions(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


def test_logsumexp_of_terms_is_elementwise_and_stable() -> None:
    # Pairwise logaddexp, not a torch.stack of its arguments: the stack is a tensor as large
    # as all of them (JensenShannon's compiled step peaked at 5 inputs' memory).
    code = print_torch(logsumexp(x, y, 2), {x: "x", y: "y"}, like="x")
    assert "stack" not in code
    big = torch.tensor(
        [1000.0, -1000.0, -math.inf, math.inf, math.nan], dtype=torch.float64
    )
    other = torch.tensor([1000.0, 5.0, -math.inf, 1.0, 0.0], dtype=torch.float64)
    got = eval(
        code, {"torch": torch, "x": big, "y": other}
    )  # noqa: S307 - our printer's
    expected = torch.logsumexp(
        torch.stack([big, other, torch.full_like(big, 2.0)]), dim=0
    )
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=1e-15, atol=0)


def test_xlogy_prints_the_written_out_helper_for_torch_compile() -> None:
    names = {s: s.name for s in SYMBOLS}
    compiled = print_torch(2 * xlogy(x, z + 1), names, like="x", compiled=True)
    assert compiled == "2*_xlogy(x, z + 1)"
    assert code_of(2 * xlogy(x, z + 1)) == "2*torch.xlogy(x, z + 1)"
    # a number argument keeps torch.xlogy (the helper's torch.where needs tensors)
    assert (
        print_torch(xlogy(x, 2), names, like="x", compiled=True) == "torch.xlogy(x, 2)"
    )


@pytest.mark.parametrize("function", list(FUNCTIONS), ids=lambda f: f.__name__)
def test_elementwise_function_of_a_tensor(function: type) -> None:
    symbol, torch_op, _ = FUNCTIONS[function]
    argument = symbol + 1 if function is sp.acosh else symbol
    expr = function(argument)
    check(expr, lambda v: torch_op(v[symbol]))
    # and nested in arithmetic, where precedence matters
    check(2 * function(argument) - 1, lambda v: 2 * torch_op(v[symbol]) - 1)


NUMBER_FUNCTIONS = [f for f in FUNCTIONS if FUNCTIONS[f][2] is not None]


@pytest.mark.parametrize("function", NUMBER_FUNCTIONS, ids=lambda f: f.__name__)
def test_elementwise_function_of_a_number_uses_math(function: type) -> None:
    _, _, math_op = FUNCTIONS[function]
    # FUNCTIONS' acosh takes its argument minus 1 (to stay in its domain), as for tensors
    argument = sp.Rational(3, 2) if function is sp.acosh else sp.Rational(1, 2)
    expr = function(argument, evaluate=False)
    expected = math_op(0.5)
    assert expr.is_number  # evaluate=False keeps asin(1/2) from becoming pi/6, etc.
    assert "torch" not in code_of(expr)
    check_number(expr, expected)


@pytest.mark.parametrize(
    "expr, expected",
    [
        (sp.exp(2), math.exp(2)),
        (sp.log(2), math.log(2)),
        (sp.sqrt(2), math.sqrt(2)),
        (sp.log(2 * sp.pi) / 2, math.log(2 * math.pi) / 2),
        (sp.erf(1) + sp.exp(-1), math.erf(1) + math.exp(-1)),
    ],
    ids=case_id,
)
def test_numbers_through_math(expr: sp.Expr, expected: float) -> None:
    assert "torch" not in code_of(expr)
    check_number(expr, expected)


@pytest.mark.parametrize(
    "expr, expected",
    [
        (relu(x), lambda v: torch.where(v[x] > 0, v[x], 0.0)),
        (relu(x - y), lambda v: torch.where(v[x] > v[y], v[x] - v[y], 0.0)),
        (
            sp.sign(x),
            lambda v: torch.tensor([-1.0, -1, 0, 1, 1, 1], dtype=torch.float64),
        ),
        (sp.sign(x - y), lambda v: torch.sign(v[x] - v[y])),
    ],
    ids=case_id,
)
def test_relu_and_sign(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


# --- Max, Min, clamp -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        (sp.Max(x, y), lambda v: torch.maximum(v[x], v[y])),
        (sp.Min(x, y), lambda v: torch.minimum(v[x], v[y])),
        (sp.Max(x, 0), lambda v: torch.where(v[x] > 0, v[x], 0.0)),
        (sp.Min(x, 0), lambda v: torch.where(v[x] < 0, v[x], 0.0)),
        (
            sp.Max(x, sp.Rational(1, 3)),
            lambda v: torch.where(v[x] > 1 / 3, v[x], 1 / 3),
        ),
        (sp.Min(x, sp.pi), lambda v: torch.where(v[x] < math.pi, v[x], math.pi)),
        (
            sp.Max(x, y, 0),
            lambda v: torch.maximum(torch.maximum(v[x], v[y]), torch.zeros(6)),
        ),
        (
            sp.Min(x, y, 1),
            lambda v: torch.minimum(torch.minimum(v[x], v[y]), torch.ones(6)),
        ),
        (sp.Max(x, y, z), lambda v: torch.maximum(torch.maximum(v[x], v[y]), v[z])),
        (sp.Min(x, y, z), lambda v: torch.minimum(torch.minimum(v[x], v[y]), v[z])),
        (sp.Max(2 * x, 1 - x), lambda v: torch.maximum(2 * v[x], 1 - v[x])),
    ],
    ids=case_id,
)
def test_max_min(expr: sp.Expr, expected: Callable) -> None:
    check(expr, lambda v: expected(v).double())


def _clamp(t: torch.Tensor, low: object, high: object) -> torch.Tensor:
    """torch.clamp's definition, min(max(t, low), high), written out."""
    t = t.double()
    if low is not None:
        t = torch.where(t < low, low, t)
    if high is not None:
        t = torch.where(t > high, high, t)
    return t


@pytest.mark.parametrize(
    "expr, expected",
    [
        (clamp(x, 0, 1), lambda v: _clamp(v[x], 0.0, 1.0)),
        (clamp(x, -sp.Rational(1, 2), sp.pi), lambda v: _clamp(v[x], -0.5, math.pi)),
        (clamp(x, y - 1, y + 1), lambda v: _clamp(v[x], v[y] - 1, v[y] + 1)),
        (clamp(x, y, z), lambda v: _clamp(v[x], v[y], v[z])),
        (clamp(x, y, 1), lambda v: _clamp(v[x], v[y], 1.0)),
        (clamp(x, 0, z), lambda v: _clamp(v[x], 0.0, v[z])),
        (clamp(x, -sp.oo, 1), lambda v: _clamp(v[x], None, 1.0)),
        (clamp(x, 0, sp.oo), lambda v: _clamp(v[x], 0.0, None)),
        (clamp(x, y, sp.oo), lambda v: _clamp(v[x], v[y], None)),
        (clamp(x, -sp.oo, y), lambda v: _clamp(v[x], None, v[y])),
        (clamp(x, -sp.oo, sp.oo), lambda v: v[x]),
        (clamp(1, y, z), lambda v: _clamp(torch.ones(6), v[y], v[z])),
        (
            clamp(sp.Rational(1, 2), -sp.oo, y),
            lambda v: _clamp(torch.full((6,), 0.5), None, v[y]),
        ),
    ],
    ids=case_id,
)
def test_clamp(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


# --- Heaviside, guarded --------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        sp.Heaviside(x, h)
        for h in (1 / sp.S(2), 0, 1, sp.Rational(1, 4), sp.Float(0.3), 2)
    ],
    ids=case_id,
)
def test_heaviside(expr: sp.Heaviside) -> None:
    at_zero = float(expr.args[1])

    def expected(v: dict[sp.Symbol, torch.Tensor]) -> torch.Tensor:
        return torch.heaviside(v[x], torch.tensor(at_zero, dtype=v[x].dtype))

    check(expr, expected)
    # the value at 0 is the one asked for, exactly
    assert run(expr, tensors())[2].item() == at_zero


def test_heaviside_default_and_symbolic_value_at_zero() -> None:
    check(
        sp.Heaviside(x),
        lambda v: torch.heaviside(v[x], torch.tensor(0.5, dtype=v[x].dtype)),
    )
    check(sp.Heaviside(x, y), lambda v: torch.heaviside(v[x], v[y]))
    check(sp.Heaviside(x - y, 0), lambda v: (v[x] > v[y]).double())


def test_heaviside_has_a_zero_gradient() -> None:
    # it is written with sign(), which autograd differentiates to 0 everywhere
    values = tensors()
    values[x].requires_grad_()
    run(sp.Heaviside(x, sp.Rational(1, 4)), values).sum().backward()
    assert values[x].grad.tolist() == [0.0] * 6


@pytest.mark.parametrize(
    "expr, expected",
    [
        (
            guarded(sp.log(z), x > 0),
            lambda v: torch.where(
                v[x] > 0, torch.log(v[z]), torch.ones(6, dtype=torch.float64)
            ),
        ),
        # where the condition fails the argument is 1, so log/division there stay finite
        (
            sp.log(guarded(x, x > 0)),
            lambda v: torch.log(torch.where(v[x] > 0, v[x], 1.0)),
        ),
    ],
    ids=case_id,
)
def test_guarded(expr: sp.Expr, expected: Callable) -> None:
    check(expr, expected)


# --- Piecewise -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        (
            sp.Piecewise((x**2, x < 1), (2 * x - 1, True)),
            lambda v: torch.where(v[x] < 1, v[x] ** 2, 2 * v[x] - 1),
        ),
        (
            sp.Piecewise((x, x < 0), (0, True)),
            lambda v: torch.where(v[x] < 0, v[x], 0.0),
        ),
        (
            sp.Piecewise((-1, x < -1), (x, x <= 1), (sp.exp(x - 1), True)),
            lambda v: torch.where(
                v[x] < -1, -1.0, torch.where(v[x] <= 1, v[x], torch.exp(v[x] - 1))
            ),
        ),
        (
            sp.Piecewise((y, (x > 0) & (y > 0)), (z, (x < 0) | (y < 0)), (x + z, True)),
            lambda v: torch.where(
                (v[x] > 0) & (v[y] > 0),
                v[y],
                torch.where((v[x] < 0) | (v[y] < 0), v[z], v[x] + v[z]),
            ),
        ),
    ],
    ids=["2 branches", "number branch", "3 branches", "and/or conditions"],
)
def test_piecewise(expr: sp.Piecewise, expected: Callable) -> None:
    check(expr, expected)


@pytest.mark.parametrize(
    "expr, expected",
    [
        (sp.Piecewise((1, x > 0), (0, True)), [0, 0, 0, 1, 1, 1]),
        (
            sp.Piecewise((sp.Float(0.1), x > 0), (sp.Float(0.2), True)),
            [0.2] * 3 + [0.1] * 3,
        ),
        (
            sp.Piecewise((sp.Rational(1, 3), x < 0), (sp.pi, x < 1), (-sp.oo, True)),
            [1 / 3, 1 / 3, math.pi, math.pi, -math.inf, -math.inf],
        ),
        (
            sp.Piecewise((sp.oo, x < y), (sp.exp(1), True)),
            [math.inf, math.e, math.e, math.inf, math.e, math.e],
        ),
    ],
    ids=["integers", "floats", "3 branches", "inf and math"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
def test_piecewise_of_numbers_keeps_the_input_dtype(
    expr: sp.Piecewise, expected: list[float], dtype: torch.dtype
) -> None:
    got = run(expr, tensors(dtype))
    assert got.dtype == dtype
    # exactly the numbers rounded once to the dtype (float64 must not pass through float32)
    assert torch.equal(got, torch.tensor(expected, dtype=dtype))


# --- conditions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, op",
    [
        (x < y, torch.lt),
        (x <= y, torch.le),
        (x > y, torch.gt),
        (x >= y, torch.ge),
        (sp.Eq(x, y), torch.eq),
        (sp.Ne(x, y), torch.ne),
    ],
    ids=case_id,
)
def test_relationals(expr: sp.Basic, op: Callable) -> None:
    check(expr, lambda v: op(v[x], v[y]), result_dtype=torch.bool)
    # with arithmetic on both sides
    compound = type(expr)(x + 1, 2 * y - z)
    check(compound, lambda v: op(v[x] + 1, 2 * v[y] - v[z]), result_dtype=torch.bool)


@pytest.mark.parametrize(
    "expr, expected",
    [
        (sp.And(x > 0, y < 1), lambda v: (v[x] > 0) & (v[y] < 1)),
        (sp.Or(x > 0, y < 1), lambda v: (v[x] > 0) | (v[y] < 1)),
        (sp.And(x > -1, y < 2, z > 1), lambda v: (v[x] > -1) & (v[y] < 2) & (v[z] > 1)),
        (sp.Not(sp.And(x > 0, y < 1)), lambda v: ~((v[x] > 0) & (v[y] < 1))),
        (sp.Not(sp.Or(x > 0, sp.Eq(x, y))), lambda v: ~((v[x] > 0) | (v[x] == v[y]))),
        (sp.Or(sp.And(x > 0, y > 0), sp.Not(sp.Or(x > 1, y < -2))), None),
    ],
    ids=case_id,
)
def test_and_or_not(expr: sp.Basic, expected: Callable | None) -> None:
    check(expr, expected, result_dtype=torch.bool)


@pytest.mark.parametrize(
    "atom, value", [(sp.true, True), (sp.false, False)], ids=case_id
)
def test_boolean_atoms(atom: sp.Basic, value: bool) -> None:
    assert run(atom, tensors()) is value


# --- strict mode ---------------------------------------------------------------------------

f = sp.Function("f")


@pytest.mark.parametrize(
    "expr, name",
    [
        (sp.zeta(x), "zeta"),
        (sp.gamma(x) + x, "gamma"),
        (sp.Integral(x**2, x), "Integral"),
        (sp.Derivative(f(x), x), "Derivative"),
        (f(x), "f"),
        (sp.I * x, "ImaginaryUnit"),
        (x + sp.nan, "NaN"),
        (sp.zoo * x, "ComplexInfinity"),
        (sp.DiracDelta(x), "DiracDelta"),
        (x**sp.I, "complex power"),
        (sp.Piecewise((x, x > 0)), "Piecewise without a final (expr, True) branch"),
        (
            sp.Piecewise((x, x > 0), (y, x < -1)),
            "Piecewise without a final (expr, True) branch",
        ),
    ],
    ids=case_id,
)
def test_unsupported_nodes_are_errors(expr: sp.Basic, name: str) -> None:
    assert name in unsupported_nodes(expr)
    message = f"cannot print as torch code: .*{re.escape(name)}"
    with pytest.raises(UnsupportedExpressionError, match=message):
        code_of(expr)


def test_unsupported_nodes_lists_each_name_once_sorted() -> None:
    expr = sp.zeta(x) + sp.gamma(y) + sp.zeta(y) * sp.DiracDelta(x) * sp.gamma(x)
    assert unsupported_nodes(expr) == ["DiracDelta", "gamma", "zeta"]
    assert unsupported_nodes(sp.Piecewise((sp.zeta(x), x > 0))) == [
        "Piecewise without a final (expr, True) branch",
        "zeta",
    ]


def test_supported_expressions_have_no_unsupported_nodes() -> None:
    expr = sp.Piecewise(
        (clamp(x, 0, sp.oo) + relu(y) * sp.Heaviside(x, 0), (x > 0) & ~(y < 1)),
        (
            guarded(sp.log(z), z > 0) + sp.Max(x, y, 1) * sp.pi ** sp.Rational(1, 3),
            True,
        ),
    )
    assert unsupported_nodes(expr) == []


# --- coverage of the printer's node list ---------------------------------------------------


def _evaluated_cases() -> list[object]:
    """Every parametrized case of the tests above that print and run code."""
    cases: list[object] = []
    for name, test in globals().items():
        if not name.startswith("test_") or name == "test_unsupported_nodes_are_errors":
            continue
        for mark in getattr(test, "pytestmark", []):
            if mark.name == "parametrize":
                for case in mark.args[1]:
                    cases += case if isinstance(case, tuple) else [case]
    return cases


def test_every_supported_node_is_exercised() -> None:
    seen: set[type] = set()
    for case in _evaluated_cases():
        if isinstance(case, sp.Basic):
            seen.update(type(node) for node in sp.preorder_traversal(case))
        elif isinstance(case, type) and issubclass(
            case, sp.Basic
        ):  # FUNCTIONS' parameters
            seen.add(case)
    missing = [
        kind.__name__
        for kind in SUPPORTED_NODES
        if not any(issubclass(s, kind) for s in seen)
    ]
    assert missing == []


# --- reductions over dims (keepdim, over the broadcast shape `shape`) ---------------------------

a2 = sp.Symbol("a2", real=True)  # a (4, 3) tensor
row = sp.Symbol("row", real=True)  # a (4, 1) tensor: broadcast along dim 1
classes = Tensor("classes", index_of=1)  # (4, 1) after unsqueezing at dim 1
A2 = torch.tensor(
    [[0.5, -1.0, 2.0], [3.0, 3.0, -2.0], [0.0, 1.5, -0.5], [1.0, -3.0, 0.25]],
    dtype=torch.float64,
)
ROW = torch.tensor([[1.0], [-2.0], [0.5], [4.0]], dtype=torch.float64)
CLASSES = torch.tensor([[2], [0], [1], [1]])


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (Sum(a2, 1), lambda: A2.sum(1, keepdim=True)),
        (Sum(a2, (0, 1)), lambda: A2.sum().reshape(1, 1)),
        (Mean(a2 * row, 0), lambda: (A2 * ROW).mean(0, keepdim=True)),
        (LogSumExp(a2, 1), lambda: torch.logsumexp(A2, 1, keepdim=True)),
        (Amax(a2, 1), lambda: A2.amax(1, keepdim=True)),
        (Amin(a2, None), lambda: A2.amin().reshape(1, 1)),
        # a body constant along the reduced dim still counts every element of the shape
        (Sum(row, 1), lambda: ROW * 3),
        (a2 - LogSumExp(a2, -1), lambda: torch.log_softmax(A2, -1)),
        (OneHot(classes), lambda: torch.nn.functional.one_hot(CLASSES[:, 0], 3)),
        # amax's backward mask: 1 at the maxima of each row, both of a tie
        (Tie(a2, Amax(a2, 1)), lambda: (A2 == A2.amax(1, keepdim=True)).double()),
    ],
    ids=case_id,
)
def test_reductions_print_and_run(
    expr: sp.Expr, expected: Callable[[], torch.Tensor]
) -> None:
    names = {a2: "a2", row: "row", classes: "classes"}
    code = print_torch(expr, names, like="a2")

    def one_hot(index, dim, shape, like):  # the generated file's helper, independently
        one_hot = torch.nn.functional.one_hot(index.squeeze(dim), shape[dim])
        return one_hot.movedim(-1, dim).to(like.dtype)

    def expand_along(value, dims, shape):  # the generated file's helper, independently
        dims = {d % len(shape) for d in ((dims,) if isinstance(dims, int) else dims)}
        sizes = [n if d in dims else 1 for d, n in enumerate(shape)]
        return value * torch.ones(sizes, dtype=value.dtype)

    namespace = {
        "_expand_along": expand_along,
        "torch": torch,
        "math": math,
        "a2": A2,
        "row": ROW,
        "classes": CLASSES,
        "shape": torch.Size([4, 3]),
        "_one_hot": one_hot,
    }
    got = eval(code, namespace)  # noqa: S307 - our own printer's output, in a test
    want = expected()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-12, atol=1e-12)
    env = {a2: A2, row: ROW, classes: CLASSES}
    reference = evaluate(expr, env).expand(want.shape)
    torch.testing.assert_close(reference, want.to(reference.dtype))
