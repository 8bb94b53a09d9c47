"""Fuzzing the Triton printers: random elementwise losses (test_fuzz's expressions) and losses
over dim 1 (test_fuzz_reductions') through the real pipeline, each one's generated Triton
kernel (or row kernel) run by Triton's interpreter on CPU (TRITON_INTERPRET=1) against the
generated readable Function, in float64, away from kinks.

The kernel is the fast path on CUDA; test_triton.py runs the shipped losses' kernels the same
way. Fewer examples than test_fuzz (each one interprets a kernel): 30 in CI, and
HYPOTHESIS_PROFILE=thorough's count otherwise.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

import pytest
import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from test_fuzz import REGRESSIONS, X, Y, comparable, expressions, generated_source
from test_fuzz_reductions import REGRESSIONS as REGRESSIONS_OVER_DIMS
from test_fuzz_reductions import T, losses_over_dims

from lossgen import LogSumExp, Max, Mean, Min, Pick, Sum
from lossgen.verify import Errors, LossCase
from lossgen.vocabulary import relu

pytestmark = [
    # A kernel that fails falls back to torch with a RuntimeWarning: fail the test instead.
    pytest.mark.filterwarnings(
        "error:.*the Triton (rescale )?kernel failed:RuntimeWarning"
    ),
    # numpy, running the interpreter, warns of what masked-out lanes compute
    pytest.mark.filterwarnings(
        "ignore:(invalid value|divide by zero|overflow) encountered"
    ),
]

_files = itertools.count()


def written_module(expr: sp.Expr, directory: Path) -> tuple[LossCase, types.ModuleType]:
    """The generated module for `expr`, imported from a file: triton reads a kernel's source
    from its file."""
    model, source = generated_source(expr)
    name = f"fuzzed_triton_{next(_files)}"
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop(name, None)
    return LossCase(model, module), module


def check_kernel(expr: sp.Expr, directory: Path, interpreted_kernel) -> int:
    """Compares the kernel's loss and gradients with the Function's; returns how many calls
    ran the kernel."""
    case, module = written_module(expr, directory)
    if hasattr(module, "TRITON_BLOCK"):  # elementwise: 300 elements, 3 programs
        launches = interpreted_kernel(module, TRITON_BLOCK=128)
        shape: tuple[int, ...] = (300,)
    elif hasattr(module, "ROW_BLOCK"):  # over dim 1: rows of 37 in blocks of 16
        launches = interpreted_kernel(module, ROW_BLOCK=16, ROW_MIN=0)
        shape = (5, 37)
    else:
        return 0  # no kernel: something in it has no Triton form (checked by its own tests)
    errors = Errors(rtol=1e-6, atol=1e-8)
    ran = 0
    # params as Python floats (the kernel takes numbers), then as 0-dim tensors (pointers)
    for seed, param_shape in enumerate((None, ())):
        sample = case.away_from_kinks(((shape,), param_shape), seed=seed)
        if case.kink_distance(sample) <= 1e-3:
            continue
        for reduction in ("sum", "mean"):
            expected = case.generated(sample, reduction)
            if not comparable(expected):
                continue
            before = len(launches)
            functional = case.functional_noting(reduction, [])
            errors.compare(case.generated(sample, reduction, functional), expected)
            ran += len(launches) > before
    assert (
        errors.ok
    ), f"{errors.detail} (max abs {errors.max_abs}, max rel {errors.max_rel})"
    return ran


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed_triton")


# 30 in CI, where the profile keeps Hypothesis's 100 (each example interprets a kernel); the
# profile's own count where it sets one (quick, thorough)
EXAMPLES = 30 if settings.default.max_examples == 100 else settings.default.max_examples
# a row kernel's example takes ~3 s under the interpreter (several passes over rows of blocks)
ROW_EXAMPLES = 15 if settings.default.max_examples == 100 else EXAMPLES


FUZZ_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        # each example patches a module of its own; the environment setting is the same
        HealthCheck.function_scoped_fixture,
    ],
)


@settings(FUZZ_SETTINGS, max_examples=EXAMPLES)
@given(expr=expressions)
def test_random_losses_match_their_triton_kernel(
    expr: sp.Expr, directory: Path, interpreted_kernel
) -> None:
    assume(check_kernel(expr, directory, interpreted_kernel) > 0)


@settings(FUZZ_SETTINGS, max_examples=ROW_EXAMPLES)
@given(expr=losses_over_dims)
def test_random_losses_over_dims_match_their_row_kernel(
    expr: sp.Expr, directory: Path, interpreted_kernel
) -> None:
    assume(check_kernel(expr, directory, interpreted_kernel) > 0)


@pytest.mark.parametrize("expr", REGRESSIONS + REGRESSIONS_OVER_DIMS, ids=str)
def test_fuzz_regression_kernels(
    expr: sp.Expr, directory: Path, interpreted_kernel
) -> None:
    check_kernel(expr, directory, interpreted_kernel)


def test_a_row_kernel_of_every_reduction_ran(
    directory: Path, interpreted_kernel
) -> None:
    expr = (
        LogSumExp(X, 1)
        - Pick(X, T)
        + relu(Max(X - Y, dim=1))
        + Mean(sp.tanh(Y), 1) * Min(X**2, dim=1)
        + Sum(Y * sp.exp(-(X**2)), 1)
    )
    assert check_kernel(expr, directory, interpreted_kernel) > 0


def test_a_kernel_of_every_kind_of_node_ran(
    directory: Path, interpreted_kernel
) -> None:
    # the harness itself: a loss with every kind of node has a kernel, and it ran
    expr = (
        sp.Max(X, Y)
        + sp.log(1 + sp.exp(-sp.Abs(X)))
        + sp.Piecewise((X**2, X > Y), (sp.sqrt(1 + Y**2), True))
        + sp.Heaviside(Y) * sp.tanh(X)
    )
    assert check_kernel(expr, directory, interpreted_kernel) > 0
