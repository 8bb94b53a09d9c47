"""The fused body as torch.compile runs it (`_fused`): what it computes and how it compiles.

Two things make it faster on CPU than torch.compile of the eager expression, and both are
checked here without timing anything:
- softplus and sigmoid of one argument share one exp(-|u|) (compiled_body.shared_exponentials), with
  the accuracy of torch's own functions at every magnitude;
- the gradients come before the loss and Inductor's reorder_for_locality is off, so its CPU
  backend computes the gradients and the loss's sum in one loop over the inputs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import re
import shutil
import types

import mpmath
import pytest
import sympy as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

from conftest import ROOT
from lossgen import LogSumExp, Loss, Sum, Tensor
from lossgen.api import load_models
from lossgen.compiled_body import recomputed_after_reductions, shared_exponentials
from lossgen.derive import derive
from lossgen.functions import logsigmoid, sigmoid, softplus
from lossgen.model import LossModel, build_model
from lossgen.printer import print_torch
from lossgen.program import fused_program
from lossgen.vocabulary import guarded

x = sp.Symbol("x", real=True)
y = sp.Symbol("y", real=True)
HAS_COMPILER = bool(
    shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
)


@functools.cache
def models() -> dict[str, LossModel]:
    specs = sorted(str(path) for path in (ROOT / "specs").glob("*.py"))
    return {model.name: model for model in load_models(specs)}


def module_of(name: str) -> tuple[LossModel, types.ModuleType]:
    """The committed generated module (test_golden keeps it what lossgen builds)."""
    model = models()[name]
    return model, importlib.import_module(f"generated.{model.snake_name}")


def exponentials(expr: sp.Basic) -> set[sp.Basic]:
    return set(expr.atoms(sp.exp))


# --- the rewrite ------------------------------------------------------------------------------


def test_softplus_and_sigmoid_of_one_argument_share_one_exponential() -> None:
    loss, gradient = shared_exponentials([softplus(-x * y), -y * sigmoid(-x * y)])
    assert not (loss.atoms(softplus) | gradient.atoms(sigmoid))
    assert exponentials(loss) == exponentials(gradient) == {sp.exp(-sp.Abs(x * y))}


def test_both_signs_and_logsigmoid_share_it_too() -> None:
    exprs = [logsigmoid(x), sigmoid(-x), sigmoid(x)]
    lowered = shared_exponentials(exprs)
    assert not any(e.atoms(softplus, sigmoid, logsigmoid) for e in lowered)
    assert set().union(*(exponentials(e) for e in lowered)) == {sp.exp(-sp.Abs(x))}
    # |x| in the argument: SymPy keeps Abs(-Abs(x)), the key must not
    lowered = shared_exponentials([softplus(x), sigmoid(-sp.Abs(x))])
    assert set().union(*(exponentials(e) for e in lowered)) == {sp.exp(-sp.Abs(x))}


@pytest.mark.parametrize(
    "exprs",
    [[sigmoid(x)], [softplus(x) + x], [softplus(x), sigmoid(y)], [x**2, sp.exp(x)]],
    ids=["sigmoid alone", "softplus alone", "different arguments", "neither"],
)
def test_what_shares_nothing_is_left_as_it_is(exprs: list[sp.Expr]) -> None:
    # torch.sigmoid alone is one exp and one division: cheaper than the shared form
    assert shared_exponentials(exprs) == exprs


def special_values(dtype: torch.dtype) -> torch.Tensor:
    limit = 800 if dtype == torch.float64 else 110  # past exp's overflow and underflow
    ramp = torch.linspace(-limit, limit, 4001, dtype=torch.float64)
    tiny = torch.logspace(-30, 1, 200, dtype=torch.float64)
    fixed = [0.0, -0.0, 1e-300, 20.0, 88.7, 88.8, -88.8, -103.9, 1e30, -1e30]
    return torch.cat([ramp, tiny, -tiny, torch.tensor(fixed, dtype=torch.float64)]).to(
        dtype
    )


def exact(function: str, value: float) -> float:
    """The exactly rounded value at 50 digits (mpmath), as a Python float."""
    with mpmath.workdps(50):
        v = mpmath.mpf(value)
        if function == "sigmoid":
            return float(1 / (1 + mpmath.exp(-v)))
        if function == "softplus":
            return float(mpmath.log1p(mpmath.exp(v)))
        return float(-mpmath.log1p(mpmath.exp(-v)))  # logsigmoid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_shared_forms_are_as_accurate_as_torch_at_every_magnitude(
    dtype: torch.dtype,
) -> None:
    # Printed as the fused body prints them, run eagerly; each value's error against the
    # exact value is at most torch's own error (sigmoid, softplus, logsigmoid) or 2 ulp.
    functions = {
        "sigmoid": (sigmoid(x), torch.sigmoid),
        "softplus": (softplus(x), F.softplus),
        "logsigmoid": (logsigmoid(x), F.logsigmoid),
    }
    lowered = shared_exponentials([f for f, _ in functions.values()])
    values = special_values(dtype)
    ulp = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny  # below it (subnormals) compare absolutely
    for (name, (_, theirs)), expr in zip(functions.items(), lowered):
        code = print_torch(expr, {x: "x"}, "x", compiled=True)
        ours = eval(
            code, {"torch": torch, "x": values}
        )  # noqa: S307 - our own printout
        truth = torch.tensor(
            [exact(name, v) for v in values.tolist()], dtype=torch.float64
        )
        scale = truth.abs().clamp_min(tiny)
        our_error = ((ours.double() - truth).abs() / scale).nan_to_num(0.0)
        their_error = ((theirs(values).double() - truth).abs() / scale).nan_to_num(0.0)
        bad = our_error > torch.maximum(their_error, torch.full_like(truth, 2 * ulp))
        assert not bad.any(), (name, values[bad], ours[bad], truth[bad])
        assert torch.isfinite(ours).all()


def test_shared_forms_keep_torchs_special_values() -> None:
    values = torch.tensor([0.0, -0.0, torch.inf, -torch.inf, torch.nan])
    lowered = shared_exponentials([sigmoid(x), softplus(x), logsigmoid(x)])
    theirs = [torch.sigmoid, F.softplus, F.logsigmoid]
    for expr, function in zip(lowered, theirs):
        code = print_torch(expr, {x: "x"}, "x", compiled=True)
        ours = eval(
            code, {"torch": torch, "x": values}
        )  # noqa: S307 - our own printout
        torch.testing.assert_close(ours, function(values), equal_nan=True)


# --- the generated fused bodies ---------------------------------------------------------------

SHARING = [
    "BCEWithLogits",
    "WeightedBCEWithLogits",
    "SoftMargin",
    "NaiveSoftMargin",
    "NaiveBCE",
    "SigmoidFocal",
]


@pytest.mark.parametrize("name", SHARING)
def test_generated_fused_body_computes_one_exponential_of_the_logit(name: str) -> None:
    # The readable Function keeps torch.sigmoid and softplus; _fused computes exp(-|u|) once.
    _, module = module_of(name)
    source = inspect.getsource(module._fused)
    assert "sigmoid" not in source and "softplus" not in source
    # SigmoidFocal also exponentiates its two gamma terms, exp(-gamma * softplus(+-u)); its
    # loss and gradients share them (derive keeps the loss's softplus inside the exponents)
    assert source.count("torch.exp(") == (3 if name == "SigmoidFocal" else 1)


def logits_and_targets(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    grid = torch.linspace(-100, 100, 201, dtype=torch.float64)
    spread = torch.randn(199, generator=generator, dtype=torch.float64)
    spread *= torch.logspace(-3, 2, 199, dtype=torch.float64)
    logits = torch.cat([grid, spread]).to(dtype)
    target = torch.rand(logits.shape, generator=generator, dtype=dtype)
    target[::3] = 0.0
    target[1::3] = 1.0
    return logits, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", SHARING)
def test_fused_body_matches_the_reference_at_extreme_logits(
    name: str, dtype: torch.dtype, monkeypatch
) -> None:
    # Logits up to |x| = 100 (exp overflows float32 past 88), every gradient, against the
    # readable Function with its torch.sigmoid and softplus.
    model, module = module_of(name)
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "COMPILE", False)
    logits, target = logits_and_targets(dtype)
    tensors = {"input": logits, "target": target}
    tensors["label"] = torch.where(target > 0.5, 1.0, -1.0).to(dtype)
    args = []
    for argument in model.arguments:
        if argument.is_tensor:
            args.append(tensors[argument.name])
        else:
            args.append(torch.tensor(argument.default or 0.7, dtype=dtype))
    wanted = [argument.differentiable for argument in model.arguments]
    for reduction in ("mean", "sum"):
        ours = [a.clone().requires_grad_(w) for a, w in zip(args, wanted)]
        theirs = [a.clone().requires_grad_(w) for a, w in zip(args, wanted)]
        value = getattr(module, model.snake_name)(*ours, reduction=reduction)
        assert type(value.grad_fn).__name__.endswith("FusedBackward")
        expected = getattr(module, f"{model.name}Function").apply(*theirs, reduction)
        grads = torch.autograd.grad(value, [a for a in ours if a.requires_grad])
        expected_grads = torch.autograd.grad(
            expected, [a for a in theirs if a.requires_grad]
        )
        torch.testing.assert_close(value, expected)
        for got, want in zip(grads, expected_grads):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want)


# --- how Inductor compiles it -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["Cauchy", "SoftMargin"])
def test_compiled_fused_body_is_one_loop_over_the_inputs(
    name: str, monkeypatch
) -> None:
    # Inductor's CPU backend fuses a pointwise node into a later reduction's loop only: with
    # the loss's sum first (its reorder_for_locality pass puts it first), the gradient takes a
    # second loop that reads every input again. 4096 elements: no vector tail loop.
    from torch._inductor.utils import run_and_get_code

    model, module = module_of(name)
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(4)
    tensors = [torch.randn(4096, generator=generator) for _ in model.tensors]
    params = [torch.tensor(0.9) for _ in model.params]
    needs_grad = (True,) + (False,) * (len(model.arguments) - 1)
    with torch._inductor.config.patch(fx_graph_cache=False):
        (loss, grad, *_), codes = run_and_get_code(
            module._run_fused, *tensors, *params, "mean", needs_grad
        )
    expected = module._fused(*tensors, *params, "mean", needs_grad)
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(grad, expected[1])
    if not HAS_COMPILER:  # no C++ compiler: _run_fused fell back to plain torch
        assert module._compiled_fused is module._fused
        return
    (code,) = codes
    loops = re.findall(r"for\s*\(\s*int64_t x0\s*=[^;]*;\s*x0\s*<\s*[^;]*4096", code)
    assert len(loops) == 1, code


def test_an_argument_with_a_branch_keeps_the_torch_functions() -> None:
    # Found by test_fuzz: (u >= 0) for u = Piecewise(...) + ... is an ITE, which the printer
    # cannot print; the fused body then keeps torch.sigmoid and softplus.
    p = sp.Symbol("p", real=True)
    u = sp.Piecewise((x, p > 0), (p, True)) + sp.exp(sp.tanh(x))
    exprs = [softplus(-sp.Abs(u)), sigmoid(-sp.Abs(u)) * sp.sign(u)]
    assert shared_exponentials(exprs) == exprs


def test_a_loss_over_dims_shares_only_between_sigmoids() -> None:
    # Its loss's sums over a dim and its elementwise gradient take separate loops: an
    # exp(-|u|) that only the sharing makes both need would be stored as a whole tensor.
    assert shared_exponentials([softplus(x), sigmoid(x)], sigmoids_only=True) == [
        softplus(x),
        sigmoid(x),
    ]
    lowered = shared_exponentials([sigmoid(x), sigmoid(-x)], sigmoids_only=True)
    assert set().union(*(exponentials(e) for e in lowered)) == {sp.exp(-sp.Abs(x))}
    _, module = module_of("MultiLabelSoftMargin")
    source = inspect.getsource(module._fused)
    assert "torch.sigmoid(" in source and "softplus(" in source
    for name in ("Dice", "Tversky", "FocalTversky"):
        source = inspect.getsource(module_of(name)[1]._fused)
        assert "sigmoid" not in source and source.count("torch.exp(") == 1, name


# --- expm1 where torch.compile runs it ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_written_out_expm1_is_torchs_within_two_ulps(dtype: torch.dtype) -> None:
    # Inductor's CPU code computes expm1 as exp(x) - 1: at 1e-9 that is 0. The generated
    # _expm1, compiled, keeps every digit (Welsch's and JensenShannon's fused bodies use it).
    _, module = module_of("Welsch")
    compiled = torch.compile(module._expm1, fullgraph=True)
    x = torch.cat(
        [
            torch.logspace(-12, 2.3, 20000, dtype=dtype),
            -torch.logspace(-12, 3, 20000, dtype=dtype),
            torch.tensor(
                [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 88.0, 700.0], dtype=dtype
            ),
        ]
    )
    got = compiled(x)
    want = torch.expm1(x.double())
    finite = torch.isfinite(want.to(dtype)) & (want != 0)
    error = (got.double() - want).abs()[finite] / want.abs()[finite]
    assert float(error.max()) <= 2 * torch.finfo(dtype).eps
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    expected = torch.expm1(special)
    result = compiled(special)
    assert torch.equal(result.isnan(), expected.isnan())
    assert torch.equal(result.nan_to_num(), expected.nan_to_num())
    assert torch.equal(result.signbit(), expected.signbit())


@pytest.mark.skipif(
    not HAS_COMPILER, reason="torch.compile on CPU needs a C++ compiler"
)
def test_compiled_welsch_keeps_the_loss_of_small_residuals(monkeypatch) -> None:
    _, module = module_of("Welsch")
    monkeypatch.setattr(module, "_compiled_fused", None)
    input = torch.zeros(1 << 16, dtype=torch.float32, requires_grad=True)
    target = torch.full((1 << 16,), 1e-4)
    value = module.welsch(input, target)
    assert "Fused" in type(value.grad_fn).__name__
    assert module._compiled_fused is not module._fused  # compiled, not the fallback
    expected = module.WelschFunction.apply(input, target, 1.0, "mean")
    # float32 sums of 65536 terms in another order (it was 0 with Inductor's expm1)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=0)


# --- what Inductor stores between a reduction's loop and the gradient's -----------------------


def _read_by_reductions(program) -> set[sp.Basic]:
    """The steps some reduction's body reads, directly or through other steps."""
    read: set[sp.Basic] = set()
    for expr in (*(s.expr for s in program.steps), program.loss, *program.gradients):
        for node in sp.preorder_traversal(expr):
            if isinstance(node, Sum | LogSumExp):
                read |= node.args[0].free_symbols
    for step in reversed(program.steps):
        if step.symbol in read:
            read |= step.expr.free_symbols
    return read


