"""Stage 4c, the row kernel: the fast path of a loss that reduces over one dim, as passes over rows.

A loss whose every reduction (in the loss and in its gradients, derive's FusedProgram) is over
the same single dim runs on CUDA as one Triton program per row: the elements along that dim,
with every other coordinate fixed. Class indices, scalar params and the reduced values are
scalars of the row; everything else is a block of ROW_BLOCK elements, and each pass loops over
the row block by block.

- A reduction whose body has no reductions is accumulated in pass 1: Sum and Mean as running
  sums, LogSumExp online (running max m and sum s of exp(body - m), rescaled by exp(m_old -
  m_new) when the max grows, as the online softmax does), Max and Min as running extremes. A
  reduction whose body uses values of pass k is accumulated in pass k + 1.
- A Sum or Mean whose body is a polynomial in row values (their coefficients free of them) is
  split into reductions of the coefficients: Mean(w*(x - lse)) = Mean(w*x) - lse*Mean(w). So
  cross-entropy's loss needs no second pass over the logits (as Liger's kernel computes it).
- A Sum or Mean of a polynomial in a OneHot h (0 or 1, so any such polynomial is a + h*b) is
  Sum(a) plus b at the class index: a gather of the index's element of each tensor, loaded once
  per row, not a pass (cross-entropy's Pick(x, target) is x[target]).
- The tie count of a Max or Min (the denominator of its gradient, backprop's
  Sum(Tie(body, max))) is counted in the same pass as the extreme:
  reset where the running extreme grows.
- A last pass computes every gradient elementwise and writes each once; the loss of a row is
  one row value where the loss drops the row's dim, else it is summed in that last pass.

The gradient of a (scalar) param is a sum over every element: the kernel writes one partial
sum per row (one row value times the row's length where it is constant along the row), which
the launcher sums. Gradients using the weighted mean's second term (the final loss, known only
after every row) are left to the torch fast path: `RowKernelCode.declined` lists them, and the
generated code takes the torch path where one of them is asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence

from lossgen.backprop import UPSTREAM, UPSTREAM_WEIGHT
from lossgen.derive import DerivedLoss
from lossgen.model import Argument
from lossgen.printer import UnsupportedExpressionError
from lossgen.program import Step, common_subexpressions
from lossgen.reductions import (
    NO_DIMS,
    Amax,
    Amin,
    DimSize,
    LogSumExp,
    Mean,
    OneHot,
    Reduction,
    Sum,
    Tie,
)
from lossgen.triton_printer import TritonCodePrinter, triton_unsupported_nodes

KINDS: dict[type, str] = {
    Sum: "sum",
    Mean: "mean",
    LogSumExp: "logsumexp",
    Amax: "max",
    Amin: "min",
}
# The kernel's name for the number of elements of a row, in the compute dtype.
ROW_LENGTH = "row_length"


@dataclass(frozen=True)
class Assignment:
    name: str
    code: str


@dataclass(frozen=True)
class Accumulator:
    """One reduction over the row, accumulated block by block in its pass."""

    name: str  # the row value's variable
    kind: str  # "sum" | "mean" | "logsumexp" | "max" | "min"
    body: str  # the body, a block
    count: str | None = (
        None  # max/min: the variable of its tie count, counted alongside
    )


@dataclass(frozen=True)
class PickedLoad:
    """The element of a tensor's row at a class index (0 where the index is out of the row)."""

    name: str
    tensor: str
    index: str


@dataclass(frozen=True)
class RowPass:
    """Row values computed before the loop, then one loop over the row's blocks."""

    row_lines: tuple[Assignment, ...]  # scalars of the row, before the loop
    loads: tuple[str, ...]  # tensors read in the loop
    lines: tuple[Assignment, ...]  # blocks, inside the loop
    accumulators: tuple[Accumulator, ...]


@dataclass(frozen=True)
class RowGradient:
    index: int  # position in Function.apply's arguments
    name: str
    code: str  # a block (or a row scalar, broadcast by the store)
    is_param: bool = False  # one partial sum per row: its row scalar, or `code` summed
    varies: bool = True  # a param's: whether `code` is a block summed in the last pass


