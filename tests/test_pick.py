"""Pick(expr, t) = Sum(OneHot(t) * expr, dim) is printed as a gather (generated helpers _at and
_pick), never as a one-hot as large as expr; out-of-range indices still pick 0.

"The one-hot" below is lossgen.reference, which evaluates Pick literally (it keeps one-hots).
"""

from __future__ import annotations

import importlib
import math
import types

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from lossgen import LogSumExp, Mean, OneHot, Param, Pick, Sum, Tensor
from lossgen.api import load_models
from lossgen.printer import print_torch
from lossgen.program import common_subexpressions
from lossgen.reductions import Picked, pick_parts
from lossgen.reference import evaluate, reduced_loss
from lossgen.verify import environment

MODELS = {model.name: model for model in load_models(["specs/reductions.py"])}
PICKING = ["NLL", "CrossEntropy", "InfoNCE", "ChannelsLastCrossEntropy", "MultiMargin"]
# One-hots that are no Pick: MultiMargin's Mean((1 - OneHot(label)) * ...) is elementwise in it.
FORWARD_ONE_HOTS = {"MultiMargin": 1}
# Gradients that are OneHot(t) * E, scattered (generated helper _spread), with no one-hot.
SPREAD_GRADIENTS = {"NLL"}
# Input gradients that the fused body writes as a dense part plus E scattered at the index
# (_spread_onto, tests/test_compiled_reductions.py): no one-hot there either.
SCATTERED_FUSED_GRADIENTS = {"CrossEntropy", "InfoNCE", "ChannelsLastCrossEntropy"}


def module_of(name: str) -> types.ModuleType:
    return importlib.import_module(f"generated.{MODELS[name].snake_name}")


def counted_one_hots(module: types.ModuleType, monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the one-hots the module's helper makes from now on."""
    made: list[tuple[int, ...]] = []
    if not hasattr(module, "_one_hot"):
        return made  # the module has no one-hot to make (NLL: see tests/test_spread.py)
    helper = module._one_hot

    def one_hot(*args):  # noqa: ANN002, ANN202
        value = helper(*args)
        made.append(tuple(value.shape))
        return value

    monkeypatch.setattr(module, "_one_hot", one_hot)
    return made


def classification_args(name: str, rows: int = 6, classes: int = 40):
    """(input, target, *params) with an ignored row, and a class index out of range."""
    generator = torch.Generator().manual_seed(7)
    model = MODELS[name]
    shape = (rows, classes) if name != "ChannelsLastCrossEntropy" else (2, 3, classes)
    input = torch.randn(shape, generator=generator, dtype=torch.float64)
    target = torch.randint(0, classes, shape[:-1], generator=generator)
    flat = target.view(-1)
    flat[1] = -100  # ignore_index's default, where the loss has one
    flat[3] = classes  # out of range: the one-hot is all 0 there
    args: list[object] = [input, target]
    for param in model.params:
        if param.name == "weight":
            args.append(torch.rand(classes, generator=generator, dtype=torch.float64))
        else:
            args.append(param.default)
    return args


@pytest.mark.parametrize("name", PICKING)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_the_forward_gathers_and_matches_the_one_hot(
    name: str, reduction: str, monkeypatch
) -> None:
    model, module = MODELS[name], module_of(name)
    made = counted_one_hots(module, monkeypatch)
    args = classification_args(name)
    input = args[0].requires_grad_()
    function = getattr(module, f"{model.name}Function")
    loss = function.apply(*args, reduction)
    # no one-hot for a Pick in the forward (nor in its weighted mean's total)
    assert len(made) == FORWARD_ONE_HOTS.get(name, 0)
    made.clear()
    env = environment(model, [a for a in args])
    expected = reduced_loss(
        model.expr, env, reduction, model.dropped, model.mean_weight
    )
    torch.testing.assert_close(loss, expected.to(loss.dtype), rtol=1e-12, atol=1e-12)
    if reduction == "none" and name in ("NLL", "CrossEntropy"):
        # the ignored row and the row out of range give 0, exactly, as the one-hot did
        assert loss[1].item() == 0 and loss[3].item() == 0
    loss.sum().backward()
    if name in SPREAD_GRADIENTS:
        assert not made  # OneHot(t) * E: a scatter (tests/test_spread.py)
    else:
        assert made  # the gradient is elementwise over the classes: its one-hot stays
    assert math.isfinite(input.grad.sum().item())


@pytest.mark.parametrize(
    "name", [n for n in PICKING if n not in {*FORWARD_ONE_HOTS, *SPREAD_GRADIENTS}]
)
def test_the_fused_loss_uses_no_one_hot(name: str, monkeypatch) -> None:
    # The input's gradient needs a one-hot (softmax - OneHot): poisoned (NaN), it shows that
    # the loss and its weighted mean do not read it.
    model, module = MODELS[name], module_of(name)
    made = counted_one_hots(module, monkeypatch)
    helper = module._one_hot
    monkeypatch.setattr(module, "_one_hot", lambda *a: helper(*a) * math.nan)
    args = classification_args(name)
    params = [module._as_tensor(a, args[0]) for a in args[2:]]
    for reduction in ("mean", "sum"):
        wanted = [True] + [False] * (len(args) - 1)
        loss, grad, *_ = module._fused(*args[:2], *params, reduction, wanted)
        assert grad.isnan().any() != (name in SCATTERED_FUSED_GRADIENTS)
        env = environment(model, args)
        expected = reduced_loss(
            model.expr, env, reduction, model.dropped, model.mean_weight
        )
        torch.testing.assert_close(
            loss, expected.to(loss.dtype), rtol=1e-12, atol=1e-12
        )
    # the poisoned helper was called (for CrossEntropy's weight gradient, which sums the
    # one-hot product): the test can see a one-hot; the other two make none at all
    assert bool(made) == (name not in {"InfoNCE", "ChannelsLastCrossEntropy"})


@pytest.mark.parametrize("name", ["NLL", "CrossEntropy"])
def test_the_row_kernels_weight_total_gathers(name: str, monkeypatch) -> None:
    module = module_of(name)
    made = counted_one_hots(module, monkeypatch)
    input, target, *params = classification_args(name)
    weight = params[0]
    params = [module._as_tensor(p, input) for p in params]  # as _run_triton gets them
    total = module._weight_total(input, target, *params, shape=input.shape)
    assert made == []
    kept = (target != -100) & (target >= 0) & (target < input.shape[1])
    expected = weight[target.clamp(0, input.shape[1] - 1)][kept].sum()
    torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)


