"""Machine instructions per element of the generated Triton kernels (not a test; no GPU needed):

    python benchmarks/kernel_instructions.py                       # every elementwise kernel
    python benchmarks/kernel_instructions.py SigmoidFocal Huber --baseline OLD/generated

Each kernel is compiled ahead of time for an H100/H200 (sm_90, float32, the first tensor's
gradient only, as `bench.py` times it) and its machine code read back with the nvdisasm that
Triton ships. The kernels have no loops, so the instructions in the code are the instructions
each thread runs; a thread handles TRITON_BLOCK / threads elements.

A kernel whose instructions take longer to issue than its bytes take to move is compute-bound:
"issue ms" is the time 2**27 elements take at one instruction per clock on every scheduler of
an H200 (132 SMs x 4 x 32 lanes at 1.98 GHz); "bound ms" is one pass at 4.1 TB/s, the copy
bandwidth measured on that GPU (benchmarks/RESULTS.md, table C5). Calibration, table C5's run:
SigmoidFocal's kernel (before its softplus was shared) counted 184 per element, 0.74 issue ms,
and ran in 0.81 ms; Huber's, 39 per element, ran at the bound (0.37 ms).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = 1 << 27
LANE_INSTRUCTIONS_PER_SECOND = 132 * 4 * 32 * 1.98e9
BYTES_PER_SECOND = 4.1e12
INSTRUCTION = re.compile(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def instructions(cubin: bytes) -> collections.Counter[str]:
    """The opcodes of a cubin's machine code, counted."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends/nvidia/bin/nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run(
            [str(nvdisasm), file.name], capture_output=True, text=True, check=True
        ).stdout
    return collections.Counter(
        match.group(1)
        for match in map(INSTRUCTION.match, listing.splitlines())
        if match
    )


def per_element(module: types.ModuleType, first_tensor: str) -> tuple[float, float]:
    """Instructions and MUFU (special function unit) instructions per element."""
    from cuda_compile import compile_for_cuda

    asm = compile_for_cuda(module, "fp32", {first_tensor})
    threads = int(re.search(r"\.(?:reqntid|maxntid) (\d+)", asm["ptx"]).group(1))
    elements = module.TRITON_BLOCK / threads
    counted = instructions(asm["cubin"])
    special = sum(n for op, n in counted.items() if op.startswith("MUFU"))
    return sum(counted.values()) / elements, special / elements


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("losses", nargs="*", help="loss names (default: every kernel)")
    parser.add_argument("--generated", default="generated")
    parser.add_argument("--baseline", help="another generated/ to count alongside")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # compiled, not interpreted
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import bench  # beside this script

    from lossgen.api import load_models

    wanted = set(args.losses)
    models = [
        m
        for m in load_models(sorted(glob.glob(str(ROOT / "specs/*.py"))))
        if not m.reduces and (not wanted or m.name in wanted)
    ]
    sources = {"": args.generated}
    if args.baseline:
        sources = {"baseline ": args.baseline, "": args.generated}
    header = "| loss | " + " | ".join(
        f"{label}instructions / element | {label}MUFU / element | {label}issue ms"
        for label in sources
    )
    print(header + " | bound ms |")
    print("|---" * (header.count("|") + 1) + "|")
    for model in models:
        cells = []
        for label, directory in sources.items():
            prefix = "instructions_baseline_" if label else "instructions_"
            module = bench.generated_modules([model], directory, prefix)[model.name]
            if not hasattr(module, "TRITON_BLOCK"):
                break
            count, special = per_element(module, model.tensors[0].name)
            issue_ms = 1e3 * count * N / LANE_INSTRUCTIONS_PER_SECOND
            cells += [f"{count:.0f}", f"{special:.1f}", f"{issue_ms:.3f}"]
        else:
            bound_ms = 1e3 * 4 * N * (len(model.tensors) + 1) / BYTES_PER_SECOND
            print(f"| {model.name} | " + " | ".join(cells) + f" | {bound_ms:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
