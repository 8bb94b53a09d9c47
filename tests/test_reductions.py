"""Reductions over dims: semantics of the generated code (shapes, dropped dims, ties, extreme
logits), the form of the derived gradients, and every check of `lossgen check` on them.

The shipped zoo (specs/reductions.py) is compared against PyTorch's own losses in
tests/test_reductions_zoo.py; this file covers the vocabulary itself.
"""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from lossgen import LogSumExp, Loss, Max, Mean, Min, OneHot, Pick, Sum, Tensor
from lossgen.api import derive_all, generate_derived
from lossgen.backprop import UPSTREAM
from lossgen.derive import derive
from lossgen.errors import SpecError
from lossgen.model import build_model
from lossgen.reductions import ALL, Reduction
from lossgen.verify import load_generated, verify_loss

SPEC = textwrap.dedent("""
    import sympy as sp
    from lossgen import Loss, LogSumExp, Max, Mean, Min, Param, Pick, Sum, Tensor

    x = Tensor("input")
    p = Tensor("target", differentiable=False)
    SoftTargetCE = Loss("SoftTargetCE", -Sum(p * (x - LogSumExp(x, 1)), 1))
    LogSoftmaxLoss = Loss("LogSoftmaxLoss", -p * (x - LogSumExp(x, -1)), reduction="sum")
    Spatial = Loss("Spatial", Mean(sp.Abs(x - p), (2, 3)) + Sum(x**2, 1))
    Everything = Loss("Everything", LogSumExp(x * p, None), reduction="none")
    Margin = Loss("Margin", Max(x - p, dim=1) - Min(x * p, dim=1) + Max(x, 0))
    t = Tensor("label", index_of=1)
    w = Param("weight", default=1.0, along=1)
    Nll = Loss("Nll", -Pick(w * x, t), mean_weight=Pick(w, t))
    temperature = Param("temperature", default=2.0)
    Nested = Loss("Nested", LogSumExp(Sum(x, 1) / temperature - Mean(x * p, 1), 0))
    """)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = tmp_path_factory.mktemp("reductions")
    spec = directory / "spec.py"
    spec.write_text(SPEC)
    derived = derive_all([spec])
    files = {f.name: f for f in generate_derived(derived)}
    modules = {}
    for loss in derived:
        modules[loss.model.name] = load_generated(files[f"{loss.model.snake_name}.py"])
    return {"derived": {d.model.name: d for d in derived}, "modules": modules}


def module_of(built: dict, name: str) -> types.ModuleType:
    return built["modules"][name]


# --- every lossgen check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "SoftTargetCE",
        "LogSoftmaxLoss",
        "Spatial",
        "Everything",
        "Margin",
        "Nll",
        "Nested",
    ],
)
def test_every_check_passes(built: dict, name: str) -> None:
    results = verify_loss(built["derived"][name], module_of(built, name))
    failed = [f"{r.check}: {r.detail}" for r in results if not r.ok]
    assert failed == []
    assert {r.check for r in results} >= {"gradcheck", "gradgradcheck", "autograd"}


# --- shapes and dropped dims ---------------------------------------------------------------------


def test_none_drops_the_dims_every_term_reduced(built: dict) -> None:
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    p = torch.softmax(torch.randn(3, 5, 2, dtype=torch.float64), 1)
    soft = module_of(built, "SoftTargetCE").soft_target_ce
    assert soft(x, p, reduction="none").shape == (3, 2)
    # F.cross_entropy with class probabilities reduces the same dim the same way
    torch.testing.assert_close(
        soft(x, p, reduction="none"), F.cross_entropy(x, p, reduction="none")
    )
    log_softmax = module_of(built, "LogSoftmaxLoss").log_softmax_loss
    elementwise = log_softmax(x.transpose(1, 2), p.transpose(1, 2), reduction="none")
    assert elementwise.shape == (3, 2, 5)  # x itself is a term: nothing dropped
    torch.testing.assert_close(
        elementwise, -p.transpose(1, 2) * torch.log_softmax(x.transpose(1, 2), -1)
    )
    everything = module_of(built, "Everything").everything
    value = everything(x, p, reduction="none")
    assert value.shape == ()
    torch.testing.assert_close(value, torch.logsumexp((x * p).flatten(), 0))


