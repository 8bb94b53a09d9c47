"""Stage 5, render: fill the Jinja templates with printed expressions.

The templates own the file's structure; this module only prepares what goes into them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence

from lossgen.backprop import UPSTREAM, UPSTREAM_WEIGHT
from lossgen.derive import DerivedLoss
from lossgen.model import Argument, LossModel
from lossgen.printer import UnsupportedExpressionError, print_spread, print_torch
from lossgen.program import Program, Step, needed_steps
from lossgen.reductions import (
    ALL,
    OneHot,
    Tie,
    one_hot_split,
    outside_reductions_atoms,
    spread_parts,
)
from lossgen.row_kernel import RowKernelCode, row_kernel_code
from lossgen.triton_printer import print_triton


@dataclass(frozen=True)
class Line:
    name: str
    code: str


@dataclass(frozen=True)
class GradientCode:
    index: int  # position in Function.apply's arguments
    argument: Argument
    lines: tuple[Line, ...]
    code: str
    factor: (
        str  # `code` ready to be multiplied: parenthesized where precedence needs it
    )
    scaled: (
        str  # the gradient of the reduced loss: `factor * upstream`, or `code` itself
    )
    reshape: str  # back to a param's own shape where it was laid along a dim
    summed: bool = False  # `code` is already summed to the argument's shape (_spread)


@dataclass(frozen=True)
class Formula:
    """An expression for docstrings: plain text and LaTeX."""

    label: str
    text: str
    latex: str


def templates_dir() -> Path:
    """Templates ship inside the wheel as lossgen/templates; a checkout has them at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "loss.py.jinja").is_file():
            return candidate
    raise FileNotFoundError("lossgen's templates are missing from this installation")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - Python source, not HTML; names are validated identifiers
    )


