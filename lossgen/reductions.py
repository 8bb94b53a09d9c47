"""Reductions over dimensions inside a loss expression, and what is constant along which dim.

`Sum(x, 1)`, `Mean`, `LogSumExp`, `Max(x, dim=1)` and `Min(x, dim=1)` reduce over dims of the
broadcast shape of all arguments and broadcast their value back over the reduced dims (keepdim),
so they compose with elementwise terms: `x - LogSumExp(x, 1)` is log_softmax. `OneHot(t)` and
`Pick(expr, t)` use class-index tensors (`Tensor(..., index_of=dim)`).

The nodes are SymPy functions of (body, dims), with dims a Tuple of ints; the empty Tuple means
every dim. SymPy never differentiates through them: `lossgen.backprop` does, in reverse mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy as sp

from lossgen.errors import SpecError
from lossgen.vocabulary import ParamSymbol, TensorSymbol

# A set of dims, or ALL (every dim, however many the inputs have).
ALL = "all"
Dims = frozenset[int] | str
NO_DIMS: frozenset[int] = frozenset()


def _dims_tuple(dim: Any) -> sp.Tuple:
    if isinstance(dim, sp.Tuple):
        return dim
    if dim is None:
        return sp.Tuple()
    raw = dim if isinstance(dim, (tuple, list)) else (dim,)
    if not raw:
        raise SpecError("dim=() reduces nothing: give a dim, a tuple of dims or None")
    dims = []
    for d in raw:
        if isinstance(d, bool) or not isinstance(d, (int, sp.Integer)):
            raise SpecError(f"a reduction dim must be an int, not {d!r}")
        dims.append(int(d))
    if len(set(dims)) != len(dims):
        raise SpecError(f"dim {tuple(dims)} names a dim twice")
    return sp.Tuple(*sorted(dims))


class Reduction(sp.Function):
    """body reduced over dims, broadcast back (keepdim)."""

    nargs = 2
    torch_name = ""
    display_name = ""

    def __new__(cls, body: Any, dim: Any, **options: Any) -> sp.Expr:
        return super().__new__(cls, sp.sympify(body), _dims_tuple(dim), **options)

    @classmethod
    def eval(cls, body: sp.Expr, dims: sp.Tuple) -> sp.Expr | None:
        # A constant body (only numbers and dim sizes) has a closed form; the printer needs
        # a tensor to reduce.
        if body.free_symbols and not all(
            isinstance(s, DimSize) for s in body.free_symbols
        ):
            return None
        return cls.of_constant(body, dims_of(dims))

    @classmethod
    def of_constant(cls, body: sp.Expr, dims: Dims) -> sp.Expr:
        """The reduction over `dims` of a body constant along them, in closed form."""
        if cls is Sum:
            return body * size(dims)
        if cls is LogSumExp:
            return body + sp.log(size(dims))
        return body  # Mean, Max, Min

    @property
    def body(self) -> sp.Expr:
        return self.args[0]

    @property
    def dims(self) -> Dims:
        return dims_of(self.args[1])

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_commutative(self) -> bool:
        # a number per element; SymPy would ask the dims' Tuple too, and with None for it,
        # infers nonsense (log(1 + Sum(log(tanh(x) + 2), 1)**2) "not real")
        return True

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        raise NotImplementedError("reductions are differentiated by lossgen.backprop")

    def _dims_text(self) -> str:
        dims = self.dims
        if dims == ALL:
            return "None"
        named = sorted(dims)
        return str(named[0]) if len(named) == 1 else str(tuple(named))

    def _sympystr(self, printer: Any) -> str:
        return (
            f"{self.display_name}({printer._print(self.body)}, dim={self._dims_text()})"
        )

    def _pretty(self, printer: Any) -> Any:
        from sympy.printing.pretty.stringpict import prettyForm

        form = printer._print(self.body)
        form = prettyForm(*form.parens())
        return prettyForm(*form.left(f"{self.display_name}[dim={self._dims_text()}]"))

    def _latex(self, printer: Any, exp: str | None = None) -> str:
        # SymPy's Pow printer passes the exponent in (`Sum(x, 1)**2`)
        return _with_exponent(
            rf"\operatorname{{{self.display_name}}}_{{{self._dims_text()}}}"
            rf"\left({printer._print(self.body)}\right)",
            exp,
        )


class Sum(Reduction):  # noqa: D101 - see Reduction
    torch_name = "torch.sum"
    display_name = "Sum"


class Mean(Reduction):  # noqa: D101
    torch_name = "torch.mean"
    display_name = "Mean"


class LogSumExp(Reduction):  # noqa: D101 - torch.logsumexp shifts by the max itself
    torch_name = "torch.logsumexp"
    display_name = "LogSumExp"


class Amax(Reduction):  # noqa: D101 - Max(x, dim=...)
    torch_name = "torch.amax"
    display_name = "Max"


class Amin(Reduction):  # noqa: D101 - Min(x, dim=...)
    torch_name = "torch.amin"
    display_name = "Min"


REDUCTION_NODES = (Sum, Mean, LogSumExp, Amax, Amin)
_NO_DIM = object()


def Max(*args: Any, dim: Any = _NO_DIM) -> sp.Expr:  # noqa: N802 - like sympy.Max
    """`Max(x, dim=1)`: the max over dim 1 (ties share the gradient, like torch.amax).

    Without `dim=`, SymPy's elementwise Max: `Max(x, 0)` is max(x, 0), never a reduction.
    """
    if dim is _NO_DIM:
        return sp.Max(*args)
    (body,) = args
    return Amax(body, dim)


def Min(*args: Any, dim: Any = _NO_DIM) -> sp.Expr:  # noqa: N802 - like sympy.Min
    """`Min(x, dim=1)`: the min over dim 1; without `dim=`, SymPy's elementwise Min."""
    if dim is _NO_DIM:
        return sp.Min(*args)
    (body,) = args
    return Amin(body, dim)


