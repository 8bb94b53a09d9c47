"""The fast path's Triton kernels: every elementwise shipped loss's kernel run by Triton's
interpreter on CPU (TRITON_INTERPRET=1) against the readable reference Function, the kernels
compiled ahead of time for a CUDA GPU (no GPU needed), and the generated files without triton.

triton is a test dependency (the `test` extra): these tests fail, not skip, without it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import math
import sys
import types

import pytest
import sympy as sp
import torch
import triton
from cuda_compile import compile_for_cuda

from conftest import ROOT, repository_derived, repository_files, value_and_grads
from lossgen.api import generate
from lossgen.functions import sigmoid
from lossgen.model import LossModel
from lossgen.printer import UnsupportedExpressionError
from lossgen.reductions import Sum
from lossgen.triton_printer import print_triton
from lossgen.verify import LossCase, draw, load_generated, param_value

pytestmark = [
    # A kernel that fails falls back to torch with a RuntimeWarning: fail the test instead.
    pytest.mark.filterwarnings(
        "error:.*the Triton (rescale )?kernel failed:RuntimeWarning"
    ),
    # numpy, running the interpreter, warns of what the lanes past the end compute (the
    # kernel masks them out).
    pytest.mark.filterwarnings(
        "ignore:(invalid value|divide by zero|overflow) encountered"
    ),
]


@functools.cache
def modules() -> dict[str, tuple[LossModel, types.ModuleType]]:
    """The committed generated files (triton reads a kernel's source from its file)."""
    return {
        d.model.name: (
            d.model,
            importlib.import_module(f"generated.{d.model.snake_name}"),
        )
        for d in repository_derived()
    }


# the elementwise kernels (the row kernels of losses over a dim: tests/test_row_triton.py)
TRITON_LOSSES = sorted(
    name for name, (_, module) in modules().items() if hasattr(module, "TRITON_BLOCK")
)


def arguments(
    model: LossModel, module: types.ModuleType, n: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """Every tensor and param (params as 0-dim tensors), drawn from the loss's domain."""
    case = LossCase(model, module)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for argument in model.arguments:
        if argument.is_tensor:
            value = draw(case.domains[argument.name], (n,), generator, dtype, False)
        else:
            value = torch.tensor(param_value(argument, generator), dtype=dtype)
        values.append(value)
    return values


@pytest.fixture
def interpreted(interpreted_kernel):
    """interpreted_kernel with several programs per loss, the last partial."""
    return functools.partial(interpreted_kernel, TRITON_BLOCK=128)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", TRITON_LOSSES)
def test_triton_kernel_matches_reference(
    name: str, dtype: torch.dtype, interpreted
) -> None:
    model, module = modules()[name]
    launches = interpreted(module)
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    args = arguments(model, module, 300, dtype, seed=11)
    every = [i for i, a in enumerate(model.arguments) if a.differentiable]
    first = [model.arguments.index(model.tensors[0])]
    # every gradient with "mean"; only the first tensor's (no other pointer) with "sum",
    # where grad_output 2.5 makes backward rescale the saved gradient
    for wanted, reduction, grad_scale in ((every, "mean", 1.0), (first, "sum", 2.5)):
        value, grads = value_and_grads(functional, args, wanted, reduction, grad_scale)
        assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused")
        expected, expected_grads = value_and_grads(
            function.apply, args, wanted, reduction, grad_scale, keyword=False
        )
        assert value.dtype == expected.dtype == dtype
        torch.testing.assert_close(value, expected)
        for got, want in zip(grads, expected_grads, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
    assert launches == [3, 3]  # the kernel ran, over 300 / 128 programs, each time


def test_half_precision_is_computed_in_float32(interpreted) -> None:
    # float16, not bfloat16: the interpreter rounds float32 to bfloat16 by truncating
    model, module = modules()["Huber"]
    launches = interpreted(module)
    args = arguments(model, module, 300, torch.float64, seed=12)
    half = [a.to(torch.float16) for a in args]
    value, (grad,) = value_and_grads(module.huber, half, [0], "mean", 1.0)
    assert launches == [3]
    assert value.dtype == grad.dtype == torch.float16
    # the float32 result of the same float16 inputs, rounded once (the loss summed in
    # another order)
    exact = [a.to(torch.float32) for a in half]
    expected, (expected_grad,) = value_and_grads(
        module.HuberFunction.apply, exact, [0], "mean", 1.0, keyword=False
    )
    torch.testing.assert_close(value, expected.to(torch.float16))
    torch.testing.assert_close(grad, expected_grad.to(torch.float16), rtol=0, atol=0)


def counted_tensors_made(module, monkeypatch) -> list[object]:
    """The values the module's _as_tensor makes a tensor of, as it runs."""
    made: list[object] = []
    as_tensor = module._as_tensor

    def counted(value, like):
        if not isinstance(value, torch.Tensor):
            made.append(value)
        return as_tensor(value, like)

    monkeypatch.setattr(module, "_as_tensor", counted)
    return made


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str
)
def test_a_number_param_reaches_the_kernel_as_its_tensor_would(
    dtype: torch.dtype, interpreted, monkeypatch
) -> None:
    # A float param goes to the kernel as a number, with no tensor filled per step (on
    # CUDA, a launch), rounded to the inputs' dtype as torch.full rounds it: the loss and
    # gradients are those of the same param as a 0-d tensor, bit for bit. float64 inputs
    # take the tensor (float32 would not carry the number), as do numbers beyond float32.
    model, module = modules()["Huber"]
    launches = interpreted(module)
    made = counted_tensors_made(module, monkeypatch)
    args = arguments(model, module, 300, torch.float64, seed=19)
    tensors = [a.to(dtype) for a in args[:2]]
    deltas = (0.1, 1 / 3, 0.7)  # each rounded differently in each dtype
    for delta in deltas:
        value, grads = value_and_grads(
            module.huber, [*tensors, delta], [0, 1], "mean", 1
        )
        as_tensor = torch.full((), delta, dtype=dtype)
        want, want_grads = value_and_grads(
            module.huber, [*tensors, as_tensor], [0, 1], "mean", 1
        )
        assert torch.equal(value, want)
        for got, expected in zip(grads, want_grads, strict=True):
            assert torch.equal(got, expected)
    assert launches == [3] * 6
    assert made == (list(deltas) if dtype == torch.float64 else [])
    beyond = 1e39  # past float32's largest: torch.full raises, or rounds to inf
    if dtype == torch.float32:
        with pytest.raises(RuntimeError, match="overflow"):
            module.huber(*tensors, beyond)
    else:
        value = module.huber(*tensors, beyond)
        assert torch.equal(
            value, module.huber(*tensors, torch.full((), beyond, dtype=dtype))
        )
    assert made[-1] == beyond


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_numbers_are_rounded_to_half_precision_as_torch_full_rounds_them(
    dtype: torch.dtype,
) -> None:
    # _rounded: float32 first, then to nearest with ties to even; beyond the largest, the
    # param is torch.full's tensor. The ties below are exact float32 values halfway between
    # float16 or bfloat16 neighbours.
    _, module = modules()["Huber"]
    generator = torch.Generator().manual_seed(23)
    scales = 2.0 ** torch.randint(-140, 120, (3000,), generator=generator)
    values = (
        torch.randn(3000, generator=generator, dtype=torch.float64) * scales
    ).tolist()
    ties = [1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11, 1 + 3 * 2**-11, 3 * 2**-25]
    ties += [2**-133 * 3, 65504.0 + 16, 65519.99, 65520.0, 3.3e38, 5e-45, 0.0]
    like = torch.empty(0, dtype=dtype)
    for value in values + ties + [-v for v in ties]:
        try:
            want = torch.full((), value, dtype=dtype).item()
        except RuntimeError:
            # beyond the dtype's range, before torch 2.8: so do the kernels
            with pytest.raises(RuntimeError):
                module._kernel_param(value, like)
            continue
        pointer, number = module._kernel_param(value, like)
        # a number within the dtype's range, else torch.full's own tensor
        assert (number is None) == (abs(value) > torch.finfo(dtype).max), value
        got = pointer.item() if number is None else number
        assert got == want and math.copysign(1, got) == math.copysign(1, want), value


def test_a_number_param_is_a_tensor_again_for_a_recompute(
    interpreted, monkeypatch
) -> None:
    # The fused Function keeps a number param on ctx (it saves no tensor for it); backward's
    # recompute, in double backward or a second backward after a rescale in place, makes it
    # the reference's tensor again.
    model, module = modules()["Huber"]
    interpreted(module)
    made = counted_tensors_made(module, monkeypatch)
    input, target, _ = arguments(model, module, 300, torch.float32, seed=24)
    input.requires_grad_()
    loss = module.huber(input, target, 0.5, reduction="sum")
    assert type(loss.grad_fn).__name__.startswith("_HuberFused") and made == []
    reference = module.HuberFunction.apply(input, target, 0.5, "sum")
    made.clear()  # the reference's own
    for grad_output in (2.0, 3.0):  # the second: after the first's rescale in place
        (got,) = torch.autograd.grad(
            loss, input, torch.tensor(grad_output), retain_graph=True
        )
        (want,) = torch.autograd.grad(reference * grad_output, input, retain_graph=True)
        torch.testing.assert_close(got, want)
    assert made == [0.5]  # the second backward's recompute
    loss = module.huber(input, target, 0.5, reduction="sum")
    (grad,) = torch.autograd.grad(loss, input, create_graph=True)
    assert made == [0.5, 0.5]  # double backward's
    (second,) = torch.autograd.grad(grad.square().sum(), input)
    (want,) = torch.autograd.grad(reference, input, create_graph=True)
    (want_second,) = torch.autograd.grad(want.square().sum(), input)
    torch.testing.assert_close(grad, want)
    torch.testing.assert_close(second, want_second)


def counted_rescales(module, monkeypatch) -> list[float]:
    """grad_output of each rescale kernel launch, recorded as it runs; a host read of it
    (`_is_one`, a sync on CUDA) fails the test."""
    rescales: list[float] = []
    rescale = module._rescale_in_place

    def counted(grads, grad_output, inputs):
        done = rescale(grads, grad_output, inputs)
        if done:
            rescales.append(float(grad_output))  # after the kernel: the test may sync
        return done

    def no_sync(*args):
        raise AssertionError("grad_output read back by the host")

    monkeypatch.setattr(module, "_rescale_in_place", counted)
    monkeypatch.setattr(module, "_is_one", no_sync)
    return rescales


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.float32, torch.float64], ids=str
)
def test_backward_rescales_on_the_device_without_asking_the_host(
    dtype: torch.dtype, interpreted, monkeypatch
) -> None:
    model, module = modules()["Huber"]
    launches = interpreted(module, RESCALE_BLOCK=64, RESCALE_PROGRAMS=3)
    rescales = counted_rescales(module, monkeypatch)
    input, target, delta = arguments(model, module, 1000, dtype, seed=15)
    # every gradient, delta's a 0-dim one; 1000 elements: 3 programs loop over 6 blocks
    leaves = [a.clone().requires_grad_() for a in (input, target, delta)]
    unscaled = torch.autograd.grad(module.huber(*leaves, reduction="sum"), leaves)
    for grad_output in (0.3, -2.0, float("inf")):
        upstream = torch.tensor(grad_output, dtype=dtype)
        grads = torch.autograd.grad(
            module.huber(*leaves, reduction="sum"), leaves, upstream
        )
        for got, saved in zip(grads, unscaled, strict=True):
            # exactly torch's multiply of the saved gradient by grad_output
            torch.testing.assert_close(
                got, saved * upstream, rtol=0, atol=0, equal_nan=True
            )
    assert launches == [8, 8, 8, 8]
    assert rescales == [
        float(torch.tensor(g, dtype=dtype)) for g in (1.0, 0.3, -2.0, float("inf"))
    ]
    # a grad_output of 1 leaves the saved gradients as they were (the kernel returns at once)
    saved = torch.autograd.grad(module.huber(*leaves, reduction="sum"), leaves)
    torch.testing.assert_close(saved, unscaled, rtol=0, atol=0)


