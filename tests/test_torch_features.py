"""The generated losses as PyTorch users meet them: torch.func transforms, torch.compile, dtypes,
needs_input_grad, learnable and buffer params, broadcast params, argument handling.

"Autograd" below is lossgen.reference: torch's autograd differentiating the loss expression as
written, which shares nothing with the generated symbolic backward.
"""

from __future__ import annotations

import copy
import functools
import importlib
import types
from collections.abc import Callable, Sequence

import pytest
import torch
from torch.func import grad, jacrev, vmap

import generated
import lossgen
from conftest import SPEC_ARGS, needs_apply_keywords
from lossgen.api import load_models
from lossgen.model import LossModel
from lossgen.reference import reduced_loss
from lossgen.verify import (
    LossCase,
    class_indices,
    draw,
    environment,
    load_generated,
    needed_ndim,
)

MODELS = {model.name: model for model in load_models(SPEC_ARGS)}
LOSSES = sorted(MODELS)


def functional(model: LossModel) -> Callable[..., torch.Tensor]:
    return getattr(generated, model.snake_name)


def reference(
    model: LossModel, *args: torch.Tensor, reduction: str | None = None
) -> torch.Tensor:
    """The loss through the reference evaluator; args in signature order."""
    reduction = reduction or model.reduction
    env = environment(model, args)
    return reduced_loss(model.expr, env, reduction, model.dropped, model.mean_weight)


def sized(model: LossModel, shape: Sequence[int]) -> tuple[int, ...]:
    """`shape`, with trailing dims of 3 where the loss reduces over more dims than it has."""
    needed = needed_ndim(model)
    return tuple(shape) + (3,) * max(0, needed - len(shape))


def differentiable_positions(model: LossModel) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(model.arguments) if a.differentiable)


@functools.cache
def domains(name: str) -> dict[str, str]:
    """Where each tensor of a loss may be sampled (e.g. a variance stays positive)."""
    model = MODELS[name]
    return LossCase(
        model, importlib.import_module(f"generated.{model.snake_name}")
    ).domains


def arguments(
    model: LossModel,
    shape: Sequence[int],
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    batched: bool = False,
) -> list[torch.Tensor]:
    """Tensors of `shape` for the tensor arguments, 0-dim tensors near the defaults for params.

    `batched`: dim 0 is a vmap batch; class indices index into the other dims.
    """
    generator = torch.Generator().manual_seed(seed)
    where = domains(model.name)
    values = []
    for argument in model.arguments:
        if argument.index_of is not None:
            per_sample = torch.Size(shape[1:] if batched else shape)
            indices = [
                class_indices(per_sample, argument.index_of, generator)
                for _ in range(shape[0] if batched else 1)
            ]
            values.append(torch.stack(indices) if batched else indices[0])
        elif argument.is_tensor:
            domain = where[argument.name]
            value = draw(domain, tuple(shape), generator, torch.float64, dyadic=False)
            values.append(value * 2 if domain == "normal" else value)
        else:
            # nudged off the default so that e.g. tau = 0.5 does not hide an asymmetry
            default = 1.0 if argument.default is None else argument.default
            values.append(torch.tensor(default + 0.3, dtype=torch.float64))
    return [v.to(dtype) if v.is_floating_point() else v for v in values]


def assert_all_close(
    actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]
) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e)


# --- torch.func ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_vmap_matches_a_loop(name: str) -> None:
    model = MODELS[name]
    batch = arguments(model, (5, *sized(model, (7,))), batched=True)
    tensor_count = len(model.tensors)
    in_dims = tuple(0 if a.is_tensor else None for a in model.arguments)
    got = vmap(functional(model), in_dims=in_dims)(*batch)
    expected = torch.stack(
        [
            reference(
                model, *[t[i] for t in batch[:tensor_count]], *batch[tensor_count:]
            )
            for i in range(5)
        ]
    )
    assert_all_close([got], [expected])


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_matches_autograd(name: str, reduction: str) -> None:
    model = MODELS[name]
    args = arguments(model, sized(model, (4, 3)), seed=1)
    differentiable = differentiable_positions(model)  # tensors and params alike
    loss = functools.partial(functional(model), reduction=reduction)
    got = grad(loss, argnums=differentiable)(*args)
    leaves = [a.clone().requires_grad_(i in differentiable) for i, a in enumerate(args)]
    wanted = [leaves[i] for i in differentiable]
    expected = torch.autograd.grad(
        reference(model, *leaves, reduction=reduction), wanted, allow_unused=True
    )
    # a param used only in a condition (ignore_index) has no graph: its gradient is zero
    expected = [
        torch.zeros_like(w) if e is None else e for w, e in zip(wanted, expected)
    ]
    assert_all_close(got, expected)


