"""`lossgen plot`: draw each loss and its derivative over its first tensor, to PNG.

Like the figures of robust-loss papers: the loss over the residual (or logit, or probability)
on the left, d loss / d input on the right, one curve per value of a chosen param. The
derivative comes from the generated Function's backward, so the plot shows what training uses.

matplotlib is an optional extra (`pip install lossgen[plot]`); it is imported only here.
"""

from __future__ import annotations

import textwrap
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lossgen.api import PathLike, derive_all, generate
from lossgen.errors import LossgenError
from lossgen.model import LossModel

# Sweep ranges and fixed values per sampling domain of lossgen.verify.
RANGES = {"normal": (-3.0, 3.0), "positive": (0.01, 3.0), "unit": (0.001, 0.999)}
FIXED = {"normal": 0.0, "positive": 1.0, "unit": 0.5}
LABEL_VALUE = 1.0  # a non-differentiable tensor is a label: the positive class
POINTS = 601


@dataclass(frozen=True)
class PlotSettings:
    """What to draw for one loss; every field left empty is chosen from the loss's domain."""

    x_range: tuple[float, float] | None = None
    fixed: Mapping[str, float] = field(default_factory=dict)  # other tensors and params
    vary: tuple[str, tuple[float, ...]] | None = None  # one param, several curves


@dataclass(frozen=True)
class Curves:
    """The sampled curves of one loss: x, and per curve its label, loss and derivative."""

    x_name: str
    x: torch.Tensor
    labels: tuple[str, ...]
    losses: tuple[torch.Tensor, ...]
    derivatives: tuple[torch.Tensor, ...]
    held: tuple[tuple[str, float], ...] = ()  # the other tensors' fixed values


class PlotError(LossgenError):
    """A plot that cannot be drawn (matplotlib missing, unknown name in the settings)."""


def curves(
    model: LossModel, module: types.ModuleType, settings: PlotSettings = PlotSettings()
) -> Curves:
    """Loss and d loss / d (first tensor) over a sweep, through the generated Function."""
    from lossgen.verify import LossCase  # imports torch machinery only when plotting

    names = {argument.name for argument in model.arguments}
    unknown = set(settings.fixed) - names
    if settings.vary is not None and settings.vary[0] not in {
        p.name for p in model.params
    }:
        unknown.add(settings.vary[0])
    if unknown:
        raise PlotError(f"{model.name} has no argument {', '.join(sorted(unknown))}")
    domains = LossCase(model, module).domains
    function = getattr(module, f"{model.name}Function")
    swept = model.tensors[0]
    low, high = settings.x_range or RANGES[domains[swept.name]]
    x = torch.linspace(low, high, POINTS, dtype=torch.float64)
    if settings.vary is not None:
        varied, values = settings.vary
    else:
        varied, values = "", (0.0,)
    labels, losses, derivatives = [], [], []
    held: dict[str, float] = {}
    for value in values:
        arguments: list[torch.Tensor | float] = []
        for argument in model.arguments:
            if argument is swept:
                arguments.append(x.clone().requires_grad_())
            elif argument.name == varied:
                arguments.append(value)
            elif argument.name in settings.fixed:
                arguments.append(settings.fixed[argument.name])
            elif argument.is_tensor:
                fixed = (
                    LABEL_VALUE
                    if not argument.differentiable
                    else FIXED[domains[argument.name]]
                )
                arguments.append(fixed)
            else:
                arguments.append(
                    argument.default if argument.default is not None else 1.0
                )
            if argument.is_tensor and argument is not swept:
                held[argument.name] = float(arguments[-1])
        tensors = [
            a if isinstance(a, torch.Tensor) else torch.full_like(x, a)
            for a in arguments[: len(model.tensors)]
        ]
        with torch.enable_grad():
            loss = function.apply(*tensors, *arguments[len(model.tensors) :], "none")
            (derivative,) = torch.autograd.grad(loss.sum(), tensors[0])
        labels.append(f"{varied} = {value:g}" if varied else "")
        losses.append(loss.detach())
        derivatives.append(derivative)
    return Curves(
        swept.name,
        x,
        tuple(labels),
        tuple(losses),
        tuple(derivatives),
        tuple(held.items()),
    )


