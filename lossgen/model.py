"""Stage 2, model: validate a declared Loss and freeze it into the data every later stage reads."""

from __future__ import annotations

import builtins
import keyword
import numbers
import re
from dataclasses import dataclass

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.logic.boolalg import ITE

from lossgen.errors import SourceLocation, SpecError
from lossgen.printer import SUPPORTED_NODES, unsupported_nodes
from lossgen.reductions import (
    NO_DIMS,
    Dims,
    OneHot,
    Reduction,
    all_dims,
    covers,
    dims_text,
    has_reductions,
    reduced_dims,
)
from lossgen.vocabulary import REDUCTIONS, Loss, ParamSymbol, TensorSymbol

# Names the generated code itself uses; an argument with one of these names would shadow them.
GENERATED_CODE_NAMES = frozenset(
    {"torch", "nn", "math", "ctx", "self", "loss", "reduction", "grad_output"}
    | {"upstream", "shape", "args", "output", "super"}
    # the fused fast path's locals and switches
    | {
        "needs_grad",
        "saved",
        "reference",
        "grads",
        "FUSED",
        "COMPILE",
        "FUSED_MIN_NUMEL",
        "RESCALE_SYNC_MIN_NUMEL",
        "RESCALE_BLOCK",
        "RESCALE_PROGRAMS",
        "recompute",
        "saved_inputs",
    }
    # reductions over dims
    | {"upstream_weight", "weight_total", "keepdim_shape"}
    # the fast path's Triton kernel (its pointers are `<argument>_ptr`, reserved below)
    | {"triton", "tl", "libdevice", "TRITON", "TRITON_BLOCK"}
    | {"reduce_mean", "compute_dtype", "block_size"}
    | {"program", "offsets", "in_bounds", "numel", "blocks", "partial_dtype"}
    | {"loss_partials", "launched", "computed"}
    # the row kernel (lossgen.row_kernel): its locals, switches and launcher's names
    | {
        "ROW_BLOCK",
        "ROW_WARPS",
        "ROW_MIN",
        "GRAD_IN_PLACE",
        "row",
        "rows",
        "row_size",
        "row_block",
    }
    | {"row_offset", "row_length", "start", "columns", "in_row", "last_pass"}
    | {"loss_rows", "in_place", "upstream_ptr", "loss_ptr", "overwritten"}
)
RESERVED_MODULE_NAMES = frozenset({"torch", "math", "nn", "lossgen", "typing"})
# Builtins an argument may still be called: torch's own losses name their first argument `input`,
# and the generated code never calls input(). Every other builtin is refused, so no argument can
# shadow one the generated code uses (isinstance, float, super, abs, ...).
ALLOWED_BUILTIN_ARGUMENT_NAMES = frozenset({"input"})
# Names go into generated source unquoted: only plain ASCII identifiers, so nothing in a name
# can change the code around it (and Python's NFKC folding of identifiers cannot merge two).
ASCII_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters a doc may contain besides printable ones; anything else would not survive a round
# trip through a source file (a NUL cannot be in one, a CR becomes a newline).
DOC_WHITESPACE = frozenset("\n\t")


@dataclass(frozen=True)
class Argument:
    """One argument of the generated loss, in signature order."""

    name: str
    symbol: sp.Symbol
    is_tensor: bool
    differentiable: bool
    default: float | None = None
    learnable: bool = False
    index_of: int | None = None  # a class-index tensor into this dim
    along: int | None = None  # a param whose 1-D tensor values lie along this dim

    def __post_init__(self) -> None:
        assert self.name.isidentifier() and not keyword.iskeyword(self.name)
        assert self.is_tensor or self.differentiable, "params are always differentiable"
        assert not (self.is_tensor and self.learnable), "only params can be learnable"

    @property
    def is_param(self) -> bool:
        return not self.is_tensor