@pytest.mark.parametrize("name", LOSSES)
def test_jacrev_matches_autograd(name: str) -> None:
    model = MODELS[name]
    args = arguments(model, sized(model, (6,)), seed=2)
    loss = functools.partial(functional(model), reduction="none")
    argnums = tuple(
        i for i in differentiable_positions(model) if model.arguments[i].is_tensor
    )
    got = jacrev(loss, argnums=argnums)(*args)

    def reference_of(*tensors: torch.Tensor) -> torch.Tensor:
        filled = list(args)
        for position, tensor in zip(argnums, tensors):
            filled[position] = tensor
        return reference(model, *filled, reduction="none")

    expected = torch.autograd.functional.jacobian(
        reference_of, tuple(args[i] for i in argnums)
    )
    assert_all_close(got, expected)
    # an elementwise loss has a diagonal Jacobian
    for jacobian in got if not model.reduces else ():
        assert torch.count_nonzero(jacobian - torch.diag(torch.diagonal(jacobian))) == 0


@pytest.mark.parametrize("name", LOSSES)
def test_vmap_of_grad_gives_per_sample_gradients(name: str) -> None:
    model = MODELS[name]
    batch = arguments(model, (5, *sized(model, (3,))), seed=3, batched=True)
    in_dims = tuple(0 if a.is_tensor else None for a in model.arguments)
    got = vmap(grad(functional(model), argnums=0), in_dims=in_dims)(*batch)
    expected = []
    for i in range(5):
        leaf = batch[0][i].clone().requires_grad_()
        rest = [
            t[i] if a.is_tensor else t for a, t in zip(model.arguments[1:], batch[1:])
        ]
        (g,) = torch.autograd.grad(reference(model, leaf, *rest), leaf)
        expected.append(g)
    assert_all_close([got], [torch.stack(expected)])


# --- torch.compile -------------------------------------------------------------------------


def _values_and_grads(
    loss: Callable[..., torch.Tensor], args: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    leaves = [a.clone().requires_grad_() for a in args]
    value = loss(*leaves)
    return [value.detach(), *torch.autograd.grad(value, leaves)]


def test_compile_inductor_matches_eager_and_autograd() -> None:
    # One inductor compile (~10 s on 2 busy cores): Huber with a broadcast tensor delta, so the
    # graph has a Piecewise, a param gradient and a sum-to-shape. fullgraph: no graph breaks.
    model = MODELS["Huber"]
    input, target = (
        torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(s)) for s in (4, 5)
    )
    delta = torch.tensor([[0.5], [1.0], [2.0]])
    args = [input * 2, target, delta]

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        return generated.huber(*tensors, reduction="sum")

    compiled = torch.compile(loss, backend="inductor", fullgraph=True)
    got = _values_and_grads(compiled, args)
    assert_all_close(got, _values_and_grads(loss, args))
    assert_all_close(
        got,
        _values_and_grads(functools.partial(reference, model, reduction="sum"), args),
    )


def test_compile_module_with_learnable_param() -> None:
    # aot_eager traces forward and backward like inductor does, without the C++ build.
    module = generated.UncertaintyWeightedMSE(log_variance=0.4)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    generator = torch.Generator().manual_seed(6)
    input = torch.randn(8, 3, generator=generator, requires_grad=True)
    target = torch.randn(8, 3, generator=generator)
    value = compiled(input, target)
    value.backward()
    eager = copy.deepcopy(module)
    eager.zero_grad()
    input_eager = input.detach().clone().requires_grad_()
    eager(input_eager, target).backward()
    torch.testing.assert_close(value, module(input, target))
    torch.testing.assert_close(input.grad, input_eager.grad)
    torch.testing.assert_close(module.log_variance.grad, eager.log_variance.grad)