def render_loss(derived: DerivedLoss) -> str:
    """The generated module for one loss, before formatting."""
    model = derived.model
    names = _names(model)
    like = _like(model)

    def lines(steps: Sequence[Step]) -> tuple[Line, ...]:
        for step in steps:
            names[step.symbol] = step.symbol.name
        return tuple(
            Line(step.symbol.name, print_torch(step.expr, names, like))
            for step in steps
        )

    def program(p: Program) -> tuple[tuple[Line, ...], str]:
        body = lines(p.steps)
        return body, print_torch(p.result, names, like)

    forward = derived.forward
    forward_lines, forward_code = program(forward)
    if forward.result in {a.symbol for a in model.arguments}:
        # A loss that is one argument as-is (`Loss("L", x)`): forward must not return its
        # input itself, which autograd refuses to save for backward; a view is fine.
        forward_code = f"{forward_code}.view_as({forward_code})"
    elif not forward.result.free_symbols:
        # A loss that folded to a constant must still be a tensor of the inputs' shape.
        shapes = ", ".join(f"{a.name}.shape" for a in model.arguments)
        forward_code = (
            f"torch.full(torch.broadcast_shapes({shapes}), {forward_code}, "
            f"dtype={like}.dtype, device={like}.device)"
        )
    spreads, needed = _spreads(
        [
            *derived.shared_backward_steps,
            *(step for g in derived.gradients for step in g.program.steps),
        ],
        [g.program.result for g in derived.gradients],
    )
    shared_lines = lines(
        [s for s in derived.shared_backward_steps if s.symbol in needed]
    )
    gradients = []
    for gradient, spread in zip(derived.gradients, spreads):
        body = lines([s for s in gradient.program.steps if s.symbol in needed])
        index = model.arguments.index(gradient.argument)
        if spread is not None:
            code = _spread_code(spread, names, like, gradient.argument, compiled=False)
            gradients.append(
                GradientCode(
                    index,
                    gradient.argument,
                    body,
                    code,
                    code,
                    code,
                    _reshape(gradient.argument),
                    summed=True,
                )
            )
            continue
        code = print_torch(gradient.program.result, names, like)
        binds_tightly = precedence(gradient.program.result) >= PRECEDENCE["Mul"]
        factor = code if binds_tightly else f"({code})"
        scaled = _scaled(model, code, factor, not gradient.program.result.free_symbols)
        gradients.append(
            GradientCode(
                index,
                gradient.argument,
                body,
                code,
                factor,
                scaled,
                _reshape(gradient.argument),
            )
        )

    fused_lines, fused_loss, fused_gradients = _fused_code(derived)

    formulas = []
    if (
        derived.loss != model.expr
    ):  # rewritten into stable forms: show what the user wrote too
        formulas.append(
            Formula("loss as written", sp.sstr(model.expr), sp.latex(model.expr))
        )
    formulas.append(Formula("loss", sp.sstr(derived.loss), sp.latex(derived.loss)))
    formulas += [
        Formula(
            f"d loss / d {gradient.argument.name}",
            sp.sstr(gradient.derivative),
            sp.latex(gradient.derivative),
        )
        for gradient in derived.gradients
    ]
    code_so_far = [forward_code, *(g.code for g in gradients)]
    code_so_far += [line.code for line in (*forward_lines, *shared_lines, *fused_lines)]
    code_so_far += [fused_loss, *(g.code for g in fused_gradients)]
    code_so_far += [line.code for g in fused_gradients for line in g.lines]
    code_so_far += [line.code for g in gradients for line in g.lines]
    forward_ops = count_operations([*forward_lines, forward_code])
    backward_ops = count_operations(
        [*shared_lines, *(line for g in gradients for line in g.lines)]
        + [g.code for g in gradients]
    )
    mean_weight_code = ""
    if derived.mean_weight is not None:
        mean_weight_code = print_torch(derived.mean_weight, names, like)
        if precedence(derived.mean_weight) < PRECEDENCE["Atom"]:
            mean_weight_code = f"({mean_weight_code})"
        code_so_far.append(mean_weight_code)
    along = [a for a in model.params if a.along is not None]
    saved = [a.name for a in model.arguments]
    if derived.uses_upstream_weight:  # the weighted mean's second term needs the value
        saved.append("output")
    context = {
        "model": model,
        "dropped_code": _dropped_code(model),
        "dropped_text": _dropped_text(model),
        "prepare_lines": _prepare_lines(model, like, keep_shapes=False),
        # gradients are computed there: they keep the shapes of the params laid along a dim
        "gradient_prepare_lines": _prepare_lines(model, like, keep_shapes=True),
        "mean_weight_code": mean_weight_code,
        # the params the weighted mean's denominator reads
        "weight_numbers": [
            p.name
            for p in model.params
            if derived.mean_weight is not None
            and p.symbol in derived.mean_weight.free_symbols
        ],
        "uses_upstream_weight": derived.uses_upstream_weight,
        "saves_output": derived.uses_upstream_weight,
        "uses_one_hot": any("_one_hot(" in code for code in code_so_far),
        "uses_pick": any(
            helper in code
            for code in code_so_far
            for helper in ("_pick(", "_at(", "_spread(", "_spread_onto(")
        ),
        "uses_spread": any(
            helper in code
            for code in code_so_far
            for helper in ("_spread(", "_spread_onto(")
        ),
        "uses_spread_onto": any("_spread_onto(" in code for code in code_so_far),
        "uses_xlogy": any("_xlogy(" in code for code in code_so_far),
        "uses_expm1": any("_expm1(" in code for code in code_so_far),
        "along_params": along,
        "triton": _triton_code(derived),
        **_row_triton_context(derived),
        "forward_ops": forward_ops,
        "backward_ops": backward_ops,
        "like": like,
        "forward_lines": forward_lines,
        "forward_code": forward_code,
        "shared_lines": shared_lines,
        "gradients": gradients,
        "frozen_tensors": [
            (model.arguments.index(a), a) for a in model.tensors if not a.differentiable
        ],
        "formulas": formulas,
        "uses_tie": any(g.derivative.has(Tie) for g in derived.gradients),
        "fused_lines": fused_lines,
        "fused_loss": fused_loss,
        "fused_gradients": fused_gradients,
        "fused_targets": ", ".join(f"grad_{g.argument.name}" for g in fused_gradients)
        + ("," if len(fused_gradients) == 1 else ""),
        "param_arguments": ", ".join(p.name for p in model.params),
        "uses_math": any("math." in code for code in code_so_far),
        "signature": _signature(model.arguments, model.reduction),
        "param_signature": _signature(model.params, model.reduction),
        "call_arguments": ", ".join(a.name for a in model.arguments),
        "tensor_arguments": ", ".join(a.name for a in model.tensors),
        # what the fast path checks: class indices need not match the values' shape
        "value_tensor_arguments": ", ".join(
            a.name for a in model.tensors if a.index_of is None
        ),
        "saved_count": len(saved),
        "saved_names": ", ".join(saved) + ("," if len(saved) == 1 else ""),
        "argument_shapes": ", ".join(f"{a.name}.shape" for a in model.arguments),
    }
    return _environment().get_template("loss.py.jinja").render(context)


