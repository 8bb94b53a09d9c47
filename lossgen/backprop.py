"""Reverse mode through reductions: the gradient of a loss whose expression reduces over dims.

Each reduction r_i = R_i(B_i, dims_i) becomes a symbol, so the top-level expression E and
every body B_i are elementwise and SymPy differentiates them. Adjoints then flow outermost
first, in "full-shape" terms (every value broadcast over the broadcast shape of the inputs):

    adjoint(r_i)      = Sum over dims_i of (every use's adjoint times d use / d r_i)
    body adjoint of i = adjoint(r_i) * local_i,   local_i = 1 (Sum), 1/n (Mean),
                        exp(B_i - r_i) (LogSumExp: the softmax), tie indicator / tie count (Max)
    d loss / d x      = seed * dE/dx + sum_i body adjoint of i * dB_i/dx

The seed is the upstream gradient over the dims `reduction="none"` drops, so in full-shape
terms it is `upstream / n(dropped)`. A factor constant along the dims of a Sum is taken out of
it, which is what makes cross-entropy's gradient `upstream*(Sum(p)*softmax - p)` and not a
chain of reductions. The result refers to the forward's reductions by their nodes again, so
CSE shares them between the gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

from lossgen.reductions import (
    ALL,
    Amax,
    Amin,
    Dims,
    LogSumExp,
    Mean,
    Reduction,
    Sum,
    Tie,
    constant_dims,
    covers,
    difference,
    intersection,
    size,
    union,
)

UPSTREAM = sp.Symbol("upstream", real=True)
UPSTREAM_WEIGHT = sp.Symbol("upstream_weight", real=True)

Differentiate = Callable[[sp.Expr, sp.Symbol], sp.Expr]


def backprop(
    expr: sp.Expr,
    seed: sp.Symbol,
    dropped: Dims,
    wrt: Sequence[sp.Symbol],
    differentiate: Differentiate,
) -> list[sp.Expr]:
    """d(sum of `expr` over the loss's elements, times `seed`) / d(each of `wrt`), elementwise.

    `seed` is constant along `dropped`, the dims the loss has reduced away.
    """
    reductions = _postorder_reductions(expr)
    symbols = [sp.Symbol(f"_r{i}", real=True) for i in range(len(reductions))]
    to_symbol = dict(zip(reductions, symbols))
    bodies = [node.body.xreplace(to_symbol) for node in reductions]
    top = expr.xreplace(to_symbol)

    known: dict[sp.Symbol, Dims] = {seed: dropped}
    for node, symbol, body in zip(reductions, symbols, bodies):
        known[symbol] = union(node.dims, constant_dims(body, known))

    # The top-level derivatives are constant along `dropped` (the forward checks E has extent 1
    # there), even where params make that unprovable here: name them, so sums see it.
    placeholders: dict[sp.Symbol, sp.Expr] = {}

    def top_derivative(symbol: sp.Symbol) -> sp.Expr:
        g = differentiate(top, symbol)
        if not g.free_symbols:
            return g
        name = sp.Symbol(f"_top{len(placeholders)}", real=True)
        placeholders[name] = g
        known[name] = dropped
        return name

    body_adjoints: dict[int, sp.Expr] = {}
    for i in reversed(range(len(reductions))):
        node, symbol, body = reductions[i], symbols[i], bodies[i]
        adjoint = _from_top(top_derivative(symbol), seed, node.dims, dropped, known)
        uses = []
        for j in range(i + 1, len(reductions)):
            if symbol in bodies[j].free_symbols:
                uses.append(body_adjoints[j] * differentiate(bodies[j], symbol))
        if uses:
            adjoint += sum_over(node.dims, sp.Add(*uses), known)
        body_adjoints[i] = adjoint * _local_factor(node, body, symbol)

    back = {symbol: node for symbol, node in zip(symbols, reductions)}
    gradients = []
    for x in wrt:
        total = seed / size(dropped) * top_derivative(x)
        for i, body in enumerate(bodies):
            if x in body.free_symbols:
                total += body_adjoints[i] * differentiate(body, x)
        gradients.append(total.xreplace(placeholders).xreplace(back))
    return gradients


def _postorder_reductions(expr: sp.Basic) -> list[Reduction]:
    """Every distinct reduction, inner ones before the ones containing them."""
    found: list[Reduction] = []

    def visit(node: sp.Basic) -> None:
        for arg in node.args:
            visit(arg)
        if isinstance(node, Reduction) and node not in found:
            found.append(node)

    visit(expr)
    return found


def _from_top(
    derivative: sp.Expr,
    seed: sp.Symbol,
    dims: Dims,
    dropped: Dims,
    known: dict[sp.Symbol, Dims],
) -> sp.Expr:
    """Sum over `dims` of seed/n(dropped) * derivative, both constant along `dropped`."""
    if derivative == 0:
        return sp.S.Zero
    if dims == ALL and dropped != ALL:
        return sum_over(dims, seed / size(dropped) * derivative, known)
    inside = intersection(dims, dropped)
    rest = difference(dims, dropped)
    factor = size(inside) / size(dropped)
    return factor * sum_over(rest, seed * derivative, known)


def sum_over(dims: Dims, expr: sp.Expr, known: dict[sp.Symbol, Dims]) -> sp.Expr:
    """Sum(expr, dims), with the factors constant along `dims` taken outside."""
    if dims != ALL and not dims:
        return expr
    if expr == 0:
        return sp.S.Zero
    expr = sp.factor_terms(expr)
    outside, inside = [], []
    for factor in sp.Mul.make_args(expr):
        constant = constant_dims(factor, known)
        (outside if covers(constant, dims) else inside).append(factor)
    if not inside:
        return sp.Mul(*outside) * size(dims)
    return sp.Mul(*outside) * Sum(sp.Mul(*inside), _dim_argument(dims))


def _dim_argument(dims: Dims) -> tuple[int, ...] | None:
    """`dims` as the `dim` argument of a reduction node (None: every dim)."""
    return None if dims == ALL else tuple(sorted(dims))  # type: ignore[arg-type]


def _local_factor(node: Reduction, body: sp.Expr, symbol: sp.Symbol) -> sp.Expr:
    """d(reduced value) / d(one element of the body), in full-shape terms."""
    if isinstance(node, Sum):
        return sp.S.One
    if isinstance(node, Mean):
        return 1 / size(node.dims)
    if isinstance(node, LogSumExp):
        return sp.exp(body - symbol)  # the softmax; <= 1, so it cannot overflow
    if isinstance(node, (Amax, Amin)):
        # torch.amax's convention: tied maxima share the gradient evenly.
        tied = Tie(body, symbol)
        return tied / Sum(tied, _dim_argument(node.dims))
    raise NotImplementedError(type(node).__name__)