def test_the_rescale_kernel_leaves_shared_memory_alone(interpreted) -> None:
    # torch.compile may return an input as a gradient (x * 1), or one buffer for two equal
    # gradients: multiplying those in place would change the input or scale twice.
    model, module = modules()["Huber"]
    interpreted(module)
    grad_output = torch.tensor(2.0, dtype=torch.float64)
    input, target, _ = arguments(model, module, 300, torch.float64, seed=18)
    before = input.clone()
    assert not module._rescale_in_place([input], grad_output, [input, target])
    shared = target.clone()
    assert not module._rescale_in_place([shared, shared.view(-1)], grad_output, [input])
    assert torch.equal(input, before) and torch.equal(shared, target)
    own = target.clone()
    assert module._rescale_in_place([own, None], grad_output, [input, target])
    assert torch.equal(own, target * 2)


def test_a_second_backward_after_a_rescale_recomputes(interpreted) -> None:
    model, module = modules()["Huber"]
    interpreted(module)
    input, target, _ = arguments(model, module, 300, torch.float64, seed=16)
    input.requires_grad_()
    loss = module.huber(input, target, reduction="sum")
    assert type(loss.grad_fn).__name__.startswith("_HuberFused")
    reference = module.HuberFunction.apply(input, target, 1.0, "sum")
    # retain_graph: the same saved gradients asked for twice, with another grad_output; the
    # first call rescaled them in place, so the second takes the reference backward
    for grad_output in (2.0, 3.0):
        (got,) = torch.autograd.grad(
            loss,
            input,
            torch.tensor(grad_output, dtype=torch.float64),
            retain_graph=True,
        )
        (want,) = torch.autograd.grad(reference * grad_output, input, retain_graph=True)
        torch.testing.assert_close(got, want)


