"""Stage 3, derive: symbolic gradients, simplified, made stable, safe for torch.where, and CSE'd.

The loss is first rewritten into numerically stable forms (`lossgen.rewrite`), then
differentiated; each derivative is simplified and rewritten again, keeping the cheapest form.

Every differentiable argument gets d(loss)/d(argument) of the elementwise loss. The results are
pure data: the generated forward computes `forward.result` after `forward.steps`; the backward
computes each gradient after the shared steps and that gradient's own steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.backprop import UPSTREAM, UPSTREAM_WEIGHT, backprop
from lossgen.errors import SpecError
from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.model import Argument, LossModel
from lossgen.printer import unsupported_nodes
from lossgen.reductions import (
    ALL,
    Dims,
    DimSize,
    OneHot,
    Picked,
    Reduction,
    distributed_sums,
    hide_picks,
    outside_reductions,
    show_picks,
)
from lossgen.rewrite import candidates
from lossgen.vocabulary import ParamSymbol, TensorSymbol, clamp, guarded, relu

INTERMEDIATE_PREFIX = "tmp"
# SymPy's simplify explores case splits, exponential in the number of distinct kinks: the
# generalized-IoU gradient with respect to eps (10 distinct Max/Min/relu/Heaviside) took 5.5
# minutes; every other shipped loss has at most 4. Past this many, the derivative keeps its
# rewritten form (still CSE'd). A count, not a clock, so builds stay deterministic.
SIMPLIFY_BRANCH_LIMIT = 6


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
class Gradient:
    """The elementwise derivative of the loss with respect to one argument.

    For a loss without reductions, `program` computes the derivative and the backward
    multiplies it by the upstream gradient; for one with reductions, the upstream gradient is
    inside (it is summed over dims like any other factor) and `program` is the whole gradient.
    """

    argument: Argument
    derivative: sp.Expr  # simplified, as shown in docs (upstream = 1 where it appears)
    program: Program  # what the backward computes; steps shared with others excluded


@dataclass(frozen=True)
class FusedProgram:
    """The fast path's one pass: the loss and every gradient, CSE'd together.

    Sharing subexpressions between the loss and its gradients is what lets one pass compute
    both; the gradients are the same guarded forms the reference backward uses.
    """

    steps: tuple[Step, ...]
    loss: sp.Expr
    gradients: tuple[sp.Expr, ...]  # in the order of DerivedLoss.gradients
    # Steps each gradient computes for itself, after `steps` (see recomputed_after_reductions)
    gradient_steps: tuple[tuple[Step, ...], ...] = ()


@dataclass(frozen=True)
class DerivedLoss:
    model: LossModel
    loss: sp.Expr
    forward: Program
    shared_backward_steps: tuple[Step, ...]
    gradients: tuple[Gradient, ...]
    fused: FusedProgram
    mean_weight: sp.Expr | None = None  # stable form of model.mean_weight
    # The fused body as torch.compile runs it (`_fused`): `fused` with shared_exponentials;
    # None means `fused` itself. The Triton kernels print `fused`.
    compiled: FusedProgram | None = None

    @property
    def compiled_fused(self) -> FusedProgram:
        return self.fused if self.compiled is None else self.compiled

    @property
    def uses_upstream_weight(self) -> bool:
        """Whether a gradient needs the weighted mean's second upstream term."""
        return any(
            UPSTREAM_WEIGHT in g.program.result.free_symbols
            or any(UPSTREAM_WEIGHT in s.expr.free_symbols for s in g.program.steps)
            for g in self.gradients
        ) or any(
            UPSTREAM_WEIGHT in s.expr.free_symbols for s in self.shared_backward_steps
        )


def derive(model: LossModel) -> DerivedLoss:
    """Differentiate, simplify and CSE one loss; SpecError (at the loss's line) on failure."""
    try:
        return _derive(model)
    except SpecError as error:
        raise error.at(model.location, model.name) from None
    except Exception as error:  # SymPy can fail deep inside diff/simplify on odd input
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        raise SpecError(
            f"cannot differentiate the loss: {message}",
            location=model.location,
            loss=model.name,
        ) from error