class OneHot(sp.Function):
    """1 where the position along the index tensor's dim equals its value, else 0."""

    nargs = 1

    def __new__(cls, index: Any, **options: Any) -> sp.Expr:
        # Only a declared symbol is refused here: SymPy rebuilds nodes with stand-ins while it
        # simplifies (subs with Dummies); the model stage checks the arguments that remain.
        if isinstance(index, sp.Symbol) and not is_class_index(index):
            raise SpecError(
                f"OneHot/Pick need a Tensor declared with index_of=dim, not {index}"
            )
        return super().__new__(cls, index, **options)

    @property
    def dim(self) -> int:
        return self.args[0].index_of

    def _eval_is_real(self) -> bool:
        return True

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero  # integer-valued index: nothing to differentiate

    def _latex(self, printer: Any, exp: str | None = None) -> str:
        return _with_exponent(
            rf"\operatorname{{OneHot}}\left({printer._print(self.args[0])}\right)", exp
        )


def _with_exponent(latex: str, exp: str | None) -> str:
    return latex if exp is None else rf"\left({latex}\right)^{{{exp}}}"


class Tie(sp.Function):
    """Tie(b, m): 1 where `b` equals `m`, its Max or Min over dims (m = Max(b, dim=...)); 0
    elsewhere. The mask of torch.amax's backward (ties share the gradient), made by
    lossgen.backprop.

    A node of its own, not Piecewise((1, Eq(b, m)), (0, True)): SymPy rewrites such an
    equality (Eq(3*b, m) into Eq(b, m/3)), and in floating point the rewritten side can differ
    from the value the extreme was taken of, so the mask missed it. Stages that simplify keep
    `b` the very body of `m` (see outside_reductions).
    """

    nargs = 2

    def _eval_is_real(self) -> bool:
        return True

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero  # piecewise constant

    def as_piecewise(self) -> sp.Piecewise:
        """The same mask as a Piecewise of the equality, left as it is (for the printers)."""
        condition = sp.Eq(*self.args, evaluate=False)
        return sp.Piecewise((1, condition), (0, True), evaluate=False)

    def _latex(self, printer: Any, exp: str | None = None) -> str:
        body, extreme = (printer._print(arg) for arg in self.args)
        return _with_exponent(rf"\left[{body} = {extreme}\right]", exp)


