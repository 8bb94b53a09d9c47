"""Stage 3, derive: symbolic gradients, simplified, made stable, safe for torch.where, and CSE'd.

The loss is first rewritten into numerically stable forms (`lossgen.rewrite`), then
differentiated; each derivative is simplified and rewritten again, keeping the cheapest form.

Every differentiable argument gets d(loss)/d(argument) of the elementwise loss. The results are
pure data: the generated forward computes `forward.result` after `forward.steps`; the backward
computes each gradient after the shared steps and that gradient's own steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.backprop import UPSTREAM, UPSTREAM_WEIGHT, backprop
from lossgen.compiled_body import compiled_body
from lossgen.errors import SpecError
from lossgen.functions import xlogy
from lossgen.model import Argument, LossModel
from lossgen.printer import unsupported_nodes
from lossgen.program import (
    FusedProgram,
    Program,
    Step,
    common_subexpressions,
    fused_program,
)
from lossgen.reductions import DimSize, outside_reductions
from lossgen.rewrite import candidates, normalize_signs, rewrite
from lossgen.vocabulary import clamp, guarded, relu

# SymPy's simplify explores case splits, exponential in the number of distinct kinks: the
# generalized-IoU gradient with respect to eps (10 distinct Max/Min/relu/Heaviside) took 5.5
# minutes; every other shipped loss has at most 4. Past this many, the derivative keeps its
# rewritten form (still CSE'd). A count, not a clock, so builds stay deterministic.
SIMPLIFY_BRANCH_LIMIT = 6


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
class DerivedLoss:
    model: LossModel
    loss: sp.Expr
    forward: Program
    shared_backward_steps: tuple[Step, ...]
    gradients: tuple[Gradient, ...]
    fused: FusedProgram
    mean_weight: sp.Expr | None = None  # stable form of model.mean_weight
    # The fused body as torch.compile runs it (`_fused`): `fused` rewritten by
    # lossgen.compiled_body; None means `fused` itself. The Triton kernels print `fused`.
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
    # The fused body is never differentiated (double backward recomputes through the
    # readable Function), so its where()s need no guards: the branch not taken is discarded.
    fused = fused_program([loss, *derivatives])
    return DerivedLoss(
        model,
        loss,
        Program(forward_steps, forward_result),
        shared,
        gradients,
        fused,
        compiled=compiled_body(model, [loss, *derivatives]),
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
    return DerivedLoss(
        model,
        loss,
        Program(forward_steps, forward_result),
        shared,
        derived_gradients,
        fused_program([loss, *gradients]),  # unguarded, as in _derive
        mean_weight,
        compiled_body(model, [loss, *gradients]),
    )


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
    simple guarantee that no new one can overflow. Exponents are compared as values
    (`_same_value_form`), not as they are spelt.
    """
    allowed = {_same_value_form(e) for e in _exponents(original)}
    return all(_same_value_form(e) in allowed for e in _exponents(form))


def _same_value_form(exponent: sp.Expr) -> sp.Expr:
    """One spelling of an exponent for every stable rewrite of it: the stable form of a loss
    keeps exp(-gamma * softplus(x)) where the spec wrote exp(-gamma * (Max(x, 0) + log(1 +
    exp(-|x|)))), the same value; a new exponent such as simplify's a - b stays new."""
    return sp.expand(normalize_signs(rewrite(exponent)), power_exp=False)


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