def _derive(model: LossModel) -> DerivedLoss:
    loss = stablest(model.expr)
    if model.reduces:
        return _derive_reducing(model, loss)
    derivatives = [
        simplest(derivative(loss, argument.symbol)) for argument in model.differentiable
    ]
    forward_steps, (forward_result,) = common_subexpressions([loss])
    safe_derivatives = [guard_piecewise_branches(d) for d in derivatives]
    backward_steps, results = common_subexpressions(safe_derivatives)
    shared, private = _split_by_user(backward_steps, results)
    gradients = tuple(
        Gradient(argument, d, Program(steps, result))
        for argument, d, steps, result in zip(
            model.differentiable, derivatives, private, results
        )
    )
    fused = fused_program([loss, *safe_derivatives])
    return DerivedLoss(
        model,
        loss,
        Program(forward_steps, forward_result),
        shared,
        gradients,
        fused,
        compiled=compiled_program([loss, *safe_derivatives]),
    )


def _derive_reducing(model: LossModel, loss: sp.Expr) -> DerivedLoss:
    """A loss with reductions: reverse mode through them (lossgen.backprop)."""
    wrt = [argument.symbol for argument in model.differentiable]
    gradients = backprop(loss, UPSTREAM, model.dropped, wrt, derivative)
    mean_weight = None
    if model.mean_weight is not None:
        mean_weight = stablest(model.mean_weight)
        weight_terms = backprop(
            mean_weight, UPSTREAM_WEIGHT, model.dropped, wrt, derivative
        )
        gradients = [g + w for g, w in zip(gradients, weight_terms)]
    gradients = [
        outside_reductions(g, lambda e: hoist_common_terms(simplest(e)))
        for g in gradients
    ]
    forward_steps, (forward_result,) = common_subexpressions([loss])
    safe = [outside_reductions(g, guard_piecewise_branches) for g in gradients]
    backward_steps, results = common_subexpressions(safe)
    shared, private = _split_by_user(backward_steps, results)
    shown = {UPSTREAM: sp.S.One, UPSTREAM_WEIGHT: sp.S.Zero}
    derived_gradients = tuple(
        Gradient(argument, g.xreplace(shown), Program(steps, result))
        for argument, g, steps, result in zip(
            model.differentiable, gradients, private, results
        )
    )
    fused = fused_program([loss, *safe])
    compiled = compiled_program(
        [loss, *safe], sigmoids_only=True, constants=_fused_constants(model)
    )
    recomputed = recomputed_after_reductions(compiled or fused)
    return DerivedLoss(
        model,
        loss,
        Program(forward_steps, forward_result),
        shared,
        derived_gradients,
        fused,
        mean_weight,
        compiled if recomputed is fused else recomputed,
    )


def _fused_constants(model: LossModel) -> dict[sp.Symbol, Dims]:
    """What the fused body holds constant along every dim: the fast path takes only scalar
    params (or 1-D ones along their dim, which vary) and a scalar upstream gradient."""
    constants: dict[sp.Symbol, Dims] = {UPSTREAM: ALL, UPSTREAM_WEIGHT: ALL}
    for argument in model.arguments:
        if isinstance(argument.symbol, ParamSymbol) and argument.symbol.along is None:
            constants[argument.symbol] = ALL
    return constants


def fused_program(exprs: list[sp.Expr]) -> FusedProgram:
    """The loss and its gradients (`exprs`, in that order), CSE'd together."""
    steps, (loss, *gradients) = common_subexpressions(exprs)
    return FusedProgram(steps, loss, tuple(gradients))


def compiled_program(
    exprs: list[sp.Expr],
    sigmoids_only: bool = False,
    constants: dict[sp.Symbol, Dims] | None = None,
) -> FusedProgram | None:
    """The fused program for torch.compile where shared_exponentials (or, for a loss over
    dims, distributed_sums given the fused body's `constants`) changes it, else None."""
    shared = shared_exponentials(exprs, sigmoids_only)
    if not sigmoids_only:
        shared = shared_tanh(shared)
    if constants is not None:
        shared = [distributed_sums(expr, constants) for expr in shared]
    if shared == exprs:
        return None
    return fused_program(shared)