def is_class_index(symbol: object) -> bool:
    if isinstance(symbol, sp.Dummy):
        return True  # SymPy's stand-in while it rewrites
    return isinstance(symbol, TensorSymbol) and symbol.index_of is not None


def Pick(expr: Any, index: TensorSymbol) -> sp.Expr:  # noqa: N802
    """`expr` at the class `index` names (a gather): Sum(OneHot(index) * expr, its dim)."""
    one_hot = OneHot(index)
    return Sum(one_hot * sp.sympify(expr), one_hot.dim)


def pick_parts(node: sp.Basic) -> tuple[OneHot, sp.Expr] | None:
    """(OneHot(t), E) where `node` is a Pick, Sum(body, d) with body = OneHot(t) * E (along
    d); None otherwise.

    It is a Pick whenever the body is 0 with the one-hot at 0 (a product with it, a Piecewise
    of such products, ...): the one-hot is 0 or 1, so the body is then OneHot(t) times its
    value E with the one-hot at 1, and the Sum is E at position t along d (0 where t is out
    of range). Only a one-hot outside nested reductions counts (inside one, it is summed).
    """
    if not isinstance(node, Sum) or node.dims == ALL or len(node.dims) != 1:
        return None
    (dim,) = node.dims
    return _one_hot_factor(node.body, dim)


def spread_parts(expr: sp.Basic) -> tuple[OneHot, sp.Expr] | None:
    """(OneHot(t), E) where `expr` is OneHot(t) * E: 0 wherever the one-hot is 0 (as in
    pick_parts, but not summed). Such an expression is E at the index along the one-hot's dim
    and 0 elsewhere: a scatter into zeros, never a one-hot as large as it (a gradient of a
    Pick, e.g. NLL's). None otherwise.
    """
    return _one_hot_factor(expr, None)


def _one_hot_factor(body: sp.Basic, dim: int | None) -> tuple[OneHot, sp.Expr] | None:
    """The first one-hot (along `dim`, or any dim for None) outside reductions that `body` is
    0 without, and `body` with it at 1; see pick_parts."""
    for one_hot in outside_reductions_atoms(body, OneHot):
        along = getattr(one_hot.args[0], "index_of", None)
        if along is None or (dim is not None and along != dim):
            continue  # along another dim (or SymPy's stand-in for the index, mid-rewrite)
        if replace_outside_reductions(body, one_hot, sp.S.Zero) == 0:
            return one_hot, replace_outside_reductions(body, one_hot, sp.S.One)
    return None


def outside_reductions_atoms(
    expr: sp.Basic, kind: type | tuple[type, ...]
) -> list[sp.Basic]:
    """The distinct nodes of `kind` in `expr` outside every reduction, one-hot and Pick (a
    node of `kind` is not looked into), in a fixed order."""
    found: list[sp.Basic] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, kind):
            if node not in found:
                found.append(node)
        elif not isinstance(node, (Reduction, OneHot, Picked)):
            stack.extend(node.args)
    return sorted(found, key=sp.default_sort_key)  # deterministic: the first one wins


def replace_outside_reductions(
    expr: sp.Basic, old: sp.Basic, new: sp.Basic
) -> sp.Basic:
    """`expr` with `old` replaced by `new`, except inside reductions (and Picked)."""
    return xreplace_outside_reductions(expr, {old: new})


