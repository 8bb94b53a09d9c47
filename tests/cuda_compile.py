"""Triton kernels of generated modules compiled for CUDA ahead of time: no GPU needed.

Used by tests/test_triton.py (the kernels compile), tests/test_row_triton.py (its target) and
benchmarks/kernel_instructions.py (how many instructions each element costs).
"""

from __future__ import annotations

import inspect
import types

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import JITFunction

CUDA = GPUTarget("cuda", 90, 32)  # an H100: compiled ahead of time, no GPU needed


def compile_for_cuda(module: types.ModuleType, dtype: str, wanted: set[str]) -> dict:
    """The module's kernel compiled to a cubin for CUDA; gradients not in `wanted` are None.
    A param comes as a pointer where its gradient is wanted or in float64, else as a float32
    number (its pointer None), as _kernel_param passes a float."""
    kernel = module._load_triton()
    assert isinstance(kernel, JITFunction)  # not interpreted
    parameters = list(inspect.signature(kernel.fn).parameters)
    params = {name[1:-7] for name in parameters if name.endswith("_number")}
    numbers = {p for p in params if p not in wanted and dtype != "fp64"}
    signature, constants = {}, {}
    for name in parameters:
        if name.startswith("grad_") and name[5:-4] not in wanted:
            signature[name], constants[name] = "constexpr", None
        elif name.removesuffix("_ptr") in numbers:
            signature[name], constants[name] = "constexpr", None
        elif name.endswith("_number"):  # _<param>_number
            if name[1:-7] in numbers:
                signature[name] = "fp32"
            else:
                signature[name], constants[name] = "constexpr", None
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        elif name == "numel":
            signature[name] = "i32"
        else:
            signature[name] = "constexpr"
    constants["reduce_mean"] = True
    constants["compute_dtype"] = tl.float64 if dtype == "fp64" else tl.float32
    constants["block_size"] = module.TRITON_BLOCK
    return triton.compile(ASTSource(kernel, signature, constants), target=CUDA).asm
