"""The fused body as torch.compile runs it (`_fused` in the generated file): the fast path's
program (lossgen.program.FusedProgram) rewritten into forms that Inductor's CPU code runs faster
or in less memory, at the accuracy of the readable forms. The readable Function and the Triton
kernels print the program as derive made it; each rewrite here says what it measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.backprop import UPSTREAM, UPSTREAM_WEIGHT
from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.model import LossModel
from lossgen.printer import unsupported_nodes
from lossgen.program import INTERMEDIATE_PREFIX, FusedProgram, Step, fused_program
from lossgen.reductions import (
    ALL,
    Dims,
    OneHot,
    Picked,
    Reduction,
    constant_dims,
    covers,
    distributed_sums,
    outside_reductions_atoms,
    xreplace_outside_reductions,
)
from lossgen.vocabulary import ParamSymbol, TensorSymbol


def compiled_body(model: LossModel, exprs: list[sp.Expr]) -> FusedProgram | None:
    """The fused program of the loss and its gradients (`exprs`, in that order) for
    torch.compile, where a rewrite changes it; None where it is fused_program(exprs)."""
    if not model.reduces:
        return compiled_program(exprs)
    compiled = compiled_program(
        exprs, sigmoids_only=True, constants=fused_constants(model)
    )
    fused = compiled or fused_program(exprs)
    recomputed = recomputed_after_reductions(fused)
    return compiled if recomputed is fused else recomputed


def fused_constants(model: LossModel) -> dict[sp.Symbol, Dims]:
    """What the fused body holds constant along every dim: the fast path takes only scalar
    params (or 1-D ones along their dim, which vary) and a scalar upstream gradient."""
    constants: dict[sp.Symbol, Dims] = {UPSTREAM: ALL, UPSTREAM_WEIGHT: ALL}
    for argument in model.arguments:
        if isinstance(argument.symbol, ParamSymbol) and argument.symbol.along is None:
            constants[argument.symbol] = ALL
    return constants


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
        shared = [closed_form_reductions(expr, constants) for expr in shared]
        shared = [distributed_sums(expr, constants) for expr in shared]
    if shared == exprs:
        return None
    return fused_program(shared)


def closed_form_reductions(expr: sp.Expr, constants: dict[sp.Symbol, Dims]) -> sp.Expr:
    """`expr` with each reduction whose body is constant along its dims in closed form.

    A loss that keeps a dim its reductions reduce (`Max(x, dim=1) + relu(x)`) has gradients
    that sum the upstream gradient over that dim. In the fused body the upstream gradient is
    a Python number (a sum or an unweighted mean), which torch cannot reduce: Sum(upstream, 1)
    is upstream * size_1.
    """

    def closed_form(node: Reduction) -> sp.Expr:
        if not covers(constant_dims(node.body, constants), node.dims):
            return node
        return type(node).of_constant(node.body, node.dims)

    return expr.replace(lambda node: isinstance(node, Reduction), closed_form)


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
        outside = _symbols_outside(step.expr)
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
        found = _symbols_outside(gradient)
        for step in reversed(program.steps):
            if step.symbol in found:
                found |= _symbols_outside(step.expr)
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
                    or _symbols_outside(step.expr) & mine
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
            for node in outside_reductions_atoms(expr, (Reduction, Picked)):
                if node not in lifted:
                    lifted[node] = next(fresh)
                    steps.append(Step(lifted[node], node))
            expr = xreplace_outside_reductions(expr, lifted)
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
        gradients.append(xreplace_outside_reductions(gradient, copies))
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


def _symbols_outside(expr: sp.Basic) -> set[sp.Basic]:
    """The free symbols `expr` reads outside every reduction (and one-hot)."""
    return set(outside_reductions_atoms(expr, sp.Symbol))


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
