"""Numerically stable special functions, as SymPy functions that differentiate into each other.

The rewrite stage (`lossgen.rewrite`) turns naive spellings into these (`log(1 + exp(x))` into
`softplus(x)`, ...); users may also write them directly (they are exported by `lossgen`). Each
derivative is expressed through the same family, so gradients stay in stable forms:

    softplus'(x)   = sigmoid(x)
    sigmoid'(x)    = sigmoid(x) * (1 - sigmoid(x))   (rewritten to sigmoid(x) * sigmoid(-x))
    logsigmoid'(x) = sigmoid(-x)
    d xlogy(x, y) = log(y) dx + x / y dy      (with torch.xlogy's 0 at x = 0, y <= 0)
    d logsumexp(a, b, ...) / da = exp(a - logsumexp(a, b, ...))     (softmax weights)

With a plain number as argument each evaluates to its elementary form, so the printer only ever
prints them on tensors.
"""

from __future__ import annotations

import sympy as sp


class sigmoid(sp.Function):  # noqa: N801 - spelled like torch.sigmoid
    """1 / (1 + exp(-x)), printed as torch.sigmoid (no overflow for any x)."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number:
            return 1 / (1 + sp.exp(-x))
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None

    def _eval_rewrite_as_exp(self, x: sp.Expr, **kwargs: object) -> sp.Expr:
        return 1 / (1 + sp.exp(-x))


class softplus(sp.Function):  # noqa: N801 - spelled like torch's softplus
    """log(1 + exp(x)), printed as torch.nn.functional.softplus (no overflow for any x)."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number:
            return sp.log(1 + sp.exp(x))
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_extended_real else None

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs: object) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    _eval_rewrite_as_exp = _eval_rewrite_as_log


class logsigmoid(sp.Function):  # noqa: N801 - spelled like torch's logsigmoid
    """log(sigmoid(x)) = -softplus(-x), printed as -torch.nn.functional.softplus(-x)."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_number:
            return -sp.log(1 + sp.exp(-x))
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(-self.args[0])

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_negative(self) -> bool | None:
        return True if self.args[0].is_extended_real else None

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs: object) -> sp.Expr:
        return -sp.log(1 + sp.exp(-x))

    _eval_rewrite_as_exp = _eval_rewrite_as_log


class xlogy(sp.Function):  # noqa: N801 - spelled like torch.xlogy
    """x * log(y), and 0 where x = 0 (even where y = 0), printed as torch.xlogy.

    The derivative in y is x / y. In x it is log(y), except 0 where x = 0 and y <= 0: PyTorch's
    convention for torch.xlogy, which keeps d/dx finite at x = y = 0 (as in x * log(x) on zero
    probabilities) instead of -inf. Written as xlogy(w, y) with w = max(|sign(x)|, sign(y)),
    which is 1 except exactly there (and |sign(x)| when y is x).
    """

    nargs = 2

    @classmethod
    def eval(cls, x: sp.Expr, y: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.S.Zero
        if x.is_number and y.is_number:
            return x * sp.log(y)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        x, y = self.args
        if argindex == 1:
            nonzero = sp.Abs(sp.sign(x))  # x != 0, as a number
            return xlogy(nonzero if x == y else sp.Max(nonzero, sp.sign(y)), y)
        return x / y

    def _eval_is_extended_real(self) -> bool | None:
        x, y = self.args
        if x.is_extended_real and y.is_extended_positive:
            return True
        return None

    def _eval_rewrite_as_log(self, x: sp.Expr, y: sp.Expr, **kwargs: object) -> sp.Expr:
        return x * sp.log(y)


class logsumexp(sp.Function):  # noqa: N801 - spelled like torch.logsumexp
    """log(exp(a) + exp(b) + ...), max-shifted so that it never overflows.

    Printed as torch.logsumexp over the broadcast arguments stacked on a new first dim.
    """

    @classmethod
    def eval(cls, *args: sp.Expr) -> sp.Expr | None:
        if not args:
            raise TypeError("logsumexp needs at least one argument")
        if len(args) == 1:
            return args[0]
        if all(arg.is_number for arg in args):
            return sp.log(sp.Add(*(sp.exp(arg) for arg in args)))
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.exp(self.args[argindex - 1] - self)

    def _eval_is_extended_real(self) -> bool | None:
        if all(arg.is_extended_real for arg in self.args):
            return True
        return None

    def _eval_rewrite_as_exp(self, *args: sp.Expr, **kwargs: object) -> sp.Expr:
        return sp.log(sp.Add(*(sp.exp(arg) for arg in args)))

    _eval_rewrite_as_log = _eval_rewrite_as_exp


STABLE_FUNCTIONS: tuple[type[sp.Function], ...] = (
    sigmoid,
    softplus,
    logsigmoid,
    xlogy,
    logsumexp,
)