@dataclass(frozen=True)
class LossModel:
    """A validated loss: everything the generator needs, nothing it has to re-check."""

    name: str
    snake_name: str
    expr: sp.Expr
    arguments: tuple[Argument, ...]
    reduction: str
    doc: str | None
    spec_path: str
    location: SourceLocation
    # reduction="mean" divides by the sum of this instead of the count (None: the count)
    mean_weight: sp.Expr | None = None
    # dims every top-level term reduced: reduction="none" drops them (see lossgen.reductions)
    dropped: Dims = NO_DIMS

    def __post_init__(self) -> None:
        assert self.reduction in REDUCTIONS
        assert any(argument.is_tensor for argument in self.arguments)
        used = self.expr.free_symbols
        if self.mean_weight is not None:
            used = used | self.mean_weight.free_symbols
        assert {argument.symbol for argument in self.arguments} == used
        assert self.reduces or self.dropped == NO_DIMS

    @property
    def reduces(self) -> bool:
        """Whether anything couples elements: reductions, class indices, weighted means."""
        return (
            has_reductions(self.expr)
            or self.mean_weight is not None
            or any(
                a.index_of is not None or a.along is not None for a in self.arguments
            )
        )

    @property
    def tensors(self) -> tuple[Argument, ...]:
        return tuple(argument for argument in self.arguments if argument.is_tensor)

    @property
    def params(self) -> tuple[Argument, ...]:
        return tuple(argument for argument in self.arguments if argument.is_param)

    @property
    def differentiable(self) -> tuple[Argument, ...]:
        return tuple(argument for argument in self.arguments if argument.differentiable)


def snake_case(name: str) -> str:
    """CamelCase to snake_case, keeping acronyms together: BCEWithLogits -> bce_with_logits."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return spaced.lower()


def build_model(loss: Loss, spec_path: str) -> LossModel:
    """Validate one Loss declaration; every problem is a SpecError at the Loss's line."""
    try:
        return _build_model(loss, spec_path)
    except SpecError as error:
        raise error.at(loss.location, str(loss.name)) from None


def _build_model(loss: Loss, spec_path: str) -> LossModel:
    name = loss.name
    if not is_ascii_identifier(name):
        raise SpecError(
            f"loss name {name!r} is not a valid Python identifier (ASCII letters, "
            "digits and _)"
        )
    if keyword.iskeyword(name) or name.startswith("_") or not name[0].isupper():
        raise SpecError(
            f"loss name {name!r} must be a CamelCase class name (e.g. 'WeightedL1')"
        )
    snake = snake_case(name)
    if (
        snake in RESERVED_MODULE_NAMES
        or hasattr(builtins, snake)
        or keyword.iskeyword(snake)
        or snake == name
    ):
        raise SpecError(
            f"loss name {name!r} would generate a function {snake!r} that "
            "is a keyword or shadows a builtin or module; choose another name"
        )
    if loss.reduction not in REDUCTIONS:
        raise SpecError(
            f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
            f"not {loss.reduction!r}"
        )
    _check_doc(loss.doc)
    doc = None if loss.doc is None else normalize_doc(loss.doc)
    expr = _validate_expression(loss.expr)
    mean_weight = None
    if getattr(loss, "mean_weight", None) is not None:
        mean_weight = _validate_expression(loss.mean_weight, what="mean_weight")
    arguments = _arguments(expr if mean_weight is None else sp.Tuple(expr, mean_weight))
    dropped = _check_dims(expr, mean_weight)
    for one_hot in sp.Tuple(expr, mean_weight or 0).atoms(OneHot):
        index = one_hot.args[0]
        if not (isinstance(index, TensorSymbol) and index.index_of is not None):
            raise SpecError(
                f"OneHot/Pick need a Tensor declared with index_of=dim, not {index}"
            )
    generated_names = {name, f"{name}Function", snake}
    for argument in arguments:
        if argument.name in generated_names:
            raise SpecError(
                f"argument name {argument.name!r} is also a name the generated module "
                "defines; choose another"
            )
    return LossModel(
        name=name,
        snake_name=snake,
        expr=expr,
        arguments=arguments,
        reduction=loss.reduction,
        doc=doc,
        spec_path=spec_path,
        location=loss.location,
        mean_weight=mean_weight,
        dropped=dropped,
    )