def recomputed_after_reductions(program: FusedProgram) -> FusedProgram:
    """`program` where a gradient recomputes, as steps of its own, the whole-tensor values
    outside its reductions that another loop also reads, where two or more of them are
    transcendental.

    For the fused body that torch.compile runs. Inductor's CPU backend computes a reduction
    over a dim in one loop over the inputs, and the elementwise gradient that needs its
    result in a later loop; a value that both loops read (or two gradients' loops) is stored
    as a whole tensor in between: on CPU, any value with an exp or a log that two nodes read
    (its `should_realize_on_reuse`). JensenShannon's softmax weights and their products were
    three such tensors, 4 inputs' memory at the peak with the gradient. Recomputed as
    separate nodes (torch.compile does not merge them back), the gradient's loop computes
    them from the inputs and the per-row values, and the gradient is the only whole tensor.
    One such value alone stays shared: Inductor writes the gradient over its tensor once it
    is read (the peak is 1 input then), and recomputing it in Dice's gradient cost a second
    tensor (its reductions' loop stored it anyway) and 2.6x the time. Reductions are not
    copied: one in a copied step becomes a step of its own, computed once.
    """
    # whole tensors: a value tensor, or a whole-tensor step, outside every reduction
    whole: set[sp.Basic] = set()
    for step in program.steps:
        outside = _outside_reduction_symbols(step.expr)
        if any(_is_value_tensor(s) or s in whole for s in outside):
            whole.add(step.symbol)
    # the steps some reduction's body reads, directly or through other steps
    inside: set[sp.Basic] = set()
    for expr in (*(s.expr for s in program.steps), program.loss, *program.gradients):
        for node in sp.preorder_traversal(expr):
            if isinstance(node, (Reduction, Picked)):
                inside |= node.args[0].free_symbols
    for step in reversed(program.steps):
        if step.symbol in inside:
            inside |= step.expr.free_symbols
    # the steps each gradient reads outside its reductions, directly or through other steps
    used: list[set[sp.Basic]] = []
    for gradient in program.gradients:
        found = _outside_reduction_symbols(gradient)
        for step in reversed(program.steps):
            if step.symbol in found:
                found |= _outside_reduction_symbols(step.expr)
        used.append(found)
    copied: list[set[sp.Basic]] = []
    for index, found in enumerate(used):
        others = set().union(*(u for i, u in enumerate(used) if i != index))
        mine: set[sp.Basic] = set()
        transcendental = 0
        for step in program.steps:
            if step.symbol in whole and step.symbol in found:
                if (
                    step.symbol in inside
                    or step.symbol in others
                    or _outside_reduction_symbols(step.expr) & mine
                ):
                    mine.add(step.symbol)
                    transcendental += _is_transcendental(step.expr)
        copied.append(mine if transcendental >= 2 else set())
    if not any(copied):
        return program
    fresh = _fresh_symbols(program)
    lifted: dict[sp.Basic, sp.Symbol] = {}
    steps: list[Step] = []
    for step in program.steps:
        expr = step.expr
        if any(step.symbol in mine for mine in copied):
            for node in _outermost_reductions(expr):
                if node not in lifted:
                    lifted[node] = next(fresh)
                    steps.append(Step(lifted[node], node))
            expr = _xreplace_outside_reductions(expr, lifted)
        steps.append(Step(step.symbol, expr))
    gradient_steps = []
    gradients = []
    for gradient, mine in zip(program.gradients, copied):
        copies: dict[sp.Basic, sp.Symbol] = {}
        own = []
        for step in steps:
            if step.symbol in mine:
                copies[step.symbol] = next(fresh)
                own.append(Step(copies[step.symbol], step.expr.xreplace(copies)))
        gradient_steps.append(tuple(own))
        gradients.append(_xreplace_outside_reductions(gradient, copies))
    # numbered again in the order they are computed
    numbered = sp.numbered_symbols(INTERMEDIATE_PREFIX, real=True)
    order = [*steps, *(step for own in gradient_steps for step in own)]
    rename = {step.symbol: next(numbered) for step in order}

    def renamed(steps: Iterable[Step]) -> tuple[Step, ...]:
        return tuple(Step(rename[s.symbol], s.expr.xreplace(rename)) for s in steps)

    return FusedProgram(
        renamed(steps),
        program.loss.xreplace(rename),
        tuple(g.xreplace(rename) for g in gradients),
        tuple(renamed(own) for own in gradient_steps),
    )


