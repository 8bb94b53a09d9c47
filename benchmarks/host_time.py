"""The host's time per forward+backward step of the generated Triton fast path, with the kernel
launches stubbed out (not a test; a CPU proxy for the Python a CUDA step costs the host):

    python benchmarks/host_time.py Huber MSE CrossEntropy
    python benchmarks/host_time.py Huber --baseline /tmp/old_generated   # before/after

On CUDA, a step whose GPU work is short (or whose host is slow) runs at the host's pace: the
autograd Function, the checks around the kernels, the tensors allocated, the launches. This
times that Python on CPU, where Triton's interpreter (TRITON_INTERPRET=1) lets the Triton path
run, with each module's `_run_kernel` replaced by a stub that only counts its calls, so
neither the interpreter nor any kernel is timed. What it leaves out: Triton's own launch (its
argument binding and the driver call) and CUDA's dispatch, which cost more on a GPU machine.

"floor" is the least a fused autograd Function pays per step: apply, allocate a gradient,
sum a small tensor, save, and return the gradient in backward. Inputs are those of
`bench.py` at N = 2**16 elements (the fused path's minimum); a loss whose Triton path does
not run at that size is reported as such. Rounds interleave the losses (and the baseline's
modules); each cell is the fastest round's microseconds per step, as `timeit` advises: on a
shared machine the noise only ever adds time.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ["TRITON_INTERPRET"] = (
    "1"  # before triton is imported: the Triton path on CPU
)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


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


def floor_step(tensors: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
    def call(*leaves: torch.Tensor) -> torch.Tensor:
        return _Floor.apply(*(leaf for leaf in leaves if leaf.is_floating_point()))

    return call


def stubbed(module: types.ModuleType) -> list[int]:
    """Replace the module's kernel launches with a no-op; returns a count of the steps whose
    loss came from the Triton path."""
    count = [0]
    run_triton = module._run_triton

    def counted(*args: object) -> object:
        computed = run_triton(*args)
        count[0] += computed is not None
        return computed

    module._run_kernel = lambda *args: None
    module._run_triton = counted
    return count


def per_step_us(steps: bench.Steps, repeat: int) -> float:
    reset, step = steps
    start = time.perf_counter()
    for _ in range(repeat):
        reset()
        step()
    return (time.perf_counter() - start) / repeat * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("losses", nargs="+", help="loss names, as in the specs")
    parser.add_argument("--generated", default="generated")
    parser.add_argument("--baseline", help="another generated/ to time alongside")
    parser.add_argument("-n", type=int, default=1 << 16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=300, help="steps per sample")
    args = parser.parse_args(argv)
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
                model, module, args.n, "cpu", torch.float32, False
            )
            launches[label + model.name] = stubbed(module)
            functional = getattr(module, model.snake_name)
            contenders[label + model.name] = bench.stepper(
                functional, tensors, params, grads
            )
        contenders["floor " + model.name] = bench.stepper(
            floor_step(tensors), tensors, [], grads
        )

    for steps in contenders.values():  # warm up: imports, first launches
        per_step_us(steps, 20)
    ran = {name: count[0] > 0 for name, count in launches.items()}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(per_step_us(contenders[name], args.repeat))
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