# --- the printer, on shapes the shipped losses do not reach ------------------------------------

x = Tensor("x")
w = Tensor("w")
t = Tensor("t", index_of=1)
last = Tensor("last", index_of=-1)
scale = Param("scale")
NAMES = {x: "x", w: "w", t: "t", last: "last", scale: "scale"}


@pytest.mark.parametrize(
    ("expr", "shapes"),
    [
        # a tensor and a param laid along the dim (size 1 in the rows) times another
        (Pick(w * x, t), {"x": (4, 5), "w": (1, 5), "t": (4, 1)}),
        # a value constant along the dim (size 1 there) is its own pick
        (Pick(w * x, t), {"x": (4, 5), "w": (4, 1), "t": (4, 1)}),
        # reductions inside: over the dim (as it is) and over another dim (gathered)
        (
            Pick(x - LogSumExp(x, 1) + Sum(w, 0), t),
            {"x": (4, 5), "w": (3, 4, 5), "t": (1, 1, 5)},
        ),
        # class indices broadcast over a dim the values have
        (Pick(x * scale, t), {"x": (3, 4, 5), "t": (1, 1, 5), "scale": (5,)}),
        # counted from the end; a Pick inside a Mean; a one-hot of the same index inside
        (Mean(Pick(x, last) * x, -1), {"x": (2, 3, 4), "last": (2, 3, 1)}),
        (Pick(x * OneHot(t) + 2, t), {"x": (4, 5), "t": (4, 1)}),
        # an expression without tensors: a number picked
        (Pick(sp.Integer(3), t), {"x": (4, 5), "t": (4, 1)}),
    ],
    ids=str,
)
def test_printed_picks_gather_and_match_the_one_hot(expr, shapes) -> None:
    code = print_torch(expr, NAMES, like="x")
    assert "_pick(" in code and "_one_hot(" not in code
    generator = torch.Generator().manual_seed(3)
    used = sorted(expr.free_symbols | {x}, key=str)  # x: the dtype's tensor
    sizes = {s: shapes.get(NAMES[s], (4, 1)) for s in used}
    shape = torch.broadcast_shapes(*sizes.values())
    values: dict[sp.Symbol, torch.Tensor] = {}
    for symbol in used:
        if getattr(symbol, "index_of", None) is None:
            values[symbol] = torch.randn(
                sizes[symbol], generator=generator, dtype=torch.float64
            )
        else:  # some out of range on both sides
            classes = shape[symbol.index_of]
            values[symbol] = torch.randint(
                -1, classes + 1, sizes[symbol], generator=generator
            )
    namespace = {
        **{k: v for k, v in vars(module_of("CrossEntropy")).items() if k[0] == "_"},
        "torch": torch,
        "math": math,
        "shape": shape,
        **{NAMES[s]: v for s, v in values.items()},
    }
    got = eval(code, namespace)  # noqa: S307 - our own printer's output, in a test
    want = evaluate(expr, values)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-12, atol=1e-12)