def count_operations(code: Iterable[Line | str]) -> int:
    """Tensor operations in printed code: calls and operators with a tensor operand.

    An operation on plain numbers only (`math.log(2)`, `1 / 2`) is folded by Python, not run
    per element, so it does not count; nor do reduction and gradient scaling, which every loss
    shares.
    """
    total = 0
    for item in code:
        source = item.code if isinstance(item, Line) else item
        tree = ast.parse(source, mode="eval")
        for node in ast.walk(tree):
            if isinstance(
                node, (ast.Call, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)
            ):
                if any(_is_tensor_name(n) for n in ast.walk(node)):
                    total += 1
    return total


def _is_tensor_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id not in ("torch", "math")


def render_package(modules: Sequence[tuple[str, str]]) -> str:
    """generated/__init__.py: re-export every loss, given (module name, loss name) pairs."""
    # Sorted like isort/ruff would, so the package file is lint-clean as generated.
    ordered = sorted(modules)
    return _environment().get_template("__init__.py.jinja").render(modules=ordered)


def _signature(arguments: Sequence[Argument], reduction: str) -> str:
    parts = [
        a.name if a.default is None or a.is_tensor else f"{a.name}={a.default!r}"
        for a in arguments
    ]
    parts.append(f'reduction="{reduction}"')
    return ", ".join(parts)


@dataclass(frozen=True)
class FusedGradient:
    index: int  # position in Function.apply's arguments
    argument: Argument
    code: str
    factor: str  # `code`, parenthesized where precedence needs it
    constant: bool  # no symbols: the gradient must be broadcast to a full tensor
    scaled: str  # see GradientCode.scaled
    summed: bool = False  # see GradientCode.summed
    reshape: str = ""  # see GradientCode.reshape
    # its own steps, before it: see compiled_body.recomputed_after_reductions
    lines: tuple[Line, ...] = ()


def _spreads(
    steps: Sequence[Step], results: Sequence[sp.Expr], roots: Sequence[sp.Expr] = ()
) -> tuple[list[sp.Expr | None], set[sp.Symbol]]:
    """Each result as a one-hot product (printer.print_spread), or None where it is not one;
    and the symbols of the steps still needed, by these and by `roots`.

    Derive's CSE takes OneHot(t) out into a temporary wherever two gradients share it: steps
    that are one-hot products themselves are put back into the results first. A step that
    only such a result used is no longer needed (the scatter does not read it).
    """
    inline: dict[sp.Basic, sp.Basic] = {}
    for step in steps:
        expr = step.expr.xreplace(inline)
        if spread_parts(expr) is not None:
            inline[step.symbol] = expr
    spreads: list[sp.Expr | None] = []
    for result in results:
        inlined = result.xreplace(inline)
        spreads.append(inlined if spread_parts(inlined) is not None else None)
    used = [*roots, *(s if s is not None else r for s, r in zip(spreads, results))]
    kept = needed_steps([(step.symbol, step.expr) for step in steps], used)
    return spreads, {symbol for symbol, _ in kept}