def _check_dims(expr: sp.Expr, mean_weight: sp.Expr | None) -> Dims:
    """The dims "none" drops; dims must be consistently signed, weights reduced alike."""
    named = all_dims(expr if mean_weight is None else sp.Tuple(expr, mean_weight))
    if any(d < 0 for d in named) and any(d >= 0 for d in named):
        raise SpecError(
            f"dims {named} mix negative and non-negative numbers: within one loss, count "
            "all dims from the front or all from the back"
        )
    dropped = reduced_dims(expr)
    if mean_weight is not None and not covers(reduced_dims(mean_weight), dropped):
        raise SpecError(
            "mean_weight must give one weight per element of the loss: reduce it over "
            f"the dims the loss reduces ({dims_text(dropped)})"
        )
    return dropped


def is_ascii_identifier(name: object) -> bool:
    """A plain ASCII Python identifier (keywords are checked separately)."""
    return isinstance(name, str) and ASCII_IDENTIFIER.fullmatch(name) is not None


def _check_doc(doc: object) -> None:
    """The doc goes verbatim into a raw docstring: it must not be able to end it."""
    if doc is None:
        return
    if not isinstance(doc, str):
        raise SpecError(f"doc must be a string, not {type(doc).__name__}")
    if '"""' in doc:
        raise SpecError('doc must not contain triple quotes (""")')
    bad = [c for c in doc if not c.isprintable() and c not in DOC_WHITESPACE]
    if bad:
        raise SpecError(
            f"doc must not contain control characters (found {bad[0]!r}); "
            "use newlines and printable text"
        )


def normalize_doc(doc: str) -> str:
    """The doc as black leaves it in a docstring, so it arrives in `__doc__` exactly so:
    no trailing whitespace on a line, leading tabs as spaces (4 per tab)."""
    lines = []
    for line in doc.split("\n"):
        text = line.lstrip(" \t")
        lines.append((line[: len(line) - len(text)].expandtabs(4) + text).rstrip())
    return "\n".join(lines).strip("\n")


def _validate_expression(raw: object, what: str = "the loss") -> sp.Expr:
    if isinstance(raw, sp.MatrixBase) or isinstance(raw, (list, tuple)):
        raise SpecError(
            f"{what} must be one scalar (elementwise) expression, not a matrix"
        )
    try:
        expr = sp.sympify(raw, strict=True)
    except (sp.SympifyError, TypeError) as error:
        prefix = "" if what == "the loss" else f"{what}: "
        raise SpecError(f"{prefix}not a SymPy expression: {raw!r}") from error
    # Not `isinstance(expr, Boolean)`: a Symbol is a Boolean too, and `Loss("L", x)` is valid.
    if not isinstance(expr, sp.Expr):
        raise SpecError(f"{what} must be a number-valued expression, not {expr}")
    if expr.has(sp.I) or expr.is_real is False:
        raise SpecError(f"{what} is complex-valued: {expr}")
    if expr.has(sp.nan, sp.zoo):
        raise SpecError(f"{what} is undefined (nan or complex infinity): {expr}")
    expr = _without_ite(expr)
    missing = unsupported_nodes(expr)
    if missing:
        outermost = _outermost_unsupported(expr) or missing
        where = "a loss expression" if what == "the loss" else what
        raise SpecError(f"unsupported in {where}: {', '.join(outermost)}")
    return expr


def _without_ite(expr: sp.Expr) -> sp.Expr:
    """`expr` with each ITE(c, a, b) written as (c & a) | (~c & b), which the printers know.

    SymPy makes an ITE of a condition on a Piecewise (`Piecewise(...) > 0` in a Piecewise's
    condition), so a spec need not have written one.
    """
    return expr.replace(
        lambda node: isinstance(node, ITE),
        lambda node: sp.Or(
            sp.And(node.args[0], node.args[1]),
            sp.And(sp.Not(node.args[0]), node.args[2]),
        ),
    )