def xreplace_outside_reductions(
    expr: sp.Basic, mapping: dict[sp.Basic, sp.Basic]
) -> sp.Basic:
    """`expr.xreplace(mapping)`, except inside reductions, one-hots and Picks (a reduction
    itself may be a key)."""
    if expr in mapping:
        return mapping[expr]
    if not expr.args or isinstance(expr, (Reduction, OneHot, Picked)):
        return expr
    args = [xreplace_outside_reductions(arg, mapping) for arg in expr.args]
    if all(a is b for a, b in zip(args, expr.args)):
        return expr
    return expr.func(*args)


class Picked(sp.Function):
    """A Pick while derive's CSE runs: Picked(E, t, dims) is Sum(OneHot(t) * E, dims).

    Without it, CSE takes OneHot(t) out of the Sum into a temporary of its own wherever the
    gradients use it too, and the printer no longer sees a Pick (it would materialise the
    one-hot). E's own subexpressions are still shared; `as_sum` gives the Pick back.
    """

    nargs = 3

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def as_sum(self) -> Sum:
        value, index, dims = self.args
        return Sum(OneHot(index) * value, dims)


def hide_picks(expr: sp.Basic) -> sp.Basic:
    """Every Pick in `expr` as a Picked (see there)."""

    def hidden(node: Sum) -> sp.Basic:
        one_hot, value = pick_parts(node)  # type: ignore[misc]
        return Picked(value, one_hot.args[0], node.args[1])

    return expr.replace(lambda e: pick_parts(e) is not None, hidden)


def show_picks(expr: sp.Basic) -> sp.Basic:
    """`hide_picks` undone."""
    return expr.replace(lambda e: isinstance(e, Picked), lambda e: e.as_sum())


class DimSize(sp.Symbol):
    """The number of elements along some dims of the broadcast shape (a positive integer)."""

    dims: Dims

    def __new__(cls, dims: Dims) -> DimSize:
        name = "numel" if dims == ALL else "size_" + "_".join(map(str, sorted(dims)))
        obj = sp.Symbol.__xnew__(
            cls, name.replace("-", "m"), positive=True, integer=True
        )
        obj.dims = dims
        return obj

    def __getnewargs_ex__(self) -> tuple[tuple[Any], dict[str, Any]]:
        return (self.dims,), {}

    def _hashable_content(self) -> tuple[Any, ...]:
        return sp.Symbol._hashable_content(self) + (self.dims,)


def size(dims: Dims) -> sp.Expr:
    """The product of the sizes of `dims` (1 for none)."""
    if dims == ALL:
        return DimSize(ALL)
    result: sp.Expr = sp.S.One
    for d in sorted(dims):
        result *= DimSize(frozenset({d}))
    return result


# --- dim sets ---------------------------------------------------------------------------------


def dims_of(dims: sp.Tuple) -> Dims:
    return ALL if len(dims) == 0 else frozenset(int(d) for d in dims)


def union(a: Dims, b: Dims) -> Dims:
    return ALL if ALL in (a, b) else a | b  # type: ignore[operator]


def intersection(a: Dims, b: Dims) -> Dims:
    if a == ALL:
        return b
    if b == ALL:
        return a
    return a & b  # type: ignore[operator]


def difference(a: Dims, b: Dims) -> Dims:
    """a without b. ALL minus named dims cannot be named: callers never ask for it."""
    if b == ALL:
        return NO_DIMS
    if a == ALL:
        assert not b, "ALL minus named dims"
        return ALL
    return a - b  # type: ignore[operator]


def dims_text(dims: Dims) -> str:
    """ "all", "none", or the dims separated by commas: for messages."""
    if dims == ALL:
        return "all"
    return ", ".join(map(str, sorted(dims))) or "none"  # type: ignore[arg-type]


def covers(a: Dims, b: Dims) -> bool:
    """Whether every dim of b is in a."""
    if a == ALL:
        return True
    if b == ALL:
        return False
    return b <= a  # type: ignore[operator]