def _spread_code(
    expr: sp.Expr,
    names: dict[sp.Symbol, str],
    like: str,
    argument: Argument,
    compiled: bool,
    onto: str | None = None,
) -> str:
    """A one-hot product gradient (see _spreads) as the generated helper _spread, which also
    sums it to the argument's shape; added to the gradient `onto` with _spread_onto."""
    printed = print_spread(expr, names, like, compiled=compiled)
    assert printed is not None, "a spread is a one-hot product"
    value, index, dim = printed
    if onto is not None:
        return (
            f"_spread_onto({onto}, {value}, {index}, {dim}, shape, {like}, "
            f"{argument.name}.shape)"
        )
    return f"_spread({value}, {index}, {dim}, shape, {like}, {argument.name}.shape)"


def _fused_code(
    derived: DerivedLoss,
) -> tuple[tuple[Line, ...], str, tuple[FusedGradient, ...]]:
    """The fast path's one-pass body (derive's FusedProgram), printed."""
    model = derived.model
    names = _names(model)
    like = _like(model)
    fused = derived.compiled_fused
    own_steps = fused.gradient_steps or tuple(() for _ in fused.gradients)
    every_step = [*fused.steps, *(step for own in own_steps for step in own)]
    spreads, _ = _spreads(every_step, fused.gradients, [fused.loss])
    splits = _one_hot_splits(
        every_step, fused.gradients, spreads, [g.argument for g in derived.gradients]
    )
    used = [fused.loss]
    for result, spread, split in zip(fused.gradients, spreads, splits):
        if split is not None:
            used += [split[0], split[1] * split[2]]
        else:
            used.append(spread if spread is not None else result)
    needed = {
        symbol
        for symbol, _ in needed_steps([(s.symbol, s.expr) for s in every_step], used)
    }
    for step in every_step:
        names[step.symbol] = step.symbol.name

    def printed(steps: Sequence[Step]) -> tuple[Line, ...]:
        # printed for torch.compile, which compiles _fused (see TorchCodePrinter._print_xlogy)
        return tuple(
            Line(s.symbol.name, print_torch(s.expr, names, like, compiled=True))
            for s in steps
            if s.symbol in needed
        )

    lines = printed(fused.steps)
    # the symbols that are tensors in _fused: its arguments (params made tensors before it),
    # and the steps computed from them
    tensors = {a.symbol for a in model.arguments}
    for step in every_step:
        if step.expr.free_symbols & tensors:
            tensors.add(step.symbol)
    gradients = []
    for gradient, result, spread, split, own in zip(
        derived.gradients, fused.gradients, spreads, splits, own_steps
    ):
        code = None
        if split is not None:
            dense, one_hot, value = split
            onto = print_torch(dense, names, like, compiled=True)
            code = _spread_code(
                one_hot * value, names, like, gradient.argument, True, onto
            )
        elif spread is not None:
            code = _spread_code(spread, names, like, gradient.argument, compiled=True)
        if code is not None:
            gradients.append(
                FusedGradient(
                    model.arguments.index(gradient.argument),
                    gradient.argument,
                    code,
                    code,
                    False,
                    code,
                    summed=True,
                    reshape=_reshape(gradient.argument),
                    lines=printed(own),
                )
            )
            continue
        code = print_torch(result, names, like, compiled=True)
        number = bool(result.free_symbols) and not result.free_symbols & tensors
        if number:
            # of the upstream gradient and the sizes alone (d Mean(x, 1) / dx): a Python
            # number where the reduction is a sum or an unweighted mean, a tensor for _sum_to
            code = f"torch.as_tensor({code}, dtype={like}.dtype, device={like}.device)"
        binds_tightly = number or precedence(result) >= PRECEDENCE["Mul"]
        factor = code if binds_tightly else f"({code})"
        constant = not result.free_symbols
        gradients.append(
            FusedGradient(
                model.arguments.index(gradient.argument),
                gradient.argument,
                code,
                factor,
                constant,
                _scaled(model, code, factor, constant),
                reshape=_reshape(gradient.argument),
                lines=printed(own),
            )
        )
    loss = print_torch(fused.loss, names, like, compiled=True)
    if not fused.loss.free_symbols:
        # A loss that folded to a constant: a tensor, of the shape the reduction counts
        # (over dims, _reduce expands it to that).
        full_shape = "()" if model.reduces else "shape"
        loss = f"torch.full({full_shape}, {loss}, dtype={like}.dtype, device={like}.device)"
    return lines, loss, tuple(gradients)


