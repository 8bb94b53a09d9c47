"""The generated elementwise losses' Triton kernels on CUDA for several TRITON_BLOCK sizes
(not a test):

    python benchmarks/triton_block.py huber mse bce_with_logits -n 134217728

For each loss (imported from the committed generated/ file, params at their defaults, the first
tensor requiring grad) and block size: "kernel", the generated `_run_triton` alone (the kernel
and the sum of its partial losses, launched back to back, so launch overhead hides behind the
GPU work) with its bandwidth, counting each tensor read once and the gradient written once;
and "step", one forward+backward through the functional form (what a training step pays, the
Python around the kernel included). Times are triton.testing.do_bench medians, ms.
`--profile` prints torch.profiler's table of one loss's step at the default block.

`--row ROWSxCLASSES` times the generated CrossEntropy's row kernel instead, for each
`--row-configs` ROW_BLOCK/ROW_WARPS pair, counting the logits read twice (its two passes) and
the gradient written once, and the torch fast path's step (torch.compile of `_fused`, what
rows shorter than ROW_MIN take); `--row-module FILE` (repeatable) times the CrossEntropy of another
generated file instead of generated/cross_entropy.py (e.g. one rendered from a changed
template). Liger Kernel's cross-entropy, where it is installed, is timed in the same run (on a
clone of the logits of its own: it writes the gradient over them).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="generated module names")
    parser.add_argument("-n", type=int, default=1 << 27)
    parser.add_argument("--blocks", default="512,1024,2048,4096", help="sizes")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--row", help="ROWSxCLASSES[,...]: time CrossEntropy's row kernel"
    )
    parser.add_argument("--row-configs", default="4096/16,4096/8,2048/8,8192/16")
    parser.add_argument("--row-module", action="append", help="a generated file")
    args = parser.parse_args()
    if args.row:
        configs = [tuple(map(int, c.split("/"))) for c in args.row_configs.split(",")]
        for shape in args.row.split(","):
            rows, classes = (int(v) for v in shape.lower().split("x"))
            for path in args.row_module or ["generated/cross_entropy.py"]:
                row_sweep(rows, classes, configs, path)
            liger_row(rows, classes)
    blocks = [int(b) for b in args.blocks.split(",")]
    header = [f"{kind} {b}" for b in blocks for kind in ("kernel", "step")]
    if args.modules:
        print("| loss | " + " | ".join(header) + " | best kernel TB/s |")
        print("|---|" + "---|" * (len(header) + 1))
    for name in args.modules:
        module = importlib.import_module(f"generated.{name}")
        functional = getattr(module, name)
        parameters = list(inspect.signature(functional).parameters.values())
        count = sum(1 for p in parameters if p.default is p.empty)
        generator = torch.Generator(device="cuda").manual_seed(0)
        tensors = [
            torch.rand(args.n, device="cuda", generator=generator) + 0.1
            for _ in range(count)
        ]
        # numbers, as the functional form passes its defaults (_kernel_param)
        params = [p.default for p in parameters[count:] if p.name != "reduction"]
        needs_grad = (True,) + (False,) * (count + len(params) - 1)
        tensors[0].requires_grad_()

        def step(functional=functional, tensors=tensors) -> None:
            tensors[0].grad = None
            functional(*tensors).backward()

        def kernel(module=module, tensors=tensors, params=params, needs=needs_grad):
            module._run_triton(*tensors, *params, "mean", needs)

        assert module._run_triton(*tensors, *params, "mean", needs_grad) is not None
        cells, best = [], float("inf")
        for block in blocks:
            module.TRITON_BLOCK = block
            kernel_ms = do_bench(kernel, warmup=50, rep=300, return_mode="median")
            step_ms = do_bench(step, warmup=50, rep=300, return_mode="median")
            best = min(best, kernel_ms)
            cells += [f"{kernel_ms:.3f}", f"{step_ms:.3f}"]
        moved = 4 * args.n * (count + 1)
        print(f"| {name} | " + " | ".join(cells) + f" | {moved / best / 1e9:.2f} |")
        if args.profile and name == args.modules[0]:
            module.TRITON_BLOCK = 1024
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            table = p.key_averages().table(sort_by="cuda_time_total", row_limit=12)
            print(table, file=sys.stderr)
    return 0


def row_sweep(
    rows: int, classes: int, configs: list[tuple[int, int]], path: str
) -> None:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    # from its file: triton.jit reads the kernel's source
    spec.loader.exec_module(module)
    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, classes, device="cuda", generator=generator)
    labels = torch.randint(0, classes, (rows,), device="cuda", generator=generator)
    params = [1.0, 0.0, -100.0]  # numbers, as the functional form passes its defaults
    needs = (True, False, False, False, False)
    logits.requires_grad_()

    def step() -> None:
        logits.grad = None
        module.cross_entropy(logits, labels).backward()

    def kernel() -> None:
        module._run_triton(logits, labels, *params, "mean", needs)

    # the kernel at every length (the generated code leaves short rows to torch)
    module.ROW_MIN = 0
    assert module._run_triton(logits, labels, *params, "mean", needs) is not None
    moved = 3 * logits.numel() * logits.element_size()
    # the torch fast path (torch.compile of _fused), for comparison
    module.TRITON = False
    compiled_ms = do_bench(step, warmup=25, rep=200, return_mode="median")
    module.TRITON = True
    print(f"\n{path}, {rows} x {classes}: torch fast path, step {compiled_ms:.3f} ms\n")
    print("| ROW_BLOCK/ROW_WARPS | kernel ms | step ms | kernel TB/s |")
    print("|---|---|---|---|")
    for block, warps in configs:
        module.ROW_BLOCK, module.ROW_WARPS = block, warps
        kernel_ms = do_bench(kernel, warmup=25, rep=200, return_mode="median")
        step_ms = do_bench(step, warmup=25, rep=200, return_mode="median")
        print(
            f"| {block}/{warps} | {kernel_ms:.3f} | {step_ms:.3f} "
            f"| {moved / kernel_ms / 1e9:.2f} |",
            flush=True,
        )
    # GRAD_IN_PLACE: logits computed by a recorded op (here a clone; in a model, the last
    # matmul) get their gradient written over them: no gradient allocated
    module.GRAD_IN_PLACE = True
    computed = logits.clone()
    overwritten = module._run_triton(computed, labels, *params, "mean", needs)[1]
    assert overwritten.data_ptr() == computed.data_ptr()
    in_place_ms = do_bench(
        lambda: module._run_triton(computed, labels, *params, "mean", needs),
        warmup=25,
        rep=200,
        return_mode="median",
    )
    module.GRAD_IN_PLACE = False
    print(f"\nGRAD_IN_PLACE, the last config: kernel {in_place_ms:.3f} ms")


def liger_row(rows: int, classes: int) -> None:
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        print("\nliger-kernel is not installed")
        return
    generator = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, classes, device="cuda", generator=generator)
    labels = torch.randint(0, classes, (rows,), device="cuda", generator=generator)
    loss = LigerCrossEntropyLoss()
    own = logits.clone().requires_grad_()

    def step() -> None:
        own.grad = None
        loss(own, labels).backward()

    step_ms = do_bench(step, warmup=25, rep=200, return_mode="median")
    print(f"\nLiger cross-entropy, {rows} x {classes}, step: {step_ms:.3f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