def test_mean_is_over_the_reduced_loss(built: dict) -> None:
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    p = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    spatial = module_of(built, "Spatial").spatial
    per_element = (x - p).abs().mean((2, 3), keepdim=True) + (x**2).sum(1, keepdim=True)
    assert spatial(x, p, reduction="none").shape == (4, 3, 5, 6)  # no dim in every term
    torch.testing.assert_close(spatial(x, p, reduction="mean"), per_element.mean())
    torch.testing.assert_close(spatial(x, p, reduction="sum"), per_element.sum())


def test_a_body_constant_along_the_reduced_dim_counts_every_element(
    built: dict,
) -> None:
    # Nested sums x over dim 1 of the broadcast shape; x of shape (4, 1) broadcast against
    # p of shape (4, 3) is summed 3 times, exactly as if x had been expanded first.
    x = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    p = torch.randn(4, 3, dtype=torch.float64)
    nested = module_of(built, "Nested").nested
    value = nested(x, p, 2.0, reduction="none")
    xe = x.expand(4, 3)
    expected = torch.logsumexp(
        xe.sum(1, keepdim=True) / 2.0 - (xe * p).mean(1, keepdim=True), 0
    ).reshape(())
    torch.testing.assert_close(value, expected)
    (got,) = torch.autograd.grad(value, x)
    (want,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(got, want)


# --- the gradients -------------------------------------------------------------------------------


def _reductions(expr: sp.Expr) -> list[Reduction]:
    return [node for node in sp.preorder_traversal(expr) if isinstance(node, Reduction)]


def test_cross_entropy_gradient_is_softmax_minus_target_not_a_chain(
    built: dict,
) -> None:
    derived = built["derived"]["SoftTargetCE"]
    (gradient,) = derived.gradients
    x, p = (a.symbol for a in derived.model.arguments)
    softmax = sp.exp(x - LogSumExp(x, 1))
    # Sum(p) stays: F.cross_entropy does not assume the target sums to 1 either.
    assert sp.expand(gradient.derivative - (Sum(p, 1) * softmax - p)) == 0
    # one logsumexp and one sum of the target: no reduction of a reduction's adjoint
    assert sorted(type(r).__name__ for r in _reductions(gradient.derivative)) == [
        "LogSumExp",
        "Sum",
    ]


def test_upstream_is_inside_the_derived_program(built: dict) -> None:
    derived = built["derived"]["LogSoftmaxLoss"]
    (gradient,) = derived.gradients
    # with "none" nothing is dropped, so the upstream varies along the softmax dim and must
    # be summed with it: it cannot be a factor outside the program
    program = gradient.program
    used = program.result.free_symbols.union(
        *(s.expr.free_symbols for s in program.steps)
    )
    assert UPSTREAM in used


def test_max_over_a_dim_splits_ties_like_amax(built: dict) -> None:
    margin = module_of(built, "Margin").MarginFunction
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0]], dtype=torch.float64)
    p = torch.zeros_like(x)
    p[:, 0] = 1.0  # x * p ties at 0 for the min in the first row: three zeros
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    value = margin.apply(x1, p, "sum")
    expected = (
        (x2 - p).amax(1, keepdim=True)
        - (x2 * p).amin(1, keepdim=True)
        + torch.maximum(x2, torch.zeros_like(x2))  # Max(x, 0): ties split like maximum
    ).sum()
    torch.testing.assert_close(value, expected)
    (got,) = torch.autograd.grad(value, x1)
    (want,) = torch.autograd.grad(expected, x2)
    torch.testing.assert_close(got, want)
    # tied maxima of x - p share the gradient: (3, 3) in row 0, (2, 2) in row 1
    assert got[0, 1] == got[0, 2] and got[1, 1] == got[1, 2]