def _one_hot_splits(
    steps: Sequence[Step],
    results: Sequence[sp.Expr],
    spreads: Sequence[sp.Expr | None],
    arguments: Sequence[Argument],
) -> list[tuple[sp.Expr, OneHot, sp.Expr] | None]:
    """For the compiled body: each tensor's gradient that is a dense part plus a one-hot
    product (reductions.one_hot_split) as (dense, OneHot(t), E), printed as _spread_onto
    (the dense part with E added at the index); None for the others.

    Inductor compiles the one-hot product as a comparison of every position with the index
    in the loop that writes the gradient; added by a scatter afterwards, softmax
    cross-entropy's compiled step on CPU took 5.0 ms instead of 6.5 (4096 x 1024 float32,
    benchmarks/RESULTS.md). A param's gradient is summed over the positions: there the
    product stays in the one reduction that sums it.
    """
    inline: dict[sp.Basic, sp.Basic] = {}
    # every step written out, to see what the dense part computes
    whole: dict[sp.Basic, sp.Basic] = {}
    for step in steps:
        expr = step.expr.xreplace(inline)
        if one_hot_split(expr) is not None or isinstance(expr, OneHot):
            inline[step.symbol] = expr
        whole[step.symbol] = step.expr.xreplace(whole)
    splits: list[tuple[sp.Expr, OneHot, sp.Expr] | None] = []
    for result, spread, argument in zip(results, spreads, arguments):
        split = None
        if spread is None and argument.is_tensor:
            split = one_hot_split(result.xreplace(inline))
        # Only where the dense part compares no position with an index (MulticlassHinge's
        # max over x + margin * (1 - OneHot(t)) still would): else the scatter is one more
        # pass and nothing less.
        if split is not None and outside_reductions_atoms(
            split[0].xreplace(whole), OneHot
        ):
            split = None
        splits.append(split)
    return splits


@dataclass(frozen=True)
class TritonGradient:
    index: int  # position in Function.apply's arguments
    name: str
    is_param: bool  # a param's gradient is summed over the elements in the kernel
    factor: str  # the elementwise gradient, parenthesized where precedence needs it


@dataclass(frozen=True)
class TritonCode:
    """The Triton kernel's body: derive's FusedProgram printed by lossgen.triton_printer."""

    kernel_name: str
    lines: tuple[Line, ...]
    loss: str
    gradients: tuple[TritonGradient, ...]