def test_a_failing_rescale_kernel_falls_back_to_a_multiply(
    interpreted, monkeypatch
) -> None:
    model, module = modules()["Huber"]
    interpreted(module)

    @triton.jit
    def broken(grad_ptr):
        raise ValueError("no such GPU")

    monkeypatch.setattr(module, "_load_rescale_kernel", lambda: broken)
    input, target, _ = arguments(model, module, 300, torch.float64, seed=17)
    input.requires_grad_()
    loss = module.huber(input, target, reduction="sum")
    with pytest.warns(RuntimeWarning, match="the Triton rescale kernel failed"):
        (got,) = torch.autograd.grad(loss, input, torch.tensor(2.5, dtype=input.dtype))
    assert module._rescale_kernel is False  # not tried again
    reference = module.HuberFunction.apply(input, target, 1.0, "sum")
    (want,) = torch.autograd.grad(reference * 2.5, input)
    torch.testing.assert_close(got, want)


def test_triton_applies_only_where_it_can(interpreted, monkeypatch) -> None:
    model, module = modules()["Huber"]
    launches = interpreted(module)
    input, target, delta = arguments(model, module, 256, torch.float64, seed=13)
    input.requires_grad_()
    # not contiguous: the torch fast path
    module.huber(input.view(16, 16).t(), target.view(16, 16).t()).backward()
    assert launches == []
    # broadcast tensors (the kernel reads every tensor at the same offsets): the torch fast path
    value = module.huber(input, target[:1])
    assert type(value.grad_fn).__name__.startswith("_HuberFused")
    value.backward()
    assert launches == []
    # without the interpreter, CPU tensors stay in torch
    monkeypatch.delenv("TRITON_INTERPRET")
    module.huber(input, target).backward()
    assert launches == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "TRITON", False)
    module.huber(input, target).backward()
    assert launches == []
    monkeypatch.setattr(module, "TRITON", True)
    module.huber(input, target, delta).backward()
    assert launches == [2]