# What Inductor's CPU backend counts as heavy (an exp or a log inside), as derive spells them
_TRANSCENDENTAL = (
    sp.exp,
    sp.log,
    sp.tanh,
    expm1,
    log1p,
    sigmoid,
    softplus,
    logsigmoid,
    logsumexp,
    xlogy,
)


def _is_transcendental(expr: sp.Basic) -> bool:
    """Whether `expr` computes an exp or a log itself (outside reductions and other steps)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, _TRANSCENDENTAL):
            return True
        if not isinstance(node, (Reduction, OneHot, Picked)):
            stack.extend(node.args)
    return False


def _is_value_tensor(symbol: sp.Basic) -> bool:
    """A tensor of values (class indices are constant along their dim: not whole)."""
    return isinstance(symbol, TensorSymbol) and symbol.index_of is None


def _outside_reduction_symbols(expr: sp.Basic) -> set[sp.Basic]:
    """The free symbols `expr` reads outside every reduction (and one-hot)."""
    found: set[sp.Basic] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, sp.Symbol):
            found.add(node)
        elif not isinstance(node, (Reduction, OneHot, Picked)):
            stack.extend(node.args)
    return found


def _outermost_reductions(expr: sp.Basic) -> list[sp.Basic]:
    """The reductions in `expr` that no other reduction contains, in a fixed order."""
    found: list[sp.Basic] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, (Reduction, Picked)):
            if node not in found:
                found.append(node)
        elif not isinstance(node, OneHot):
            stack.extend(node.args)
    return sorted(found, key=sp.default_sort_key)


def _xreplace_outside_reductions(
    expr: sp.Basic, mapping: dict[sp.Basic, sp.Symbol]
) -> sp.Basic:
    """`expr.xreplace(mapping)`, except inside reductions (and one-hot)."""
    if expr in mapping:
        return mapping[expr]
    if not expr.args or isinstance(expr, (Reduction, OneHot, Picked)):
        return expr
    args = [_xreplace_outside_reductions(arg, mapping) for arg in expr.args]
    if all(a is b for a, b in zip(args, expr.args)):
        return expr
    return expr.func(*args)


def _fresh_symbols(program: FusedProgram) -> Iterator[sp.Symbol]:
    """Symbols that none of `program`'s steps has (the result is numbered again)."""
    taken = {step.symbol.name for step in program.steps}
    return (s for s in sp.numbered_symbols("_fresh", real=True) if s.name not in taken)


def shared_exponentials(
    exprs: list[sp.Expr], sigmoids_only: bool = False
) -> list[sp.Expr]:
    """softplus and sigmoid of one argument u (either sign) through one exp(-|u|).

    For the fused body that torch.compile runs: a loss with softplus(u) and a gradient with
    sigmoid(u) (BCE with logits, soft margin, ...) would compute two exponentials of u, as
    torch.sigmoid and F.softplus each compute their own; autograd of the eager loss saves
    its one exp for backward. With e = exp(-|u|), in (0, 1] for every u (no overflow):

        softplus(u) = max(u, 0) + log1p(e)
        sigmoid(u)  = (1 if u >= 0 else e) / (1 + e)

    exact to float rounding at every magnitude as the torch functions are, with the same
    values at u = 0, +-inf and NaN. Only arguments that two or more of these nodes share are
    rewritten: one sigmoid alone is cheaper as torch.sigmoid. Not used for the readable
    Functions, whose backward must stay differentiable (the fused body never is).

    `sigmoids_only` (losses over dims): share only between sigmoid(u) and sigmoid(-u). There
    the loss's sums over a dim and the elementwise gradient are separate loops, so a value
    both need is stored as a whole tensor by Inductor. Dice and Tversky need both sigmoids in
    their sums and in the gradient (stored either way): one exp(-|u|) is cheaper, measured
    at 1 input's memory at the peak instead of 2. MultiLabelSoftMargin's softplus is in its
    loss only and its sigmoid in its gradient only: shared, exp(-|u|) was stored (2 inputs'
    memory instead of 1) and the step took 1.6x as long.
    """
    kinds = (softplus, sigmoid, logsigmoid)
    nodes: dict[sp.Expr, set[sp.Basic]] = {}
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, kinds):
                nodes.setdefault(_magnitude(node.args[0]), set()).add(node)
    shared = {
        magnitude
        for magnitude, found in nodes.items()
        if len(found) > 1
        and not (sigmoids_only and any(not isinstance(n, sigmoid) for n in found))
    }
    if not shared:
        return exprs

    def lowered(node: sp.Basic) -> sp.Basic:
        argument = node.args[0]
        magnitude = _magnitude(argument)
        if magnitude not in shared:
            return node
        e = sp.exp(-magnitude)
        if isinstance(node, sigmoid):
            numerator = sp.Piecewise((sp.S.One, argument >= 0), (e, True))
            return numerator / (1 + e)
        if isinstance(node, logsigmoid):
            argument = -argument
        value = sp.Max(argument, 0) + log1p(e)
        return -value if isinstance(node, logsigmoid) else value

    result = [expr.replace(lambda n: isinstance(n, kinds), lowered) for expr in exprs]
    # A condition on a Piecewise argument becomes an ITE, which the printer lacks: keep the
    # torch functions there.
    if any(unsupported_nodes(expr) for expr in result):
        return exprs
    return result