# --- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str
)
@pytest.mark.parametrize("name", LOSSES)
def test_dtype_of_outputs_and_gradients(name: str, dtype: torch.dtype) -> None:
    model = MODELS[name]
    tensors = arguments(model, sized(model, (4, 5)), seed=7, dtype=dtype)
    tensors = tensors[: len(model.tensors)]
    tensors = [
        t.requires_grad_(a.differentiable) for t, a in zip(tensors, model.tensors)
    ]
    wanted = [t for t in tensors if t.requires_grad]
    for reduction in ("none", "mean", "sum"):
        # params left at their float defaults: they must take the inputs' dtype
        value = functional(model)(*tensors, reduction=reduction)
        assert value.dtype == dtype
        assert torch.isfinite(value).all()
        grads = torch.autograd.grad(value.sum(), wanted)
        for g, t in zip(grads, wanted):
            assert g.dtype == dtype and g.shape == t.shape
            assert torch.isfinite(g).all()
    # and the value is float64's on the same (rounded) inputs, up to the dtype's precision
    if model.reduces and dtype == torch.bfloat16:
        return  # sums over dims in bfloat16 (8-bit mantissa) are no float64 reference
    defaults = [torch.tensor(a.default, dtype=torch.float64) for a in model.params]
    expected = reference(model, *[t.detach().double() for t in tensors], *defaults)
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(
        functional(model)(*tensors).double(), expected, rtol=tolerance, atol=tolerance
    )


# --- needs_input_grad ----------------------------------------------------------------------


def test_only_input_requires_grad() -> None:
    input = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3)
    delta = torch.tensor(0.7)  # a tensor param that does not require grad
    generated.huber(input, target, delta).backward()
    assert input.grad is not None
    assert target.grad is None and delta.grad is None


@pytest.mark.parametrize(
    "name", ["Huber", "UncertaintyWeightedMSE", "CustomLoss", "Quantile"]
)
def test_backward_computes_only_what_needs_input_grad_asks(name: str) -> None:
    # Call backward directly with each single gradient requested: every other entry must be
    # None, i.e. its branch never ran; the requested one must equal autograd's.
    model = MODELS[name]
    function = getattr(generated, f"{model.name}Function")
    args = arguments(model, (3, 4), seed=8)
    leaves = [a.clone().requires_grad_() for a in args]
    expected = torch.autograd.grad(reference(model, *leaves), leaves)
    for wanted in range(len(args)):
        ctx = types.SimpleNamespace(
            saved_tensors=tuple(args),
            needs_input_grad=tuple(i == wanted for i in range(len(args))) + (False,),
            reduction=model.reduction,
        )
        grads = function.backward(ctx, torch.tensor(1.0, dtype=torch.float64))
        assert len(grads) == len(args) + 1  # one per argument, then reduction
        for i, g in enumerate(grads):
            if i == wanted:
                torch.testing.assert_close(g, expected[i])
            else:
                assert g is None, (name, wanted, i)


FROZEN_SPEC = """
from lossgen import Loss, Param, Tensor

input = Tensor("input")
label = Tensor("label", differentiable=False)
# named "scale" on purpose: its gradient, grad_scale, once overwrote a local of backward
scale = Param("scale", default=2.0)

frozen = Loss("Frozen", scale * (input - label) ** 2)
"""


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    spec = tmp_path_factory.mktemp("spec") / "frozen_spec.py"
    spec.write_text(FROZEN_SPEC)
    files = {f.name: f for f in lossgen.generate([spec])}
    return load_generated(files["frozen.py"])


def test_gradient_of_a_non_differentiable_tensor_is_an_error(
    frozen: types.ModuleType,
) -> None:
    input = torch.randn(5, requires_grad=True)
    label = torch.randn(5, requires_grad=True)
    loss = frozen.frozen(input, label)
    with pytest.raises(
        RuntimeError, match="label is declared with differentiable=False"
    ):
        loss.backward()