@dataclass(frozen=True)
class RowKernelCode:
    """What templates/row_triton.py.jinja needs to write the row kernel."""

    kernel_name: str
    dim: int  # the reduced dim as the spec names it (1, -1, ...)
    class_indices: tuple[str, ...]  # loaded once per row
    params: tuple[str, ...]  # loaded once per program
    picks: tuple[PickedLoad, ...]  # loaded once per row
    uses_row_length: bool
    passes: tuple[RowPass, ...]  # the accumulating passes
    last: RowPass  # the gradients' pass (no accumulators)
    loss: str  # the row's loss, ready to be multiplied: a row scalar, or a block (loss_varies)
    loss_varies: bool
    gradients: tuple[RowGradient, ...]
    declined: tuple[
        int, ...
    ]  # argument positions whose gradient the kernel does not compute


class RowTritonPrinter(TritonCodePrinter):
    """TritonCodePrinter, plus what a row has: OneHot of its class indices, its length.

    `block` is the block size for constants that must be blocks (ROW_BLOCK in the loop);
    an empty `block` prints such constants as row scalars.
    """

    def doprint(self, expr: sp.Basic) -> str:
        missing = [
            name
            for name in triton_unsupported_nodes(expr)
            if name not in ("OneHot", "DimSize")  # the row's: see _print_OneHot, names
        ]
        if missing:
            raise UnsupportedExpressionError(
                "cannot print as Triton code: " + ", ".join(missing)
            )
        return super(TritonCodePrinter, self).doprint(expr)

    def _print_OneHot(self, expr: OneHot) -> str:  # noqa: N802 - SymPy's hook name
        return f"({self._print(expr.args[0])} == columns).to({self._dtype})"


def print_row(expr: sp.Basic, names: Mapping[sp.Symbol, str], block: bool) -> str:
    """`expr` printed for the row kernel: a block in the loop, else a row scalar."""
    return RowTritonPrinter(names, block="row_block" if block else "").doprint(expr)


class _NoRowKernelError(Exception):
    """The loss (or one of its parts) has no row kernel."""


def row_kernel_code(derived: DerivedLoss) -> RowKernelCode | None:
    """The row kernel of a loss over one dim (see the module docstring); None if it has none."""
    if not derived.model.reduces:
        return None
    try:
        return _Builder(derived).build()
    except (_NoRowKernelError, UnsupportedExpressionError):
        return None


@dataclass
class _Accumulating:
    symbol: sp.Symbol
    kind: str
    body: sp.Expr
    level: int
    count: sp.Symbol | None = None


