"""A gradient that is OneHot(t) * E (NLL's, a Pick's) is written with the generated helper
_spread: E gathered at the class index and scattered into zeros (or summed, where the
argument is constant along the class dim), never as a one-hot product as large as the input.
Ignored and out-of-range class indices still give exactly 0.

The one-hot products the helper is checked against are written out in the tests.
"""

from __future__ import annotations

import importlib
import math
import shutil

import pytest
import sympy as sp
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lossgen import LogSumExp, OneHot, Param, Tensor
from lossgen.printer import print_spread
from lossgen.reductions import spread_parts

NLL = importlib.import_module("generated.nll")
HAS_COMPILER = bool(
    shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
)


class CountedOneHots(TorchDispatchMode):
    """Counts aten.arange calls: every one-hot (torch's positions along the class dim to
    compare the index with) needs one, and nothing else in these modules makes one."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self, func, types, args=(), kwargs=None
    ):  # noqa: ANN001, ANN204
        if func.overloadpacket is torch.ops.aten.arange:
            self.count += 1
        return func(*args, **(kwargs or {}))


def one_hot_product(
    value, index, dim, shape, like, argument_shape
):  # noqa: ANN001, ANN201
    """What _spread replaces, written out: sum_to(OneHot(index) * value, argument_shape)."""
    sizes = [1] * len(shape)
    sizes[dim] = shape[dim]
    positions = torch.arange(shape[dim]).view(sizes)
    one_hot = (index == positions).to(like.dtype)
    return (one_hot * value).expand(shape).sum_to_size(argument_shape)


# --- the helper --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dim", "argument_shape"),
    [
        ((5, 4), 1, (5, 4)),  # the whole shape: a scatter
        ((5, 4), 1, ()),  # a scalar param: the picked values summed
        ((5, 4), 1, (1, 4)),  # a class weight: summed over the rows
        ((5, 4), 1, (5, 1)),  # constant along the class dim, varying along the rows
        ((2, 3, 4), -1, (2, 3, 4)),  # classes last
        ((2, 3, 4), -1, (4,)),  # fewer dims than the shape
        ((2, 4, 3), 1, (4, 3)),
    ],
)
def test_spread_is_the_one_hot_product(shape, dim, argument_shape) -> None:
    generator = torch.Generator().manual_seed(5)
    axis = dim % len(shape)
    sizes = list(shape)
    sizes[axis] = 1
    classes = shape[axis]
    # some indices out of range on both sides, as ignore_index=-100 is
    index = torch.randint(-2, classes + 2, sizes, generator=generator)
    index.view(-1)[0] = -100
    like = torch.randn(shape, dtype=torch.float64, generator=generator)
    value = torch.randn(sizes, dtype=torch.float64, generator=generator)
    got = NLL._spread(value, index, dim, torch.Size(shape), like, argument_shape)
    want = one_hot_product(value, index, axis, shape, like, argument_shape)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_spread_is_exactly_zero_away_from_the_index() -> None:
    # an infinite value at an index out of range leaks nowhere (0 * inf would in a product)
    index = torch.tensor([[2], [-100], [3], [0]])
    value = torch.tensor([[1.5], [math.inf], [math.inf], [-2.0]])
    like = torch.zeros(4, 3)
    got = NLL._spread(value, index, 1, torch.Size([4, 3]), like, (4, 3))
    assert got.tolist() == [[0, 0, 1.5], [0, 0, 0], [0, 0, 0], [-2.0, 0, 0]]
    total = NLL._spread(value, index, 1, torch.Size([4, 3]), like, (1, 3))
    assert total.tolist() == [[-2.0, 0, 1.5]]


def test_spread_takes_the_one_hot_products_dtype() -> None:
    # The one-hot has like's dtype: a number or a 0-dim float64 value gives like's dtype, a
    # float64 tensor with dims gives float64, as the product would.
    shape = torch.Size([3, 4])
    index = torch.tensor([[1], [0], [3]])
    like = torch.randn(shape, dtype=torch.float16)
    for value, dtype in [
        (0.5, torch.float16),
        (torch.tensor(0.5, dtype=torch.float64), torch.float16),
        (torch.full((3, 1), 0.5, dtype=torch.float64), torch.float64),
    ]:
        for argument_shape in [(3, 4), ()]:
            got = NLL._spread(value, index, 1, shape, like, argument_shape)
            assert got.dtype == dtype
            assert got.sum().item() == 1.5


def test_spread_over_an_empty_class_dim() -> None:
    index = torch.tensor([[0], [-100]])
    like = torch.zeros(2, 0)
    got = NLL._spread(torch.ones(2, 1), index, 1, torch.Size([2, 0]), like, (2, 0))
    assert got.shape == (2, 0)


# --- the printer -------------------------------------------------------------------------------

x = Tensor("x")
t = Tensor("t", index_of=1)
w = Param("w", along=1)
NAMES = {x: "x", t: "t", w: "w"}


def test_a_one_hot_product_is_a_spread() -> None:
    assert spread_parts(OneHot(t) * w * x) == (OneHot(t), w * x)
    guarded = sp.Piecewise((-w * OneHot(t), sp.Ne(t, -100)), (0, True))
    assert spread_parts(guarded) == (
        OneHot(t),
        sp.Piecewise((-w, sp.Ne(t, -100)), (0, True)),
    )
    # a softmax minus the one-hot is not 0 where the one-hot is: elementwise, as it is
    assert spread_parts(sp.exp(x - LogSumExp(x, 1)) - OneHot(t)) is None
    assert spread_parts(x) is None


def test_printed_spread_gathers_the_value() -> None:
    value, index, dim = print_spread(OneHot(t) * w * x, NAMES, like="x")
    assert (index, dim) == ("t", 1)
    assert "_at(x, t, 1, shape)" in value and "_one_hot" not in value
    assert print_spread(x - OneHot(t), NAMES, like="x") is None


# --- NLL ---------------------------------------------------------------------------------------


def nll_case(
    rows: int = 7, classes: int = 5, dtype=torch.float64
):  # noqa: ANN001, ANN201
    """Log-probabilities, class indices with an ignored row and rows out of range, weights."""
    generator = torch.Generator().manual_seed(13)
    input = torch.log_softmax(
        torch.randn(rows, classes, generator=generator, dtype=dtype), 1
    )
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[1] = -100  # ignore_index
    target[3] = classes  # out of range on either side: the one-hot picks nothing
    target[5] = -1
    weight = torch.rand(classes, generator=generator, dtype=dtype) + 0.5
    return input, target, weight


def expected_grads(input, target, weight, reduction):  # noqa: ANN001, ANN201
    """d loss / d input and d loss / d weight, by autograd of the loss written as a gather."""
    x = input.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    kept = (target >= 0) & (target < input.shape[1])
    index = target.clamp(0, input.shape[1] - 1).unsqueeze(1)
    picked_w = torch.where(kept, w[index.squeeze(1)], 0)
    loss = -picked_w * x.gather(1, index).squeeze(1)
    if reduction == "mean":
        loss = loss.sum() / picked_w.sum()
    elif reduction == "sum":
        loss = loss.sum()
    loss.sum().backward()
    return x.grad, w.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_nll_reference_makes_no_one_hot(reduction: str, weight_grad: bool) -> None:
    input, target, weight = nll_case()
    x = input.clone().requires_grad_()
    w = weight.clone().requires_grad_(weight_grad)
    with CountedOneHots() as counted:
        loss = NLL.NLLFunction.apply(x, target, w, -100.0, reduction)
        loss.sum().backward()
    # a class weight's gradient is the one-hot product summed over rows (see _spread)
    assert counted.count == (1 if weight_grad else 0)
    want_x, want_w = expected_grads(input, target, weight, reduction)
    torch.testing.assert_close(x.grad, want_x, rtol=1e-12, atol=1e-12)
    if weight_grad:
        torch.testing.assert_close(w.grad, want_w, rtol=1e-12, atol=1e-12)
    # ignored and out-of-range rows: exactly 0, no error
    assert x.grad[[1, 3, 5]].abs().sum().item() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_fused_body_makes_no_one_hot(reduction: str, weighted: bool) -> None:
    input, target, weight = nll_case()
    weight = weight if weighted else torch.ones(())
    params = [NLL._as_tensor(weight, input), NLL._as_tensor(-100.0, input)]
    with CountedOneHots() as counted:
        loss, grad_input, grad_weight, _ = NLL._fused(
            input, target, *params, reduction, (True, False, True, False)
        )
    # a class weight's gradient is the one-hot product summed over rows (see _spread)
    assert counted.count == (1 if weighted else 0)
    classes = torch.ones(input.shape[1], dtype=input.dtype)
    want_x, want_w = expected_grads(input, target, weight * classes, reduction)
    torch.testing.assert_close(grad_input, want_x, rtol=1e-12, atol=1e-12)
    want_w = want_w if weighted else want_w.sum()
    torch.testing.assert_close(
        grad_weight.reshape(want_w.shape), want_w, rtol=1e-12, atol=1e-12
    )
    assert grad_input[[1, 3, 5]].abs().sum().item() == 0


def test_nll_matches_f_nll_loss_with_ignored_rows() -> None:
    input, target, weight = nll_case()
    target[3] = 2  # F.nll_loss raises for out-of-range indices other than ignore_index
    target[5] = 0
    for reduction in ("none", "mean", "sum"):
        x = input.clone().requires_grad_()
        y = input.clone().requires_grad_()
        ours = NLL.NLLFunction.apply(x, target, weight, -100.0, reduction)
        theirs = F.nll_loss(y, target, weight, reduction=reduction)
        ours.sum().backward()
        theirs.sum().backward()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-12, atol=1e-12)


def test_nll_double_backward_through_the_scatter() -> None:
    input, target, weight = nll_case(classes=3)
    x = input.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: NLL.NLLFunction.apply(a, target, b, -100.0, "mean"), (x, w)
    )


def test_nll_compiled_fast_path_scatters(monkeypatch) -> None:
    # The default path on CPU: torch.compile of _fused; _spread must trace (a graph break
    # would silently switch the module to the uncompiled body for good).
    monkeypatch.setattr(NLL, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(NLL, "_compiled_fused", None)
    input, target, _ = nll_case(rows=9, classes=6, dtype=torch.float32)
    for reduction in ("mean", "sum"):
        x = input.clone().requires_grad_()
        w = torch.tensor(0.75).requires_grad_()  # the fast path takes 0-dim params
        loss = NLL.nll(x, target, w, reduction=reduction)
        assert type(loss.grad_fn).__name__.startswith("_NLLFused")
        loss.backward()
        want_x, want_w = expected_grads(
            input, target, torch.full((6,), 0.75), reduction
        )
        torch.testing.assert_close(x.grad, want_x)
        torch.testing.assert_close(w.grad, want_w.sum())
        assert x.grad[[1, 3, 5]].abs().sum().item() == 0
    if HAS_COMPILER:
        assert NLL._compiled_fused is not NLL._fused  # compiled, not the fallback


def test_generated_nll_has_no_one_hot_helper() -> None:
    assert not hasattr(NLL, "_one_hot")
    source = importlib.util.find_spec(
        "generated.nll"
    ).origin  # type: ignore[union-attr]
    with open(source) as file:
        assert "_one_hot(" not in file.read()