def test_non_differentiable_tensor_without_grad_is_fine(
    frozen: types.ModuleType,
) -> None:
    input = torch.randn(5, dtype=torch.float64, requires_grad=True)
    label = torch.randn(5, dtype=torch.float64)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    frozen.frozen(input, label, scale, reduction="sum").backward()
    torch.testing.assert_close(input.grad, 2 * 1.5 * (input.detach() - label))
    torch.testing.assert_close(scale.grad, ((input.detach() - label) ** 2).sum())
    assert label.grad is None


# --- params in modules ---------------------------------------------------------------------


def test_learnable_param_is_a_parameter_that_an_optimizer_moves() -> None:
    module = generated.UncertaintyWeightedMSE()
    assert isinstance(module.log_variance, torch.nn.Parameter)
    assert [name for name, _ in module.named_parameters()] == ["log_variance"]
    assert module.log_variance.item() == 0.0
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(9)
    input = torch.randn(16, generator=generator) * 3
    target = torch.zeros(16)
    loss = module(input, target)
    loss.backward()
    # d/ds [r^2/2 e^-s + s/2] at s = 0 is (1 - mean(r^2)) / 2
    expected_grad = (1 - (input**2).mean()) / 2
    torch.testing.assert_close(module.log_variance.grad, expected_grad)
    optimizer.step()
    torch.testing.assert_close(module.log_variance.detach(), -0.1 * expected_grad)

    module.to(torch.float64)
    assert isinstance(module.log_variance, torch.nn.Parameter)
    assert module.log_variance.dtype == torch.float64
    assert module(input.double(), target.double()).dtype == torch.float64


def test_learnable_param_from_a_tensor_is_copied() -> None:
    initial = torch.tensor([0.5, -0.5])
    module = generated.UncertaintyWeightedMSE(initial)
    assert module.log_variance.shape == (2,) and module.log_variance.requires_grad
    with torch.no_grad():
        module.log_variance.add_(1.0)
    assert initial.tolist() == [0.5, -0.5]  # the caller's tensor is left alone


def test_tensor_param_is_a_buffer_that_moves_with_to() -> None:
    delta = torch.tensor([[0.5], [1.0], [2.0]])
    module = generated.Huber(delta, reduction="none")
    assert dict(module.named_buffers()).keys() == {"delta"}
    assert list(module.parameters()) == []
    assert "delta" in module.state_dict()
    module.to(torch.float64)
    assert module.delta.dtype == torch.float64
    assert (
        delta.dtype == torch.float32
    )  # .to() replaced the buffer, not the caller's tensor
    generator = torch.Generator().manual_seed(12)
    input = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64) * 2
    target = torch.zeros_like(input)
    value = module(input, target)
    assert value.dtype == torch.float64
    torch.testing.assert_close(
        value,
        reference(MODELS["Huber"], input, target, delta.double(), reduction="none"),
    )
    # a float param stays a plain attribute, not a buffer
    plain = generated.Huber(0.5)
    assert plain.delta == 0.5 and list(plain.buffers()) == []


