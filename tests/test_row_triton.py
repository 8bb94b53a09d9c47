"""The row kernels of losses that reduce over one dim (lossgen.row_kernel): each shipped one run by
Triton's interpreter on CPU (TRITON_INTERPRET=1) against the readable reference Function, with
rows longer than ROW_BLOCK (several blocks per row, the last partial); extreme logits (the
online max); the dims and arguments where the torch fast path stays; GRAD_IN_PLACE; and
cross-entropy's kernel compiled ahead of time for a CUDA GPU (no GPU needed).

triton is a test dependency (the `test` extra): these tests fail, not skip, without it.
"""

from __future__ import annotations

import functools
import inspect
import re

import pytest
import sympy as sp
import torch
import triton
import triton.language as tl
from cuda_compile import CUDA
from triton.compiler import ASTSource
from triton.runtime import JITFunction

from conftest import ROOT, value_and_grads
from lossgen.reference import evaluate
from lossgen.row_kernel import polynomial_terms
from lossgen.verify import environment
from row_cases import MODELS, ROW, ROW_LOSSES, arguments, kernel_gradients, module_of

pytestmark = [
    # A kernel that fails falls back to torch with a RuntimeWarning: fail the test instead.
    pytest.mark.filterwarnings("error:.*the Triton kernel failed:RuntimeWarning"),
    # numpy, running the interpreter, warns of what the lanes past the end compute (the
    # kernel masks them out).
    pytest.mark.filterwarnings(
        "ignore:(invalid value|divide by zero|overflow) encountered"
    ),
]

ROW_BLOCK = 16


def test_the_losses_over_one_dim_get_a_row_kernel() -> None:
    # What declines: Chamfer reduces over dims 1 and 2 (two different rows); Dice, Tversky
    # and FocalTversky over (2, 3) together.
    assert set(ROW_LOSSES) >= {
        "CrossEntropy",
        "SoftCrossEntropy",
        "ChannelsLastCrossEntropy",
        "InfoNCE",
        "NLL",
        "MulticlassHinge",
        "MultiMargin",
        "DirectedChamfer",
        "JensenShannon",
    }
    assert not {"Chamfer", "Dice", "Tversky", "FocalTversky"} & set(ROW_LOSSES)
    for name in ROW_LOSSES:  # the elementwise kernel's helpers, shared
        module = module_of(MODELS[name])
        assert hasattr(module, "_triton_applies") and hasattr(module, "_triton_failed")


def test_cross_entropy_reads_the_logits_twice() -> None:
    # Its loss's Mean(weight*(input - lse)) and Pick(weight*(input - lse)) are split into
    # reductions of the logits (Mean(weight*input) - lse*weight, ...): one pass accumulates
    # them with the LogSumExp, the other writes the gradient. JensenShannon's sums of
    # exp(x - lse)*(...) cannot be split: a pass more.
    for name, passes in (("CrossEntropy", 2), ("InfoNCE", 2), ("JensenShannon", 3)):
        source = inspect.getsource(module_of(MODELS[name])._load_triton)
        assert (
            source.count("for start in range(0, row_size, row_block)") == passes
        ), name


def test_sums_of_one_hots_are_gathered_not_accumulated() -> None:
    # Pick(x, target) = Sum(OneHot(target)*x): x[target], loaded once per row. Cross-entropy's
    # first pass keeps only its LogSumExp and label smoothing's Mean(weight*input); NLL has no
    # pass before the gradient's; MultiMargin's Mean((1 - OneHot)*relu(...)) is the mean over
    # every class less the target's term.
    for name, accumulated in (
        ("CrossEntropy", "tmp0, tmp1"),
        ("InfoNCE", "tmp0"),
        ("NLL", None),
        ("MultiMargin", "tmp0, tmp1"),
    ):
        source = inspect.getsource(module_of(MODELS[name])._load_triton)
        passes = re.findall(r"# pass 1 over the row: (.*)", source)
        assert passes == ([accumulated] if accumulated else []), name
        assert " == columns)" not in source.split("if last_pass:")[0], name
        gathered = re.findall(r"_(\w+?)_at_(\w+) = tl.load\(", source)
        assert gathered == [
            ("similarity", "positive") if name == "InfoNCE" else ("input", "target")
        ], name