def test_a_launch_switches_the_cuda_device_only_where_it_must(monkeypatch) -> None:
    # Triton launches on the current CUDA device: tensors on another need a switch to
    # theirs (torch.cuda.device), which costs microseconds per launch where it is not needed.
    # CUDA stood in for (no GPU here): the current device, the switch, the kernel.
    _, module = modules()["Huber"]
    events: list[object] = []

    class Switch:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            events.append(("into", self.device.index))

        def __exit__(self, *exception):
            events.append(("out", self.device.index))

    class Kernel:
        def __getitem__(self, grid):
            return lambda *arguments, **constants: events.append(("launch", grid))

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", Switch)
    for index in (1, 0):
        module._run_kernel(Kernel(), 3, torch.device("cuda", index), (), {})
    module._run_kernel(Kernel(), 2, torch.device("cpu"), (), {})
    assert events == [
        ("launch", (3,)),  # on the current device: no switch
        ("into", 0),
        ("launch", (3,)),
        ("out", 0),
        ("launch", (2,)),
    ]


def test_a_failing_kernel_falls_back_to_torch_with_a_warning(monkeypatch) -> None:
    model, module = modules()["Huber"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "COMPILE", False)

    load = module._load_triton

    def broken():
        load()  # imports triton into the module, as on a GPU triton does not support

        @triton.jit
        def kernel(input_ptr):
            raise ValueError("no such GPU")

        return kernel

    monkeypatch.setattr(module, "_triton_kernel", None)
    monkeypatch.setattr(module, "_load_triton", broken)
    input, target, _ = arguments(model, module, 64, torch.float64, seed=14)
    with pytest.warns(RuntimeWarning, match="the Triton kernel failed, using torch"):
        value = module.huber(input, target)
    torch.testing.assert_close(
        value, module.HuberFunction.apply(input, target, 1.0, "mean")
    )
    assert module._triton_kernel is False  # not tried again
    assert not module._triton_applies([input, target])