class _Builder:
    def __init__(self, derived: DerivedLoss) -> None:
        self.derived = derived
        self.model = derived.model
        self.dim = self._single_dim()
        self.size = DimSize(frozenset({self.dim}))
        self.values: dict[Reduction, sp.Expr] = {}
        self.reduced: dict[tuple[type, sp.Expr], sp.Expr] = {}
        self.accumulating: list[_Accumulating] = []
        self.picks: dict[tuple[sp.Symbol, sp.Symbol], sp.Symbol] = {}
        self.placeholders = (
            sp.Symbol(f"_row{i}", real=True) for i in itertools.count()
        )
        self.row_symbols: set[sp.Symbol] = {UPSTREAM, self.size}
        for argument in self.model.arguments:
            if argument.is_param or argument.index_of is not None:
                self.row_symbols.add(argument.symbol)

    # --- which losses -------------------------------------------------------------------

    def _single_dim(self) -> int:
        """The one dim every reduction, class index and param along a dim names."""
        model = self.model
        if model.mean_weight is not None and any(
            a.symbol in model.mean_weight.free_symbols and a.differentiable
            for a in model.tensors
        ):
            raise _NoRowKernelError(
                "the weighted mean's weights depend on a differentiable tensor"
            )
        dims: set[int] = set()
        fused = self.derived.fused
        exprs = [fused.loss, *fused.gradients, *(step.expr for step in fused.steps)]
        for expr in exprs:
            for node in sp.preorder_traversal(expr):
                if isinstance(node, Reduction):
                    if not isinstance(node.dims, frozenset) or len(node.dims) != 1:
                        raise _NoRowKernelError("a reduction over several dims or all")
                    dims |= node.dims
                elif isinstance(node, OneHot):
                    dims.add(node.dim)
        for argument in model.arguments:
            for dim in (argument.index_of, argument.along):
                if dim is not None:
                    dims.add(dim)
        if model.dropped != NO_DIMS:
            if not isinstance(model.dropped, frozenset):
                raise _NoRowKernelError("the loss drops every dim")
            dims |= model.dropped
        if len(dims) != 1:
            raise _NoRowKernelError("reductions over different dims")
        (dim,) = dims
        if dim < -1:
            raise _NoRowKernelError("a dim counted from the end is last only as -1")
        return dim

    # --- reductions as row values -------------------------------------------------------

    def is_row_constant(self, expr: sp.Basic) -> bool:
        return expr.free_symbols <= self.row_symbols and not expr.atoms(OneHot)

    def row_value(self, expr: sp.Expr) -> sp.Expr:
        """`expr` with every reduction replaced by its value, a scalar of the row."""
        return expr.replace(
            lambda e: isinstance(e, Reduction), lambda e: self._value_of(e)
        )

    def _value_of(self, node: Reduction) -> sp.Expr:
        # `replace` rebuilds bottom-up: the body's own reductions are row values already.
        if node not in self.values:
            self.values[node] = self._reduce(type(node), node.body)
        return self.values[node]

    def _reduce(self, kind: type, body: sp.Expr) -> sp.Expr:
        if (kind, body) not in self.reduced:
            self.reduced[kind, body] = self._reduced(kind, body)
        return self.reduced[kind, body]

    def _reduced(self, kind: type, body: sp.Expr) -> sp.Expr:
        if body.atoms(Reduction):
            raise _NoRowKernelError("a reduction left inside a body")
        if self.is_row_constant(body):
            if kind is Sum:
                return body * self.size
            if kind is LogSumExp:
                return body + sp.log(self.size)
            return body  # Mean, Max, Min of a constant
        row_values = body.free_symbols & self._accumulated()
        if row_values and kind in (Sum, Mean):
            terms = polynomial_terms(body, row_values)
            if terms is not None:
                return sp.Add(
                    *(
                        monomial * self._reduce(kind, coefficient)
                        for monomial, coefficient in terms.items()
                    )
                )
        if kind in (Sum, Mean) and len(body.atoms(OneHot)) == 1:
            picked = self._picked_sum(kind, body)
            if picked is not None:
                return picked
        if kind is Sum:
            count = self._tie_count(body)
            if count is not None:
                return count
        level = 1 + max((self._level(s) for s in row_values), default=0)
        symbol = next(self.placeholders)
        self.accumulating.append(_Accumulating(symbol, KINDS[kind], body, level))
        self.row_symbols.add(symbol)
        return symbol

    def _picked_sum(self, kind: type, body: sp.Expr) -> sp.Expr | None:
        """Sum(a + h*b) = Sum(a) + b at the class index, with h = OneHot(index): None where
        the body is not a polynomial in h or b reads what cannot be gathered."""
        (one_hot,) = body.atoms(OneHot)
        h = sp.Dummy("h")
        terms = polynomial_terms(body.xreplace({one_hot: h}), {h})
        if terms is None:
            return None
        rest = terms.pop(sp.S.One, sp.S.Zero)
        at_index = self._at_index(sp.Add(*terms.values()), one_hot.args[0])  # h**k = h
        if at_index is None:
            return None
        if kind is Mean:
            at_index = at_index / self.size
        return self._reduce(kind, rest) + at_index

    def _at_index(self, expr: sp.Expr, index: sp.Symbol) -> sp.Expr | None:
        """`expr` at column `index` of the row, a row value; 0 where `index` is not in it."""
        rows = {a.symbol for a in self.model.tensors if a.index_of is None}
        read = expr.free_symbols - self.row_symbols
        if not read <= rows:
            return None
        for symbol in read:
            if (symbol, index) not in self.picks:
                picked = sp.Symbol(f"_{symbol}_at_{index}", real=True)
                self.picks[symbol, index] = picked
                self.row_symbols.add(picked)
        gathered = expr.xreplace({s: self.picks[s, index] for s in read})
        in_row = sp.And(sp.Ge(index, 0), sp.Lt(index, self.size))
        return sp.Piecewise((gathered, in_row), (0, True))

    def _accumulated(self) -> set[sp.Symbol]:
        found = {a.symbol for a in self.accumulating}
        return found | {a.count for a in self.accumulating if a.count is not None}

    def _level(self, symbol: sp.Symbol) -> int:
        return next(a.level for a in self.accumulating if symbol in (a.symbol, a.count))

    def _tie_count(self, body: sp.Expr) -> sp.Symbol | None:
        """Sum(Tie(b, m)) with m = Max(b): counted with m."""
        if not isinstance(body, Tie):
            return None
        for extreme in self.accumulating:
            if extreme.kind in ("max", "min") and body.args == (
                extreme.body,
                extreme.symbol,
            ):
                if extreme.count is None:
                    extreme.count = next(self.placeholders)
                    self.row_symbols.add(extreme.count)
                return extreme.count
        return None

    # --- the kernel ---------------------------------------------------------------------

    def build(self) -> RowKernelCode:
        model, fused = self.model, self.derived.fused
        inline: dict[sp.Symbol, sp.Expr] = {}
        for step in fused.steps:
            inline[step.symbol] = step.expr.xreplace(inline)
        loss = self.row_value(fused.loss.xreplace(inline))
        gradients: list[tuple[int, Argument, sp.Expr]] = []
        declined = []
        for gradient, result in zip(self.derived.gradients, fused.gradients):
            index = model.arguments.index(gradient.argument)
            expr = result.xreplace(inline)
            if UPSTREAM_WEIGHT in expr.free_symbols:
                declined.append(index)
                continue
            value = self.row_value(expr)
            if gradient.argument.is_param and self.is_row_constant(value):
                value = value * self.size  # the row's sum of a value constant along it
            gradients.append((index, gradient.argument, value))
        loss_varies = not self.is_row_constant(loss)
        if loss_varies and self.dim in model.dropped:
            raise _NoRowKernelError("the loss varies along the dim it drops")
        if not loss_varies and self.dim not in model.dropped:
            loss = loss * self.size  # the row's sum of a value constant along it

        # Accumulators and CSE steps keep unique placeholder symbols (_row0, _step0, ...);
        # they print as tmp0, tmp1, ... in the order the kernel computes them.
        ordered = sorted(self.accumulating, key=lambda a: a.level)
        names: dict[sp.Symbol, str] = {a.symbol: a.name for a in model.arguments}
        names[UPSTREAM] = "upstream"
        names[self.size] = ROW_LENGTH
        picks = tuple(
            PickedLoad(f"_{symbol}_at_{index}", str(symbol), str(index))
            for (symbol, index) in sorted(self.picks, key=str)
        )
        for (symbol, index), picked in self.picks.items():
            names[picked] = f"_{symbol}_at_{index}"
        numbers = itertools.count()
        for accumulating in ordered:
            names[accumulating.symbol] = f"tmp{next(numbers)}"
            if accumulating.count is not None:
                names[accumulating.count] = f"tmp{next(numbers)}"
        steps_made = (sp.Symbol(f"_step{i}", real=True) for i in itertools.count())
        row = set(self.row_symbols)

        passes = []
        levels = max((a.level for a in ordered), default=0)
        for level in range(1, levels + 1):
            here = [a for a in ordered if a.level == level]
            steps, bodies = _cse([a.body for a in here], steps_made)
            row_lines, lines, loads = self._split(steps, bodies, row, names, numbers)
            accumulators = tuple(
                Accumulator(
                    names[a.symbol],
                    a.kind,
                    print_row(body, names, True),
                    None if a.count is None else names[a.count],
                )
                for a, body in zip(here, bodies)
            )
            passes.append(RowPass(row_lines, loads, lines, accumulators))

        exprs = [loss, *(g for _, _, g in gradients)]
        steps, (loss_expr, *gradient_exprs) = _cse(exprs, steps_made)
        row_lines, lines, loads = self._split(
            steps, (loss_expr, *gradient_exprs), row, names, numbers
        )
        loss_code = print_row(loss_expr, names, loss_varies)
        if precedence(loss_expr) < PRECEDENCE["Mul"]:  # the template multiplies it
            loss_code = f"({loss_code})"
        row_gradients = []
        for (index, argument, _), expr in zip(gradients, gradient_exprs):
            varies = not expr.free_symbols <= row or bool(expr.atoms(OneHot))
            code = print_row(expr, names, varies or not argument.is_param)
            row_gradients.append(
                RowGradient(index, argument.name, code, argument.is_param, varies)
            )
        last = RowPass(row_lines, loads, lines, ())

        code = [loss_code, *(g.code for g in row_gradients)]
        for p in (*passes, last):
            code += [line.code for line in (*p.row_lines, *p.lines)]
            code += [a.body for a in p.accumulators]
        code += [pick.index for pick in picks]
        used = set().union(*(_identifiers(c) for c in code))
        return RowKernelCode(
            kernel_name=f"_{model.snake_name}_row_kernel",
            dim=self.dim,
            class_indices=tuple(
                a.name
                for a in model.tensors
                if a.index_of is not None and a.name in used
            ),
            params=tuple(a.name for a in model.params if a.name in used),
            picks=picks,
            uses_row_length=ROW_LENGTH in used,
            passes=tuple(passes),
            last=last,
            loss=loss_code,
            loss_varies=loss_varies,
            gradients=tuple(row_gradients),
            declined=tuple(declined),
        )

    def _split(
        self,
        steps: Sequence[Step],
        results: Sequence[sp.Expr],
        row: set[sp.Symbol],
        names: dict[sp.Symbol, str],
        numbers: Iterator[int],
    ) -> tuple[tuple[Assignment, ...], tuple[Assignment, ...], tuple[str, ...]]:
        """Steps that are row scalars (printed before the loop) and blocks (inside it), and
        the tensors the blocks read."""
        row_lines, lines = [], []
        for step in steps:
            name = names[step.symbol] = f"tmp{next(numbers)}"
            if step.expr.free_symbols <= row and not step.expr.atoms(OneHot):
                row.add(step.symbol)  # later passes see it as a row scalar too
                row_lines.append(Assignment(name, print_row(step.expr, names, False)))
            else:
                lines.append(Assignment(name, print_row(step.expr, names, True)))
        read = set().union(
            *(s.expr.free_symbols for s in steps if s.symbol not in row),
            *(r.free_symbols for r in results),
        )
        loads = tuple(
            a.name
            for a in self.model.tensors
            if a.index_of is None and a.symbol in read
        )
        return tuple(row_lines), tuple(lines), loads