def test_polynomial_terms_split_sums_of_row_values() -> None:
    x, w, r, s = sp.symbols("x w r s", real=True)
    c = sp.Symbol("c", positive=True)
    assert polynomial_terms(w * (x - r), {r}) == {1: w * x, r: -w}
    assert polynomial_terms((x - r) ** 2 * s, {r, s}) == {
        s: x**2,
        r * s: -2 * x,
        r**2 * s: 1,
    }
    piecewise = sp.Piecewise((x - r, c > 1), (0, True))
    terms = polynomial_terms(piecewise, {r})
    assert sp.simplify(sum(m * k for m, k in terms.items()) - piecewise) == 0
    assert polynomial_terms(sp.exp(x - r), {r}) is None  # exp(x)*exp(-r) could overflow
    assert polynomial_terms(sp.Piecewise((x, r > 1), (0, True)), {r}) is None


@pytest.fixture
def interpreted(interpreted_kernel):
    """interpreted_kernel with rows of several blocks, the last partial."""
    return functools.partial(interpreted_kernel, ROW_BLOCK=ROW_BLOCK, ROW_MIN=0)


def compare(model, module, args, wanted, reduction, grad_scale, **tolerance) -> None:
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    value, grads = value_and_grads(functional, args, wanted, reduction, grad_scale)
    assert type(value.grad_fn).__name__.startswith(f"_{model.name}Fused")
    expected, expected_grads = value_and_grads(
        function.apply, args, wanted, reduction, grad_scale, keyword=False
    )
    assert value.dtype == expected.dtype
    torch.testing.assert_close(value, expected, **tolerance)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ROW_LOSSES)
def test_row_kernel_matches_reference(
    name: str, dtype: torch.dtype, interpreted
) -> None:
    model = MODELS[name]
    module = module_of(model)
    launches = interpreted(module)
    args = arguments(model, dtype, seed=21)
    for index, argument in enumerate(model.arguments):
        if argument.name == "target" and argument.index_of is not None:
            args[index][0] = -100  # an ignored row, where ignore_index is a param
            args[index][1] = ROW - 1  # the last class: in the last, partial block
    every = kernel_gradients(model)
    # every gradient the kernel computes with "mean"; the first tensor's only with "sum",
    # where grad_output 2.5 makes backward rescale the saved gradient
    # float32: InfoNCE's logits s / 0.07 reach ~100, where exp's argument carries ~1e-5
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    for wanted, reduction, grad_scale in (
        (every, "mean", 1.0),
        (every[:1], "sum", 2.5),
    ):
        compare(model, module, args, wanted, reduction, grad_scale, **tolerance)
    rows = args[0].numel() // ROW
    assert launches == [rows, rows]  # the kernel ran, one program per row, each time


def test_param_gradients_are_summed_from_one_partial_per_row(interpreted) -> None:
    # a learned temperature; label smoothing; the class weight's gradient (it needs the
    # weighted mean's total loss, which no row knows) is left to torch
    assert kernel_gradients(MODELS["InfoNCE"]) == [0, 2]
    assert kernel_gradients(MODELS["CrossEntropy"]) == [0, 3, 4]
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    args = arguments(model, torch.float64, seed=29)
    compare(model, module, args, [0, 2, 3], "mean", 1.0)
    assert launches == []
    compare(model, module, args, [0, 3], "sum", 1.5)
    assert launches == [5]