def load_file(path, name: str) -> types.ModuleType:
    """A generated file imported from disk (triton reads a kernel's source from its file)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_import_without_triton(monkeypatch) -> None:
    # Only torch (math, struct) at module level: triton is imported where the kernel is made.
    for path in sorted((ROOT / "generated").glob("*.py")):
        if path.name == "__init__.py":
            continue
        imported = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module)
        assert imported <= {"torch", "math", "struct"}, path.name
    # With triton missing, the Triton path falls back to the torch fast path.
    for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
        monkeypatch.setitem(
            sys.modules, name, None
        )  # `import triton` raises ImportError
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = load_file(ROOT / "generated" / "huber.py", "huber_without_triton")
    module.FUSED_MIN_NUMEL = 0
    module.COMPILE = False
    input = torch.randn(100, dtype=torch.float64, requires_grad=True)
    target = torch.randn(100, dtype=torch.float64)
    value = module.huber(input, target)
    assert type(value.grad_fn).__name__ == "_HuberFusedBackward"
    value.backward()
    assert module._triton_kernel is False and module.triton is None
    x = input.detach().requires_grad_()
    expected = module.HuberFunction.apply(x, target, 1.0, "mean")
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(input.grad, x.grad)


# Every node the Triton printer knows that the shipped losses do not all use, in losses of
# two tensors on the whole real line (x, y ~ N(0, 1)) and one param.
NODES_SPEC = """
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p
from lossgen import Loss, Param, Tensor, clamp, logsigmoid, logsumexp, relu, sigmoid
from lossgen import softplus, xlogy

