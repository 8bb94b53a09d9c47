"""An independent torch evaluator of SymPy expressions: the "plain autograd" reference.

It walks the expression tree and applies torch ops node by node, so torch's autograd
differentiates the loss exactly as written. It shares nothing with the printer or the derive
stage, which is what makes it a reference: a bug there cannot hide here.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping

import sympy as sp
import torch
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.reductions import (
    ALL,
    Amax,
    Amin,
    Dims,
    LogSumExp,
    Mean,
    OneHot,
    Sum,
    Tie,
)
from lossgen.vocabulary import clamp, relu

Value = torch.Tensor | float | bool

_UNARY: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    sp.exp: torch.exp,
    sp.log: torch.log,
    sp.Abs: torch.abs,
    sp.sign: torch.sign,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.tan: torch.tan,
    sp.asin: torch.asin,
    sp.acos: torch.acos,
    sp.atan: torch.atan,
    sp.sinh: torch.sinh,
    sp.cosh: torch.cosh,
    sp.tanh: torch.tanh,
    sp.asinh: torch.asinh,
    sp.acosh: torch.acosh,
    sp.atanh: torch.atanh,
    sp.erf: torch.erf,
    sp.erfc: torch.erfc,
    relu: torch.relu,
    log1p: torch.log1p,
    expm1: torch.expm1,
    # torch's own stable ops, so the reference is as stable as the built-ins.
    sigmoid: torch.sigmoid,
    softplus: torch.nn.functional.softplus,
    # (logsigmoid as -softplus(-x): F.logsigmoid's CPU kernel is slow on small tensors)
    logsigmoid: lambda x: -torch.nn.functional.softplus(-x),
}

_COMPARE = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}


_REDUCE: dict[type, Callable[..., torch.Tensor]] = {
    Sum: torch.sum,
    Mean: torch.mean,
    LogSumExp: torch.logsumexp,
    Amax: torch.amax,
    Amin: torch.amin,
}


def evaluate(expr: sp.Basic, values: Mapping[sp.Symbol, torch.Tensor]) -> torch.Tensor:
    """Evaluate `expr` elementwise with torch ops; `values` holds one tensor per symbol.

    Reductions reduce over the broadcast shape of all `values` (keepdim); class-index tensors
    must come unsqueezed at their dim.
    """
    like = next(v for v in values.values() if v.is_floating_point())
    result = _Evaluator(values, like).visit(expr)
    return _tensor(result, like)


def keepdim_shape(shape: torch.Size, dropped: Dims) -> torch.Size:
    """`shape` with the dims a loss reduced away kept as size 1."""
    if dropped == ALL:
        return torch.Size([1] * len(shape))
    gone = {d % len(shape) for d in dropped}  # type: ignore[union-attr]
    return torch.Size(1 if d in gone else n for d, n in enumerate(shape))


def reduced_loss(
    expr: sp.Expr,
    values: Mapping[sp.Symbol, torch.Tensor],
    reduction: str,
    dropped: Dims,
    mean_weight: sp.Expr | None = None,
) -> torch.Tensor:
    """The loss as the generated code defines it: elementwise values over the broadcast shape
    less the dropped dims, then "none" | "mean" (weighted by `mean_weight`) | "sum"."""
    shape = torch.broadcast_shapes(*(v.shape for v in values.values()))
    kept = keepdim_shape(shape, dropped)
    loss = evaluate(expr, values).expand(kept)
    if reduction == "mean":
        if mean_weight is None:
            return loss.mean()
        return loss.sum() / evaluate(mean_weight, values).expand(kept).sum()
    if reduction == "sum":
        return loss.sum()
    if dropped == ALL:
        return loss.reshape(())
    return loss.squeeze(tuple(d % len(shape) for d in dropped))  # type: ignore[union-attr]


class _Evaluator:
    def __init__(
        self, values: Mapping[sp.Symbol, torch.Tensor], like: torch.Tensor
    ) -> None:
        self.values = values
        self.like = like
        self.shape = torch.broadcast_shapes(*(v.shape for v in values.values()))

    def visit(self, node: sp.Basic) -> Value:
        if isinstance(node, sp.Symbol):
            return self.values[node]
        if type(node) in _REDUCE:
            ndim = len(self.shape)
            dims = node.dims
            dim = tuple(range(ndim)) if dims == ALL else tuple(d % ndim for d in dims)
            body = self.tensor(self.visit(node.body))
            body = body.reshape((1,) * (ndim - body.dim()) + tuple(body.shape))
            # broadcast over the reduced dims only: elsewhere the body keeps its extent
            sizes = [self.shape[d] if d in dim else -1 for d in range(ndim)]
            return _REDUCE[type(node)](body.expand(sizes), dim=dim, keepdim=True)
        if isinstance(node, OneHot):
            index = self.values[node.args[0]]
            dim = node.dim % len(self.shape)
            positions = torch.arange(self.shape[dim], device=index.device)
            sizes = [1] * len(self.shape)
            sizes[dim] = -1
            return (index == positions.view(sizes)).to(self.like.dtype)
        if node is sp.true or node is sp.false:
            return bool(node)
        if node.is_number and isinstance(node, sp.Expr):
            return float(node)
        if isinstance(node, sp.Piecewise):
            return self.piecewise(node)
        if isinstance(node, Tie):
            return self.piecewise(node.as_piecewise())
        args = [self.visit(arg) for arg in node.args]
        if isinstance(node, sp.Add):
            return functools.reduce(operator.add, args)
        if isinstance(node, sp.Mul):
            return functools.reduce(operator.mul, args)
        if isinstance(node, sp.Pow):
            base, exponent = args
            return torch.pow(self.tensor(base), exponent)
        if type(node) in _UNARY:
            return _UNARY[type(node)](self.tensor(args[0]))
        if isinstance(node, xlogy):
            return torch.xlogy(self.tensor(args[0]), self.tensor(args[1]))
        if isinstance(node, logsumexp):
            tensors = torch.broadcast_tensors(*(self.tensor(arg) for arg in args))
            return torch.logsumexp(torch.stack(tensors), dim=0)
        if isinstance(node, (sp.Max, sp.Min)):
            pick = torch.maximum if isinstance(node, sp.Max) else torch.minimum
            tensors = [self.tensor(arg) for arg in args]
            return functools.reduce(pick, tensors)
        if isinstance(node, sp.Heaviside):
            argument, at_zero = args
            # torch.heaviside has no derivative; its derivative is zero almost everywhere.
            return torch.heaviside(self.tensor(argument).detach(), self.tensor(at_zero))
        if isinstance(node, clamp):
            return self.clamp(node, args)
        if isinstance(node, sp.core.relational.Relational):
            left, right = args
            return _COMPARE[node.rel_op](self.tensor(left), self.tensor(right))
        if isinstance(node, sp.And):
            return functools.reduce(torch.logical_and, [self.tensor(a) for a in args])
        if isinstance(node, sp.Or):
            return functools.reduce(torch.logical_or, [self.tensor(a) for a in args])
        if isinstance(node, sp.Not):
            return torch.logical_not(self.tensor(args[0]))
        raise NotImplementedError(
            f"reference evaluator: no rule for {type(node).__name__}"
        )

    def piecewise(self, node: sp.Piecewise) -> Value:
        result = self.tensor(self.visit(node.args[-1].expr))
        for value, condition in reversed(node.args[:-1]):
            result = torch.where(
                self.tensor(self.visit(condition)),
                self.tensor(self.visit(value)),
                result,
            )
        return result

    def clamp(self, node: clamp, args: list[Value]) -> torch.Tensor:
        """torch.clamp's value, with the gradient of lossgen's `clamp` at the bounds: all to x.

        Not torch.clamp's gradient there: torch 2.14 changed it from that (1 to x) to 0 to x
        at a number bound and half to x, half to a tensor bound. Off the bounds, both agree.
        """
        x = self.tensor(args[0])
        bounds = [  # the SymPy bounds are checked for infinity: an evaluated one may be a tensor
            (self.tensor(value), side)
            for value, bound, side in zip(args[1:], node.args[1:], ("min", "max"))
            if bound not in (-sp.oo, sp.oo)
        ]
        if not bounds:
            return x
        # Broadcast first: torch.clamp's backward fails where x is smaller than two tensor
        # bounds ("output with shape [5, 1] doesn't match the broadcast shape [5, 4]").
        x, *values = torch.broadcast_tensors(x, *(value for value, _ in bounds))
        keywords = {side: value for value, (_, side) in zip(values, bounds)}
        clamped = torch.clamp(x, **keywords)
        inside = [x >= v if side == "min" else x <= v for side, v in keywords.items()]
        # NaN is inside no bound, so torch.clamp's NaN passes through.
        return torch.where(functools.reduce(torch.logical_and, inside), x, clamped)

    def tensor(self, value: Value) -> torch.Tensor:
        return _tensor(value, self.like)


def _tensor(value: Value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool):
        return torch.tensor(value, device=like.device)
    return torch.tensor(value, dtype=like.dtype, device=like.device)