def test_cross_entropy_with_ignored_targets_and_label_smoothing(interpreted) -> None:
    # F.cross_entropy itself, its weighted mean counting only the rows not ignored
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    generator = torch.Generator().manual_seed(22)
    input = torch.randn(8, ROW, generator=generator, dtype=torch.float64)
    target = torch.randint(0, ROW, (8,), generator=generator)
    target[[1, 4, 5]] = -100
    for smoothing in (0.0, 0.25):
        x = input.clone().requires_grad_()
        value = module.cross_entropy(x, target, label_smoothing=smoothing)
        value.backward()
        y = input.clone().requires_grad_()
        expected = torch.nn.functional.cross_entropy(
            y, target, label_smoothing=smoothing
        )
        expected.backward()
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(x.grad, y.grad)
    assert launches == [8, 8]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["CrossEntropy", "SoftCrossEntropy", "InfoNCE"])
def test_extreme_logits_take_the_online_max(name, dtype, interpreted) -> None:
    # ±1e4 in one row, the largest in a later block than the first: exp(1e4) overflows in
    # any dtype unless the running max is subtracted and rescaled as it grows.
    model = MODELS[name]
    module = module_of(model)
    launches = interpreted(module)
    args = arguments(model, dtype, seed=23)
    logits = args[0]
    logits[0, 3] = -1e4
    logits[0, 20] = 1e4
    logits[1, 35] = 1e4
    logits[2, :] = -1e4
    value, grads = value_and_grads(
        getattr(module, model.snake_name), args, [0], "mean", 1.0
    )
    assert launches == [logits.shape[0]]
    assert torch.isfinite(value) and torch.isfinite(grads[0]).all()
    # against the reference Function (torch.logsumexp is stable too), in the same dtype: a
    # float32 logit of 1e4 is exact to ~1e-3 only, and so is each of its row's log-softmax
    expected, expected_grads = value_and_grads(
        getattr(module, f"{model.name}Function").apply,
        args,
        [0],
        "mean",
        1.0,
        keyword=False,
    )
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads[0], expected_grads[0])


def test_max_ties_are_counted_across_blocks(interpreted) -> None:
    # The hinge's Max has tied maxima in different blocks of one row, and a larger one after
    # ties: the tie count restarts there. Ties share the gradient, like torch.amax.
    model = MODELS["MulticlassHinge"]
    module = module_of(model)
    launches = interpreted(module)
    input, target, margin = arguments(model, torch.float64, seed=24)
    input[0, [2, 18, 36]] = 9.0  # three ties, in each block
    input[1, [2, 18]] = 9.0  # two ties, then a larger value in the last block
    input[1, 36] = 10.0
    target[:2] = 0
    compare(model, module, [input, target, margin], [0], "sum", 1.0)
    assert launches == [5]


def test_the_row_kernel_applies_only_where_it_can(interpreted, monkeypatch) -> None:
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    generator = torch.Generator().manual_seed(25)
    target = torch.randint(0, ROW, (4, 3), generator=generator)
    logits = torch.randn(4, ROW, 3, generator=generator, dtype=torch.float64)

    def run(x, t, **params):
        x = x.clone().requires_grad_()
        value = module.cross_entropy(x, t, **params)
        value.backward()
        return value, x.grad

    # classes along dim 1 of (N, C, H): not the last dim, the compiled torch path
    value, grad = run(logits, target)
    assert launches == []
    y = logits.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(y, target)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, y.grad)
    rows = torch.randn(6, ROW, generator=generator, dtype=torch.float64)
    classes = torch.randint(0, ROW, (6,), generator=generator)
    # rows not contiguous
    run(rows.t().contiguous().t(), classes)
    assert launches == []
    # a class weight per class: the kernel loads one value, so the torch fast path runs
    weight = torch.rand(ROW, dtype=torch.float64, generator=generator)
    value, grad = run(rows, classes, weight=weight)
    assert launches == []
    y = rows.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(y, classes, weight)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, y.grad)
    x = rows.clone().requires_grad_()
    assert "Fused" in type(module.cross_entropy(x, classes, weight).grad_fn).__name__
    # the class weight's gradient needs the weighted mean's total loss: left to torch
    weight = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x = rows.clone().requires_grad_()
    module.cross_entropy(x, classes, weight=weight).backward()
    assert launches == [] and weight.grad is not None
    # one row of a 1-D input has no dim 1: the reference's error, not a value
    with pytest.raises((IndexError, RuntimeError)):
        module.cross_entropy(rows[0], classes[0])
    assert launches == []
    monkeypatch.setattr(module, "TRITON", False)
    run(rows, classes)
    assert launches == []
    monkeypatch.setattr(module, "TRITON", True)
    run(rows, classes)
    assert launches == [6]


