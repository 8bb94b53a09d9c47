"""The losses over one dim that get a row kernel, and their arguments drawn for it: shared by
tests/test_row_triton.py (Triton's interpreter on CPU) and tests/test_triton_cuda.py (a GPU).
"""

from __future__ import annotations

import importlib
import inspect
import re
import types

import torch

from lossgen.api import load_models
from lossgen.model import LossModel
from lossgen.reductions import all_dims

MODELS = {model.name: model for model in load_models(["specs/reductions.py"])}
ROW = 37  # elements per row: with test_row_triton.ROW_BLOCK (16), three blocks, the last with 5


def module_of(model: LossModel) -> types.ModuleType:
    return importlib.import_module(f"generated.{model.snake_name}")


ROW_LOSSES = sorted(
    name for name, model in MODELS.items() if hasattr(module_of(model), "ROW_BLOCK")
)


def reduced_dims(model: LossModel) -> set[int]:
    return set(all_dims(model.expr))


def arguments(
    model: LossModel,
    dtype: torch.dtype,
    seed: int,
    shape: tuple[int, ...] | None = None,
) -> list[torch.Tensor]:
    """Every argument, drawn for the loss: class indices along its dim, probabilities where a
    soft target is, ±1 labels, positive distances, else logits; params at their defaults
    (label smoothing 0.1), as 0-dim tensors."""
    (dim,) = reduced_dims(model)
    if shape is None:
        shape = (5, ROW) if dim == 1 else (2, 3, ROW)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for argument in model.arguments:
        name = argument.name
        if argument.index_of is not None:
            value = torch.randint(0, shape[-1], shape[:-1], generator=generator)
        elif argument.is_param:
            default = 0.1 if name == "label_smoothing" else argument.default
            value = torch.tensor(default, dtype=dtype)
        else:
            value = torch.randn(shape, generator=generator, dtype=torch.float64) * 2
            if name == "target":  # probabilities along the row
                value = torch.softmax(value, -1)
            elif name == "y":
                value = torch.sign(value)
            elif name == "distances":
                value = value.abs()
            value = value.to(dtype)
        values.append(value)
    return values


def kernel_gradients(model: LossModel) -> list[int]:
    """The arguments whose gradient the row kernel computes: every differentiable one but
    those its launcher declines (a weighted mean's total loss; read from the generated code).
    """
    source = inspect.getsource(module_of(model)._run_triton)
    declined = re.search(
        r"if ([^:]*):\n\s*return None  # it needs the weighted", source
    )
    refused = (
        set(map(int, re.findall(r"\d+", declined.group(1)))) if declined else set()
    )
    return [
        i
        for i, a in enumerate(model.arguments)
        if a.differentiable and i not in refused
    ]
