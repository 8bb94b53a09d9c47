"""The fused fast path of every generated loss against its readable reference Function.

The fast path (`_<Name>Fused`, computing loss and gradients in one pass during forward) is
forced on small inputs by lowering FUSED_MIN_NUMEL; its pure-torch body runs eagerly
(COMPILE = False) for every loss, and through torch.compile for one loss.
"""

from __future__ import annotations

import functools
import importlib
import math
import shutil
import sys
import types
import warnings
from collections.abc import Callable

import pytest
import torch

from conftest import repository_derived, repository_files
from lossgen.api import generate
from lossgen.model import LossModel
from lossgen.verify import LossCase, class_indices, draw, load_generated, param_value


@functools.cache
def modules() -> dict[str, tuple[LossModel, types.ModuleType]]:
    files = {f.name: f for f in repository_files()}
    loaded = {
        d.model.name: (d.model, load_generated(files[f"{d.model.snake_name}.py"]))
        for d in repository_derived()
    }
    for _, module in loaded.values():
        # importable by name, as an imported file is: torch.compile in torch 2.5 imports the
        # module of a function it compiles
        sys.modules.setdefault(module.__name__, module)
    return loaded


# Losses with class indices or a weighted mean have no fast path (see the README).
LOSS_NAMES = [
    name for name, (_, module) in modules().items() if hasattr(module, "FUSED")
]


@pytest.fixture
def fused_module(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    model, module = modules()[request.param]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "COMPILE", False)
    return model, module


