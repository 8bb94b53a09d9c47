"""Fuzzing losses over dims: random reductions over dim 1 (Sum, Mean, LogSumExp, Max, Min,
Pick at a class index) of test_fuzz's elementwise expressions, some weighted per class,
combined by elementwise functions of the reduced values; through the real pipeline, against
autograd of the expression as written (the readable Function and the fast path, as
test_fuzz.check_against_autograd does).
"""

from __future__ import annotations

import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import ONE, P, X, Y, check_against_autograd
from test_fuzz import expressions as elementwise

from lossgen import LogSumExp, Max, Mean, Min, Param, Pick, Sum, Tensor
from lossgen.reductions import Reduction
from lossgen.vocabulary import clamp, relu

T = Tensor("t", index_of=1)  # class indices into dim 1
W = Param("w", default=1.0, along=1)  # one weight per class, as torch's weight=

bodies = st.one_of(elementwise, elementwise.map(lambda e: W * e))
reduced = st.one_of(
    bodies.map(lambda e: Sum(e, 1)),
    bodies.map(lambda e: Mean(e, 1)),
    bodies.map(lambda e: LogSumExp(e, 1)),
    bodies.map(lambda e: Max(e, dim=1)),
    bodies.map(lambda e: Min(e, dim=1)),
    bodies.map(lambda e: Pick(e, T)),
)


def _outer_unary(e: sp.Expr) -> st.SearchStrategy[sp.Expr]:
    return st.sampled_from(
        [
            e,
            -e,
            e**2,
            sp.tanh(e),
            sp.Abs(e),
            relu(e),
            clamp(e, -1, ONE / 2),
            sp.exp(sp.tanh(e)),
            sp.log(1 + e**2),
            sp.sqrt(1 + relu(e)),
        ]
    )


def _outer_binary(a: sp.Expr, b: sp.Expr) -> st.SearchStrategy[sp.Expr]:
    return st.sampled_from(
        [
            a + b,
            a - b,
            a * b,
            a / (1 + b**2),
            sp.Max(a, b),
            sp.Piecewise((a, b > 0), (b, True)),
            P * a + b,
        ]
    )


def _combine(children: st.SearchStrategy[sp.Expr]) -> st.SearchStrategy[sp.Expr]:
    return st.one_of(
        children.flatmap(_outer_unary),
        st.tuples(children, children).flatmap(lambda ab: _outer_binary(*ab)),
    )


# mostly reduced values; sometimes a tensor outside every reduction, so that the loss keeps
# dim 1 and its gradients sum the upstream gradient over it
terms = st.one_of(reduced, reduced, st.sampled_from([X, Y]))
losses_over_dims = st.recursive(terms, _combine, max_leaves=3).filter(
    lambda e: isinstance(e, sp.Expr) and bool(e.atoms(Reduction))
)


# 25 in CI, where the profile keeps Hypothesis's 100 (an example over dims takes ~2.5 s);
# the profile's own count where it sets one (quick, thorough)
EXAMPLES = 25 if settings.default.max_examples == 100 else settings.default.max_examples


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(expr=losses_over_dims)
def test_random_losses_over_dims_match_autograd(expr: sp.Expr) -> None:
    check_against_autograd(expr)


REGRESSIONS: list[sp.Expr] = [
    # The fast path's gradient was `upstream` alone, a Python number for a sum or an
    # unweighted mean: "'int' object has no attribute 'expand'".
    Sum(X, 1),
    Mean(X, 1),  # upstream / size_1, a number too
    # The docstring's LaTeX: SymPy prints a power of a function with the exponent passed in,
    # which the reductions' _latex did not take (a TypeError in `lossgen build`).
    Sum(X, 1) ** 2,
    # A loss that keeps the dim it reduces: the fast path's gradient summed the upstream
    # gradient over it, a Python number there ("'float' object has no attribute 'reshape'").
    Max(X, dim=1) + relu(Y),
    # The tie mask compared a rewritten form of the body with its Min (SymPy had turned
    # Eq(3*b, m) into Eq(b, m/3)): in floating point it missed the Min, a zero gradient.
    Min(3 / (sp.exp(Y) + ONE / 2), dim=1),
    # SymPy called this not real ("the loss is complex-valued"): a reduction's commutativity
    # was unknown (its dims' Tuple), and its inference went wrong from there.
    sp.log(1 + Sum(sp.log(sp.tanh(X) + 2), 1) ** 2),
]


@pytest.mark.parametrize("expr", REGRESSIONS, ids=str)
def test_fuzz_regression_over_dims(expr: sp.Expr) -> None:
    check_against_autograd(expr)


def test_a_loss_over_dims_of_every_kind_is_compared_on_both_paths() -> None:
    # the harness itself: every reduction, a class weight and a Pick, compared on the
    # Function and on the fast path
    expr = (
        LogSumExp(X, 1)
        - Pick(W * X, T)
        + relu(Max(X - Y, dim=1))
        + Mean(sp.tanh(Y), 1) * Min(X**2, dim=1)
        + Sum(Y * sp.exp(-(X**2)), 1)
    )
    assert check_against_autograd(expr) > 0