def draw(model: LossModel, data: Curves, path: PathLike, *, dpi: int = 100) -> Path:
    """Write the two panels to a PNG; no timestamp or version in it, so it can be committed."""
    try:
        import matplotlib
    except ImportError as error:
        raise PlotError(
            "lossgen plot needs matplotlib: pip install 'lossgen[plot]'"
        ) from error
    matplotlib.use("Agg")
    from matplotlib import pyplot

    with matplotlib.rc_context({"font.size": 9}):
        figure, (left, right) = pyplot.subplots(1, 2, figsize=(8, 3.2))
        x = data.x.numpy()
        for label, loss, derivative in zip(data.labels, data.losses, data.derivatives):
            left.plot(x, loss.numpy(), label=label or None)
            right.plot(x, derivative.numpy(), label=label or None)
        held = ", ".join(f"{name} = {value:g}" for name, value in data.held)
        title = f"{model.name}" + (f"  ({held})" if held else "")
        # Long lists of held values wrap instead of running into the next panel.
        left.set_title(textwrap.fill(title, width=50), fontsize="medium")
        right.set_title(f"d loss / d {data.x_name}")
        for axes in (left, right):
            axes.set_xlabel(data.x_name)
            axes.grid(True, alpha=0.3)
            axes.axhline(0.0, color="black", linewidth=0.5)
        if any(data.labels):
            left.legend(fontsize=8)
        figure.tight_layout()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=dpi, format="png", metadata={"Software": None})
        pyplot.close(figure)
    return target


def plot(
    spec_paths: Sequence[PathLike],
    out_dir: PathLike = ".",
    settings: Mapping[str, PlotSettings] | None = None,
    *,
    dpi: int = 100,
) -> list[Path]:
    """One `<snake_name>.png` per elementwise loss of the specs, in `out_dir`.

    Losses that reduce over dims are skipped (the CLI says which); PlotError if none is left.
    """
    from lossgen.verify import load_generated

    settings = settings or {}
    files = {f.name: f for f in generate(spec_paths)}
    written = []
    all_derived = derive_all(spec_paths)
    plottable = [d for d in all_derived if not d.model.reduces]
    if not plottable:
        names = ", ".join(d.model.name for d in all_derived)
        raise PlotError(
            f"{names}: a loss that reduces over dims has no curve over one element; "
            "lossgen plot draws elementwise losses"
        )
    for derived in plottable:
        model = derived.model
        module = load_generated(files[f"{model.snake_name}.py"])
        data = curves(model, module, settings.get(model.name, PlotSettings()))
        written.append(
            draw(model, data, Path(out_dir) / f"{model.snake_name}.png", dpi=dpi)
        )
    return written


def parse_settings(
    x_range: Sequence[float] | None, fixed: Sequence[str], vary: str | None
) -> PlotSettings:
    """Settings from the command line: --range LOW HIGH, --set NAME=VALUE, --vary NAME=V1,V2."""

    def split(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise PlotError(f"expected NAME=VALUE, got {text!r}")
        return name.strip(), value

    try:
        fixed_values = {name: float(value) for name, value in map(split, fixed)}
        varied = None
        if vary:
            name, values = split(vary)
            varied = (name, tuple(float(v) for v in values.split(",")))
    except ValueError as error:
        raise PlotError(f"not a number: {error}") from None
    return PlotSettings(
        tuple(x_range) if x_range else None, fixed_values, varied  # type: ignore[arg-type]
    )


def settings_for(
    models: Sequence[LossModel], settings: PlotSettings
) -> dict[str, PlotSettings]:
    """Command-line settings per loss: each loss takes the names it has; a name no loss has
    is an error (most likely a typo)."""
    per_loss, used = {}, set()
    for model in models:
        names = {argument.name for argument in model.arguments}
        params = {param.name for param in model.params}
        fixed = {k: v for k, v in settings.fixed.items() if k in names}
        vary = settings.vary if settings.vary and settings.vary[0] in params else None
        used |= set(fixed) | ({vary[0]} if vary else set())
        per_loss[model.name] = PlotSettings(settings.x_range, fixed, vary)
    unused = (
        set(settings.fixed) | ({settings.vary[0]} if settings.vary else set())
    ) - used
    if unused:
        raise PlotError(f"no loss has an argument {', '.join(sorted(unused))}")
    return per_loss