def shared_tanh(exprs: list[sp.Expr]) -> list[sp.Expr]:
    """softplus(2u) and tanh(u) (either sign of either) through one m = expm1(-2|u|).

    For the fused body of an elementwise loss: LogCosh's loss is -|r| + softplus(2|r|)
    - log 2 after the stable rewrites and its gradient tanh(|r|) sign(r); Sleef's tanhf is
    the costliest of its vectorized functions (benchmarks/RESULTS.md). With m in [-1, 0] for
    every u (no overflow):

        tanh(u)      = sign(u) * -m / (2 + m)
        softplus(2u) = max(2u, 0) + log(2 + m)

    tanh within a few ulps at every magnitude (m is expm1's, accurate near 0; 2 + m has no
    cancellation). LogCosh's loss becomes |r| + log(2 + m) - log 2, rounded as the readable
    form is (an absolute error of a few eps * (|r| + log 2)). log1p(m / 2) in place of
    log(2 + m) - log 2 would keep the relative accuracy of small losses (about 2 eps / |r|
    instead of eps / r**2), but Sleef's log1pf made the compiled step 9.28 ms against 8.33
    (torch.compile of log(cosh(r)): 8.93). Only where both nodes share |u|.
    """
    tanhs: dict[sp.Expr, set[sp.Basic]] = {}
    softpluses: dict[sp.Expr, set[sp.Basic]] = {}
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.tanh):
                tanhs.setdefault(_size(2 * node.args[0]), set()).add(node)
            elif isinstance(node, softplus):
                softpluses.setdefault(_size(node.args[0]), set()).add(node)
    shared = set(tanhs) & set(softpluses)
    if not shared:
        return exprs

    def lowered(node: sp.Basic) -> sp.Basic:
        argument = node.args[0]
        magnitude = _size(2 * argument if isinstance(node, sp.tanh) else argument)
        if magnitude not in shared:
            return node
        m = expm1(-magnitude)
        if isinstance(node, sp.tanh):
            value = -m / (2 + m)
            # tanh(0) = 0 = the value at m = 0: no sign needed where u >= 0
            return value if argument.is_nonnegative else sp.sign(argument) * value
        return sp.Max(argument, 0) + sp.log(2 + m)

    kinds = (sp.tanh, softplus)
    result = [expr.replace(lambda n: isinstance(n, kinds), lowered) for expr in exprs]
    if any(unsupported_nodes(expr) for expr in result):
        return exprs
    return result


def _size(argument: sp.Expr) -> sp.Expr:
    """|argument|, as it is where SymPy knows it is nonnegative (2 |r|: no abs of an abs)."""
    return argument if argument.is_nonnegative else _magnitude(argument)


def _magnitude(argument: sp.Expr) -> sp.Expr:
    """|argument|, the same expression for u and -u (SymPy leaves Abs(-Abs(x)) as it is)."""
    for candidate in (argument, -argument):
        if isinstance(candidate, sp.Abs):
            return candidate
    return sp.Abs(argument)


