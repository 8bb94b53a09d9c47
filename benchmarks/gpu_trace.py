"""Where the time of back-to-back steps goes on the GPU (not a test; a CUDA machine only):

    python benchmarks/gpu_trace.py Huber Welsch SigmoidFocal
    python benchmarks/gpu_trace.py Huber --variants generated,compile -n 134217728

For each loss and variant (as in `bench.py`: generated, compile, ...) it runs `--steps` steps
back to back, as `bench.py --back-to-back` times them, under `torch.profiler` with the GPU's
activity recorded, and prints per step:

- wall: the steps' time between two syncs, divided by the steps (no profiler: a separate run);
- host: the host's time until the last step's Python returned, per step (no profiler);
- busy: the GPU kernels' and copies' own time per step, and what share of the wall it is;
- each kernel's name, launches per step and time per step.

busy near wall: the GPU sets the pace; host near wall and busy well below: the GPU waits for
the host. A kernel slower than the bound of one pass does more than one pass of memory, or is
compute-bound (benchmarks/kernel_instructions.py). The gaps between kernels are not reported:
the profiler slows the host, which widens them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402


def steps_of(model, module, variant: str, n: int, device: str) -> bench.Steps:
    """One of `bench.py`'s variants (its `contenders`), on fresh inputs."""
    notes: list[str] = []
    variants, _ = bench.contenders(
        model, module, n, device, torch.float32, False, True, notes
    )
    if variant not in variants:
        raise ValueError(f"no variant {variant} here: {', '.join(variants)}")
    return variants[variant].steps


def run(steps: bench.Steps, count: int, device: str) -> tuple[float, float]:
    """Seconds per step between two syncs, and until the host returned."""
    reset, step = steps
    reset()
    bench.synchronize(device)
    start = time.perf_counter()
    for index in range(count):
        if index:
            reset()
        step()
    queued = time.perf_counter()
    bench.synchronize(device)
    return (time.perf_counter() - start) / count, (queued - start) / count


def gpu_events(
    steps: bench.Steps, count: int, device: str
) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of every kernel and copy the GPU ran in `count` steps."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(steps, count, device)
    events = []
    for event in prof.profiler.kineto_results.events():
        if event.device_type() != torch.autograd.DeviceType.CUDA:
            continue
        start = event.start_ns()
        events.append((event.name(), start, start + event.duration_ns()))
    events.sort(key=lambda e: e[1])
    return events


def report(label: str, steps: bench.Steps, count: int, device: str) -> None:
    for _ in range(3):  # compile, autotune, fault in the allocator's pages
        run(steps, count, device)
    timings = sorted(run(steps, count, device) for _ in range(5))
    wall, host = timings[len(timings) // 2]
    events = gpu_events(steps, count, device)
    busy = sum(end - start for _, start, end in events) / count / 1e6
    print(
        f"\n{label}: wall {wall * 1e3:.3f} ms, host {host * 1e3:.3f} ms, "
        f"GPU busy {busy:.3f} ms ({busy / (wall * 1e3):.0%}) per step"
    )
    per_name: dict[str, list[float]] = collections.defaultdict(list)
    for name, start, end in events:
        per_name[name].append((end - start) / 1e6)
    for name, times in sorted(per_name.items(), key=lambda kv: -sum(kv[1])):
        print(
            f"  {len(times) / count:4.1f} x {sum(times) / len(times):8.4f} ms  "
            f"{name[:110]}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("losses", nargs="+")
    parser.add_argument("--generated", default="generated")
    parser.add_argument("--variants", default="generated,compile")
    parser.add_argument("-n", type=int, default=1 << 27)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    args = parser.parse_args(argv)
    wanted = set(args.losses)
    models = [
        m
        for m in bench.load_models(sorted(glob.glob("specs/*.py")))
        if m.name in wanted
    ]
    bandwidth = bench.copy_bandwidth() if args.device == "cuda" else None
    for model in models:
        module = bench.generated_modules([model], args.generated)[model.name]
        bound = bench.bound_ms(model, args.n, bandwidth)
        print(f"\n## {model.name}, N = {args.n}, bound of one pass {bound or 0:.3f} ms")
        for variant in args.variants.split(","):
            try:
                steps = steps_of(model, module, variant, args.n, args.device)
                report(f"{model.name} {variant}", steps, args.steps, args.device)
            except Exception as error:  # a report of what ran; go on with the next
                print(f"{model.name} {variant}: {type(error).__name__}: {error}")
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
