"""Stage 5, render: fill the Jinja templates with printed expressions.

The templates own the file's structure; this module only prepares what goes into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence

from lossgen.derive import DerivedLoss, Program, Step
from lossgen.model import Argument
from lossgen.printer import print_torch


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
    names = {argument.symbol: argument.name for argument in model.arguments}
    like = model.tensors[0].name

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

    # SymPy can fold a result while CSE runs (a Piecewise whose condition is a > a): steps
    # nothing uses any more would be dead code (and lint errors) in the generated file.
    forward = _pruned(derived.forward)
    gradient_programs = [_pruned(gradient.program) for gradient in derived.gradients]
    shared_steps = _needed(
        derived.shared_backward_steps,
        [p.result for p in gradient_programs]
        + [step.expr for p in gradient_programs for step in p.steps],
    )
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
    shared_lines = lines(shared_steps)
    gradients = []
    for gradient, gradient_program in zip(derived.gradients, gradient_programs):
        body, code = program(gradient_program)
        index = model.arguments.index(gradient.argument)
        binds_tightly = precedence(gradient.program.result) >= PRECEDENCE["Mul"]
        factor = code if binds_tightly else f"({code})"
        gradients.append(GradientCode(index, gradient.argument, body, code, factor))

    formulas = [Formula("loss", sp.sstr(derived.loss), sp.latex(derived.loss))]
    formulas += [
        Formula(
            f"d loss / d {gradient.argument.name}",
            sp.sstr(gradient.derivative),
            sp.latex(gradient.derivative),
        )
        for gradient in derived.gradients
    ]
    code_so_far = [forward_code, *(g.code for g in gradients)]
    code_so_far += [line.code for line in (*forward_lines, *shared_lines)]
    code_so_far += [line.code for g in gradients for line in g.lines]
    context = {
        "model": model,
        "like": like,
        "forward_lines": forward_lines,
        "forward_code": forward_code,
        "shared_lines": shared_lines,
        "gradients": gradients,
        "frozen_tensors": [
            (model.arguments.index(a), a) for a in model.tensors if not a.differentiable
        ],
        "formulas": formulas,
        "uses_math": any("math." in code for code in code_so_far),
        "signature": _signature(model.arguments, model.reduction),
        "param_signature": _signature(model.params, model.reduction),
        "call_arguments": ", ".join(a.name for a in model.arguments),
        "tensor_arguments": ", ".join(a.name for a in model.tensors),
        "saved_names": ", ".join(a.name for a in model.arguments)
        + ("," if len(model.arguments) == 1 else ""),
        "argument_shapes": ", ".join(f"{a.name}.shape" for a in model.arguments),
    }
    return _environment().get_template("loss.py.jinja").render(context)


def _needed(steps: Sequence[Step], roots: Sequence[sp.Basic]) -> tuple[Step, ...]:
    """The steps that `roots` use, directly or through other steps, in their order."""
    wanted: set[sp.Basic] = set().union(*(root.free_symbols for root in roots))
    kept = []
    for step in reversed(steps):
        if step.symbol in wanted:
            kept.append(step)
            wanted |= step.expr.free_symbols
    return tuple(reversed(kept))


def _pruned(program: Program) -> Program:
    return Program(_needed(program.steps, [program.result]), program.result)


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
