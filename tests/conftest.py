"""Shared fixtures: the repository's specs, run from the repository root."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE. "ci" (the default) keeps Hypothesis's
# example counts (the fuzz tests set smaller ones under it), draws the same examples on every
# run (a CI failure is reproducible, never a coin toss on an unrelated change) and drops the
# per-example deadline, which a loaded CI machine would trip; "thorough" explores: 5000 random
# examples per property, for a release or after touching derive/printer/templates; "quick"
# runs 20, for iterating on a test.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=5000, deadline=None, print_blob=True)
settings.register_profile("quick", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.py"))
SPEC_ARGS = [path.relative_to(ROOT).as_posix() for path in SPECS]


@functools.cache
def repository_derived() -> tuple:
    """Every shipped loss, derived once for the whole session (derivation is the slow part)."""
    from lossgen.api import derive_all

    previous = os.getcwd()
    os.chdir(ROOT)  # header paths are relative to the current directory
    try:
        return tuple(derive_all(SPEC_ARGS))
    finally:
        os.chdir(previous)


@functools.cache
def repository_files() -> tuple:
    """What `lossgen build specs/*.py` generates, in memory, from repository_derived()."""
    from lossgen.api import generate_derived

    return generate_derived(repository_derived())


def _apply_takes_keywords() -> bool:
    """Whether this torch's autograd.Function.apply takes keyword arguments, as the generated
    Functions' would: from torch 2.13 on it does; the older ones run (2.5.1-2.12.1) raise
    TypeError (README, "Torch versions").
    """
    import torch

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(value, scale=1.0):
            return value * scale

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

    try:
        Identity.apply(torch.ones(1), scale=2.0)
    except TypeError:
        return False
    return True


needs_apply_keywords = pytest.mark.skipif(
    not _apply_takes_keywords(),
    reason="this torch's Function.apply takes no keyword arguments",
)


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Spec paths in generated headers are relative to the current directory.
    monkeypatch.chdir(ROOT)


# Triton 3.9's interpreter cannot call libdevice: its builder raises NotImplementedError for
# extern_elementwise. Here the interpreter runs CUDA's libdevice module as the compiler does
# (the same table of argument dtypes, the same broadcasting), and evaluates each libdevice
# function it selects (`__nv_log1pf`, `__nv_pow`, ...) with the torch function of that name.
# Shared by the elementwise (test_triton.py) and row (test_row_triton.py) kernels' tests;
# triton is imported inside, so tests that do not use it do not import it.
LIBDEVICE_FUNCTIONS = (
    "exp", "log", "log1p", "expm1", "pow", "sqrt", "erf", "erfc",
    "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
)  # fmt: skip
LIBDEVICE_SYMBOLS = {
    **{f"__nv_{name}": name for name in LIBDEVICE_FUNCTIONS},  # float64
    **{f"__nv_{name}f": name for name in LIBDEVICE_FUNCTIONS},  # float32
    "__nv_powi": "pow",  # a float64 to an int32 power
    "__nv_powif": "pow",
}


def _libdevice_by_torch(library, path, symbol, arguments, result_type, is_pure):
    import torch
    from triton.runtime import interpreter

    function = getattr(torch, LIBDEVICE_SYMBOLS[symbol])
    result = function(*(torch.from_numpy(argument.data) for argument in arguments))
    return interpreter.TensorHandle(result.numpy(), result_type.scalar)


@pytest.fixture
def libdevice_on_cpu():
    """CUDA's libdevice, callable by the interpreter (see LIBDEVICE_SYMBOLS).

    Also the interpreter's own versions of triton.language's functions written in Triton
    (tl.sum): triton makes those when it is imported, interpreted only if TRITON_INTERPRET=1
    was set by then, and other tests (torch.compile) may import it first.
    """
    import triton.language as tl
    from triton.language.extra.cuda import libdevice as cuda_libdevice
    from triton.runtime import JITFunction, interpreter

    scope = interpreter._LangPatchScope()
    for name, member in vars(tl).items():
        if isinstance(member, JITFunction):
            # the plain function: it runs in the kernel's interpreted scope (an
            # InterpretedFunction would leave the interpreter's patches in triton.language)
            scope.set_attr(tl, name, member.fn)
    interpreter._patch_builtin(cuda_libdevice, interpreter.interpreter_builder, scope)
    scope.set_attr(
        interpreter.interpreter_builder,
        "create_extern_elementwise",
        _libdevice_by_torch,
    )
    yield cuda_libdevice
    scope.restore()


def value_and_grads(call, args, wanted, reduction, grad_scale, keyword=True):
    """`call(*args, reduction)` and the gradients of its value times `grad_scale` with respect
    to the arguments at the positions `wanted` (each tensor a fresh leaf; floats as they are).
    """
    leaves = [
        (
            a.detach().clone().requires_grad_(index in wanted)
            if hasattr(a, "detach")
            else a
        )
        for index, a in enumerate(args)
    ]
    if keyword:
        value = call(*leaves, reduction=reduction)
    else:  # Function.apply takes no keywords
        value = call(*leaves, reduction)
    import torch  # here: conftest imports no torch for tests that do not need it

    grads = torch.autograd.grad(value * grad_scale, [leaves[i] for i in wanted])
    return value, grads


def counted_launches(module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The programs of each Triton launch of a generated module, recorded as it runs."""
    launches: list[int] = []
    launch = module._launch_triton

    def counted(programs, *args, **kwargs):
        launches.append(programs)
        return launch(programs, *args, **kwargs)

    monkeypatch.setattr(module, "_launch_triton", counted)
    return launches


@pytest.fixture
def interpreted_kernel(monkeypatch: pytest.MonkeyPatch, libdevice_on_cpu):
    """A generated module set to run its Triton kernel under the interpreter, with the module
    constants given (e.g. a small block size), counting launches."""

    def setup(module, **constants) -> list[int]:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
        monkeypatch.setattr(module, "COMPILE", False)
        for name, value in constants.items():
            monkeypatch.setattr(module, name, value)
        # the kernel made again, interpreted; the libdevice it calls, runnable there
        monkeypatch.setattr(module, "_triton_kernel", module._load_triton())
        monkeypatch.setattr(module, "_rescale_kernel", None)  # made again on first use
        monkeypatch.setattr(module, "libdevice", libdevice_on_cpu)
        return counted_launches(module, monkeypatch)

    return setup