def test_logits_of_magnitude_1000_in_float32(built: dict) -> None:
    soft = module_of(built, "SoftTargetCE").soft_target_ce
    x = torch.tensor([[1000.0, -1000.0, 999.0], [-1000.0, -1000.0, 1000.0]])
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    x1 = x.clone().requires_grad_()
    x2 = x.double().requires_grad_()
    value = soft(x1, p, reduction="sum")
    expected = F.cross_entropy(x2, p.double(), reduction="sum")
    (got,) = torch.autograd.grad(value, x1)
    (want,) = torch.autograd.grad(expected, x2)
    assert torch.isfinite(value) and torch.isfinite(got).all()
    # float32 keeps ~7 digits of a logsumexp near 1000: errors of ~1e-4 absolute are rounding
    torch.testing.assert_close(value.double(), expected, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_weighted_mean_and_laid_along_weights(built: dict) -> None:
    nll = module_of(built, "Nll").nll
    logp = torch.log_softmax(torch.randn(4, 3, 2, 2, dtype=torch.float64), 1)
    labels = torch.randint(0, 3, (4, 2, 2))
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64, requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        x1 = logp.clone().requires_grad_()
        x2 = logp.clone().requires_grad_()
        ours = nll(x1, labels, weight, reduction=reduction)
        theirs = F.nll_loss(x2, labels, weight.detach(), reduction=reduction)
        torch.testing.assert_close(ours, theirs)
        seed = torch.rand_like(ours)
        (got,) = torch.autograd.grad(ours, x1, seed)
        (want,) = torch.autograd.grad(theirs, x2, seed)
        torch.testing.assert_close(got, want)
    # torch has no gradient for nll_loss's weight; ours is checked against autograd of the
    # weighted mean written out
    ours = nll(logp, labels, weight, reduction="mean")
    picked = torch.gather(logp, 1, labels.unsqueeze(1))
    w = weight[labels.unsqueeze(1)]
    expected = -(w * picked).sum() / w.sum()
    (got,) = torch.autograd.grad(ours, weight)
    (want,) = torch.autograd.grad(expected, weight)
    torch.testing.assert_close(got, want)


def test_functional_matches_module_and_function(built: dict) -> None:
    module = module_of(built, "SoftTargetCE")
    x = torch.randn(5, 4, dtype=torch.float64)
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    for reduction in ("none", "mean", "sum"):
        a = module.soft_target_ce(x, p, reduction=reduction)
        b = module.SoftTargetCEFunction.apply(x, p, reduction)
        c = module.SoftTargetCE(reduction=reduction)(x, p)
        assert torch.equal(a, b) and torch.equal(a, c)


# --- the model --------------------------------------------------------------------------------


def _model(expr: sp.Expr, **options: object):  # noqa: ANN202
    return build_model(Loss("Probe", expr, **options), "spec.py")


def test_dropped_dims() -> None:
    x, p = Tensor("x"), Tensor("p")
    t = Tensor("t", index_of=1)
    assert _model(Sum(x, 1) * 2).dropped == frozenset({1})
    assert _model(Sum(x, (1, 2)) + Mean(p, 1)).dropped == frozenset({1})
    assert _model(x - LogSumExp(x, 1)).dropped == frozenset()
    assert _model(LogSumExp(x, None)).dropped == ALL
    assert _model(-Pick(x, t)).dropped == frozenset({1})
    assert _model(x**2).dropped == frozenset() and not _model(x**2).reduces


def test_max_without_dim_is_elementwise() -> None:
    x = Tensor("x")
    assert Max(x, 0) == sp.Max(x, 0) and Min(x, 1) == sp.Min(x, 1)
    assert not _reductions(Max(x, 0))


def test_one_hot_and_pick() -> None:
    t = Tensor("t", index_of=-1)
    x = Tensor("x")
    assert Pick(x, t) == Sum(OneHot(t) * x, -1)
    assert not t.differentiable
    model = _model(-Pick(x, t))
    assert [a.name for a in model.differentiable] == ["x"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x, t: Sum(x, 1) + Sum(x, -1), "mix negative and non-negative"),
        (lambda x, t: Sum(x, (1, 1)), "names a dim twice"),
        (lambda x, t: Sum(x, ()), "reduces nothing"),
        (lambda x, t: Sum(x, 1.5), "must be an int"),
        (lambda x, t: OneHot(x), "index_of"),
        (lambda x, t: Pick(t, t) * 0 + Sum(OneHot(t), 1), "values too"),
    ],
)
def test_bad_reductions_are_spec_errors(make, message: str) -> None:  # noqa: ANN001
    x = Tensor("x")
    t = Tensor("t", index_of=1)
    with pytest.raises(SpecError, match=message):
        _model(make(x, t))


