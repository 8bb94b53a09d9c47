"""The fast path's Triton kernels on a real CUDA GPU, against the readable reference Function on
the same GPU, in float32 and float64, with "mean" and with "sum" and a grad_output that is not 1:
the elementwise kernels at random points (over a million elements, the last block partial), on
kinks, and at extreme magnitudes; the row kernels of losses over one dim (tests/test_row_triton.py
runs them interpreted) on rows of several blocks, with ignored rows and logits of +-1e4.

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

from conftest import ROOT, SPEC_ARGS, counted_launches, value_and_grads
from lossgen.api import load_models
from lossgen.model import LossModel
from lossgen.verify import MAGNITUDES, LossCase, Sample, switch_functions
from row_cases import MODELS as ROW_MODELS
from row_cases import ROW_LOSSES, arguments, kernel_gradients, module_of, reduced_dims

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
    """Loss name -> generated module name, for every elementwise loss's Triton kernel."""
    names = {}
    for path in sorted((ROOT / "generated").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"generated.{path.stem}")
        if hasattr(module, "TRITON_BLOCK"):
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


def sample_value_and_grads(
    call, sample: Sample, reduction: str, grad_output: float, keyword: bool
):
    return value_and_grads(
        call, sample.values, sample.grad_positions, reduction, grad_output, keyword
    )


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
    launches = counted_launches(module, monkeypatch)
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    calls = 0
    for label, sample in samples(case, dtype):
        for reduction, grad_output in (("mean", 1.0), ("sum", 2.5)):
            where = f"{name}, {label}, {reduction}"
            value, grads = sample_value_and_grads(
                functional, sample, reduction, grad_output, True
            )
            assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused"), where
            calls += 1
            want, want_grads = sample_value_and_grads(
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


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64], ids=str
)
def test_the_rescale_kernel_is_torchs_multiply_and_needs_no_sync(dtype) -> None:
    _, module, _ = loss_case("Huber")
    generator = torch.Generator(device="cuda").manual_seed(41)
    saved = torch.randn((1 << 22) + 5, device="cuda", generator=generator).to(dtype)
    for value in (1.0, 0.3, -2.0):
        grad_output = torch.tensor(value, device="cuda", dtype=dtype)
        grad = saved.clone()
        assert module._rescale_in_place([grad, None], grad_output, ())
        # bfloat16 too: the GPU rounds to nearest (the interpreter truncates)
        assert torch.equal(grad, saved * grad_output), value
    # Captured in a CUDA graph (which a host read of grad_output would break), then
    # replayed with grad_output 0.5 and then 1.
    grad = saved.clone()
    grad_output = torch.tensor(0.5, device="cuda", dtype=dtype)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        assert module._rescale_in_place([grad], grad_output, ())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(grad, saved * grad_output)
    grad.copy_(saved)
    grad_output.fill_(1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(grad, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ROW_LOSSES)
def test_row_kernel_matches_reference_on_gpu(
    name: str, dtype: torch.dtype, monkeypatch
) -> None:
    model = ROW_MODELS[name]
    module = module_of(model)
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "ROW_MIN", 0)
    monkeypatch.setattr(
        module, "ROW_BLOCK", 1024
    )  # 3001 elements: 3 blocks, the last partial
    launches = counted_launches(module, monkeypatch)
    row = 3001
    shape = (64, row) if 1 in reduced_dims(model) else (4, 16, row)
    values = [a.to("cuda") for a in arguments(model, dtype, seed=31, shape=shape)]
    for index, argument in enumerate(model.arguments):
        if argument.name == "target" and argument.index_of is not None:
            values[index].view(-1)[0] = -100  # ignored where ignore_index is a param
            values[index].view(-1)[1] = row - 1  # the last class, in the partial block
    extreme = [v.clone() for v in values]
    first = model.arguments.index(model.tensors[0])
    extreme[first].view(-1)[::7] = 1e4  # the online max moves between blocks
    extreme[first].view(-1)[3::11] = -1e4
    every = kernel_gradients(model)
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    calls = 0
    for label, sample_values in (("random", values), ("+-1e4", extreme)):
        sample = Sample(sample_values, every)
        exact = Sample(
            [v.double() if v.is_floating_point() else v for v in sample_values], every
        )
        for reduction, grad_output in (("mean", 1.0), ("sum", 2.5)):
            where = f"{name}, {label}, {reduction}"
            got = sample_value_and_grads(
                functional, sample, reduction, grad_output, True
            )
            assert type(got[0].grad_fn).__name__.startswith(
                f"_{model.name}Fused"
            ), where
            calls += 1
            want = sample_value_and_grads(
                function.apply, sample, reduction, grad_output, False
            )
            truth = sample_value_and_grads(
                function.apply, exact, reduction, grad_output, False
            )
            for index, (a, b, c) in enumerate(
                zip([got[0], *got[1]], [want[0], *want[1]], [truth[0], *truth[1]])
            ):
                # As close to float64's result as the reference Function in this dtype is
                # (+-1e4 logits cost float32 digits in both), or within TOLERANCE of it.
                own = relative_error(b, c.to(b.dtype))
                tolerance = max(TOLERANCE[dtype], 2 * own)
                assert_agree(a, c.to(a.dtype), tolerance, f"{where}, output {index}")
    assert len(launches) == calls  # every call ran the row kernel


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    finite = torch.isfinite(want)
    difference = torch.linalg.vector_norm((got - want).detach()[finite].double())
    scale = torch.linalg.vector_norm(want.detach()[finite].double())
    return float(difference / scale) if scale > 0 else float(difference > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_class_weights_take_the_compiled_path_on_gpu(dtype, monkeypatch) -> None:
    # One weight per class: the row kernel loads one value, so it declines, and the fused
    # path runs torch.compile of _fused on the GPU instead.
    module = module_of(ROW_MODELS["CrossEntropy"])
    launches = counted_launches(module, monkeypatch)
    generator = torch.Generator(device="cuda").manual_seed(41)
    logits = torch.randn(512, 2048, device="cuda", dtype=dtype, generator=generator)
    target = torch.randint(0, 2048, (512,), device="cuda", generator=generator)
    target[::9] = -100
    weight = torch.rand(2048, device="cuda", dtype=dtype, generator=generator) + 0.5
    ours = logits.clone().requires_grad_()
    value = module.cross_entropy(ours, target, weight, 0.1)
    value.backward()
    assert type(value.grad_fn).__name__.startswith("_CrossEntropyFused")
    assert launches == []
    theirs = logits.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(
        theirs, target, weight, label_smoothing=0.1
    )
    expected.backward()
    assert_agree(value, expected, TOLERANCE[dtype], "loss")
    assert_agree(ours.grad, theirs.grad, TOLERANCE[dtype], "gradient")