def test_an_out_of_range_index_never_reads_out_of_bounds() -> None:
    # The one-hot's semantics, where the gather would fail (a value of infinity picked by an
    # index out of range must not leak either, as 0 * inf would in the one-hot's sum).
    module = module_of("NLL")
    value = torch.tensor([[1.0, math.inf, 3.0]])
    index = torch.tensor([[-100], [3], [2], [1]])
    shape = torch.Size([4, 3])
    picked = module._pick(module._at(value, index, 1, shape), index, 1, shape)
    assert picked.tolist() == [[0.0], [0.0], [3.0], [math.inf]]
    assert module._at(0.5, index, 1, shape) == 0.5  # a number (1 / shape[1]) as it is


def test_cse_keeps_a_pick_whole() -> None:
    # Without the stand-in, CSE takes OneHot(t) out into a temporary shared with the gradient,
    # and the Sum is no longer a Pick the printer sees.
    pick = Pick(w * (x - LogSumExp(x, 1)), t)
    gradient = w * OneHot(t) - sp.exp(x - LogSumExp(x, 1))
    steps, (loss, grad) = common_subexpressions([pick, gradient])
    assert pick_parts(loss) is not None or any(
        pick_parts(node) is not None
        for step in steps
        for node in sp.preorder_traversal(step.expr)
    )
    assert not any(isinstance(step.expr, type(OneHot(t))) for step in steps)
    everything = sp.Tuple(loss, grad, *(s.expr for s in steps))
    assert not everything.atoms(Picked)


def test_only_a_sum_of_one_hot_times_a_value_is_a_pick() -> None:
    assert pick_parts(Pick(x, t)) == (OneHot(t), x)
    assert pick_parts(Sum(OneHot(t) * x + x, 1)) is None  # the rest is summed
    assert pick_parts(Sum(OneHot(t) * x, 0)) is None  # summed along another dim
    assert pick_parts(Sum(OneHot(t) * x, (0, 1))) is None
    assert pick_parts(Mean(OneHot(t) * x, 1)) is None
    piecewise = Sum(sp.Piecewise((OneHot(t) * x, x > 0), (0, True)), 1)
    assert pick_parts(piecewise) == (OneHot(t), sp.Piecewise((x, x > 0), (0, True)))
    # a one-hot inside a nested reduction is summed there, not picked
    assert pick_parts(Sum(Sum(OneHot(t) * x, 1) * OneHot(t) * w, 1)) == (
        OneHot(t),
        Sum(OneHot(t) * x, 1) * w,
    )


def test_the_generated_nll_is_f_nll_loss() -> None:
    module = module_of("NLL")
    input, target, weight = classification_args("NLL")[:3]
    target.view(-1)[
        3
    ] = 5  # F.nll_loss has no out-of-range indices besides ignore_index
    for reduction in ("none", "mean", "sum"):
        got = module.NLLFunction.apply(input, target, weight, -100, reduction)
        want = F.nll_loss(input, target, weight, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