x = Tensor("x")
y = Tensor("y")
p = Param("p", default=0.5)
erfs = Loss("Erfs", sp.erf(x) * sp.erfc(y) + sp.atan(x) + sp.asinh(y) + sp.pi * x + sp.E * y)
hyperbolic = Loss(
    "Hyperbolic", sp.tanh(x) * sp.cosh(y / 4) + sp.sinh(x / 4) + sp.acosh(2 + y**2)
)
trigonometric = Loss("Trigonometric", sp.cos(x) * sp.sin(y) + sp.tan(x / 4))
inverse = Loss(
    "Inverse", sp.asin(sp.tanh(y) / 2) + sp.acos(sp.tanh(x) / 3) + sp.atanh(sp.tanh(x) / 2)
)
logs = Loss("Logs", log1p(x**2) * expm1(-(y**2)) + sp.exp(-(x**2)) * sp.log(2 + y**2))
powers = Loss(
    "Powers", (1 + x**2) ** -5 + (2 + y**2) ** sp.Rational(1, 3) + x**6 * y + (1 + y**2) ** 1.5
)
roots = Loss("Roots", sp.sqrt(1 + y**2) + x / sp.sqrt(2 + x**2) + (1 + x**2) ** p + 2**y)
stable = Loss(
    "Stable",
    logsumexp(x, y) + logsumexp(x, y, 0) + softplus(x * y) + logsigmoid(x) + sigmoid(y),
)
entropy = Loss("Entropy", xlogy(sigmoid(x), sigmoid(y)))
clamps = Loss("Clamps", relu(x - y) + clamp(x, -1, sp.oo) * clamp(y, -1, 1) + clamp(x, p, 2))
extrema = Loss("Extrema", sp.Max(x, y, p) + sp.Min(x, 0.25) + sp.Abs(x * y) * sp.sign(y))
steps = Loss(
    "Steps",
    sp.Heaviside(x, 1) * y + sp.Heaviside(y, 0) * x + sp.Heaviside(x, sp.Rational(1, 3)) * p,
)
conditions = Loss(
    "Conditions",
    sp.Piecewise((0.1, x > 1), (0.3, (x < -1) | (y > 0)), (0.7, True)) * y
    + sp.Piecewise((x**2, ~(x > 0) & (y < 1)), (y * p, True))
    + sp.Piecewise((sp.log(x), x > 0.5), (0, True)),
    reduction="sum",
)
"""


@functools.cache
def node_modules(directory) -> dict[str, types.ModuleType]:
    spec = directory / "nodes_spec.py"
    spec.write_text(NODES_SPEC, encoding="utf-8")
    loaded = {}
    for file in generate([spec]):
        if file.name == "__init__.py":
            continue
        path = directory / file.name
        path.write_text(file.content, encoding="utf-8")
        loaded[file.name[:-3]] = load_file(path, f"triton_nodes_{file.name[:-3]}")
    return loaded


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_every_printed_node_matches_the_torch_printer(
    tmp_path_factory, interpreted, dtype
) -> None:
    modules_ = node_modules(tmp_path_factory.getbasetemp())
    assert len(modules_) == 13
    generator = torch.Generator().manual_seed(15)
    # x and y tie at some elements (Max, Min, Heaviside of x - y) and x is 0 at one
    x = torch.randn(300, generator=generator, dtype=dtype)
    y = torch.randn(300, generator=generator, dtype=dtype)
    y[:10] = x[:10]
    x[10] = 0.0
    p = torch.tensor(0.3, dtype=dtype)
    for name, module in modules_.items():
        launches = interpreted(module)
        functional = getattr(module, name)
        function = next(v for k, v in vars(module).items() if k.endswith("Function"))
        reduction = "sum" if name == "conditions" else "mean"
        names = list(inspect.signature(functional).parameters)[:-1]
        args = [{"x": x, "y": y, "p": p}[argument] for argument in names]
        every = list(range(len(args)))
        value, grads = value_and_grads(functional, args, every, reduction, 1.0)
        expected, expected_grads = value_and_grads(
            function.apply, args, every, reduction, 1.0, keyword=False
        )
        assert launches == [3], name
        for got, want in zip((value, *grads), (expected, *expected_grads), strict=True):
            torch.testing.assert_close(got, want, msg=f"{name}: {got} != {want}")


def test_a_sigmoid_exponentiates_its_negated_argument_as_sympy_negates_it() -> None:
    x, y = sp.symbols("x y", real=True)
    names = {x: "x", y: "y"}
    assert print_triton(sigmoid(-x), names) == "(1 / (1 + libdevice.exp(x)))"
    assert print_triton(sigmoid(x - y), names) == "(1 / (1 + libdevice.exp(-x + y)))"


@pytest.mark.parametrize(
    "expr",
    [
        Sum(sp.Symbol("x", real=True), 1),  # reductions are not elementwise
        sp.gamma(sp.Symbol("x", real=True)),
        sp.Symbol("x", real=True) + sp.oo,
        sp.Piecewise((sp.Symbol("x", real=True), sp.Symbol("x", real=True) > 0)),
    ],
    ids=str,
)
def test_the_triton_printer_refuses_what_it_does_not_know(expr) -> None:
    x = sp.Symbol("x", real=True)
    with pytest.raises(UnsupportedExpressionError):
        print_triton(expr, {x: "x"})
    with pytest.raises(UnsupportedExpressionError, match="unknown symbol"):
        print_triton(sp.Symbol("z", real=True) + x, {x: "x"})


@pytest.fixture
def compiling(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compiled here, not cached
    monkeypatch.setenv(
        "TRITON_DEFAULT_FP_FUSION", "1"
    )  # triton 3.9's default, said aloud


def test_kernels_compile_for_cuda(compiling, tmp_path_factory) -> None:
    # Compiling checks what the interpreter does not: Triton's code generator (constexpr
    # branches, None pointers, dtypes of every operation) and LLVM's lowering to PTX. Every
    # printed node, in float64; a few shipped kernels in float32 (all 39 take ~90 s in both
    # dtypes), with every gradient and with the first tensor's only.
    for name, module in node_modules(tmp_path_factory.getbasetemp()).items():
        asm = compile_for_cuda(module, "fp64", {"x", "y", "p"})
        assert asm["cubin"], name
    for name in ("Huber", "BCEWithLogits", "Barron", "StudentNLL"):
        model, module = modules()[name]
        every = {a.name for a in model.differentiable}
        stores = [
            compile_for_cuda(module, "fp32", wanted)["ptx"].count("st.global")
            for wanted in (every, {model.tensors[0].name})
        ]
        assert stores[0] > stores[1] > 0, name  # no code for the gradients not wanted


def test_a_kernel_without_its_source_falls_back_to_torch(monkeypatch) -> None:
    # A generated file run from a string (as `lossgen check` does): triton.jit cannot read it.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    file = next(f for f in repository_files() if f.name == "huber.py")
    module = load_generated(file)
    module.FUSED_MIN_NUMEL = 0
    module.COMPILE = False
    input = torch.randn(64, dtype=torch.float64, requires_grad=True)
    target = torch.randn(64, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="the Triton kernel failed, using torch"):
        value = module.huber(input, target)
    assert module._triton_kernel is False
    torch.testing.assert_close(
        value, module.HuberFunction.apply(input, target, 1.0, "mean")
    )