def arguments(
    model: LossModel, module: types.ModuleType, n: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """Every tensor and param (params as 0-dim tensors), all requiring grad if differentiable."""
    case = LossCase(model, module)
    generator = torch.Generator().manual_seed(seed)
    # as many dims as the loss reduces over, each of them 3 long
    shape = (
        (n,) + (3,) * (len(case.shape_cases[0][0][0]) - 1) if model.reduces else (n,)
    )
    values = []
    for argument in model.arguments:
        if argument.index_of is not None:
            value = class_indices(torch.Size(shape), argument.index_of, generator)
        elif argument.is_tensor:
            value = draw(case.domains[argument.name], shape, generator, dtype, False)
        else:
            value = torch.tensor(param_value(argument, generator), dtype=dtype)
        values.append(value.requires_grad_(argument.differentiable))
    return values


def run(module, model, args, reduction, create_graph=False, grad_scale=1.0):
    functional = getattr(module, model.snake_name)
    leaves = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    value = functional(*leaves, reduction=reduction)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    grads = torch.autograd.grad(value * grad_scale, wanted, create_graph=create_graph)
    return value, grads, leaves


def reference(module, model, args, reduction, create_graph=False, grad_scale=1.0):
    function = getattr(module, f"{model.name}Function")
    leaves = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    value = function.apply(*leaves, reduction)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    grads = torch.autograd.grad(value * grad_scale, wanted, create_graph=create_graph)
    return value, grads, leaves


@pytest.mark.parametrize("fused_module", LOSS_NAMES, indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("grad_scale", [1.0, 2.5])
def test_fused_matches_reference(
    fused_module, reduction: str, grad_scale: float
) -> None:
    model, module = fused_module
    args = arguments(model, module, 257, torch.float64, seed=3)
    value, grads, _ = run(module, model, args, reduction, grad_scale=grad_scale)
    assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused")
    expected, expected_grads, _ = reference(
        module, model, args, reduction, grad_scale=grad_scale
    )
    assert type(expected.grad_fn).__name__.startswith(f"{model.name}Function")
    torch.testing.assert_close(value, expected)
    assert len(grads) == len(expected_grads) > 0
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fused_module", LOSS_NAMES, indirect=True)
def test_fused_double_backward_matches_reference(fused_module) -> None:
    # With create_graph=True the fused backward hands over to the symbolic, differentiable one.
    model, module = fused_module
    args = arguments(model, module, 33, torch.float64, seed=4)
    second = []
    for call in (run, reference):
        value, grads, leaves = call(module, model, args, "mean", create_graph=True)
        total = sum(g.sum() for g in grads)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        if not total.requires_grad:
            # A piecewise-constant gradient (Min over a dim, as in Chamfer) has no graph:
            # its second derivative is zero, for the reference as for ours.
            second.append((None,) * len(wanted))
            continue
        second.append(torch.autograd.grad(total, wanted, allow_unused=True))
    for got, want in zip(*second):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want)


# Tensors of different shapes that broadcast together (loss name -> each value tensor's shape):
# (N, 1) pair labels against (N, D) embeddings, one soft label row shared by every row (its
# gradient summed over the rows), both arguments of an elementwise loss broadcast.
BROADCAST_CASES = {
    "CosineEmbedding": {"input1": (40, 3), "input2": (40, 3), "y": (40, 1)},
    "SoftCrossEntropy": {"input": (40, 3), "target": (1, 3)},
    "MSE": {"input": (40, 1), "target": (1, 5)},
    "Huber": {"input": (40,), "target": (1,)},
}


@pytest.mark.parametrize("fused_module", list(BROADCAST_CASES), indirect=True)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("grad_scale", [1.0, 2.5])
def test_broadcast_tensors_take_the_fast_path(
    fused_module, reduction: str, grad_scale: float
) -> None:
    model, module = fused_module
    case = LossCase(model, module)
    shapes = BROADCAST_CASES[model.name]
    generator = torch.Generator().manual_seed(9)
    args = []
    for argument in model.arguments:
        if argument.is_tensor:
            domain = case.domains[argument.name]
            value = draw(domain, shapes[argument.name], generator, torch.float64, False)
        else:
            value = torch.tensor(param_value(argument, generator), dtype=torch.float64)
        args.append(value.requires_grad_(argument.differentiable))
    assert len({a.shape for a in args if a.dim() > 0}) > 1  # the shapes do differ
    value, grads, leaves = run(module, model, args, reduction, grad_scale=grad_scale)
    assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused")
    expected, expected_grads, _ = reference(
        module, model, args, reduction, grad_scale=grad_scale
    )
    torch.testing.assert_close(value, expected)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    assert len(grads) == len(expected_grads) > 0
    for got, want, leaf in zip(grads, expected_grads, wanted):
        assert got.shape == leaf.shape  # summed back to the broadcast tensor's shape
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fused_module", ["Huber"], indirect=True)
def test_reference_path_is_taken_where_fusing_does_not_apply(fused_module) -> None:
    model, module = fused_module
    input, target, delta = arguments(model, module, 16, torch.float64, seed=5)

    def function_of(*args, **kwargs) -> str:
        return type(module.huber(*args, **kwargs).grad_fn).__name__

    assert function_of(input, target).startswith("_HuberFused")
    assert function_of(input, target, reduction="none").startswith("HuberFunction")
    assert function_of(input, target[:1]).startswith("_HuberFused")  # broadcast
    with pytest.raises(RuntimeError, match="must match the size"):  # not broadcastable
        module.huber(input, target[:3])
    assert function_of(input, target.float()).startswith("HuberFunction")  # mixed dtype
    assert function_of(input, target, delta.expand(16)).startswith("HuberFunction")
    module.FUSED = False
    try:
        assert function_of(input, target).startswith("HuberFunction")
    finally:
        module.FUSED = True
    with pytest.raises(ValueError, match="not a valid value"):
        module.huber(input, target, reduction="avg")
    # Under torch.func the reference Function (with its vmap rule) is used and agrees.
    batched = torch.func.vmap(lambda x, y: module.huber(x, y))(
        input.detach().reshape(4, 4), target.detach().reshape(4, 4)
    )
    rows = [
        module.HuberFunction.apply(x, y, 1.0, "mean")
        for x, y in zip(input.detach().reshape(4, 4), target.detach().reshape(4, 4))
    ]
    torch.testing.assert_close(batched, torch.stack(rows))


def test_module_uses_the_fast_path_and_learns_its_param(monkeypatch) -> None:
    model, module = modules()["UncertaintyWeightedMSE"]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "COMPILE", False)
    input, target, _ = arguments(model, module, 100, torch.float32, seed=6)
    loss_module = module.UncertaintyWeightedMSE(0.3)
    value = loss_module(input, target)
    assert type(value.grad_fn).__name__.startswith("_UncertaintyWeightedMSEFused")
    value.backward()
    log_variance = torch.tensor(0.3, requires_grad=True)
    x = input.detach().requires_grad_()
    module.UncertaintyWeightedMSEFunction.apply(
        x, target, log_variance, "mean"
    ).backward()
    torch.testing.assert_close(loss_module.log_variance.grad, log_variance.grad)
    torch.testing.assert_close(input.grad, x.grad)


