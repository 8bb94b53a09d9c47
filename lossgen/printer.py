"""Stage 4, print: one SymPy expression to one Python/torch expression string.

The printer prints expressions only; the templates decide where they go. It is strict: a node
it does not know is an error, never a guess. Each supported node has its own `_print_X`.

Conventions the printed code relies on:
- Symbols of tensors and params print as their names; params are tensors by the time they are
  used (the generated code converts floats), so torch functions always receive tensors.
- A subexpression without symbols prints through `math` (`math.log(2)`), never as a torch call
  on a Python number.
- `Max`/`Min` print as `torch.maximum`/`torch.minimum`, or `torch.clamp` against a number.
  Their derivatives come from SymPy (ties split 1/2-1/2, like torch.maximum), so the op chosen
  here only decides the forward value.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.logic.boolalg import BooleanFalse, BooleanTrue
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.reductions import (
    ALL,
    DimSize,
    OneHot,
    Reduction,
    Sum,
    Tie,
    constant_dims,
    covers,
    pick_parts,
    spread_parts,
)
from lossgen.vocabulary import TensorSymbol, clamp, guarded, relu

# SymPy function -> (torch spelling for tensors, math spelling for plain numbers)
ELEMENTWISE_FUNCTIONS: dict[type, tuple[str, str]] = {
    sp.exp: ("torch.exp", "math.exp"),
    sp.log: ("torch.log", "math.log"),
    sp.Abs: ("torch.abs", "abs"),
    sp.sin: ("torch.sin", "math.sin"),
    sp.cos: ("torch.cos", "math.cos"),
    sp.tan: ("torch.tan", "math.tan"),
    sp.asin: ("torch.asin", "math.asin"),
    sp.acos: ("torch.acos", "math.acos"),
    sp.atan: ("torch.atan", "math.atan"),
    sp.sinh: ("torch.sinh", "math.sinh"),
    sp.cosh: ("torch.cosh", "math.cosh"),
    sp.tanh: ("torch.tanh", "math.tanh"),
    sp.asinh: ("torch.asinh", "math.asinh"),
    sp.acosh: ("torch.acosh", "math.acosh"),
    sp.atanh: ("torch.atanh", "math.atanh"),
    sp.erf: ("torch.erf", "math.erf"),
    sp.erfc: ("torch.erfc", "math.erfc"),
    log1p: ("torch.log1p", "math.log1p"),
    expm1: ("torch.expm1", "math.expm1"),
    relu: ("torch.relu", ""),
    # The stable functions evaluate themselves on plain numbers, so only tensor spellings.
    sigmoid: ("torch.sigmoid", ""),
    softplus: ("torch.nn.functional.softplus", ""),
    xlogy: ("torch.xlogy", ""),
}

RELATIONAL_OPERATORS = {
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "==": "==",
    "!=": "!=",
}

SUPPORTED_NODES: tuple[type, ...] = (
    logsigmoid,
    sp.Add,
    sp.Mul,
    sp.Pow,
    sp.Symbol,
    sp.Integer,
    sp.Rational,
    sp.Float,
    sp.core.numbers.Pi,
    sp.core.numbers.Exp1,
    sp.core.numbers.Infinity,
    sp.core.numbers.NegativeInfinity,
    sp.sign,
    sp.Max,
    sp.Min,
    sp.Piecewise,
    sp.functions.elementary.piecewise.ExprCondPair,
    sp.Heaviside,
    clamp,
    guarded,
    logsumexp,
    Reduction,
    OneHot,
    Tie,
    sp.core.relational.Relational,
    sp.And,
    sp.Or,
    sp.Not,
    BooleanTrue,
    BooleanFalse,
    *ELEMENTWISE_FUNCTIONS,
)


class UnsupportedExpressionError(ValueError):
    """An expression node that lossgen cannot print as torch code."""


def unsupported_nodes(expr: sp.Basic) -> list[str]:
    """Names of the node types in `expr` that the printer cannot print (empty if none)."""
    found: set[str] = set()
    for node in _nodes(expr):
        if not isinstance(node, SUPPORTED_NODES):
            found.add(type(node).__name__)
        elif isinstance(node, sp.Piecewise) and node.args[-1].cond != sp.true:
            found.add("Piecewise without a final (expr, True) branch")
        elif isinstance(node, sp.Pow) and node.exp.is_number and not node.exp.is_real:
            found.add("complex power")
    return sorted(found)


def _nodes(expr: sp.Basic) -> list[sp.Basic]:
    """Every node, except the dims of reductions (a Tuple of ints, printed by the reduction)."""
    found = []
    stack = [expr]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.args[:1] if isinstance(node, Reduction) else node.args)
    return found


class ConditionPrinter(StrPrinter):
    """Comparisons and &, |, ~ as Python operators: the same in torch and in Triton code."""

    def _print_Relational(self, expr: sp.core.relational.Relational) -> str:
        operator = RELATIONAL_OPERATORS[expr.rel_op]
        left = self.parenthesize(expr.lhs, PRECEDENCE["Relational"] + 1)
        right = self.parenthesize(expr.rhs, PRECEDENCE["Relational"] + 1)
        return f"{left} {operator} {right}"

    def _print_And(self, expr: sp.And) -> str:
        return " & ".join(self._print_operand(arg) for arg in expr.args)

    def _print_Or(self, expr: sp.Or) -> str:
        return " | ".join(self._print_operand(arg) for arg in expr.args)

    def _print_Not(self, expr: sp.Not) -> str:
        return f"~{self._print_operand(expr.args[0])}"

    def _print_operand(self, expr: sp.Basic) -> str:
        # & | ~ bind tighter than comparisons in Python: parenthesize anything compound.
        code = self._print(expr)
        if isinstance(expr, sp.Symbol) or precedence(expr) >= PRECEDENCE["Atom"]:
            return code
        return f"({code})"


class TorchCodePrinter(ConditionPrinter):
    """Prints elementwise SymPy expressions as torch code."""

    printmethod = "_lossgen_torch"

    def __init__(
        self,
        names: Mapping[sp.Symbol, str],
        like: str,
        shape: str = "shape",
        compiled: bool = False,
    ) -> None:
        """`names` maps symbols to Python names; `like` names a tensor of the compute dtype;
        `shape` names the broadcast shape of all arguments (what reductions reduce over);
        `compiled`: the code is for torch.compile (the fast path), see _print_xlogy.
        """
        super().__init__()
        self._names = dict(names)
        self._like = like
        self._shape = shape
        self._compiled = compiled

    def doprint(self, expr: sp.Basic) -> str:
        missing = unsupported_nodes(expr)
        if missing:
            raise UnsupportedExpressionError(
                "cannot print as torch code: " + ", ".join(missing)
            )
        return super().doprint(expr)

    def emptyPrinter(self, expr: object) -> str:  # noqa: N802 - SymPy's hook name
        raise UnsupportedExpressionError(f"cannot print {type(expr).__name__}")

    # --- atoms -------------------------------------------------------------------------

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        if isinstance(expr, DimSize):
            if expr.dims == ALL:
                return f"{self._shape}.numel()"
            (dim,) = expr.dims
            return f"{self._shape}[{dim}]"
        if expr not in self._names:
            raise UnsupportedExpressionError(f"unknown symbol {expr.name!r}")
        return self._names[expr]

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_Pi(self, expr: sp.Basic) -> str:
        return "math.pi"

    def _print_Exp1(self, expr: sp.Basic) -> str:
        return "math.e"

    def _print_Infinity(self, expr: sp.Basic) -> str:
        return "math.inf"

    def _print_NegativeInfinity(self, expr: sp.Basic) -> str:
        return "-math.inf"

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return "False"

    # --- arithmetic --------------------------------------------------------------------

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        if expr.is_number:
            if exponent == sp.S.Half:
                return f"math.sqrt({self._print(base)})"
            if exponent == -sp.S.Half:  # StrPrinter would print a bare `1/sqrt(...)`
                return f"(1/math.sqrt({self._print(base)}))"
            return super()._print_Pow(expr, rational)
        if exponent == sp.S.Half:
            return f"torch.sqrt({self._print(base)})"
        if exponent == -sp.S.Half:
            return f"torch.rsqrt({self._print(base)})"
        return super()._print_Pow(expr, rational)

    # --- functions ---------------------------------------------------------------------

    def _print_Function(self, expr: sp.Function) -> str:
        spelling = ELEMENTWISE_FUNCTIONS.get(type(expr))
        if spelling is None:
            raise UnsupportedExpressionError(f"cannot print {type(expr).__name__}")
        torch_name, math_name = spelling
        name = math_name if expr.is_number and math_name else torch_name
        return f"{name}({', '.join(self._print(arg) for arg in expr.args)})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_Abs = _print_Function
    _print_relu = _print_Function
    _print_log1p = _print_Function
    _print_sigmoid = _print_Function
    _print_softplus = _print_Function

    def _print_logsigmoid(self, expr: logsigmoid) -> str:
        # Not torch.nn.functional.logsigmoid: its CPU kernel always runs parallel_for, measured
        # at ~20 ms per call on a 12-element tensor on a loaded 2-core machine (softplus: 3 us).
        # -softplus(-x) is as stable (both are exact to float rounding at every magnitude).
        return f"(-torch.nn.functional.softplus({self._print(-expr.args[0])}))"

    def _print_expm1(self, expr: expm1) -> str:
        # For torch.compile, the generated helper _expm1 (the same values, written out):
        # Inductor's CPU code computes exp(x) - 1, which loses every digit near x = 0 (1e-9
        # gives 0; Welsch's loss at residuals of 1e-4 was 0).
        if self._compiled and not expr.args[0].is_number:
            return f"_expm1({self._print(expr.args[0])})"
        return self._print_Function(expr)

    def _print_xlogy(self, expr: xlogy) -> str:
        # For torch.compile, the generated helper _xlogy (the same values, written out):
        # Inductor's CPU code tests xlogy's NaN case with an isnan that it does not vectorize,
        # measured at 3x the time of the written-out form in a sum over 4M float32 elements.
        # torch.where needs tensors there, so a number argument keeps torch.xlogy.
        if self._compiled and not any(arg.is_number for arg in expr.args):
            return f"_xlogy({self._print(expr.args[0])}, {self._print(expr.args[1])})"
        return self._print_Function(expr)

    def _print_logsumexp(self, expr: logsumexp) -> str:
        # Pairwise torch.logaddexp: elementwise, broadcasting. A torch.stack of the arguments
        # would be a tensor as large as all of them together (JensenShannon's compiled step
        # peaked at 5 inputs' memory with it). Numbers become 0-dim tensors.
        parts = [
            (
                f"{self._like}.new_full((), {self._print(arg)})"
                if arg.is_number
                else self._print(arg)
            )
            for arg in expr.args
        ]
        code = parts[0]
        for part in parts[1:]:
            code = f"torch.logaddexp({code}, {part})"
        return code

    def _print_sign(self, expr: sp.sign) -> str:
        return f"torch.sign({self._print(expr.args[0])})"

    def _print_Max(self, expr: sp.Max) -> str:
        return self._print_extremum(expr, "torch.maximum", "min")

    def _print_Min(self, expr: sp.Min) -> str:
        return self._print_extremum(expr, "torch.minimum", "max")

    def _print_extremum(self, expr: sp.Basic, binary: str, clamp_side: str) -> str:
        numbers = [arg for arg in expr.args if arg.is_number]
        others = sorted(
            (arg for arg in expr.args if not arg.is_number), key=sp.default_sort_key
        )
        code = self._print(others[0])
        for arg in others[1:]:
            code = f"{binary}({code}, {self._print(arg)})"
        if numbers:  # SymPy has already folded several numbers into one
            code = f"torch.clamp({code}, {clamp_side}={self._print(numbers[0])})"
        return code

    def _print_clamp(self, expr: clamp) -> str:
        x, low, high = (self._print(arg) for arg in expr.args)
        if expr.args[0].is_number:  # torch.clamp needs a tensor to clamp
            x = self._constant_tensor(x)
        bounds = []
        if expr.args[1] != -sp.oo:
            bounds.append(("min", low, expr.args[1].is_number))
        if expr.args[2] != sp.oo:
            bounds.append(("max", high, expr.args[2].is_number))
        if len({is_number for _, _, is_number in bounds}) > 1:
            # torch.clamp takes two numbers or two tensors, never one of each.
            code = x
            for side, bound, _ in bounds:
                code = f"torch.clamp({code}, {side}={bound})"
            return code
        if not bounds:  # clamp(x, -oo, oo); torch.clamp wants at least one bound
            return x
        keywords = "".join(f", {side}={bound}" for side, bound, _ in bounds)
        return f"torch.clamp({x}{keywords})"

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        # Written with sign() so the result keeps the argument's dtype and stays differentiable.
        argument, at_zero = expr.args
        signed = f"torch.sign({self._print(argument)})"
        if at_zero == sp.S.Half:
            return f"((1 + {signed}) / 2)"
        if at_zero == 0:
            return f"torch.relu({signed})"
        if at_zero == 1:
            return f"(1 - torch.relu(-{signed}))"
        jump = self._print(at_zero)
        return f"((1 + {signed}) / 2 + ({jump} - 1/2) * (1 - torch.abs({signed})))"

    def _print_guarded(self, expr: guarded) -> str:
        value, condition = expr.args
        return f"torch.where({self._print(condition)}, {self._print(value)}, 1)"

    # --- reductions (keepdim, over the broadcast shape) ------------------------------------

    def _print_Reduction(self, expr: Reduction) -> str:
        body = self._print(expr.body)
        if expr.dims == ALL:
            dims = f"tuple(range(len({self._shape})))"
        else:
            named = sorted(expr.dims)
            dims = str(named[0]) if len(named) == 1 else str(tuple(named))
        # A body broadcast along a reduced dim still counts every element of the shape there
        # (a generated helper expands it along the reduced dims only).
        expanded = f"_expand_along({body}, {dims}, {self._shape})"
        return f"{expr.torch_name}({expanded}, dim={dims}, keepdim=True)"

    def _print_Sum(self, expr: Sum) -> str:  # noqa: N802 - SymPy's hook name
        parts = pick_parts(expr)
        if parts is None:
            return self._print_Reduction(expr)
        # A Pick, Sum(OneHot(t) * E, d): E at t, a gather (generated helpers _at, _pick),
        # never a one-hot as large as E.
        one_hot, value = parts
        index = self._print(one_hot.args[0])
        at_index = _AtIndexPrinter(self, index, one_hot.dim)
        code = at_index._print(value)
        if not value.free_symbols:
            code = self._constant_tensor(code)
        return f"_pick({code}, {index}, {one_hot.dim}, {self._shape})"

    _print_Mean = _print_Reduction
    _print_LogSumExp = _print_Reduction
    _print_Amax = _print_Reduction
    _print_Amin = _print_Reduction

    def _print_OneHot(self, expr: OneHot) -> str:
        index = self._print(expr.args[0])
        return f"_one_hot({index}, {expr.dim}, {self._shape}, {self._like})"

    # --- conditions --------------------------------------------------------------------

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        *branches, (otherwise, _) = expr.args
        all_numbers = all(value.is_number for value, _ in expr.args)
        code = self._print(otherwise)
        if all_numbers:
            # torch.where of two Python numbers gives the default dtype, not the inputs' dtype
            # (and a cast afterwards would round float64 values through float32).
            code = self._constant_tensor(code)
        for value, condition in reversed(branches):
            code = (
                f"torch.where({self._print(condition)}, {self._print(value)}, {code})"
            )
        return code

    def _print_Tie(self, expr: Tie) -> str:
        return self._print_Piecewise(expr.as_piecewise())

    def _constant_tensor(self, code: str) -> str:
        """A number as a 0-dim tensor of the compute dtype and device."""
        like = self._like
        return f"torch.full((), {code}, dtype={like}.dtype, device={like}.device)"


class _AtIndexPrinter(TorchCodePrinter):
    """Prints E of a Pick at the class index along its dim: each leaf that may vary along the
    dim (a tensor, a param, a temporary, a reduction over other dims) through the generated
    helper _at (a gather at the index); E is then computed on those values only.

    Gathering the leaves and computing E is E gathered: E is elementwise outside reductions.
    A reduction over the dim is constant along it and is printed as the outer printer would.
    """

    def __init__(self, outer: TorchCodePrinter, index: str, dim: int) -> None:
        super().__init__(outer._names, outer._like, outer._shape, outer._compiled)
        self._outer = outer
        self._index = index
        self._dim = dim

    def _at(self, code: str) -> str:
        return f"_at({code}, {self._index}, {self._dim}, {self._shape})"

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        code = super()._print_Symbol(expr)
        if isinstance(expr, DimSize) or (
            isinstance(expr, TensorSymbol) and expr.index_of == self._dim
        ):
            return code  # a number, or class indices (unsqueezed along the dim)
        return self._at(code)  # _at leaves a value of size 1 along the dim as it is

    def _print_Reduction(self, expr: Reduction) -> str:
        code = self._outer._print(expr)
        if covers(constant_dims(expr), frozenset({self._dim})):
            return code
        return self._at(code)

    _print_Sum = _print_Reduction
    _print_Mean = _print_Reduction
    _print_LogSumExp = _print_Reduction
    _print_Amax = _print_Reduction
    _print_Amin = _print_Reduction

    def _print_OneHot(self, expr: OneHot) -> str:
        return self._at(self._outer._print(expr))


def print_torch(
    expr: sp.Basic, names: Mapping[sp.Symbol, str], like: str, compiled: bool = False
) -> str:
    """Print one expression; see TorchCodePrinter."""
    return TorchCodePrinter(names, like, compiled=compiled).doprint(expr)


def print_spread(
    expr: sp.Basic, names: Mapping[sp.Symbol, str], like: str, compiled: bool = False
) -> tuple[str, str, int] | None:
    """(E at the class index, the index, its dim), printed, where `expr` is OneHot(t) * E
    (see reductions.spread_parts); None otherwise.

    For a gradient that is a Pick's (NLL's): the template scatters E into zeros with the
    generated helper _spread, where the one-hot product would compute every element of a
    tensor as large as the one-hot (measured 2x slower compiled on CPU, benchmarks/RESULTS.md).
    """
    parts = spread_parts(expr)
    if parts is None:
        return None
    missing = unsupported_nodes(expr)
    if missing:
        raise UnsupportedExpressionError(
            "cannot print as torch code: " + ", ".join(missing)
        )
    one_hot, value = parts
    printer = TorchCodePrinter(names, like, compiled=compiled)
    index = printer._print(one_hot.args[0])
    code = _AtIndexPrinter(printer, index, one_hot.dim)._print(value)
    if not value.free_symbols:
        code = printer._constant_tensor(code)
    return code, index, one_hot.dim
