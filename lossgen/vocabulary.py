"""What a spec file imports: Tensor, Param, Loss, and the few functions SymPy lacks.

Tensor and Param are real SymPy symbols (so |x|' is sign(x), not re/im terms) that also remember
how the generated code should treat them. Loss records where it was declared, so later errors can
name the spec line.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import sympy as sp

from lossgen.errors import SourceLocation

REDUCTIONS = ("none", "mean", "sum")
_declarations = itertools.count()


class TensorSymbol(sp.Symbol):
    """One element of a tensor argument of the loss."""

    differentiable: bool
    index_of: int | None
    declaration_index: int

    def __new__(
        cls,
        name: str,
        *,
        differentiable: bool = True,
        index_of: int | None = None,
    ) -> TensorSymbol:
        # Uncached construction: two declarations must never share one object's metadata.
        obj = sp.Symbol.__xnew__(cls, name, real=True)
        # Class indices are integers: nothing to differentiate.
        obj.differentiable = bool(differentiable) and index_of is None
        obj.index_of = index_of
        obj.declaration_index = next(_declarations)
        return obj

    def __getnewargs_ex__(self) -> tuple[tuple[str], dict[str, Any]]:
        return (self.name,), {
            "differentiable": self.differentiable,
            "index_of": self.index_of,
        }

    def _hashable_content(self) -> tuple[Any, ...]:
        return _declared_content(self)


class ParamSymbol(sp.Symbol):
    """A constructor argument of the loss: a float, or a tensor broadcastable to the inputs."""

    default: float | None
    learnable: bool
    along: int | None
    declaration_index: int

    def __new__(
        cls,
        name: str,
        *,
        default: float | None = None,
        learnable: bool = False,
        along: int | None = None,
    ) -> ParamSymbol:
        obj = sp.Symbol.__xnew__(cls, name, real=True)
        obj.default = default
        obj.learnable = bool(learnable)
        obj.along = along
        obj.declaration_index = next(_declarations)
        return obj

    def __getnewargs_ex__(self) -> tuple[tuple[str], dict[str, Any]]:
        return (self.name,), {
            "default": self.default,
            "learnable": self.learnable,
            "along": self.along,
        }

    def _hashable_content(self) -> tuple[Any, ...]:
        return _declared_content(self)


def _declared_content(symbol: sp.Symbol) -> tuple[Any, ...]:
    """Each declaration is its own symbol, as sympy.Dummy is: two Tensor("input") from two
    spec files (or two loads of one) never compare equal. Otherwise SymPy's cache hands back
    expressions built from an earlier declaration, whose metadata (declaration order, params'
    defaults) then silently replaces this one's: argument order flipped in a real build.
    """
    return sp.Symbol._hashable_content(symbol) + (symbol.declaration_index,)


def Tensor(  # noqa: N802
    name: str, *, differentiable: bool = True, index_of: int | None = None
) -> TensorSymbol:
    """Declare a tensor argument; use the returned symbol as one element of it.

    `index_of=dim` declares integer class indices into `dim` of the other tensors (shaped like
    them without that dim, as F.cross_entropy's target); use it through OneHot/Pick and in
    comparisons. It is never differentiable.
    """
    return TensorSymbol(name, differentiable=differentiable, index_of=index_of)


def Param(  # noqa: N802
    name: str,
    *,
    default: float | None = None,
    learnable: bool = False,
    along: int | None = None,
) -> ParamSymbol:
    """Declare a parameter: a constructor argument of the Module, trailing argument elsewhere.

    `along=dim`: a 1-D tensor value is laid along `dim` of the inputs (F.cross_entropy's class
    weights for (N, C) and (N, C, H, W) alike); floats and 0-dim tensors are unaffected.
    """
    return ParamSymbol(name, default=default, learnable=learnable, along=along)


class Loss:
    """A loss to generate: a name (CamelCase class name), an elementwise SymPy expression."""

    def __init__(
        self,
        name: str,
        expr: Any,
        *,
        reduction: str = "mean",
        doc: str | None = None,
        mean_weight: Any = None,
    ) -> None:
        self.name = name
        self.expr = expr
        self.reduction = reduction
        self.doc = doc
        # reduction="mean" divides by the sum of this over the loss's elements, not their count.
        self.mean_weight = mean_weight
        caller = inspect.stack(context=0)[1]
        self.location = SourceLocation(caller.filename, caller.lineno)

    def __repr__(self) -> str:
        return f"Loss({self.name!r}, {self.expr}, reduction={self.reduction!r})"


class relu(sp.Function):  # noqa: N801 - spelled like torch.relu
    """max(x, 0) with PyTorch's relu convention: the derivative at 0 is 0."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number and x.is_real:
            return sp.Max(x, 0)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.Heaviside(self.args[0], 0)

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


class clamp(sp.Function):  # noqa: N801 - spelled like torch.clamp
    """clamp(x, low, high) passing gradient 1 to x at the bounds themselves, none to a bound.

    That was torch.clamp's convention up to torch 2.13. From 2.14 on, torch.clamp passes 0 to x
    at a number bound and splits a tie with a tensor bound 1/2 to each (its minimum-norm
    subgradient); off the bounds the two agree. Use -oo or oo for a missing bound.
    """

    nargs = 3

    @classmethod
    def eval(cls, x: sp.Expr, low: sp.Expr, high: sp.Expr) -> sp.Expr | None:
        if all(arg.is_number for arg in (x, low, high)):
            return sp.Min(sp.Max(x, low), high)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        x, low, high = self.args
        inside_low = sp.Heaviside(x - low, 1) if low != -sp.oo else sp.S.One
        inside_high = sp.Heaviside(high - x, 1) if high != sp.oo else sp.S.One
        # Bounds the wrong way round (low > high) give high, as torch.clamp does: all of the
        # gradient goes to high then.
        finite = low != -sp.oo and high != sp.oo
        ordered = sp.Heaviside(high - low, 1) if finite else sp.S.One
        if argindex == 1:
            return inside_low * inside_high
        if argindex == 2:
            return (1 - inside_low) * ordered
        return 1 - inside_high * ordered

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


class guarded(sp.Function):  # noqa: N801 - internal node, printed as torch.where
    """guarded(value, condition): value where condition holds, 1 elsewhere.

    Made by the derive stage, never by users: it keeps the argument of log/sqrt/division
    finite where a Piecewise branch is not taken. A Function (not a Piecewise) so that
    SymPy's CSE cannot fold it back into the branch around it.
    """

    nargs = 2

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real
