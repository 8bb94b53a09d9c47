"""The compiled body (`_fused`) of losses over a class dim: what makes softmax cross-entropy's
as fast on CPU as torch.compile of the eager expression (benchmarks/RESULTS.md, "Step:
cross-entropy on CPU"), checked without timing anything:
- a Sum over the class dim of a body with a one-hot is taken apart into a Pick (one gather per
  row) and sums of what is left (reductions.distributed_sums), and label smoothing's
  Mean(weight * (x - LogSumExp(x))) no longer waits for the LogSumExp;
- a tensor's gradient that is a dense part plus a one-hot product adds the product's value by
  a scatter (_spread_onto), not by comparing every position with the index.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import shutil

import pytest
import sympy as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

from conftest import ROOT
from lossgen import LogSumExp, Mean, OneHot, Param, Sum, Tensor
from lossgen.api import load_models
from lossgen.derive import derive
from lossgen.reductions import (
    ALL,
    REDUCTION_NODES,
    DimSize,
    distributed_sums,
    one_hot_split,
    pick_parts,
    replace_outside_reductions,
)
from lossgen.reference import evaluate

CE = importlib.import_module("generated.cross_entropy")
HAS_COMPILER = bool(
    shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
)

x = Tensor("x")
t = Tensor("t", index_of=1)
w = Param("w", along=1)
ls = Param("ls")
ii = Param("ii")
C = DimSize(frozenset({1}))
SCALARS = {ls: ALL, ii: ALL}


def values(rows: int = 6, classes: int = 5) -> dict[sp.Symbol, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    index = torch.randint(0, classes, (rows, 1), generator=generator)
    index[1, 0] = -100  # ignored
    return {
        x: torch.randn(rows, classes, dtype=torch.float64, generator=generator),
        t: index,
        w: 0.5 + torch.rand(1, classes, dtype=torch.float64, generator=generator),
        ls: torch.tensor(0.2, dtype=torch.float64),
        ii: torch.tensor(-100.0, dtype=torch.float64),
        C: torch.tensor(float(classes), dtype=torch.float64),
    }


def sums_left(expr: sp.Basic) -> list[sp.Basic]:
    """The Sums and Means that are not Picks (gathers)."""
    return [
        node
        for node in sp.preorder_traversal(expr)
        if isinstance(node, (Sum, Mean)) and pick_parts(node) is None
    ]


# --- distributed_sums -------------------------------------------------------------------------

counted = sp.Ne(ii, t)
SUMS = [
    # cross-entropy's input gradient: a one-hot inside a guarded sum
    Sum(sp.Piecewise((w * (-ls / C + (ls - 1) * OneHot(t)), counted), (0, True)), 1),
    # label smoothing's mean, waiting on the LogSumExp
    Mean(w * (x - LogSumExp(x, 1)), 1),
    Sum(x - LogSumExp(x, 1), 1),
    # one-hot terms and others, scalar factors
    Sum(ls * (1 - OneHot(t)) * sp.exp(x) + 2 * OneHot(t) * x, 1),
]


@pytest.mark.parametrize("expr", SUMS, ids=str)
def test_distributed_sums_are_the_sums(expr: sp.Expr) -> None:
    rewritten = distributed_sums(expr, SCALARS)
    assert rewritten != expr
    for node in sums_left(rewritten):
        # no one-hot compared along the dim, no wait for a reduction over it
        assert not node.body.atoms(OneHot), node
        assert not node.body.atoms(*REDUCTION_NODES), node
    torch.testing.assert_close(
        evaluate(rewritten, values()), evaluate(expr, values()), rtol=1e-12, atol=1e-12
    )


def test_a_sum_over_more_dims_sums_the_pick_over_the_others() -> None:
    expr = Sum(ls * OneHot(t) * x + x * OneHot(t) + x, (1, 2))
    rewritten = distributed_sums(expr, SCALARS)
    assert rewritten != expr
    generator = torch.Generator().manual_seed(13)
    index = torch.randint(0, 4, (3, 1, 5), generator=generator)
    index[0, 0, 2] = -100
    tensors = {
        x: torch.randn(3, 4, 5, dtype=torch.float64, generator=generator),
        t: index,
        ls: torch.tensor(0.3, dtype=torch.float64),
    }
    torch.testing.assert_close(evaluate(rewritten, tensors), evaluate(expr, tensors))


@pytest.mark.parametrize(
    "expr",
    [
        Sum(x * sp.exp(x), 1),  # nothing to take apart
        Sum(sp.exp(x - LogSumExp(x, 1)) * x, 1),  # the exp would still wait: left whole
        Sum(sp.Piecewise((OneHot(t) * x, x > 0), (0, True)), 1),  # a varying condition
    ],
    ids=str,
)
def test_sums_that_gain_nothing_are_left_whole(expr: sp.Expr) -> None:
    assert distributed_sums(expr, SCALARS) == expr


def test_a_param_tensor_is_not_taken_for_a_constant() -> None:
    # Without `known`, ls may vary along the class dim: it stays inside the sums.
    expr = Sum(ls * (x - LogSumExp(x, 1)), 1)

    def outside_sums(e: sp.Expr) -> set[sp.Basic]:
        return e.replace(lambda n: isinstance(n, Sum), lambda n: sp.S.One).free_symbols

    assert ls not in outside_sums(distributed_sums(expr, {}))
    assert ls in outside_sums(distributed_sums(expr, SCALARS))
    for known in ({}, SCALARS):
        torch.testing.assert_close(
            evaluate(distributed_sums(expr, known), values()),
            evaluate(expr, values()),
        )


@functools.cache
def cross_entropy():
    (model,) = [
        m
        for m in load_models([ROOT / "specs" / "reductions.py"])
        if m.name == "CrossEntropy"
    ]
    return derive(model)


def test_cross_entropy_compiled_program_sums_no_one_hot_and_waits_for_nothing() -> None:
    derived = cross_entropy()
    assert derived.compiled is not None

    def inlined(program) -> list[sp.Expr]:  # noqa: ANN001
        steps: dict[sp.Basic, sp.Basic] = {}
        for step in program.steps:
            steps[step.symbol] = step.expr.xreplace(steps)
        return [e.xreplace(steps) for e in [program.loss, *program.gradients]]

    for expr in inlined(derived.compiled):
        for node in sums_left(expr):
            assert not node.body.atoms(OneHot), node
            assert not node.body.atoms(*REDUCTION_NODES), node
    # the fused program as derived (the Triton kernels print it) keeps both
    sums = [n for e in inlined(derived.fused) for n in sums_left(e)]
    assert any(n.body.atoms(OneHot) for n in sums)
    assert any(n.body.atoms(LogSumExp) for n in sums)


# --- one_hot_split and _spread_onto -----------------------------------------------------------


def test_one_hot_split_is_the_gradient_at_both_values_of_the_one_hot() -> None:
    p = sp.exp(x - LogSumExp(x, 1))
    expr = -p * Sum(w * OneHot(t), 1) + sp.Piecewise(
        (ls * w * OneHot(t) - w * OneHot(t) - ls * w / C, counted), (0, True)
    )
    dense, one_hot, value = one_hot_split(expr)
    assert one_hot == OneHot(t)
    for part in (dense, value):  # only the Sum's one-hot (a Pick) is left
        assert all(
            isinstance(n, Sum) and pick_parts(n) is not None
            for n in part.atoms(OneHot, Sum)
            if not isinstance(n, OneHot)
        )
        assert OneHot(t) not in replace_outside_reductions(part, OneHot(t), 0).atoms()
    for bit in (0, 1):
        whole = replace_outside_reductions(expr, OneHot(t), sp.S(bit))
        torch.testing.assert_close(
            evaluate(dense + bit * value, values()), evaluate(whole, values())
        )


@pytest.mark.parametrize(
    "expr",
    [
        x * sp.exp(x),  # no one-hot
        OneHot(t) * OneHot(t) * x,
        sp.exp(OneHot(t) * x),
    ],
    ids=str,
)
def test_what_is_not_dense_plus_one_hot_is_not_split(expr: sp.Expr) -> None:
    assert one_hot_split(expr) is None


def test_a_one_hot_product_alone_splits_with_no_dense_part() -> None:
    # render prints it with _spread (a scatter into zeros) before it asks one_hot_split
    assert one_hot_split(OneHot(t) * x) == (0, OneHot(t), x)


@pytest.mark.parametrize(
    ("shape", "dim", "argument_shape"),
    [
        ((5, 4), 1, (5, 4)),  # the whole shape: a scatter onto the dense part
        ((5, 4), 1, (1, 4)),  # summed over the rows: the dense part plus _spread
        ((2, 3, 4), -1, (2, 3, 4)),
        ((2, 4, 3), 1, (4, 3)),
    ],
)
def test_spread_onto_is_the_dense_part_plus_the_one_hot_product(
    shape, dim, argument_shape
) -> None:
    generator = torch.Generator().manual_seed(7)
    axis = dim % len(shape)
    sizes = list(shape)
    sizes[axis] = 1
    index = torch.randint(-2, shape[axis] + 2, sizes, generator=generator)
    index.view(-1)[0] = -100
    like = torch.randn(shape, dtype=torch.float64, generator=generator)
    value = torch.randn(sizes, dtype=torch.float64, generator=generator)
    positions = torch.arange(shape[axis])
    positions = positions.view([-1 if d == axis else 1 for d in range(len(shape))])
    one_hot = (index == positions).to(like.dtype)
    for dense in (like * 0.5, 0.25):
        got = CE._spread_onto(
            dense, value, index, dim, torch.Size(shape), like, argument_shape
        )
        want = (dense + one_hot * value).expand(shape).sum_to_size(argument_shape)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_generated_cross_entropy_scatters_its_input_gradient() -> None:
    source = inspect.getsource(CE._fused)
    (grad_input,) = re.findall(r"grad_input = (\w+)\(", source)
    assert grad_input == "_spread_onto"
    # the readable backward still writes the one-hot
    assert "_one_hot(" in inspect.getsource(CE.CrossEntropyFunction.backward)


# --- the compiled cross-entropy ---------------------------------------------------------------


def test_compiled_cross_entropy_matches_f_cross_entropy(monkeypatch) -> None:
    # Class weights, label smoothing, ignored rows and logits up to 1e4 (exp overflows
    # float32 past 88): the compiled fast path against torch's own cross-entropy. Inductor's
    # code compares no position with the class index (it made a one-hot before).
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setattr(CE, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(CE, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(12)
    rows, classes = 64, 48
    logits = torch.randn(rows, classes, generator=generator)
    logits[:8] *= 1e4
    logits[8:16] += 1e4
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[::7] = -100
    weight = 0.5 + torch.rand(classes, generator=generator)

    def step():  # noqa: ANN202
        x = logits.clone().requires_grad_()
        loss = CE.cross_entropy(x, target, weight, 0.1, -100.0)
        assert type(loss.grad_fn).__name__.startswith("_CrossEntropyFused")
        loss.backward()
        return loss, x.grad

    with torch._inductor.config.patch(fx_graph_cache=False):
        (loss, grad), codes = run_and_get_code(step)
    y = logits.clone().requires_grad_()
    want = F.cross_entropy(y, target, weight, label_smoothing=0.1)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, y.grad)
    assert grad[::7].abs().sum().item() == 0
    if not HAS_COMPILER:
        assert CE._compiled_fused is CE._fused
        return
    assert CE._compiled_fused is not CE._fused
    (code,) = [c for c in codes if "scatter" in c]
    assert "arange" not in code