def test_half_precision_is_computed_in_float32(interpreted) -> None:
    # float16, not bfloat16: the interpreter rounds float32 to bfloat16 by truncating
    model = MODELS["SoftCrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    half = [a.to(torch.float16) for a in arguments(model, torch.float32, seed=28)]
    value, grads = value_and_grads(module.soft_cross_entropy, half, [0, 1], "mean", 1.0)
    assert launches == [5]
    assert value.dtype == grads[0].dtype == grads[1].dtype == torch.float16
    exact = [a.to(torch.float32) for a in half]
    expected, expected_grads = value_and_grads(
        module.SoftCrossEntropyFunction.apply, exact, [0, 1], "mean", 1.0, keyword=False
    )
    torch.testing.assert_close(value, expected.to(torch.float16))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want.to(torch.float16))


def test_channels_last_rows_are_the_last_dim(interpreted) -> None:
    model = MODELS["ChannelsLastCrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    input, target = arguments(model, torch.float64, seed=26, shape=(2, 3, 4, ROW))
    x = input.clone().requires_grad_()
    value = module.channels_last_cross_entropy(x, target)
    value.backward()
    y = input.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(y.movedim(-1, 1), target)
    expected.backward()
    assert launches == [24]
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)


def test_grad_in_place_overwrites_the_logits_and_guards_them(
    interpreted, monkeypatch
) -> None:
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    monkeypatch.setattr(module, "GRAD_IN_PLACE", True)
    generator = torch.Generator().manual_seed(27)
    weights = torch.randn(ROW, ROW, generator=generator, dtype=torch.float64)
    features = torch.randn(6, ROW, generator=generator, dtype=torch.float64)
    target = torch.randint(0, ROW, (6,), generator=generator)
    expected_weights = weights.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(features @ expected_weights, target)
    expected.backward()
    # logits from a matmul (which saves its inputs, not the logits): the gradient goes
    # into the logits' memory, and the weight's gradient is still right
    w = weights.clone().requires_grad_()
    logits = features @ w
    copy = logits.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(copy, target).backward()
    value = module.cross_entropy(logits, target)
    assert launches == [6]
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(
        logits.detach(), copy.grad
    )  # the logits hold their gradient
    value.backward()
    torch.testing.assert_close(w.grad, expected_weights.grad)
    # tanh saved its output, the logits: autograd raises rather than use the gradient
    logits = torch.tanh(features @ w)
    value = module.cross_entropy(logits, target)
    assert launches == [6, 6]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        value.backward()
    # double backward would read the logits
    logits = features @ w
    value = module.cross_entropy(logits, target)
    with pytest.raises(RuntimeError, match="GRAD_IN_PLACE"):
        torch.autograd.grad(value, logits, create_graph=True)
    # grad_output 2: the gradient it wrote over the logits is doubled there, in place
    logits = features @ w
    value = module.cross_entropy(logits, target)
    (grad,) = torch.autograd.grad(value, logits, torch.tensor(2.0, dtype=value.dtype))
    assert grad.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(grad, 2 * copy.grad)
    # a second backward fails, after the first rescaled the gradient in place
    value = module.cross_entropy(features @ w, target)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second backward, needs"):
        value.backward()
    # a leaf's .grad would share its memory: a new tensor then
    leaf = (features @ weights).requires_grad_()
    before = leaf.detach().clone()
    module.cross_entropy(leaf, target).backward()
    assert torch.equal(leaf.detach(), before)
    assert leaf.grad.data_ptr() != leaf.data_ptr()
    # nor is a view of a leaf (a learned tensor's data) overwritten
    leaf.grad = None
    module.cross_entropy(leaf.view(6, ROW), target).backward()
    assert torch.equal(leaf.detach(), before)
    assert leaf.grad.data_ptr() != leaf.data_ptr()