def _cse(
    exprs: list[sp.Expr], fresh: Iterator[sp.Symbol]
) -> tuple[tuple[Step, ...], tuple[sp.Expr, ...]]:
    """derive's common_subexpressions, its steps renamed to unique `fresh` symbols."""
    steps, results = common_subexpressions(exprs)
    rename = {step.symbol: next(fresh) for step in steps}
    return (
        tuple(Step(rename[s.symbol], s.expr.xreplace(rename)) for s in steps),
        tuple(r.xreplace(rename) for r in results),
    )


def _identifiers(code: str) -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code))


def polynomial_terms(
    expr: sp.Expr, symbols: set[sp.Symbol]
) -> Mapping[sp.Expr, sp.Expr] | None:
    """`expr` as {monomial in `symbols`: coefficient free of them}, or None if it is not a
    polynomial in them (a Piecewise counts where its conditions do not use them)."""
    if not expr.free_symbols & symbols:
        return {sp.S.One: expr}
    if expr in symbols:
        return {expr: sp.S.One}
    if isinstance(expr, sp.Add):
        total: dict[sp.Expr, sp.Expr] = {}
        for arg in expr.args:
            terms = polynomial_terms(arg, symbols)
            if terms is None:
                return None
            for monomial, coefficient in terms.items():
                total[monomial] = total.get(monomial, sp.S.Zero) + coefficient
        return total
    if isinstance(expr, sp.Mul) or (
        isinstance(expr, sp.Pow) and expr.exp.is_Integer and expr.exp > 0
    ):
        factors = expr.args if isinstance(expr, sp.Mul) else [expr.base] * int(expr.exp)
        product: dict[sp.Expr, sp.Expr] = {sp.S.One: sp.S.One}
        for factor in factors:
            terms = polynomial_terms(factor, symbols)
            if terms is None:
                return None
            multiplied: dict[sp.Expr, sp.Expr] = {}
            for (m1, c1), (m2, c2) in itertools.product(product.items(), terms.items()):
                multiplied[m1 * m2] = multiplied.get(m1 * m2, sp.S.Zero) + c1 * c2
            product = multiplied
        return product
    if isinstance(expr, sp.Piecewise) and not any(
        condition.free_symbols & symbols for _, condition in expr.args
    ):
        branches = [polynomial_terms(value, symbols) for value, _ in expr.args]
        if any(b is None for b in branches):
            return None
        monomials = {m for b in branches for m in b}  # type: ignore[union-attr]
        return {
            m: sp.Piecewise(
                *(
                    (b.get(m, sp.S.Zero), condition)  # type: ignore[union-attr]
                    for b, (_, condition) in zip(branches, expr.args)
                )
            )
            for m in monomials
        }
    return None