def hoist_common_terms(expr: sp.Expr) -> sp.Expr:
    """Terms every branch of a Piecewise adds, added once outside it.

    simplify folds a term into each branch (`Piecewise((a + b, c), (b, True))`): computed once
    outside, it is shorter to read and the untaken branch does not compute it a second time.
    """

    def hoist(piecewise: sp.Piecewise) -> sp.Expr:
        terms = [
            sp.Add.make_args(sp.expand(value, deep=False))
            for value, _ in piecewise.args
        ]
        common = [t for t in terms[0] if all(t in others for others in terms[1:])]
        if not common:
            return piecewise
        rest = [
            (sp.Add(*(t for t in branch if t not in common)), condition)
            for branch, (_, condition) in zip(terms, piecewise.args)
        ]
        return sp.Add(*common) + sp.Piecewise(*rest)

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), hoist)


class _RealAbs(sp.Function):
    """Abs of an argument known to be real (every loss subexpression is): d|g| = sign(g) dg.

    SymPy differentiates Abs(g) and sign(g) by these rules only when it can prove g real;
    for g = log(tanh(x) + 2) it leaves Derivative(sign(g), x) unevaluated, and turns Abs(g)
    into a form that divides by g (NaN at g = 0, where abs'(0) = 0 is wanted).
    """

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.sign(self.args[0])