@pytest.mark.parametrize("name", [n for n in LOSSES if MODELS[n].params])
def test_broadcast_tensor_params_get_gradients_of_their_own_shape(name: str) -> None:
    model = MODELS[name]
    generator = torch.Generator().manual_seed(10)
    shape = sized(model, (2, 3, 4))
    args = []
    for argument in model.arguments:
        if argument.index_of is not None:
            args.append(class_indices(torch.Size(shape), argument.index_of, generator))
        elif argument.is_tensor:
            domain = domains(name)[argument.name]
            args.append(draw(domain, shape, generator, torch.float64, dyadic=False))
        elif model.reduces:
            # one value per class along its dim, else one value: a param varying along a
            # dim the loss reduces away is an error (see test_reductions)
            size = (shape[argument.along],) if argument.along is not None else ()
            jitter = 0.5 * torch.rand(size, generator=generator, dtype=torch.float64)
            args.append(argument.default + jitter)
        else:
            default = argument.default
            args.append(
                default
                + 0.5 * torch.rand(3, 1, generator=generator, dtype=torch.float64)
            )
    differentiable = differentiable_positions(model)
    leaves = [
        a.clone().requires_grad_(i in differentiable and a.is_floating_point())
        for i, a in enumerate(args)
    ]
    functional(model)(*leaves).backward()
    reference_leaves = [
        a.clone().requires_grad_(i in differentiable and a.is_floating_point())
        for i, a in enumerate(args)
    ]
    reference(model, *reference_leaves).backward()
    for leaf, expected in zip(leaves, reference_leaves):
        if not leaf.requires_grad:
            continue
        assert leaf.grad.shape == leaf.shape
        if expected.grad is None:  # used only in a condition: zero gradient
            assert not leaf.grad.any()
            continue
        torch.testing.assert_close(leaf.grad, expected.grad)


# --- arguments -----------------------------------------------------------------------------


def test_invalid_reduction_is_a_value_error() -> None:
    input = torch.randn(3)
    with pytest.raises(ValueError, match="'avg' is not a valid value for reduction"):
        generated.mse(input, input, reduction="avg")
    with pytest.raises(ValueError, match="'avg'"):
        generated.HuberFunction.apply(input, input, 1.0, "avg")
    with pytest.raises(ValueError, match="'avg'"):
        generated.Huber(reduction="avg")


def huber_case() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    input = torch.randn(10, generator=generator, dtype=torch.float64) * 2
    target = torch.randn(10, generator=generator, dtype=torch.float64)
    return input, target


def test_function_apply_takes_trailing_defaults() -> None:
    input, target = huber_case()
    model = MODELS["Huber"]
    expected_default = reference(
        model, input, target, torch.tensor(1.0, dtype=torch.float64)
    )
    delta = torch.tensor(0.5, dtype=torch.float64)
    expected_sum = reference(model, input, target, delta, reduction="sum")
    function = generated.HuberFunction
    torch.testing.assert_close(function.apply(input, target), expected_default)
    torch.testing.assert_close(
        function.apply(input, target, 0.5), reference(model, input, target, delta)
    )
    torch.testing.assert_close(function.apply(input, target, 0.5, "sum"), expected_sum)
    # the tutorial's call, weight positional and reduction from the spec ("sum")
    weight = torch.tensor(2.0, dtype=torch.float64)
    torch.testing.assert_close(
        generated.CustomLossFunction.apply(input, target, weight),
        (2 * (input - target).abs()).sum(),
    )


@needs_apply_keywords
def test_function_apply_takes_keywords() -> None:
    input, target = huber_case()
    delta = torch.tensor(0.5, dtype=torch.float64)
    expected_sum = reference(MODELS["Huber"], input, target, delta, reduction="sum")
    function = generated.HuberFunction
    torch.testing.assert_close(
        function.apply(input, target, delta=0.5, reduction="sum"), expected_sum
    )
    torch.testing.assert_close(
        function.apply(input, target, reduction="sum", delta=delta), expected_sum
    )
    torch.testing.assert_close(
        function.apply(input, target=target, delta=0.5, reduction="sum"), expected_sum
    )
    # keywords reach backward too
    leaf = input.clone().requires_grad_()
    function.apply(leaf, target, delta=0.5, reduction="sum").backward()
    r = input - target
    torch.testing.assert_close(
        leaf.grad, torch.where(r.abs() <= 0.5, r, 0.5 * r.sign())
    )


def test_module_and_functional_signatures() -> None:
    input = torch.randn(6, dtype=torch.float64)
    target = torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(
        generated.Huber(0.5, "sum")(input, target),
        generated.huber(input, target, 0.5, "sum"),
    )
    torch.testing.assert_close(
        generated.Huber(delta=0.5, reduction="sum")(input, target),
        generated.huber(input, target, reduction="sum", delta=0.5),
    )
    assert repr(generated.Huber(0.5)) == "Huber(delta=0.5, reduction='mean')"