def _outermost_unsupported(expr: sp.Basic) -> list[str]:
    """Unsupported nodes without their insides: `Integral`, not `Integral, Tuple`."""
    found: set[str] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, SUPPORTED_NODES):
            stack.extend(node.args[:1] if isinstance(node, Reduction) else node.args)
        elif isinstance(node, AppliedUndef):
            found.add(f"undefined function {type(node).__name__}")
        else:
            found.add(type(node).__name__)
    return sorted(found)


def _arguments(expr: sp.Expr) -> tuple[Argument, ...]:
    symbols = sorted(expr.free_symbols, key=lambda symbol: symbol.name)
    strangers = [
        s.name for s in symbols if not isinstance(s, (TensorSymbol, ParamSymbol))
    ]
    if strangers:
        raise SpecError(
            f"symbol {strangers[0]!r} was not made by Tensor(...) or Param(...)"
        )
    names = [symbol.name for symbol in symbols]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SpecError(
            f"two different symbols are both named {sorted(duplicates)[0]!r}"
        )
    for symbol in symbols:
        _check_argument_name(symbol.name)
    tensors = sorted(
        (s for s in symbols if isinstance(s, TensorSymbol)), key=_declaration_order
    )
    params = sorted(
        (s for s in symbols if isinstance(s, ParamSymbol)), key=_declaration_order
    )
    if not tensors:
        raise SpecError(
            "the loss uses no Tensor(...): there is nothing to compute over"
        )
    arguments = [
        Argument(
            t.name,
            t,
            is_tensor=True,
            differentiable=t.differentiable,
            index_of=_check_dim(t.index_of, f"tensor {t.name!r}: index_of"),
        )
        for t in tensors
    ]
    if all(t.index_of is not None for t in tensors):
        raise SpecError(
            "every tensor is a class index (index_of=...): the loss needs a tensor of "
            "values too"
        )
    seen_default = None
    for param in params:
        default = _check_default(param)
        if default is None and seen_default is not None:
            raise SpecError(
                f"param {param.name!r} has no default but follows "
                f"{seen_default!r}, which has one"
            )
        if default is not None:
            seen_default = param.name
        arguments.append(
            Argument(
                param.name,
                param,
                is_tensor=False,
                differentiable=True,
                default=default,
                learnable=param.learnable,
                along=_check_dim(param.along, f"param {param.name!r}: along"),
            )
        )
    return tuple(arguments)


def _check_dim(dim: object, what: str) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise SpecError(f"{what} must be an int (a dim), not {dim!r}")
    return int(dim)


def _declaration_order(symbol: sp.Symbol) -> int:
    return symbol.declaration_index


def _check_argument_name(name: str) -> None:
    if not is_ascii_identifier(name) or keyword.iskeyword(name):
        raise SpecError(
            f"argument name {name!r} is not a valid Python identifier (ASCII letters, "
            "digits and _, not a keyword)"
        )
    if hasattr(builtins, name) and name not in ALLOWED_BUILTIN_ARGUMENT_NAMES:
        raise SpecError(
            f"argument name {name!r} would shadow the Python builtin {name!r}; "
            "choose another"
        )
    if (
        name in GENERATED_CODE_NAMES
        or name.startswith(("_", "grad_"))
        or name.endswith("_ptr")
        or re.fullmatch(r"tmp\d+", name)
    ):
        raise SpecError(
            f"argument name {name!r} is reserved for the generated code; choose another"
        )


def _check_default(param: ParamSymbol) -> float | None:
    default = param.default
    if default is None:
        return None
    if isinstance(default, bool) or not isinstance(default, numbers.Real):
        raise SpecError(
            f"param {param.name!r}: default must be a float, not {type(default).__name__}"
        )
    try:
        value = float(default)
    except (OverflowError, TypeError, ValueError):
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(f"param {param.name!r}: default must be finite")
    return value
