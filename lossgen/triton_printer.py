"""Stage 4b, print for Triton: one elementwise SymPy expression to one Triton expression string.

The fast path of a loss without reductions runs as one Triton kernel on CUDA (see the
template); this printer writes the expressions of its body. Like `lossgen.printer` it is strict:
a node it does not know is an error, never a guess, and each supported node has its own
`_print_X`.

Conventions the printed code relies on (the kernel in templates/loss.py.jinja provides them):
- Symbols print as their names: tensors are blocks loaded from memory and params are scalars
  loaded from their 0-dim tensors, both already cast to the compute dtype `compute_dtype` (a
  `tl.constexpr`); `block_size` is the number of elements per program.
- `tl` is `triton.language` and `libdevice` is `triton.language.extra.libdevice`.
- Square roots and transcendental functions are libdevice's (the CUDA math library, as
  accurate as torch's own CUDA kernels; tl.sqrt_rn has no float64), in float32 and float64.
- A subexpression without symbols prints as one float literal (`0.6931471805599453`, not
  `log(2)`): Triton makes a Python number take the dtype of the tensor it meets, so literals
  are exact in float64 kernels too. Rationals print as `1/2` (folded by Python while compiling).
- Stable functions with no Triton builtin are written out in stable forms: softplus(x) as
  max(x, 0) + log1p(exp(-|x|)), logsumexp(a, b) as max(a, b) + log1p(exp(-|a - b|)).
- Integer powers are products (Triton has no `**`), always parenthesized, so that a printed
  power stays one operand next to `/`.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from sympy.logic.boolalg import BooleanFalse, BooleanTrue
from sympy.printing.precedence import PRECEDENCE

from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.printer import ConditionPrinter, UnsupportedExpressionError
from lossgen.reductions import DimSize, Tie
from lossgen.vocabulary import clamp, guarded, relu

# SymPy function -> Triton function of one or two blocks
TRITON_FUNCTIONS: dict[type, str] = {
    sp.exp: "libdevice.exp",
    sp.log: "libdevice.log",
    sp.Abs: "tl.abs",
    sp.sin: "libdevice.sin",
    sp.cos: "libdevice.cos",
    sp.tan: "libdevice.tan",
    sp.asin: "libdevice.asin",
    sp.acos: "libdevice.acos",
    sp.atan: "libdevice.atan",
    sp.sinh: "libdevice.sinh",
    sp.cosh: "libdevice.cosh",
    sp.tanh: "libdevice.tanh",
    sp.asinh: "libdevice.asinh",
    sp.acosh: "libdevice.acosh",
    sp.atanh: "libdevice.atanh",
    sp.erf: "libdevice.erf",
    sp.erfc: "libdevice.erfc",
    log1p: "libdevice.log1p",
    expm1: "libdevice.expm1",
}

# Integer powers up to this exponent print as products; larger ones through libdevice.pow.
MAX_PRODUCT_POWER = 4

SUPPORTED_NODES: tuple[type, ...] = (
    sp.Add,
    sp.Mul,
    sp.Pow,
    sp.Symbol,
    sp.Integer,
    sp.Rational,
    sp.Float,
    sp.core.numbers.Pi,
    sp.core.numbers.Exp1,
    sp.sign,
    sp.Max,
    sp.Min,
    sp.Piecewise,
    sp.functions.elementary.piecewise.ExprCondPair,
    sp.Heaviside,
    relu,
    clamp,
    guarded,
    sigmoid,
    softplus,
    logsigmoid,
    xlogy,
    logsumexp,
    Tie,
    sp.core.relational.Relational,
    sp.And,
    sp.Or,
    sp.Not,
    BooleanTrue,
    BooleanFalse,
    *TRITON_FUNCTIONS,
)


def triton_unsupported_nodes(expr: sp.Basic) -> list[str]:
    """Names of the node types in `expr` this printer cannot print (empty if none)."""
    found: set[str] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, clamp):  # an infinite bound means none: printed as nothing
            stack.extend(arg for arg in node.args if arg not in (sp.oo, -sp.oo))
            continue
        stack.extend(node.args)
        if isinstance(node, DimSize) or not isinstance(node, SUPPORTED_NODES):
            found.add(type(node).__name__)
        elif isinstance(node, sp.Piecewise) and node.args[-1].cond != sp.true:
            found.add("Piecewise without a final (expr, True) branch")
        elif isinstance(node, sp.Pow) and node.exp.is_number and not node.exp.is_real:
            found.add("complex power")
    return sorted(found)


class TritonCodePrinter(ConditionPrinter):
    """Prints elementwise SymPy expressions as Triton code (see the module docstring)."""

    printmethod = "_lossgen_triton"

    def __init__(
        self,
        names: Mapping[sp.Symbol, str],
        dtype: str = "compute_dtype",
        block: str = "block_size",
    ) -> None:
        """`names` maps symbols to kernel variable names; `dtype` and `block` name the
        kernel's compute dtype and block size.
        """
        super().__init__()
        self._names = dict(names)
        self._dtype = dtype
        self._block = block

    def doprint(self, expr: sp.Basic) -> str:
        missing = triton_unsupported_nodes(expr)
        if missing:
            raise UnsupportedExpressionError(
                "cannot print as Triton code: " + ", ".join(missing)
            )
        return super().doprint(expr)

    def emptyPrinter(self, expr: object) -> str:  # noqa: N802 - SymPy's hook name
        raise UnsupportedExpressionError(
            f"cannot print {type(expr).__name__} for Triton"
        )

    def _print(self, expr: sp.Basic, **kwargs: object) -> str:
        # Constants fold to one literal; integers and rationals stay exact as written.
        if (
            isinstance(expr, sp.Expr)
            and expr.is_number
            and not isinstance(expr, (sp.Integer, sp.Rational, sp.Float))
        ):
            value = expr.evalf(17)
            if not (value.is_Float and value.is_finite):
                raise UnsupportedExpressionError(f"cannot print {expr} for Triton")
            return self._print_Float(value)
        return super()._print(expr, **kwargs)

    # --- atoms -------------------------------------------------------------------------

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        if expr not in self._names:
            raise UnsupportedExpressionError(f"unknown symbol {expr.name!r}")
        return self._names[expr]

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return "False"

    # --- arithmetic --------------------------------------------------------------------

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        if exponent == sp.S.Half:
            return f"libdevice.sqrt({self._argument(base)})"
        if exponent == -sp.S.Half:
            return f"(1 / libdevice.sqrt({self._argument(base)}))"
        if exponent.is_Integer and 0 < abs(int(exponent)) <= MAX_PRODUCT_POWER:
            factor = self.parenthesize(base, PRECEDENCE["Mul"], strict=False)
            count = abs(int(exponent))
            product = " * ".join([factor] * count)
            if exponent > 0:
                return f"({product})"
            return f"(1 / {product})" if count == 1 else f"(1 / ({product}))"
        if exponent.is_Integer:  # libdevice's pow of a float and an int32
            if exponent < 0:
                return f"(1 / libdevice.pow({self._argument(base)}, {-exponent}))"
            return f"libdevice.pow({self._argument(base)}, {exponent})"
        return f"libdevice.pow({self._float_argument(base)}, {self._float_argument(exponent)})"

    # --- functions ---------------------------------------------------------------------

    def _print_Function(self, expr: sp.Function) -> str:
        name = TRITON_FUNCTIONS.get(type(expr))
        if name is None:
            raise UnsupportedExpressionError(
                f"cannot print {type(expr).__name__} for Triton"
            )
        return f"{name}({', '.join(self._argument(arg) for arg in expr.args)})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_Abs = _print_Function
    _print_log1p = _print_Function
    _print_expm1 = _print_Function

    def _print_relu(self, expr: relu) -> str:
        return f"tl.maximum({self._argument(expr.args[0])}, 0.0)"

    def _print_sigmoid(self, expr: sigmoid) -> str:
        # -x as SymPy negates it: sigmoid(-u) prints exp(u), not exp(-(-u))
        return f"(1 / (1 + libdevice.exp({self._argument(-expr.args[0])})))"

    def _print_softplus(self, expr: softplus) -> str:
        x = self._argument(expr.args[0])
        return f"(tl.maximum({x}, 0.0) + libdevice.log1p(libdevice.exp(-tl.abs({x}))))"

    def _print_logsigmoid(self, expr: logsigmoid) -> str:
        # -softplus(-x)
        x = self._argument(expr.args[0])
        return f"(tl.minimum({x}, 0.0) - libdevice.log1p(libdevice.exp(-tl.abs({x}))))"

    def _print_xlogy(self, expr: xlogy) -> str:
        x, y = expr.args
        product = f"{self.parenthesize(x, PRECEDENCE['Mul'], strict=False)} * "
        product += f"libdevice.log({self._argument(y)})"
        zero = self.parenthesize(x, PRECEDENCE["Relational"] + 1)
        return f"tl.where({zero} == 0, 0.0, {product})"

    def _print_logsumexp(self, expr: logsumexp) -> str:
        args = [self._argument(arg) for arg in expr.args]
        if len(args) == 2:
            a, b = args
            return f"(tl.maximum({a}, {b}) + libdevice.log1p(libdevice.exp(-tl.abs({a} - {b}))))"
        largest = args[0]
        for arg in args[1:]:
            largest = f"tl.maximum({largest}, {arg})"
        terms = " + ".join(f"libdevice.exp({arg} - {largest})" for arg in args)
        return f"({largest} + libdevice.log({terms}))"

    def _print_sign(self, expr: sp.sign) -> str:
        x = self._print(expr.args[0])
        dtype = self._dtype
        return f"(({x} > 0).to({dtype}) - ({x} < 0).to({dtype}))"

    def _print_Max(self, expr: sp.Max) -> str:
        return self._print_extremum(expr, "tl.maximum")

    def _print_Min(self, expr: sp.Min) -> str:
        return self._print_extremum(expr, "tl.minimum")

    def _print_extremum(self, expr: sp.Basic, binary: str) -> str:
        # numbers last: Triton wants a block (or a loaded scalar) as the first argument
        args = sorted(
            expr.args, key=lambda arg: (arg.is_number, sp.default_sort_key(arg))
        )
        code = self._argument(args[0])
        for arg in args[1:]:
            code = f"{binary}({code}, {self._argument(arg)})"
        return code

    def _print_clamp(self, expr: clamp) -> str:
        x, low, high = expr.args
        code = self._argument(x)
        if x.is_number:
            code = self._constant_block(code)
        if low != -sp.oo:
            code = f"tl.maximum({code}, {self._argument(low)})"
        if high != sp.oo:
            code = f"tl.minimum({code}, {self._argument(high)})"
        return code

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        argument, at_zero = expr.args
        x = self._print(argument)
        if at_zero == 0:
            return f"({x} > 0).to({self._dtype})"
        if at_zero == 1:
            return f"({x} >= 0).to({self._dtype})"
        return (
            f"tl.where({x} == 0, {self._print(at_zero)}, ({x} > 0).to({self._dtype}))"
        )

    def _print_guarded(self, expr: guarded) -> str:
        value, condition = expr.args
        return f"tl.where({self._argument(condition)}, {self._argument(value)}, 1.0)"

    # --- conditions --------------------------------------------------------------------

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        *branches, (otherwise, _) = expr.args
        code = self._argument(otherwise)
        if all(value.is_number for value, _ in expr.args):
            # tl.where of Python numbers alone would be float32, even in a float64 kernel
            code = self._constant_block(code)
        for value, condition in reversed(branches):
            condition_code = self._argument(condition)
            code = f"tl.where({condition_code}, {self._argument(value)}, {code})"
        return code

    def _print_Tie(self, expr: Tie) -> str:
        return self._print_Piecewise(expr.as_piecewise())

    def _argument(self, expr: sp.Basic) -> str:
        """`expr` printed as a function's argument: without parentheses around it all."""
        code = self._print(expr)
        if code.startswith("(") and _closing_paren(code, 0) == len(code) - 1:
            return code[1:-1]
        return code

    def _float_argument(self, expr: sp.Basic) -> str:
        """An argument of a libdevice function of floats: a number must be typed, since
        libdevice has no float64 function of a float32 (what Triton makes of a Python float).
        """
        code = self._argument(expr)
        if expr.is_number:
            return f"tl.full([], {code}, {self._dtype})"
        return code

    def _constant_block(self, code: str) -> str:
        """A number as a block of the compute dtype."""
        return f"tl.full([{self._block}], {code}, {self._dtype})"


def _closing_paren(code: str, opening: int) -> int:
    """The index of the parenthesis that closes the one at `opening`."""
    depth = 0
    for index in range(opening, len(code)):
        if code[index] == "(":
            depth += 1
        elif code[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced parentheses in {code!r}")


def print_triton(expr: sp.Basic, names: Mapping[sp.Symbol, str]) -> str:
    """Print one expression for a Triton kernel; see TritonCodePrinter."""
    return TritonCodePrinter(names).doprint(expr)