def _triton_code(derived: DerivedLoss) -> TritonCode | None:
    """The fast path's Triton kernel, for losses without reductions over dims; None where
    the loss reduces or uses a function the Triton printer lacks (the torch fast path stays).
    """
    model = derived.model
    if model.reduces:
        return None
    names = {argument.symbol: argument.name for argument in model.arguments}
    fused = derived.fused
    try:
        lines = []
        for step in fused.steps:
            names[step.symbol] = step.symbol.name
            lines.append(Line(step.symbol.name, print_triton(step.expr, names)))
        loss = print_triton(fused.loss, names)
        gradients = []
        for gradient, result in zip(derived.gradients, fused.gradients):
            code = print_triton(result, names)
            binds_tightly = precedence(result) >= PRECEDENCE["Mul"]
            gradients.append(
                TritonGradient(
                    model.arguments.index(gradient.argument),
                    gradient.argument.name,
                    gradient.argument.is_param,
                    code if binds_tightly else f"({code})",
                )
            )
    except UnsupportedExpressionError:
        return None
    return TritonCode(
        f"_{model.snake_name}_kernel", tuple(lines), loss, tuple(gradients)
    )


def _row_triton_context(derived: DerivedLoss) -> dict[str, object]:
    """The row kernel (lossgen.row_kernel) and what its template needs besides."""
    model = derived.model
    row: RowKernelCode | None = row_kernel_code(derived)
    if row is None:
        return {"row_triton": None, "row_in_place": None}
    computed = {gradient.name for gradient in row.gradients}
    like = _like(model)
    in_place = next((g for g in row.gradients if g.name == like), None)
    # where one of these gradients is asked for, the torch fast path takes the loss
    declined = " or ".join(f"needs_grad[{index}]" for index in row.declined)
    return {
        "row_triton": row,
        "row_declined": declined,
        "row_in_place_position": next(
            (i for i, a in enumerate(model.differentiable) if a.name == like), None
        ),
        "row_returns": [
            f"grad_{a.name}" if a.name in computed else "None"
            for a in model.differentiable
        ],
        "row_in_place": in_place,
        # rows are contiguous where the dim is the last one
        "row_not_last": (
            f"{like}.dim() == 0" if row.dim == -1 else f"{like}.dim() != {row.dim + 1}"
        ),
        "row_class_indices": [a.name for a in model.tensors if a.index_of is not None],
    }


def _names(model: LossModel) -> dict[sp.Symbol, str]:
    names = {argument.symbol: argument.name for argument in model.arguments}
    names[UPSTREAM] = "upstream"
    names[UPSTREAM_WEIGHT] = "upstream_weight"
    return names


def _like(model: LossModel) -> str:
    """A tensor of the compute dtype: the first tensor that is not class indices."""
    return next(a.name for a in model.tensors if a.index_of is None)


def _scaled(model: LossModel, code: str, factor: str, constant: bool) -> str:
    """A gradient of the reduced loss. With reductions, derive put the upstream inside."""
    if not model.reduces or constant:  # with reductions, only a zero is constant
        return f"{factor} * upstream"
    return code


def _reshape(argument: Argument) -> str:
    return "" if argument.along is None else f".reshape(_{argument.name}_shape)"


def _dropped_code(model: LossModel) -> str:
    if model.dropped == ALL:
        return "None"
    dims = sorted(model.dropped)
    return "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"


def _dropped_text(model: LossModel) -> str:
    if model.dropped == ALL:
        return "every dim: one value"
    dims = sorted(model.dropped)
    if not dims:
        return "none"
    return ("dim " if len(dims) == 1 else "dims ") + ", ".join(map(str, dims))


def _prepare_lines(model: LossModel, like: str, keep_shapes: bool) -> list[str]:
    """Class indices unsqueezed at their dim, 1-D params laid along theirs (their own shapes
    kept first, for their gradients: see _reshape)."""
    lines = []
    for argument in model.arguments:
        if argument.index_of is not None:
            lines.append(
                f"{argument.name} = {argument.name}.unsqueeze({argument.index_of})"
            )
        if argument.along is not None:
            if keep_shapes and argument.differentiable:
                lines.append(f"_{argument.name}_shape = {argument.name}.shape")
            lines.append(
                f"{argument.name} = _lay_along({argument.name}, {argument.along}, "
                f"{like}.dim())"
            )
    return lines