def test_compiled_fast_path_matches_reference() -> None:
    # The default configuration: torch.compile of the fused body, on first use.
    model, module = modules()["Huber"]
    n = module.FUSED_MIN_NUMEL
    generator = torch.Generator().manual_seed(7)
    input = (torch.randn(n, generator=generator) * 2).requires_grad_()
    target = torch.randn(n, generator=generator)
    value = module.huber(input, target)
    value.backward()
    x = input.detach().requires_grad_()
    expected = module.HuberFunction.apply(x, target, 1.0, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(input.grad, x.grad)
    compiled = module._compiled_fused
    if shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"):
        assert compiled is not module._fused  # compiling worked: not the fallback
    else:
        assert compiled is module._fused  # no compiler: fell back to plain torch


def test_compiled_fast_path_follows_changing_shapes(monkeypatch) -> None:
    # Compiled for the first shape's sizes, recompiled when the batch and then the class
    # count change: each call must still agree with the reference Function.
    model, module = modules()["ChannelsLastCrossEntropy"]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(10)
    for shape in [(6, 4, 9), (3, 4, 9), (3, 4, 5)]:
        input = torch.randn(shape, generator=generator, dtype=torch.float64)
        target = class_indices(torch.Size(shape), -1, generator)
        x = input.clone().requires_grad_()
        value = module.channels_last_cross_entropy(x, target, reduction="sum")
        assert type(value.grad_fn).__name__.startswith("_ChannelsLastCrossEntropyFused")
        value.backward()
        y = input.clone().requires_grad_()
        expected = module.ChannelsLastCrossEntropyFunction.apply(y, target, "sum")
        expected.backward()
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(x.grad, y.grad)
    if shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"):
        assert module._compiled_fused is not module._fused  # compiled, not the fallback


def test_a_callers_shape_error_leaves_compiling_on(monkeypatch) -> None:
    # Class indices are not checked before the fast path: their shape error raises inside the
    # compiled code; it must reach the caller without turning torch.compile off for good.
    model, module = modules()["NLL"]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(11)
    input = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    x = input.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="broadcast"):
        module.nll(x, torch.randint(0, 5, (7,), generator=generator))
    if shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"):
        assert module._compiled_fused is not module._fused  # still compiled
    target = torch.randint(0, 5, (8,), generator=generator)
    value = module.nll(x, target)
    value.backward()
    y = input.clone().requires_grad_()
    expected = module.NLLFunction.apply(y, target, 1.0, -100.0, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)