@pytest.mark.parametrize("name", ["CrossEntropy", "MulticlassHinge"])
def test_row_kernels_compile_for_cuda(name, monkeypatch, tmp_path) -> None:
    # Compiling checks what the interpreter does not: Triton's code generator (loop-carried
    # accumulators' dtypes, constexpr branches, None pointers) and LLVM's lowering to PTX.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compiled here, not cached
    monkeypatch.setenv(
        "TRITON_DEFAULT_FP_FUSION", "1"
    )  # triton 3.9's default, said aloud
    model = MODELS[name]
    module = module_of(model)
    kernel = module._load_triton()
    assert isinstance(kernel, JITFunction)  # not interpreted
    stores = []
    for dtype, wanted in (("fp32", True), ("fp64", True), ("fp32", False)):
        # in float32, the params and the upstream gradient as float32 numbers (their
        # pointers None), as _kernel_param passes floats; in float64, as pointers
        numbers = dtype == "fp32"
        signature, constants = {}, {}
        for parameter in inspect.signature(kernel.fn).parameters:
            argument = next(
                (
                    a
                    for a in model.arguments
                    if parameter in (f"{a.name}_ptr", f"_{a.name}_number")
                ),
                None,
            )
            param = parameter == "upstream_ptr" or argument and argument.is_param
            if parameter.endswith("_number"):
                if numbers:
                    signature[parameter] = "fp32"
                else:
                    signature[parameter], constants[parameter] = "constexpr", None
            elif param and numbers:
                signature[parameter], constants[parameter] = "constexpr", None
            elif parameter.startswith("grad_"):
                if wanted:
                    signature[parameter] = f"*{dtype}"
                else:
                    signature[parameter], constants[parameter] = "constexpr", None
            elif argument is not None and argument.index_of is not None:
                signature[parameter] = "*i64"
            elif parameter.endswith("_ptr"):
                signature[parameter] = f"*{dtype}"
            elif parameter == "row_size":
                signature[parameter] = "i32"
            else:
                signature[parameter] = "constexpr"
        constants["last_pass"] = wanted
        constants["compute_dtype"] = tl.float64 if dtype == "fp64" else tl.float32
        constants["row_block"] = module.ROW_BLOCK
        source = ASTSource(kernel, signature, constants)
        options = {"num_warps": module.ROW_WARPS, "enable_fp_fusion": False}
        asm = triton.compile(source, target=CUDA, options=options).asm
        assert asm["cubin"]
        stores.append(asm["ptx"].count("st.global"))
    assert (
        stores[0] > stores[2] > 0
    )  # the loss only: no gradient stores without last_pass


def test_a_failing_row_kernel_falls_back_to_torch_with_a_warning(monkeypatch) -> None:
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "COMPILE", False)
    monkeypatch.setattr(module, "ROW_MIN", 0)
    load = module._load_triton

    def broken():
        load()  # imports triton into the module, as on a GPU triton does not support

        @triton.jit
        def kernel(input_ptr):
            raise ValueError("no such GPU")

        return kernel

    monkeypatch.setattr(module, "_triton_kernel", None)
    monkeypatch.setattr(module, "_load_triton", broken)
    input, target = torch.randn(4, ROW, dtype=torch.float64), torch.arange(4)
    with pytest.warns(RuntimeWarning, match="the Triton kernel failed, using torch"):
        value = module.cross_entropy(input, target)
    torch.testing.assert_close(value, torch.nn.functional.cross_entropy(input, target))
    assert module._triton_kernel is False  # not tried again
    assert not module._triton_applies([input])