def constant_dims(expr: sp.Basic, known: dict[sp.Symbol, Dims] | None = None) -> Dims:
    """Dims along which `expr` is certainly constant.

    Tensors vary along every dim, except class indices, which are constant along their own
    (they are unsqueezed there). Params count as varying too: a param tensor may have any
    broadcastable shape. `known` gives other symbols (reduction results, upstream).
    """
    known = known or {}
    cache: dict[sp.Basic, Dims] = {}

    def visit(node: sp.Basic) -> Dims:
        if node in cache:
            return cache[node]
        if node in known:
            result = known[node]
        elif isinstance(node, DimSize) or (
            isinstance(node, sp.Expr) and not node.free_symbols
        ):
            result = ALL
        elif isinstance(node, TensorSymbol):
            result = NO_DIMS if node.index_of is None else frozenset({node.index_of})
        elif isinstance(node, sp.Symbol):
            result = NO_DIMS
        elif isinstance(node, Reduction):
            result = union(node.dims, visit(node.body))
        elif isinstance(node, OneHot):
            result = NO_DIMS
        else:
            result = ALL
            for arg in node.args:
                result = intersection(result, visit(arg))
        cache[node] = result
        return result

    return visit(expr)


def reduced_dims(expr: sp.Basic) -> Dims:
    """The dims every top-level term has reduced: `reduction="none"` drops them.

    Like `constant_dims`, but params count as constant (a float like a temperature must not
    keep a class dim alive), and only reduced (or class-index) dims qualify.
    """
    if not has_reductions(expr):
        return NO_DIMS
    params: dict[sp.Symbol, Dims] = {
        s: ALL if s.along is None else NO_DIMS
        for s in expr.free_symbols
        if isinstance(s, ParamSymbol)
    }
    constant = constant_dims(expr, params)
    mentioned: Dims = NO_DIMS
    for node in sp.preorder_traversal(expr):
        if isinstance(node, Reduction):
            mentioned = union(mentioned, node.dims)
        elif isinstance(node, TensorSymbol) and node.index_of is not None:
            mentioned = union(mentioned, frozenset({node.index_of}))
    return intersection(constant, mentioned) if constant != ALL else mentioned


def has_reductions(expr: sp.Basic) -> bool:
    return bool(expr.atoms(*REDUCTION_NODES))


def all_dims(expr: sp.Basic) -> list[int]:
    """Every dim the expression names (reductions, class indices, params laid along a dim)."""
    named: set[int] = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, Reduction) and node.dims != ALL:
            named |= node.dims  # type: ignore[arg-type]
        elif isinstance(node, TensorSymbol) and node.index_of is not None:
            named.add(node.index_of)
        elif isinstance(node, ParamSymbol) and node.along is not None:
            named.add(node.along)
    return sorted(named)


def outside_reductions(
    expr: sp.Expr, transform: Callable[[sp.Expr], sp.Expr]
) -> sp.Expr:
    """`transform` applied to `expr` with each reduction hidden behind a symbol, and to each
    reduction's body on its own.

    SymPy sees a reduction as an ordinary function: simplify would move a Piecewise out of its
    body (`Sum(Piecewise((a, c), (b, True)))` into `Piecewise((Sum(a), c), (Sum(b), True))`),
    which is wrong wherever c varies along the reduced dims. Hidden, it cannot.
    """
    outermost: list[sp.Basic] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (Reduction, Tie)):
            if node not in outermost:
                outermost.append(node)
        else:
            stack.extend(node.args)
    if not outermost:
        return transform(expr)
    hidden = {
        node: sp.Symbol(f"_reduction{i}", real=True) for i, node in enumerate(outermost)
    }

    def shown(node: sp.Basic) -> sp.Basic:
        if isinstance(node, Tie) and isinstance(node.args[1], (Amax, Amin)):
            # the body compared is the extreme's own body, transformed once (see Tie)
            extreme = shown(node.args[1])
            return Tie(extreme.body, extreme)  # type: ignore[attr-defined]
        if isinstance(node, Tie):
            return Tie(*(outside_reductions(arg, transform) for arg in node.args))
        return node.func(outside_reductions(node.body, transform), node.args[1])

    back = {symbol: shown(node) for node, symbol in hidden.items()}
    return transform(expr.xreplace(hidden)).xreplace(back)