def test_values_a_sum_and_the_gradient_read_are_recomputed_for_the_gradient() -> None:
    # Two transcendental values (a softmax weight a and log1p(a)) in the sum and outside it.
    t = Tensor("t")
    u = Tensor("u")
    a = sp.exp(u - LogSumExp(u, 1))
    terms = a * t * sp.log(1 + a)
    program = fused_program([Sum(terms, 1), terms - a * Sum(terms, 1)])
    assert not program.gradient_steps
    recomputed = recomputed_after_reductions(program)
    (own,) = recomputed.gradient_steps
    (gradient,) = recomputed.gradients
    outside = gradient.xreplace({node: 0 for node in gradient.atoms(Sum)})
    shared = {s.symbol for s in recomputed.steps} & outside.free_symbols
    assert not shared & _read_by_reductions(recomputed)
    # the same values, and the LogSumExp computed once: taken out of the copied step
    every = [*recomputed.steps, *own]
    assert sum(len(s.expr.atoms(LogSumExp)) for s in every) == 1
    assert sum(len(s.expr.atoms(sp.exp)) for s in own) == 1
    values = {t: sp.Rational(1, 3), u: sp.Rational(1, 2)}
    lse = sp.Symbol("lse")

    def value(expr: sp.Basic, steps) -> sp.Basic:
        for step in reversed(steps):
            expr = expr.xreplace({step.symbol: step.expr})
        expr = expr.replace(lambda n: isinstance(n, Sum), lambda n: n.args[0])
        return expr.replace(lambda n: isinstance(n, LogSumExp), lambda n: lse)

    before = value(program.gradients[0], program.steps).subs(values)
    after = value(gradient, every).subs(values)
    assert sp.simplify(before - after) == 0


