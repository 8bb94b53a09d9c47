"""Forward+backward time of generated elementwise losses' Triton kernels for several
TRITON_BLOCK sizes, on CUDA (not a test):

    python benchmarks/triton_block.py huber mse bce_with_logits -n 134217728

Each loss is imported from the committed generated/ file; `input` (the first tensor) requires
grad; times are triton.testing.do_bench medians of one step, gradients dropped between steps.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", help="generated module names")
    parser.add_argument("-n", type=int, default=1 << 27)
    parser.add_argument(
        "--blocks", default="512,1024,2048,4096,8192", help="comma-separated sizes"
    )
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    print("| loss | " + " | ".join(f"block {b} ms" for b in blocks) + " |")
    print("|---|" + "---|" * len(blocks))
    for name in args.modules:
        module = importlib.import_module(f"generated.{name}")
        functional = getattr(module, name)
        count = sum(
            1
            for p in inspect.signature(functional).parameters.values()
            if p.default is p.empty
        )
        generator = torch.Generator(device="cuda").manual_seed(0)
        tensors = [
            torch.rand(args.n, device="cuda", generator=generator) + 0.1
            for _ in range(count)
        ]
        tensors[0].requires_grad_()

        def step(functional=functional, tensors=tensors) -> None:
            tensors[0].grad = None
            functional(*tensors).backward()

        cells = []
        for block in blocks:
            module.TRITON_BLOCK = block
            cells.append(
                f"{do_bench(step, warmup=50, rep=300, return_mode='median'):.3f}"
            )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