def distributed_sums(expr: sp.Expr, known: dict[sp.Symbol, Dims]) -> sp.Expr:
    """`expr` with each Sum (or Mean) over a body that multiplies a one-hot along its dims
    taken apart: Sum(Piecewise((A, c), (B, True))) with c constant along the dims is
    Piecewise((Sum(A), c), (Sum(B), True)); then a sum of terms is the sum of their Sums, the
    one-hot terms together a single Pick (a gather) and each other term its factors constant
    along the dims times the Sum of the rest (a dim size where nothing is left).

    For the fused body that torch.compile runs. Softmax cross-entropy's input gradient is
    softmax times Sum(weight * (-ls/C + (ls - 1) * OneHot(t))): summed as written, Inductor
    compares every position with the index and multiplies, one more loop over every element;
    taken apart it is -ls * Mean(weight) + (ls - 1) * weight[t], one value per row. `known`
    gives the dims along which other symbols are constant (see constant_dims): the fused
    body's scalar params and upstream gradient are constant along every dim.

    A Sum of a body that uses another reduction over the same dims (label smoothing's
    Mean(weight * (x - LogSumExp(x)))) is taken apart too where that frees every Sum left of
    it (Mean(weight * x) - LogSumExp(x) * Mean(weight)): Inductor then sums x in the loop
    that finds the row's max, instead of reading the row once more after the LogSumExp
    (measured 0.3-0.45 ms of 5.4 for cross-entropy at 4096 x 1024 on CPU). Rounding: Sum(x)
    carries an error of float eps times |x| summed, as x - LogSumExp(x) does, where the
    LogSumExp's own rounding is of the size of eps * |x| for every x.
    """

    def constant_along(node: sp.Basic, dims: Dims) -> bool:
        return covers(constant_dims(node, known), dims)

    def has_one_hot(body: sp.Basic, dims: Dims) -> bool:
        return any(
            one_hot.dim in dims  # type: ignore[operator]
            for one_hot in outside_reductions_atoms(body, OneHot)
            if getattr(one_hot.args[0], "index_of", None) is not None
        )

    def summed(body: sp.Expr, dims: Dims) -> sp.Expr | None:
        """Sum(body, dims) taken apart, or None where it cannot be."""
        if isinstance(body, sp.Piecewise):
            if not all(constant_along(c, dims) for _, c in body.args):
                return None
            branches = []
            for value, condition in body.args:
                value_sum = summed(value, dims) if value != 0 else sp.S.Zero
                if value_sum is None:
                    value_sum = Sum(value, tuple(sorted(dims)))  # type: ignore[arg-type]
                branches.append((value_sum, condition))
            return sp.Piecewise(*branches)
        picked: dict[OneHot, list[sp.Expr]] = {}
        rest: dict[sp.Expr, list[sp.Expr]] = {}
        done: list[sp.Expr] = []  # terms summed already (a Piecewise's branches)
        terms = [
            term
            for arg in sp.Add.make_args(body)
            for term in sp.Add.make_args(sp.expand_mul(arg, deep=False))
        ]
        for term in terms:
            parts = _one_hot_factor(term, None)
            if parts is not None and parts[0].dim in dims:  # type: ignore[operator]
                one_hot, value = parts
                picked.setdefault(one_hot, []).append(value)
                continue
            constant, varying = [], []
            for factor in sp.Mul.make_args(term):
                (constant if constant_along(factor, dims) else varying).append(factor)
            if has_one_hot(term, dims):
                # a one-hot inside a Piecewise that is not 0 without it
                if len(varying) != 1 or not isinstance(varying[0], sp.Piecewise):
                    return None
                inner = summed(varying[0], dims)
                if inner is None:
                    return None
                done.append(sp.Mul(*constant) * inner)
                continue
            rest.setdefault(sp.Mul(*varying), []).append(sp.Mul(*constant))
        total: sp.Expr = sp.Add(*done)
        for one_hot, values in picked.items():
            pick = Sum(one_hot * sp.Add(*values), one_hot.dim)
            others = dims - {one_hot.dim}  # type: ignore[operator]
            total += Sum(pick, tuple(sorted(others))) if others else pick
        for varying, constants in rest.items():
            count = size(dims) if varying == 1 else Sum(varying, tuple(sorted(dims)))
            total += sp.Add(*constants) * count
        return total

    def waits(body: sp.Basic, dims: Dims) -> bool:
        """Whether `body` uses a reduction over some of `dims` (the sum must wait for it)."""
        return any(
            node.dims == ALL or node.dims & dims  # type: ignore[operator]
            for node in body.atoms(*REDUCTION_NODES)
        )

    def rewritten(node: Reduction) -> sp.Expr:
        dims = node.dims
        if dims == ALL:
            return node
        one_hot = has_one_hot(node.body, dims)
        if not one_hot and not waits(node.body, dims):
            return node
        result = summed(node.body, dims)
        if result is None:
            return node
        if not one_hot and any(
            waits(inner.body, dims)
            for inner in result.atoms(Sum)
            if pick_parts(inner) is None
        ):
            return node  # still waits: more sums, none sooner
        return result / size(dims) if isinstance(node, Mean) else result

    return expr.replace(
        lambda e: isinstance(e, (Sum, Mean)) and pick_parts(e) is None, rewritten
    )