def test_a_failing_compile_runs_uncompiled_and_says_so(monkeypatch) -> None:
    # No compiler for the device, or a graph break under fullgraph=True: the fused body runs
    # as plain torch from then on, several times slower, so the user is told, once.
    model, module = modules()["Huber"]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)

    def broken(function, **options):
        def call(*args):
            raise RuntimeError("no C++ compiler found\n(the rest of a long message)")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    input, target, _ = arguments(model, module, 64, torch.float64, seed=12)
    x = input.clone().requires_grad_()
    with pytest.warns(
        RuntimeWarning, match="Huber: torch.compile of the fused path"
    ) as seen:
        value = module.huber(x, target)
    assert str(seen[0].message).endswith("RuntimeError: no C++ compiler found")
    assert module._compiled_fused is module._fused
    value.backward()
    y = input.clone().requires_grad_()
    expected = module.HuberFunction.apply(y, target, 1.0, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.huber(x, target)  # once only


def test_torch_compile_of_a_caller_traces_the_reference_function(monkeypatch) -> None:
    # Dynamo imports the module it traces, so this uses the committed generated/huber.py.
    module = importlib.import_module("generated.huber")
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    model, _ = modules()["Huber"]
    input, target, _ = arguments(model, module, 64, torch.float32, seed=8)
    taken = []

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        taken.append(module._use_fused([x, y], [1.0], "mean"))
        return module.huber(x, y)

    compiled = torch.compile(loss_of, backend="aot_eager", fullgraph=True)
    x = input.detach().requires_grad_()
    value = compiled(x, target)
    value.backward()
    assert taken == [False]  # traced once, through the reference Function
    y = input.detach().requires_grad_()
    expected = module.HuberFunction.apply(y, target, 1.0, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str
)
def test_written_out_xlogy_is_torch_xlogy(dtype: torch.dtype, monkeypatch) -> None:
    # The fused body calls _xlogy, written out (vectorized by Inductor) where torch.compile
    # traces it: every special case must agree with torch.xlogy, NaNs included.
    _, module = modules()["CategoricalKLDiv"]
    assert "_xlogy" in module._fused.__code__.co_names  # what the fused body calls
    special = torch.tensor(
        [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, math.inf, -math.inf, math.nan], dtype=dtype
    )
    x, y = special.reshape(-1, 1), special
    want = torch.xlogy(x, y)
    graphs = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph.code)
        return graph.forward

    traced = torch.compile(module._xlogy, backend=backend, fullgraph=True)(x, y)
    assert len(graphs) == 1 and "xlogy" not in graphs[0]  # written out when compiled
    monkeypatch.setattr(module, "_is_compiling", lambda: True)  # the same code, eagerly
    for got in (traced, module._xlogy(x, y)):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)


LINEAR_SPEC = """
from lossgen import Loss, Param, Tensor

input = Tensor("input")
mask = Tensor("mask", differentiable=False)
w = Param("w", default=2.0)
linear = Loss("Linear", 3 * input + w, reduction="sum")
masked = Loss("Masked", mask * (input - w) ** 2)
"""


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_constant_gradients_and_frozen_tensors_on_the_fast_path(
    tmp_path, reduction
) -> None:
    # Constant derivatives (d/dinput = 3, d/dw = 1) must still be summed over the loss's shape.
    spec = tmp_path / "linear_spec.py"
    spec.write_text(LINEAR_SPEC)
    files = {f.name: f for f in generate([spec])}
    linear = load_generated(files["linear.py"])
    masked = load_generated(files["masked.py"])
    for module in (linear, masked):
        module.FUSED_MIN_NUMEL = 0
        module.COMPILE = False
    x = torch.randn(10, requires_grad=True)
    w = torch.tensor(0.5, requires_grad=True)
    value = linear.linear(x, w, reduction=reduction)
    assert type(value.grad_fn).__name__.startswith("_LinearFused")
    value.backward()
    per_element = 1 / 10 if reduction == "mean" else 1.0
    torch.testing.assert_close(x.grad, torch.full((10,), 3 * per_element))
    torch.testing.assert_close(w.grad, torch.tensor(10 * per_element))
    mask = (torch.arange(10) % 2).float().requires_grad_()
    value = masked.masked(x, mask, reduction=reduction)
    assert type(value.grad_fn).__name__.startswith("_MaskedFused")
    with pytest.raises(RuntimeError, match="differentiable=False"):
        value.backward()