def test_one_transcendental_value_stays_shared() -> None:
    # Inductor writes the gradient over the one tensor it stores: recomputing gains no memory
    # (Dice: 2.6x the time and a second tensor, see the docstring)
    t = Tensor("t")
    u = Tensor("u")
    a = sp.exp(-u)
    program = fused_program([Sum(a * t, 1) / Sum(a, 1), a * (1 - a) * t / Sum(a, 1)])
    assert recomputed_after_reductions(program) is program
    for name in ("Dice", "Tversky", "FocalTversky", "SoftCrossEntropy", "CrossEntropy"):
        source = inspect.getsource(module_of(name)[1]._fused)
        assert "Computed again" not in source, name


@pytest.mark.skipif(
    not HAS_COMPILER, reason="torch.compile on CPU needs a C++ compiler"
)
@pytest.mark.parametrize("needs_grad", [(True, False), (True, True)], ids=["p", "both"])
def test_jensen_shannon_stores_no_whole_tensor_but_its_gradients(
    needs_grad: tuple[bool, bool], monkeypatch
) -> None:
    # Its softmax weights (exp), their log-mean (logaddexp) and their products are read by the
    # loop of a sum over the classes and by the gradient's later loop: shared, Inductor stored
    # each as a whole tensor (4 of them for one gradient, 7 for both); recomputed in each
    # gradient's own steps (compiled_body.recomputed_after_reductions), only the gradients are.
    from torch._inductor.utils import run_and_get_code

    _, module = module_of("JensenShannon")
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)
    generator = torch.Generator().manual_seed(5)
    rows, classes = 48, 160
    p, q = (torch.randn(rows, classes, generator=generator) for _ in range(2))
    with torch._inductor.config.patch(fx_graph_cache=False):
        (loss, *grads), codes = run_and_get_code(
            module._run_fused, p, q, "mean", needs_grad
        )
    assert module._compiled_fused is not module._fused  # compiled, not the fallback
    expected = module._fused(p, q, "mean", needs_grad)
    torch.testing.assert_close(loss, expected[0])
    for got, want in zip(grads, expected[1:]):
        torch.testing.assert_close(got, want)
    (code,) = codes
    whole = re.findall(rf"empty_strided_cpu\(\({rows}, {classes}\)", code)
    assert len(whole) == sum(needs_grad), code


@pytest.mark.parametrize("over_dims", [False, True], ids=["elementwise", "over dims"])
def test_the_fused_body_leaves_its_branches_unguarded(over_dims: bool) -> None:
    # The readable backward guards a branch's log and division where the branch is not
    # taken (its double backward would see 0 * inf). The fused body is never differentiated:
    # where() drops the branch not taken, inf or NaN alike, so a guard is only more work.
    x, y = Tensor("input"), Tensor("target")
    branchy = sp.Piecewise((y * sp.log(x), x > 0), (0, True))
    if over_dims:
        branchy += Sum(x * y, 1)
    derived = derive(build_model(Loss("Branchy", branchy), "spec.py"))
    readable = [s.expr for s in derived.shared_backward_steps]
    for gradient in derived.gradients:
        readable += [s.expr for s in gradient.program.steps] + [gradient.program.result]
    fused = derived.compiled or derived.fused
    fused_exprs = [s.expr for s in fused.steps] + list(fused.gradients)
    assert any(e.has(guarded) for e in readable)
    assert not any(e.has(guarded) for e in fused_exprs)
