"""The host's time per forward+backward step of the generated Triton fast path (not a test):

    python benchmarks/host_time.py Huber MSE CrossEntropy
    python benchmarks/host_time.py Huber --baseline /tmp/old_generated   # before/after
    python benchmarks/host_time.py Huber MSE --device cuda --profile      # on a GPU machine

On CUDA, a step whose GPU work is short (or whose host is slow) runs at the host's pace: the
autograd Function, the checks around the kernels, the tensors allocated, the launches.

- On CPU (the default) this times that Python as a proxy: Triton's interpreter
  (TRITON_INTERPRET=1) lets the Triton path run, and each module's `_run_kernel` is replaced
  by a stub, so neither the interpreter nor any kernel is timed. Left out: Triton's own
  launch (its argument binding and the driver call) and CUDA's dispatch.
- With `--device cuda` the kernels run for real, at N = 2**16 elements by default, where the
  GPU's work is a few microseconds: the step's time is the host's. A sample ends with a sync.

"floor" is the least a fused autograd Function pays per step: apply, allocate a gradient,
sum a small tensor, save, and return the gradient in backward. Inputs are those of
`bench.py` at N elements (2**16 is the fused path's minimum); a loss whose Triton path does
not run at that size is reported as such. Rounds interleave the losses (and the baseline's
modules); each cell is the fastest round's microseconds per step, as `timeit` advises: on a
shared machine the noise only ever adds time. `--profile` prints cProfile's 25 most costly
functions (own time) over the first loss's steps. `--ops` counts the torch ops of one step
(a TorchDispatchMode, autograd's own included): each, but the views and allocations left
out, is a kernel launch (or a copy) on CUDA; the Triton launches are not torch ops.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import glob
import os
import pstats
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

# ops that launch nothing on CUDA: views and allocations
NO_LAUNCH = {
    "empty",
    "empty_like",
    "new_empty",
    "view",
    "_unsafe_view",
    "unsqueeze",
    "squeeze",
    "expand",
    "reshape",
    "alias",
    "detach",
    "as_strided",
    "select",
    "slice",
}


class CountedOps(TorchDispatchMode):
    """The torch ops run inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def counted_ops(steps: bench.Steps) -> collections.Counter[str]:
    """The ops of one step that launch on CUDA (see NO_LAUNCH), by name."""
    reset, step = steps
    reset()
    with CountedOps() as counted:
        step()
    return collections.Counter(
        {name: n for name, n in counted.ops.items() if name not in NO_LAUNCH}
    )


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, *rest):
        grad = torch.empty_like(input)
        loss = input.new_empty(64).sum()
        ctx.save_for_backward(input, *rest, grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        return (saved[-1],) + (None,) * (len(saved) - 2)


def floor_call(*leaves: torch.Tensor) -> torch.Tensor:
    return _Floor.apply(*(leaf for leaf in leaves if leaf.is_floating_point()))


def counted(module: types.ModuleType, stub: bool) -> list[int]:
    """Count the steps whose loss came from the Triton path; with `stub`, launch nothing."""
    count = [0]
    run_triton = module._run_triton

    def counting(*args: object) -> object:
        computed = run_triton(*args)
        count[0] += computed is not None
        return computed

    if stub:
        module._run_kernel = lambda *args: None
    module._run_triton = counting
    return count


def per_step_us(steps: bench.Steps, repeat: int, device: str) -> float:
    reset, step = steps
    bench.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        reset()
        step()
    bench.synchronize(device)
    return (time.perf_counter() - start) / repeat * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("losses", nargs="+", help="loss names, as in the specs")
    parser.add_argument("--generated", default="generated")
    parser.add_argument("--baseline", help="another generated/ to time alongside")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("-n", type=int, default=1 << 16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=300, help="steps per sample")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--ops", action="store_true", help="count each step's torch ops"
    )
    args = parser.parse_args(argv)
    stub = args.device == "cpu"
    if stub:  # before the generated modules import triton: the Triton path on CPU
        os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)

    wanted = set(args.losses)
    models = [
        m
        for m in bench.load_models(sorted(glob.glob("specs/*.py")))
        if m.name in wanted
    ]
    sources = {"": args.generated}
    if args.baseline:
        sources = {"baseline ": args.baseline, "": args.generated}
    contenders: dict[str, bench.Steps] = {}
    launches: dict[str, list[int]] = {}
    for model in models:
        for label, directory in sources.items():
            module = bench.generated_modules([model], directory)[model.name]
            tensors, params, grads = bench.make_inputs(
                model, module, args.n, args.device, torch.float32, False
            )
            launches[label + model.name] = counted(module, stub)
            functional = getattr(module, model.snake_name)
            contenders[label + model.name] = bench.stepper(
                functional, tensors, params, grads
            )
        contenders["floor " + model.name] = bench.stepper(
            floor_call, tensors, [], grads
        )

    for steps in contenders.values():  # warm up: imports, compiles, first launches
        per_step_us(steps, 20, args.device)
    ran = {name: count[0] > 0 for name, count in launches.items()}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(per_step_us(contenders[name], args.repeat, args.device))
    fastest = {name: min(values) for name, values in times.items()}

    header = "| loss | step us | floor us | step - floor |"
    if args.baseline:
        header = "| loss | baseline step us | step us | floor us | step - floor |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for model in models:
        name = model.name
        if not ran[name]:
            print(f"| {name} | Triton path not taken at N = {args.n} |")
            continue
        cells = [f"{fastest[name]:.1f}", f"{fastest['floor ' + name]:.1f}"]
        cells.append(f"{fastest[name] - fastest['floor ' + name]:.1f}")
        if args.baseline:
            cells.insert(0, f"{fastest['baseline ' + name]:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.ops:
        print()
        print("| loss | torch ops per step that launch on CUDA |")
        print("|---|---|")
        for name, steps in contenders.items():
            if name.startswith("floor ") or not ran[name]:
                continue
            ops = counted_ops(steps)
            listed = ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
            print(f"| {name} | {sum(ops.values())}: {listed} |")
    if args.profile and models:
        profile(contenders[models[0].name], args.repeat, args.device)
    return 0


def profile(steps: bench.Steps, repeat: int, device: str) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(per_step_us, steps, repeat, device)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    raise SystemExit(main())