def one_hot_split(expr: sp.Expr) -> tuple[sp.Expr, OneHot, sp.Expr] | None:
    """(D, OneHot(t), E) with `expr` = D + OneHot(t) * E, neither D nor E using the one-hot
    (outside reductions); None where `expr` uses no one-hot or more than one, or uses it
    other than in sums, products and Piecewise branches.

    A gradient such as softmax cross-entropy's, p * A - OneHot(t) * B, is then D computed
    densely plus E added at the index (a scatter, printed as _spread_onto): no comparison of
    every position with the index.
    """
    one_hots = [
        one_hot
        for one_hot in outside_reductions_atoms(expr, OneHot)
        if getattr(one_hot.args[0], "index_of", None) is not None
    ]
    if len(one_hots) != 1:
        return None
    (one_hot,) = one_hots

    def uses(node: sp.Basic) -> bool:
        return one_hot in outside_reductions_atoms(node, OneHot)

    def split(node: sp.Basic) -> tuple[sp.Expr, sp.Expr] | None:
        if not uses(node):
            return node, sp.S.Zero
        if node == one_hot:
            return sp.S.Zero, sp.S.One
        if isinstance(node, sp.Add):
            parts = [split(arg) for arg in node.args]
            if any(part is None for part in parts):
                return None
            return (
                sp.Add(*(d for d, _ in parts)),  # type: ignore[misc]
                sp.Add(*(e for _, e in parts)),  # type: ignore[misc]
            )
        if isinstance(node, sp.Mul):
            using = [arg for arg in node.args if uses(arg)]
            if len(using) != 1:
                return None  # OneHot(t) * OneHot(t) and the like: not met in gradients
            part = split(using[0])
            if part is None:
                return None
            rest = sp.Mul(*(arg for arg in node.args if arg is not using[0]))
            return rest * part[0], rest * part[1]
        if isinstance(node, sp.Piecewise):
            if any(uses(condition) for _, condition in node.args):
                return None
            parts = [split(value) for value, _ in node.args]
            if any(part is None for part in parts):
                return None
            conditions = [condition for _, condition in node.args]
            return (
                sp.Piecewise(*((d, c) for (d, _), c in zip(parts, conditions))),  # type: ignore[misc]
                sp.Piecewise(*((e, c) for (_, e), c in zip(parts, conditions))),  # type: ignore[misc]
            )
        return None

    parts = split(expr)
    if parts is None or parts[1] == 0:
        return None
    return parts[0], one_hot, parts[1]
