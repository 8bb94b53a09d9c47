"""Straight-line programs: named intermediates (steps) then results, as derive makes them and
render prints them; common subexpressions found once for every stage that needs them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy as sp

from lossgen.reductions import hide_picks, show_picks

INTERMEDIATE_PREFIX = "tmp"


@dataclass(frozen=True)
class Step:
    """One named intermediate: `symbol = expr`."""

    symbol: sp.Symbol
    expr: sp.Basic


@dataclass(frozen=True)
class Program:
    """Straight-line code: steps, then a result expression."""

    steps: tuple[Step, ...]
    result: sp.Expr


@dataclass(frozen=True)
class FusedProgram:
    """The fast path's one pass: the loss and every gradient, CSE'd together.

    Sharing subexpressions between the loss and its gradients is what lets one pass compute
    both. The gradients are the reference backward's without its guards: the fused pass is
    never differentiated, and where() drops the branch not taken.
    """

    steps: tuple[Step, ...]
    loss: sp.Expr
    gradients: tuple[sp.Expr, ...]  # in the order of DerivedLoss.gradients
    # Steps each gradient computes for itself, after `steps` (see recomputed_after_reductions)
    gradient_steps: tuple[tuple[Step, ...], ...] = ()


def fused_program(exprs: list[sp.Expr]) -> FusedProgram:
    """The loss and its gradients (`exprs`, in that order), CSE'd together."""
    steps, (loss, *gradients) = common_subexpressions(exprs)
    return FusedProgram(steps, loss, tuple(gradients))


def common_subexpressions(
    exprs: list[sp.Expr],
) -> tuple[tuple[Step, ...], tuple[sp.Expr, ...]]:
    symbols = sp.numbered_symbols(INTERMEDIATE_PREFIX, real=True)
    # A Pick is kept whole (see Picked) so that the printer can print it as a gather.
    replacements, reduced = sp.cse(
        [hide_picks(e) for e in exprs], symbols=symbols, order="canonical"
    )
    replacements = [(symbol, show_picks(expr)) for symbol, expr in replacements]
    reduced = [show_picks(r) for r in reduced]
    # A constant must not become an intermediate: `tmp1 = math.sqrt(2)` is a Python float,
    # and the printer chooses torch.clamp (not torch.minimum) only when it sees a number.
    # Constants go back inline; the remaining intermediates are renumbered from tmp0.
    inline: dict[sp.Basic, sp.Basic] = {}
    kept: list[tuple[sp.Symbol, sp.Basic]] = []
    for symbol, expr in replacements:
        expr = expr.xreplace(inline)
        if expr.free_symbols:
            kept.append((symbol, expr))
        else:
            inline[symbol] = expr
    results = tuple(r.xreplace(inline) for r in reduced)
    kept = needed_steps(kept, results)
    if not inline:
        return tuple(Step(s, e) for s, e in kept), results
    fresh = sp.numbered_symbols(INTERMEDIATE_PREFIX, real=True)
    rename = {symbol: next(fresh) for symbol, _ in kept}
    inline.update(rename)
    steps = tuple(Step(rename[s], e.xreplace(inline)) for s, e in kept)
    return steps, tuple(r.xreplace(inline) for r in reduced)


def needed_steps(
    steps: list[tuple[sp.Symbol, sp.Basic]], roots: Iterable[sp.Basic]
) -> list[tuple[sp.Symbol, sp.Basic]]:
    """The steps that `roots` use, directly or through other steps, in their order.

    SymPy can fold a result while CSE runs (a Piecewise whose condition is a > a), and
    render puts one-hot steps back into the gradients that scatter them: a step nothing
    uses any more would be dead code (and a lint error) in the generated file.
    """
    wanted: set[sp.Basic] = set().union(*(root.free_symbols for root in roots))
    kept = []
    for symbol, expr in reversed(steps):
        if symbol in wanted:
            kept.append((symbol, expr))
            wanted |= expr.free_symbols
    return kept[::-1]