def test_mean_weight_must_match_the_loss_shape() -> None:
    x, w = Tensor("x"), Tensor("w", differentiable=False)
    with pytest.raises(SpecError, match="mean_weight must give one weight per element"):
        _model(Sum(x, 1), mean_weight=w)
    assert _model(Sum(x * w, 1), mean_weight=Sum(w, 1)).mean_weight is not None


def test_derivation_of_cross_entropy_is_deterministic() -> None:
    # derive twice: identical programs
    t = Tensor("t", index_of=1)
    x = Tensor("x")
    model = _model(-Pick(x - LogSumExp(x, 1), t))
    first, second = derive(model), derive(model)
    assert first.gradients == second.gradients


def test_spec_files_error_at_their_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.py"
    spec.write_text(
        "from lossgen import Loss, Sum, Tensor\n"
        "x = Tensor('x')\n"
        "L = Loss('Bad', Sum(x, 1) + Sum(x, -1))\n"
    )
    with pytest.raises(SpecError) as error:
        derive_all([spec])
    assert "bad.py:3" in str(error.value) and "'Bad'" in str(error.value)


def test_ties_of_max_over_a_dim_are_sampled_on_purpose(built: dict) -> None:
    from lossgen.verify import LossCase

    derived = built["derived"]["Margin"]
    case = LossCase(derived.model, module_of(built, "Margin"))
    samples = list(case.samples_with_ties())
    assert samples
    x, p = samples[0].values
    # at least one row where the max of x - p over dim 1 is attained twice
    body = x - p
    top = body.amax(1, keepdim=True)
    assert bool(((body == top).sum(1) > 1).any())
    kinks = case.at_kinks()
    assert kinks.ok and kinks.detail.endswith("kink samples")


def test_a_param_varying_along_a_dropped_dim_is_a_clear_error(built: dict) -> None:
    nested = module_of(built, "Nested").nested
    x = torch.randn(4, 3, dtype=torch.float64)
    p = torch.randn(4, 3, dtype=torch.float64)
    # temperature divides a sum over dim 1 at the top level: one value per row is fine ...
    nested(x, p, torch.tensor(2.0, dtype=torch.float64))
    # ... one value per class is not: the loss would vary along the dims it drops
    with pytest.raises(ValueError, match="varies along a dim it reduces away"):
        nested(x, p, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_terms_every_branch_adds_are_hoisted_out_of_the_piecewise() -> None:
    from lossgen.derive import hoist_common_terms

    a, b, c = sp.symbols("a b c", real=True)
    folded = sp.Piecewise((c * (a + b), a > 0), (c * b, True))
    hoisted = hoist_common_terms(folded)
    assert hoisted == b * c + sp.Piecewise((a * c, a > 0), (0, True))
    x = sp.Symbol("x", real=True)
    for value in (-1.5, 2.0):
        point = {a: value, b: 3.0, c: 0.5, x: 0}
        assert float(hoisted.subs(point)) == float(folded.subs(point))
    # nothing in common: unchanged
    untouched = sp.Piecewise((a, a > 0), (b, True))
    assert hoist_common_terms(untouched) == untouched


def test_show_prints_reductions_class_indices_and_dropped_dims(tmp_path: Path) -> None:
    from lossgen.api import show

    spec = tmp_path / "spec.py"
    spec.write_text(SPEC)
    text = show([spec])
    assert "Sum[dim=1](" in text and "LogSumExp[dim=-1](" in text
    assert "tensor label (class indices into dim 1)" in text
    assert "param weight (default 1.0, a 1-D value lies along dim 1)" in text
    assert 'reduction="none" drops dims: all' in text  # Everything
    assert "mean weighted by =" in text  # Nll