def test_the_generated_files_say_which_kernel_they_have() -> None:
    # the elementwise kernel's switches stay in elementwise files only
    for path in sorted((ROOT / "generated").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "def _run_triton" in text:
            assert ("TRITON_BLOCK = " in text) != ("ROW_BLOCK = " in text), path.name


def test_short_rows_take_the_compiled_path(interpreted, monkeypatch) -> None:
    model = MODELS["SoftCrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    monkeypatch.setattr(module, "ROW_MIN", ROW + 1)
    args = arguments(model, torch.float64, seed=41)
    compare(model, module, args, [0], "mean", 1.0)
    assert launches == []
    monkeypatch.setattr(module, "ROW_MIN", ROW)
    compare(model, module, args, [0], "mean", 1.0)
    assert launches == [5]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str
)
def test_number_params_reach_the_row_kernel_as_their_tensors_would(
    dtype: torch.dtype, interpreted, monkeypatch
) -> None:
    # As the elementwise kernel's (tests/test_triton.py): a number param goes to the kernel
    # as itself, so is the upstream gradient of "sum", and the weighted mean's total keeps
    # numbers where the logits' dtype is torch's default: bit for bit the loss and gradient
    # of the same params as 0-d tensors, with no tensor filled for a number there.
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    launches = interpreted(module)
    made: list[object] = []
    as_tensor = module._as_tensor

    def counted(value, like):
        made.append(value)
        return as_tensor(value, like)

    monkeypatch.setattr(module, "_as_tensor", counted)
    generator = torch.Generator().manual_seed(31)
    input = torch.randn(6, ROW, generator=generator, dtype=torch.float64).to(dtype)
    target = torch.randint(0, ROW, (6,), generator=generator)
    target[[1, 4]] = 7  # ignored: ignore_index is a class here
    target[2] = ROW + 3  # out of range: its weight is not counted
    params = (0.7, 0.1, 7.0)  # weight, label_smoothing, ignore_index
    for reduction in ("mean", "sum"):
        made.clear()
        value, (grad,) = value_and_grads(
            module.cross_entropy, [input, target, *params], [0], reduction, 1
        )
        if dtype == torch.float32 or reduction == "sum" and dtype != torch.float64:
            assert made == []
        elif dtype == torch.bfloat16:
            # the mean's total in bfloat16: weight, ignore_index
            assert made == [0.7, 7.0]
        tensors = [torch.full((), p, dtype=dtype) for p in params]
        want, (want_grad,) = value_and_grads(
            module.cross_entropy, [input, target, *tensors], [0], reduction, 1
        )
        assert torch.equal(value, want) and torch.equal(grad, want_grad)
    assert launches == [6] * 4
    # the total with numbers and with tensors
    total = module._weight_total(input, target, *params, shape=input.shape)
    assert torch.equal(
        total, module._weight_total(input, target, *tensors, shape=input.shape)
    )
    assert total.dtype == dtype


def test_the_weighted_means_total_is_the_references() -> None:
    # The row kernel's weighted mean divides by this total, which _run_triton computes as
    # plain torch (a gather per row, no one-hot as large as the logits). Class weights, an
    # ignored row.
    model = MODELS["CrossEntropy"]
    module = module_of(model)
    generator = torch.Generator().manual_seed(43)
    input = torch.randn(6, 50, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 50, (6,), generator=generator)
    target[2] = 7
    weight = torch.rand(50, generator=generator, dtype=torch.float64) + 0.5
    params = [weight, torch.tensor(0.1, dtype=torch.float64), torch.tensor(7.0)]
    total = module._weight_total(input, target, *params, shape=input.shape)
    env = environment(model, [input, target, *params])
    torch.testing.assert_close(total, evaluate(model.mean_weight, env).sum())
    torch.testing.assert_close(total, weight[target].sum() - weight[7])
    assert not hasattr(module, "_compiled_weight_total")
