"""The Python API under the CLI: generate, build, show (check lives in lossgen.verify)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from lossgen.derive import DerivedLoss, derive
from lossgen.emit import GeneratedFile, header, write_if_changed
from lossgen.errors import SpecError
from lossgen.format import format_source
from lossgen.model import LossModel, build_model
from lossgen.reductions import dims_text
from lossgen.render import render_loss, render_package
from lossgen.spec import load_spec

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    files: tuple[GeneratedFile, ...]
    written: tuple[str, ...]

    @property
    def unchanged(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files if f.name not in self.written)


def load_models(spec_paths: Sequence[PathLike]) -> list[LossModel]:
    """Load and validate every loss of every spec, in order; names must be unique overall."""
    models: list[LossModel] = []
    for path in spec_paths:
        spec = load_spec(path)
        models.extend(build_model(loss, spec.display_path) for loss in spec.losses)
    # Every name a loss puts into generated/__init__.py must be unique across all specs.
    seen: dict[str, LossModel] = {}
    for model in models:
        for key in (model.name, f"{model.name}Function", model.snake_name):
            if key in seen and seen[key] is not model:
                raise SpecError(
                    f"name clashes with loss {seen[key].name!r} of {seen[key].location}",
                    location=model.location,
                    loss=model.name,
                )
            seen[key] = model
    return models


def derive_all(spec_paths: Sequence[PathLike]) -> list[DerivedLoss]:
    return [derive(model) for model in load_models(spec_paths)]


def generate(
    spec_paths: Sequence[PathLike], jobs: int | None = None
) -> tuple[GeneratedFile, ...]:
    """Every output file for these specs, in memory: one module per loss and __init__.py.

    Losses are derived, rendered and formatted in `jobs` processes (default: one per CPU
    this process may use); each file is the same as a serial build's, in the same order.
    """
    if not spec_paths:
        raise SpecError("no spec files given")
    models = load_models(spec_paths)
    files = _map_losses(_model_file, models, jobs)
    return (*files, _package_file(models))


def generate_derived(derived: Sequence[DerivedLoss]) -> tuple[GeneratedFile, ...]:
    """generate() for losses already derived (lossgen check derives once for both uses)."""
    files = [_loss_file(loss) for loss in derived]
    return (*files, _package_file([loss.model for loss in derived]))


def _loss_file(loss: DerivedLoss) -> GeneratedFile:
    model = loss.model
    source = header([model.spec_path]) + render_loss(loss)
    origin = f"{model.location}: loss {model.name!r}"
    return GeneratedFile(f"{model.snake_name}.py", format_source(source, origin=origin))


def _model_file(model: LossModel) -> GeneratedFile:
    return _loss_file(derive(model))


def _package_file(models: Sequence[LossModel]) -> GeneratedFile:
    spec_names = list(dict.fromkeys(model.spec_path for model in models))
    package = header(spec_names) + render_package(
        [(model.snake_name, model.name) for model in models]
    )
    return GeneratedFile("__init__.py", format_source(package, origin="__init__.py"))


# What forked workers of _map_losses read: the parent's models, inherited by fork, so that
# SymPy expressions never cross a process boundary (only the files' text comes back).
_worker_models: Sequence[LossModel] = ()
_worker_task = None


def _in_worker(index: int) -> GeneratedFile:
    return _worker_task(_worker_models[index])


def _map_losses(task, models: Sequence[LossModel], jobs: int | None) -> list:
    """[task(model) for model in models], in forked processes where that can help."""
    global _worker_models, _worker_task
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    jobs = min(jobs, len(models))
    if jobs < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [task(model) for model in models]
    _worker_models, _worker_task = models, task
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            return list(pool.map(_in_worker, range(len(models))))
    finally:
        _worker_models, _worker_task = (), None


def build(
    spec_paths: Sequence[PathLike],
    out_dir: PathLike = "generated",
    jobs: int | None = None,
) -> BuildResult:
    """Generate and write the files that changed. Nothing is written unless everything built."""
    files = generate(spec_paths, jobs)
    target = Path(out_dir)
    written = write_if_changed(target, files)
    return BuildResult(target, files, tuple(written))


def show(spec_paths: Sequence[PathLike]) -> str:
    """A readable account of each loss: arguments, formula and derivatives."""
    blocks = []
    for loss in derive_all(spec_paths):
        model = loss.model
        lines = [f"{model.name}  ({model.location}, reduction={model.reduction!r})"]
        for argument in model.arguments:
            kind = "tensor" if argument.is_tensor else "param"
            notes = []
            if argument.default is not None:
                notes.append(f"default {argument.default!r}")
            if argument.learnable:
                notes.append("learnable")
            if argument.index_of is not None:
                notes.append(f"class indices into dim {argument.index_of}")
            elif not argument.differentiable:
                notes.append("not differentiable")
            if argument.along is not None:
                notes.append(f"a 1-D value lies along dim {argument.along}")
            extra = f" ({', '.join(notes)})" if notes else ""
            lines.append(f"  {kind} {argument.name}{extra}")
        lines.append("  loss =")
        lines.append(_indent(sp.pretty(loss.loss, use_unicode=True), 4))
        if loss.mean_weight is not None:
            lines.append("  mean weighted by =")
            lines.append(_indent(sp.pretty(loss.mean_weight, use_unicode=True), 4))
        if model.reduces:
            dropped = dims_text(model.dropped)
            lines.append(f'  reduction="none" drops dims: {dropped}')
        for gradient in loss.gradients:
            lines.append(f"  d loss / d {gradient.argument.name} =")
            lines.append(_indent(sp.pretty(gradient.derivative, use_unicode=True), 4))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _indent(text: str, width: int) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())
