"""The fast path's Triton kernels on a real CUDA GPU, against the readable reference Function on
the same GPU: at random points (over a million elements, the last block partial), on kinks,
and at extreme magnitudes, in float32 and float64, with "mean" and with "sum" and a
grad_output that is not 1.

CI has no GPU: there these tests skip, and tests/test_triton.py runs the same kernels under
Triton's interpreter. On a GPU machine run `python -m pytest tests/test_triton_cuda.py`
(`-n 8` with pytest-xdist compiles the kernels in parallel).
"""

from __future__ import annotations

import functools
import importlib
import types

import pytest
import torch

from conftest import ROOT, SPEC_ARGS
from lossgen.api import load_models
from lossgen.model import LossModel
from lossgen.verify import MAGNITUDES, LossCase, Sample, switch_functions

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run it on one)"
)

RANDOM_NUMEL = (1 << 20) + 37
# Largest norm-relative error of the kernel's loss and gradients against the reference
# Function: both compute the same expressions, but libdevice and torch's CUDA math functions
# round differently, and the loss is summed in another order; at huge magnitudes float64 results
# of exp and log differ by more than rounding, relatively.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def _generated_names() -> dict[str, str]:
    """Loss name -> generated module name, for every loss with a Triton kernel."""
    names = {}
    for path in sorted((ROOT / "generated").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"generated.{path.stem}")
        if hasattr(module, "_run_triton"):
            names[module.__all__[0]] = path.stem
    return names


TRITON_MODULES = _generated_names()


@functools.cache
def _models() -> dict[str, LossModel]:
    return {model.name: model for model in load_models(SPEC_ARGS)}


def loss_case(name: str) -> tuple[LossModel, types.ModuleType, LossCase]:
    model = _models()[name]
    module = importlib.import_module(f"generated.{TRITON_MODULES[name]}")
    return model, module, LossCase(model, module)


def on_gpu(sample: Sample, dtype: torch.dtype) -> Sample:
    values = [
        v.to("cuda", dtype) if isinstance(v, torch.Tensor) else v for v in sample.values
    ]
    return Sample(values, sample.grad_positions)


def samples(case: LossCase, dtype: torch.dtype) -> list[tuple[str, Sample]]:
    """Random points, points on each kink, and each magnitude of verify's extremes check."""
    model = case.model
    tensors = tuple((RANDOM_NUMEL,) for _ in model.tensors)
    found = [("random", case.sample((tensors, None), seed=3))]
    for switch in switch_functions(model.expr):
        found += [(f"on {switch} = 0", s) for s in case.samples_on(switch)]
    for label, scale in MAGNITUDES.items():
        sample = case.sample((tensors, None), seed=4)
        for index, argument in enumerate(model.arguments):
            if argument.is_tensor and case.domains[argument.name] in (
                "normal",
                "positive",
            ):
                value = sample.values[index]
                sample.values[index] = (
                    torch.sign(value) * scale
                    if label.startswith("logits")
                    else value * scale
                )
        found.append((label, sample))
    return [(label, on_gpu(sample, dtype)) for label, sample in found]


def value_and_grads(
    call, sample: Sample, reduction: str, grad_output: float, keyword: bool
):
    leaves = [
        (
            v.detach().clone().requires_grad_(i in sample.grad_positions)
            if isinstance(v, torch.Tensor)
            else v
        )
        for i, v in enumerate(sample.values)
    ]
    value = call(*leaves, reduction=reduction) if keyword else call(*leaves, reduction)
    wanted = [leaves[i] for i in sample.grad_positions]
    grads = torch.autograd.grad(value * grad_output, wanted)
    return value, grads


def assert_agree(
    got: torch.Tensor, want: torch.Tensor, tolerance: float, where: str
) -> None:
    """Where the reference is finite, the kernel is finite and close in norm."""
    assert got.shape == want.shape and got.dtype == want.dtype, where
    finite = torch.isfinite(want)
    assert bool(
        torch.isfinite(got[finite]).all()
    ), f"{where}: not finite where the reference is"
    difference = torch.linalg.vector_norm((got - want).detach()[finite].double())
    scale = torch.linalg.vector_norm(want.detach()[finite].double())
    assert (
        difference <= tolerance * scale
    ), f"{where}: relative error {float(difference / scale):.3g} > {tolerance:g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", sorted(TRITON_MODULES))
def test_kernel_matches_reference_on_gpu(
    name: str, dtype: torch.dtype, monkeypatch
) -> None:
    model, module, case = loss_case(name)
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)  # small kink samples too
    launches = []
    launch = module._launch_triton

    def counted(blocks, *args, **kwargs):
        launches.append(blocks)
        return launch(blocks, *args, **kwargs)

    monkeypatch.setattr(module, "_launch_triton", counted)
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    calls = 0
    for label, sample in samples(case, dtype):
        for reduction, grad_output in (("mean", 1.0), ("sum", 2.5)):
            where = f"{name}, {label}, {reduction}"
            value, grads = value_and_grads(
                functional, sample, reduction, grad_output, True
            )
            assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused"), where
            calls += 1
            want, want_grads = value_and_grads(
                function.apply, sample, reduction, grad_output, False
            )
            assert_agree(value, want, TOLERANCE[dtype], where)
            for got, expected in zip(grads, want_grads, strict=True):
                assert_agree(got, expected, TOLERANCE[dtype], where + ", gradient")
    assert len(launches) == calls  # every call ran the kernel (none fell back)


def test_grad_output_of_one_is_checked_on_the_gpu_only_where_it_pays() -> None:
    _, module, _ = loss_case("Huber")
    one = torch.ones((), device="cuda")
    large = [torch.empty(module.RESCALE_SYNC_MIN_NUMEL, device="cuda"), None]
    small = [torch.empty(module.RESCALE_SYNC_MIN_NUMEL - 1, device="cuda")]
    assert module._is_one(one, large)
    assert not module._is_one(2 * one, large)
    assert not module._is_one(one, small)  # the multiply is cheaper than the sync
    assert module._rescaled(large, one) is large  # the saved gradients, as they are
    # Reading the value back would break a CUDA graph's capture: multiply instead.
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        captured = module._is_one(one, large)
        rescaled = module._rescaled([large[0]], one)
    torch.cuda.synchronize()
    assert captured is False and rescaled[0] is not large[0]