class _RealSign(sp.Function):
    """sign of a real argument: its derivative is DiracDelta, zero almost everywhere."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.S.Zero


_REAL_FORMS: dict[type, type] = {sp.Abs: _RealAbs, sp.sign: _RealSign}
_ORIGINAL_FORMS: dict[type, type] = {_RealAbs: sp.Abs, _RealSign: sp.sign}


def derivative(expr: sp.Expr, symbol: sp.Symbol) -> sp.Expr:
    """d expr / d symbol, with DiracDelta terms dropped (zero almost everywhere)."""
    real_forms = expr.replace(
        lambda e: type(e) in _REAL_FORMS, lambda e: _REAL_FORMS[type(e)](*e.args)
    )
    result = sp.diff(real_forms, symbol)
    result = result.replace(
        lambda e: type(e) in _ORIGINAL_FORMS,
        lambda e: _ORIGINAL_FORMS[type(e)](*e.args),
    )
    result = result.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    leftovers = unsupported_nodes(result)
    if leftovers:
        raise SpecError(
            f"the derivative with respect to {symbol.name!r} needs "
            f"{', '.join(leftovers)}, which lossgen cannot generate"
        )
    return result


def cost(expr: sp.Basic) -> int:
    """Operation count, with branches weighted: each torch.where evaluates every branch."""
    return int(sp.count_ops(expr)) + 10 * len(expr.atoms(sp.Piecewise))


def stablest(expr: sp.Expr) -> sp.Expr:
    """The cheapest numerically stable form of `expr` (see lossgen.rewrite)."""
    forms = [
        form
        for form in candidates(expr)
        if not unsupported_nodes(form) and _no_new_overflow(form, expr)
    ]
    return min(forms, key=cost) if forms else expr


def simplest(expr: sp.Expr) -> sp.Expr:
    """The cheapest stable form among a few equivalent ones (simplify alone can grow them).

    Rewrites of the derivative as derived are always acceptable; forms that went through
    SymPy's simplify are kept only if they exponentiate nothing the others did not.
    """
    rewritten = [
        form
        for f in (expr, sp.factor_terms(expr))
        for form in candidates(f)
        if not unsupported_nodes(form)
    ]
    safe = rewritten or [expr]
    simplified = None
    if _branch_points(expr) <= SIMPLIFY_BRANCH_LIMIT:
        try:
            simplified = sp.simplify(expr)
        except (NotImplementedError, TypeError, ValueError, RecursionError):
            pass  # simplify gives up on some Piecewise forms; the others stand
    if simplified is not None:
        allowed = set().union(_exponents(expr), *(_exponents(f) for f in safe))
        safe += [
            form
            for form in candidates(simplified)
            if not unsupported_nodes(form) and _exponents(form) <= allowed
        ]
    return min(safe, key=cost)


def _branch_points(expr: sp.Expr) -> int:
    """How many distinct kinks and branches an expression has (Abs, sign, Max, Piecewise, ...)."""
    kinds = (sp.Abs, sp.sign, sp.Max, sp.Min, sp.Heaviside, sp.Piecewise, relu, clamp)
    return len(
        {node for node in sp.preorder_traversal(expr) if isinstance(node, kinds)}
    )


def _no_new_overflow(form: sp.Expr, original: sp.Expr) -> bool:
    """False if `form` exponentiates something `original` did not (a new overflow).

    SymPy's simplify factors softmax weights exp(a - lse) - exp(b - lse), which stay in [0, 1],
    into exp(b - lse) * expm1(a - b) or exp(-lse) * sinh(...); those overflow float32 (inf * 0
    = NaN) where the original form is finite. Keeping every exponent the original had is a
    simple guarantee that no new one can overflow.
    """
    return _exponents(form) <= _exponents(original)


def _exponents(expr: sp.Expr) -> set[sp.Expr]:
    kinds = (sp.exp, expm1, sp.sinh, sp.cosh)
    return {node.args[0] for node in expr.atoms(*kinds) if node.args[0].free_symbols}


def guard_piecewise_branches(expr: sp.Expr) -> sp.Expr:
    """Make every Piecewise branch finite where it is not taken ("safe where").

    torch.where(c, a, b) passes 0 * (d a) to the untaken side, and 0 * inf is NaN. Inside each
    branch, the argument of every op that can blow up (log, exp, division, fractional powers)
    is replaced by 1 wherever that branch is not taken.
    """

    def guard(piecewise: sp.Piecewise) -> sp.Piecewise:
        taken_before: list[sp.Basic] = []
        branches = []
        for value, condition in piecewise.args:
            taken_here = sp.And(condition, *[sp.Not(c) for c in taken_before])
            branches.append((_mask_unsafe(value, taken_here), condition))
            taken_before.append(condition)
        return sp.Piecewise(*branches, evaluate=False)

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), guard)


def _mask_unsafe(expr: sp.Expr, taken: sp.Basic) -> sp.Expr:
    if taken == sp.true or not expr.free_symbols:
        return expr

    def masked(argument: sp.Expr) -> sp.Expr:
        if not argument.free_symbols:
            return argument
        return guarded(argument, taken)

    def is_unsafe(node: sp.Basic) -> bool:
        if isinstance(node, (sp.log, sp.exp, log1p, expm1)):
            return bool(node.args[0].free_symbols)
        if isinstance(node, xlogy):  # log of its second argument
            return bool(node.args[1].free_symbols)
        if isinstance(node, sp.Pow):
            exponent = node.exp
            # a dim size is a positive integer: dividing by it is always safe
            variable = any(not isinstance(s, DimSize) for s in node.base.free_symbols)
            return variable and not (exponent.is_integer and exponent.is_nonnegative)
        return False

    def rebuild(node: sp.Basic) -> sp.Basic:
        if isinstance(node, sp.Pow):
            return sp.Pow(masked(node.base), node.exp, evaluate=False)
        if isinstance(node, xlogy):
            return node.func(node.args[0], masked(node.args[1]), evaluate=False)
        return node.func(masked(node.args[0]), evaluate=False)

    return expr.replace(is_unsafe, rebuild)


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


def _split_by_user(
    steps: tuple[Step, ...], results: tuple[sp.Expr, ...]
) -> tuple[tuple[Step, ...], tuple[tuple[Step, ...], ...]]:
    """Steps used by several gradients are shared; the rest go with their only user.

    Each gradient is computed only when autograd asks for it, so its private steps are too.
    """
    step_symbols = {step.symbol for step in steps}
    needs: dict[sp.Symbol, set[sp.Symbol]] = {}
    for step in steps:
        direct = step.expr.free_symbols & step_symbols
        needs[step.symbol] = set(direct).union(*(needs[d] for d in direct))
    users: dict[sp.Symbol, set[int]] = {step.symbol: set() for step in steps}
    for index, result in enumerate(results):
        direct = result.free_symbols & step_symbols
        for symbol in set(direct).union(*(needs[d] for d in direct)):
            users[symbol].add(index)
    shared = tuple(step for step in steps if len(users[step.symbol]) > 1)
    private = tuple(
        tuple(step for step in steps if users[step.symbol] == {index})
        for index in range(len(results))
    )
    return shared, private
