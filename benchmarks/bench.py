"""Forward+backward time and peak extra memory of every generated loss against the alternatives.

Run from the repository root (not a test; nothing here is timed in CI):

    python benchmarks/bench.py                       # CPU, N = 2**22 float32, every loss in specs/
    python benchmarks/bench.py --markdown benchmarks/RESULTS.md.part
    python benchmarks/bench.py --device cuda         # N = 2**27, plus softmax cross-entropy

For each loss (mean reduction; the first tensor argument requires grad, `--grad-all` makes every
differentiable tensor require grad) it times one step, `loss = f(...); loss.backward()`, of:

- generated: the generated functional form (fast path where it applies, else the Function;
  on CUDA the fast path is the generated Triton kernel, where triton is installed),
- fused-eager: the same fast path with its fused body run as plain torch (`COMPILE = False`,
  `TRITON = False`),
- fused-compile (CUDA only): the fast path through torch.compile instead of the Triton kernel
  (`TRITON = False`): what the Triton kernel gains over Inductor's fusion of the same body,
- generated-sync, generated-multiply (CUDA only): the generated code without its rescale
  kernel (which multiplies the saved gradient by grad_output on the GPU only where it is not 1):
  the host reads grad_output back to skip the multiply (a sync, RESCALE_SYNC_MIN_NUMEL), or
  multiplies by grad_output = 1,
- reference: the generated readable Function alone (what `FUSED = False` gives; it is the
  whole generated code of lossgen v0),
- eager: the loss expression exactly as written in the spec, printed by `lossgen.printer`
  (no CSE, no simplification) and run as eager torch ops differentiated by autograd,
- builtin: PyTorch's own loss where one computes the same thing (table `BUILTINS`),
- compile: `torch.compile` of the eager function (compiled and warmed up before timing),
- baseline (`--baseline DIR`): the generated functional form imported from DIR (e.g. the
  committed generated/ of an older commit), for before/after ratios within one run.

Losses over dims (`model.reduces`, e.g. `python benchmarks/bench.py specs/reductions.py`) get
N elements in the layout they are used with (`REDUCTION_SHAPES`: (N/1024, 1024) logits,
(N/(64*64*128), 64, 64, 128) channels-last logits, (N/(4*64*64), 4, 64, 64) masks, (B, 512, 512)
distances, ...), class indices drawn in range, params at their defaults; their eager function
is the expression as written printed over the generated module's helpers and reduced by its
`_reduce` (see `eager_function`). Before timing, each built-in's value is compared with the
generated loss's on the same inputs; one that differs is dropped (and listed under the table).
With `--class-weights`, params declared along a dim (CrossEntropy's, NLL's, ... `weight`) are
one random weight per class, in [0.5, 2), and the built-ins get the same `weight=`.

On CUDA, "bound" is the time one fused pass needs at the copy bandwidth measured at the start
(a device-to-device copy of 2**28 floats): each tensor read once, one gradient written once.
"generated host ms" is the host's time per generated step: until the last step's Python
returned, before the sync that ends a sample. With `--back-to-back K`, where it is about the
step's time, the host sets the pace (the GPU waits for it); where it is well below, the GPU does.

Rounds are interleaved (every variant once per round, in a rotated order) and the median over
rounds is reported; ratios are taken between medians of the same run. Peak extra memory is the
most memory allocated at once during one step beyond what was allocated before it (so the
inputs do not count and the gradient left in `.grad` does), in units of one input-sized
tensor: on CUDA from `torch.cuda.max_memory_allocated`; on CPU from the allocation events that
`torch.profiler` records with `profile_memory=True` (every allocation and free through
PyTorch's CPU allocator, compiled kernels' buffers included), summed in time order.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lossgen.api import generate_derived, load_models  # noqa: E402
from lossgen.derive import derive  # noqa: E402
from lossgen.model import LossModel  # noqa: E402
from lossgen.printer import print_torch  # noqa: E402
from lossgen.verify import (  # noqa: E402
    LossCase,
    class_indices,
    draw,
    needed_ndim,
    param_value,
)

Step = Callable[[], None]
Steps = tuple[Step, Step]


def _per_class(weight: float | torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """A class weight as torch's one weight per class of dim 1 (--class-weights: already)."""
    if isinstance(weight, torch.Tensor):
        return weight
    return torch.full((input.shape[1],), weight, dtype=input.dtype, device=input.device)


def _poisson(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.poisson_nll_loss(input, target, log_input=True, full=False)


# Loss name -> PyTorch's own loss computing the same mean-reduced value from (tensors, params).
# Only losses whose spec matches the built-in's definition exactly are listed.
BUILTINS: dict[str, Callable[..., torch.Tensor]] = {
    "MSE": lambda input, target: F.mse_loss(input, target),
    "L1": lambda input, target: F.l1_loss(input, target),
    "Huber": lambda input, target, delta: F.huber_loss(input, target, delta=delta),
    "SmoothL1": lambda input, target, beta: F.smooth_l1_loss(input, target, beta=beta),
    "BCEWithLogits": lambda input, target: F.binary_cross_entropy_with_logits(
        input, target
    ),
    "PoissonNLL": _poisson,
    "SoftMargin": lambda input, target: F.soft_margin_loss(input, target),
    "GaussianNLL": lambda input, target, var: F.gaussian_nll_loss(input, target, var),
    # Losses over dims (specs/reductions.py). A class weight goes to torch as one weight per
    # class.
    "SoftCrossEntropy": lambda input, target: F.cross_entropy(input, target),
    "CrossEntropy": lambda input, target, weight, label_smoothing, ignore_index: (
        F.cross_entropy(
            input,
            target,
            weight=_per_class(weight, input),
            ignore_index=int(ignore_index),
            label_smoothing=label_smoothing,
        )
    ),
    "NLL": lambda input, target, weight, ignore_index: F.nll_loss(
        input, target, weight=_per_class(weight, input), ignore_index=int(ignore_index)
    ),
    "ChannelsLastCrossEntropy": lambda input, target: F.cross_entropy(
        input.movedim(-1, 1), target
    ),
    "InfoNCE": lambda similarity, positive, temperature: F.cross_entropy(
        similarity / temperature, positive
    ),
    # batchmean divides by input.size(0): the mean over rows only for 2-D input.
    "CategoricalKLDiv": lambda input, target: F.kl_div(
        input, target, reduction="batchmean"
    ),
    "MultiLabelSoftMargin": lambda input, target, weight: (
        F.multilabel_soft_margin_loss(input, target, weight=_per_class(weight, input))
    ),
    # torch takes y of shape (N,), the spec (N, 1) so that it broadcasts over dim 1.
    "CosineEmbedding": lambda input1, input2, y, margin: F.cosine_embedding_loss(
        input1, input2, y[:, 0], margin=margin
    ),
    "MultiMargin": lambda input, target, weight, margin: F.multi_margin_loss(
        input, target, margin=margin, weight=_per_class(weight, input)
    ),
}

# Loss over dims -> its inputs' broadcast shape after the first dim, which takes the rest of
# the N elements (at least 1, so a small -n still runs), as the loss is used:
# classes along dim 1 (a classifier head of 1024 classes, 256-dim embeddings, a batch of
# queries scored against 256 keys), (N, H, W, C) channels-last segmentation logits of 128
# classes, (N, C, H, W) masks of 4 channels at 64 x 64 for the overlap losses, and (B, N, M)
# distances between sets of 512 points.
REDUCTION_SHAPES: dict[str, tuple[int, ...]] = {
    "SoftCrossEntropy": (1024,),
    "CrossEntropy": (1024,),
    "NLL": (1024,),
    "ChannelsLastCrossEntropy": (64, 64, 128),
    "InfoNCE": (256,),
    "CategoricalKLDiv": (1024,),
    "JensenShannon": (1024,),
    "MultiLabelSoftMargin": (1024,),
    "CosineEmbedding": (256,),
    "MulticlassHinge": (1024,),
    "MultiMargin": (1024,),
    "DirectedChamfer": (512, 512),
    "Chamfer": (512, 512),
    "Dice": (4, 64, 64),
    "Tversky": (4, 64, 64),
    "FocalTversky": (4, 64, 64),
}


def _signs(full: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """+1 / -1 pair labels, one per row, shaped (N, 1) as the spec broadcasts them."""
    bits = torch.randint(0, 2, (full[0], 1), generator=generator)
    return (2 * bits - 1).to(torch.float32)


# Loss over dims -> tensors not drawn from a sampling domain (the values the loss expects).
TENSOR_OVERRIDES: dict[
    str, dict[str, Callable[[tuple[int, ...], torch.Generator], torch.Tensor]]
] = {"CosineEmbedding": {"y": _signs}}


@dataclass
class Variant:
    name: str
    steps: Steps  # (drop the last step's gradients, one forward+backward)
    times: list[float] = field(default_factory=list)
    host_times: list[float] = field(default_factory=list)  # see timed
    peak_bytes: int | None = None


@dataclass
class Row:
    loss: str
    variants: dict[str, Variant]
    elements: int  # of the first tensor: the unit of the peak columns
    bound_ms: float | None = None  # one pass's bytes at the measured copy bandwidth


def generated_modules(
    models: Sequence[LossModel], directory: str | None, prefix: str = "bench_"
) -> dict[str, types.ModuleType]:
    """Each loss's generated module, imported from a file on disk (triton reads a kernel's
    source from its file): from `directory` where given, else generated into a temporary one.
    Each is importable by its name, as torch.compile needs (it imports the module of every
    global it traces: the eager function of a loss over dims calls the module's helpers).
    """
    if directory is None:
        files = {
            f.name: f for f in generate_derived([derive(model) for model in models])
        }
        target = Path(tempfile.mkdtemp(prefix="lossgen_bench_"))
        for file in files.values():
            (target / file.name).write_text(file.content, encoding="utf-8")
    else:
        target = Path(directory)
    modules = {}
    for model in models:
        path = target / f"{model.snake_name}.py"
        spec = importlib.util.spec_from_file_location(f"{prefix}{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules.setdefault(module.__name__, module)
        modules[model.name] = module
    return modules


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (bytes read plus bytes written)."""
    source = torch.randn(1 << 28, device="cuda")
    target = torch.empty_like(source)
    times = []
    for _ in range(20):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / statistics.median(times[5:])


def bound_ms(model: LossModel, n: int, bandwidth: float | None) -> float | None:
    """The fewest milliseconds one fused pass can take for an elementwise loss: each tensor
    read once and the first one's gradient written once (float32), at `bandwidth`."""
    if bandwidth is None or model.reduces:
        return None
    return 1e3 * 4 * n * (len(model.tensors) + 1) / bandwidth


# --- building the contenders ------------------------------------------------------------------


def eager_function(
    model: LossModel, module: types.ModuleType | None = None
) -> Callable[..., torch.Tensor]:
    """The spec's expression as written, as a Python function of torch ops (mean-reduced).

    A loss over dims is printed as the generated Function's forward prints it (reductions
    over `shape`, the broadcast shape of the arguments, through the generated module's
    `_expand_along` / `_one_hot` / `_at` / `_pick` helpers: a Pick is a gather there too),
    but from the expression as written (no CSE, no rewrite), and reduced by that module's
    `_reduce`, so `mean` has the loss's semantics (dropped dims, the weighted mean of
    `mean_weight`). Params arrive as tensors.
    """
    names = {a.symbol: a.name for a in model.arguments}
    like = next(a.name for a in model.tensors if a.index_of is None)
    arguments = ", ".join(a.name for a in model.arguments)
    lines = [f"def eager_{model.snake_name}({arguments}):"]
    namespace: dict[str, object] = {"torch": torch, "math": math}
    if not model.reduces:
        lines.append(f"    return ({print_torch(model.expr, names, like)}).mean()")
    else:
        if module is None:
            raise ValueError(
                f"{model.name} reduces over dims: pass its generated module"
            )
        helpers = {k: v for k, v in vars(module).items() if not k.startswith("__")}
        namespace = {**helpers, **namespace}
        for a in model.arguments:  # as the generated forward prepares them
            if a.index_of is not None:
                lines.append(f"    {a.name} = {a.name}.unsqueeze({a.index_of})")
            if a.along is not None:
                lines.append(
                    f"    {a.name} = _lay_along({a.name}, {a.along}, {like}.dim())"
                )
        shapes = ", ".join(f"{a.name}.shape" for a in model.arguments)
        lines.append(f"    shape = torch.broadcast_shapes({shapes})")
        lines.append(f"    loss = {print_torch(model.expr, names, like)}")
        weight_total = "None"
        if model.mean_weight is not None:
            code = print_torch(model.mean_weight, names, like)
            lines.append(
                f"    weight_total = torch.as_tensor({code}, device={like}.device)"
                ".expand(_keepdim_shape(shape)).sum()"
            )
            weight_total = "weight_total"
        lines.append(f'    return _reduce(loss, "mean", shape, {weight_total})')
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<eager {model.name}>", "exec"), namespace)  # noqa: S102
    return namespace[f"eager_{model.snake_name}"]  # type: ignore[return-value]


def input_shapes(model: LossModel, n: int) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape: (n,) for an elementwise loss; for a loss over dims, the layout of
    REDUCTION_SHAPES (class indices without their dim)."""
    if not model.reduces:
        return {a.name: (n,) for a in model.tensors}
    if model.name in REDUCTION_SHAPES:
        rest = REDUCTION_SHAPES[model.name]
    else:  # a loss over dims not listed: 32 along every dim it names but the first
        ndim = needed_ndim(model)
        rest = (32,) * (ndim - 1)
    full = (max(1, n // math.prod(rest)), *rest)
    shapes = {}
    for a in model.tensors:
        shape = list(full)
        if a.index_of is not None:
            shape.pop(a.index_of)
        shapes[a.name] = tuple(shape)
    return shapes


def make_inputs(
    model: LossModel,
    module: types.ModuleType,
    n: int,
    device: str,
    dtype: torch.dtype,
    grad_all: bool,
) -> tuple[list[torch.Tensor], list[float], list[int]]:
    """Tensors drawn from the domain `lossgen check` uses (class indices in range), params at
    their defaults (for an elementwise loss, as before: a zero default is drawn at random).
    """
    case = LossCase(model, module)
    generator = torch.Generator().manual_seed(0)
    shapes = input_shapes(model, n)
    full = torch.broadcast_shapes(
        *(s for a, s in zip(model.tensors, shapes.values()) if a.index_of is None)
    )
    overrides = TENSOR_OVERRIDES.get(model.name, {})
    tensors, grad_positions = [], []
    for index, argument in enumerate(model.tensors):
        if argument.index_of is not None:
            value = class_indices(full, argument.index_of, generator)
            tensors.append(value.to(device=device))
            continue
        if argument.name in overrides:
            value = overrides[argument.name](tuple(full), generator)
        else:
            domain = case.domains[argument.name]
            shape = shapes[argument.name]
            value = draw(domain, shape, generator, torch.float32, False)
        tensors.append(value.to(device=device, dtype=dtype))
        if argument.differentiable and (grad_all or index == 0):
            grad_positions.append(index)
    params = [
        (
            p.default
            if model.reduces and p.default is not None
            else param_value(p, generator)
        )
        for p in model.params
    ]
    if CLASS_WEIGHTS:  # one weight per class, in [0.5, 2)
        for index, p in enumerate(model.params):
            if p.along is not None:
                count = full[p.along]
                weights = 0.5 + 1.5 * torch.rand(count, generator=generator)
                params[index] = weights.to(device=device, dtype=dtype)
    return tensors, params, grad_positions


def stepper(
    call: Callable[..., torch.Tensor],
    tensors: list[torch.Tensor],
    args: list[object],
    grad_positions: Sequence[int],
    module: types.ModuleType | None = None,
    **switches: object,
) -> Steps:
    """Dropping the last gradients, and one forward+backward of `call(*leaves, *args)`, with
    some of the generated `module`'s switches (COMPILE, TRITON, ...) set during the step.
    """
    leaves = [
        t.detach().requires_grad_(i in grad_positions) for i, t in enumerate(tensors)
    ]

    def reset() -> None:
        for leaf in leaves:
            leaf.grad = None

    def step() -> None:
        with switched(module, switches):
            call(*leaves, *args).backward()

    return reset, step


@contextlib.contextmanager
def switched(module: types.ModuleType | None, switches: dict[str, object]):
    saved = {name: getattr(module, name) for name in switches}
    for name, value in switches.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def builtin_matches(
    model: LossModel,
    module: types.ModuleType,
    tensors: list[torch.Tensor],
    params: list[float],
) -> str | None:
    """None if the built-in computes the generated loss's value on these inputs, else why not."""
    functional = getattr(module, model.snake_name)
    with torch.no_grad():
        ours = functional(*tensors, *params)
        try:
            theirs = BUILTINS[model.name](*tensors, *params)
        except (RuntimeError, ValueError, TypeError) as error:
            return f"{type(error).__name__}: {error}"
    if theirs.shape != ours.shape or not torch.allclose(
        theirs.double(), ours.double(), rtol=1e-4, atol=1e-6
    ):
        return f"value {theirs.tolist()} != generated {ours.tolist()}"
    return None


def contenders(
    model: LossModel,
    module: types.ModuleType,
    n: int,
    device: str,
    dtype: torch.dtype,
    grad_all: bool,
    use_compile: bool,
    notes: list[str],
    baseline: types.ModuleType | None = None,
) -> tuple[dict[str, Variant], int]:
    # Each loss compiles from a fresh dynamo: torch 2.11 wrapped every eager function in one
    # shared frame, and from the 9th loss on its recompile limit (8) ran them eagerly.
    torch._dynamo.reset()
    tensors, params, grads = make_inputs(model, module, n, device, dtype, grad_all)
    functional = getattr(module, model.snake_name)
    function = getattr(module, f"{model.name}Function")
    variants = {
        "generated": Variant("generated", stepper(functional, tensors, params, grads)),
        "reference": Variant(
            "reference", stepper(function.apply, tensors, [*params, "mean"], grads)
        ),
    }
    if baseline is not None:
        variants["baseline"] = Variant(
            "baseline",
            stepper(getattr(baseline, model.snake_name), tensors, params, grads),
        )
    # Switches a module lacks (no fused path for class indices, no Triton kernel for a loss
    # with reductions) stay unset.
    triton = {"TRITON": False} if hasattr(module, "TRITON") else {}
    if hasattr(module, "COMPILE"):
        variants["fused-eager"] = Variant(
            "fused-eager",
            stepper(
                functional, tensors, params, grads, module, COMPILE=False, **triton
            ),
        )
    if triton and device.startswith("cuda") and use_compile:
        variants["fused-compile"] = Variant(
            "fused-compile",
            stepper(functional, tensors, params, grads, module, **triton),
        )
    if device.startswith("cuda") and hasattr(module, "RESCALE_SYNC_MIN_NUMEL"):
        # Without the rescale kernel (as where triton is missing): the host asks whether
        # grad_output is 1 (a sync), or multiplies the saved gradient by it.
        no_kernel = (
            {"_rescale_kernel": False} if hasattr(module, "RESCALE_BLOCK") else {}
        )
        variants["generated-sync"] = Variant(
            "generated-sync",
            stepper(functional, tensors, params, grads, module, **no_kernel),
        )
        variants["generated-multiply"] = Variant(
            "generated-multiply",
            stepper(
                functional,
                tensors,
                params,
                grads,
                module,
                RESCALE_SYNC_MIN_NUMEL=math.inf,
                **no_kernel,
            ),
        )
    # Params become tensors for the printed expression (the printer's convention).
    param_tensors = [torch.as_tensor(p, dtype=dtype, device=device) for p in params]
    eager = eager_function(model, module)
    variants["eager"] = Variant("eager", stepper(eager, tensors, param_tensors, grads))
    if model.name in BUILTINS:
        mismatch = builtin_matches(model, module, tensors, params)
        if mismatch is None:
            variants["builtin"] = Variant(
                "builtin", stepper(BUILTINS[model.name], tensors, params, grads)
            )
        else:  # compare like with like only
            notes.append(f"{model.name}: builtin dropped ({mismatch})")
            print(notes[-1], file=sys.stderr, flush=True)
    if use_compile:
        compiled = torch.compile(eager)
        variants["compile"] = Variant(
            "compile", stepper(compiled, tensors, param_tensors, grads)
        )
    return variants, tensors[0].numel()


def cross_entropy_contenders(
    rows: int,
    classes: int,
    device: str,
    dtype: torch.dtype,
    use_compile: bool,
    module: types.ModuleType,
) -> dict[str, Variant]:
    """Softmax cross-entropy over `classes` logits per row; `module` is the generated
    CrossEntropy of specs/reductions.py (its defaults compute F.cross_entropy's value).
    """
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator, device=device, dtype=dtype)
    labels = torch.randint(
        0, classes, (rows,), generator=generator, device=device, dtype=torch.long
    )

    def eager(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        picked = x.gather(1, y[:, None])[:, 0]
        return (torch.logsumexp(x, dim=1) - picked).mean()

    variants = {
        "generated": Variant(
            "generated", stepper(module.cross_entropy, [logits, labels], [], [0])
        ),
        "builtin": Variant(
            "builtin", stepper(F.cross_entropy, [logits, labels], [], [0])
        ),
        "eager": Variant("eager", stepper(eager, [logits, labels], [], [0])),
    }
    if use_compile:
        variants["compile"] = Variant(
            "compile", stepper(torch.compile(eager), [logits, labels], [], [0])
        )
    with contextlib.suppress(ImportError):
        from liger_kernel.transformers.functional import liger_cross_entropy

        # Liger writes the gradient over its input: logits of its own, so the others' stay
        mine = logits.clone()
        variants["liger"] = Variant(
            "liger", stepper(liger_cross_entropy, [mine, labels], [], [0])
        )
    return variants


# --- measuring --------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --class-weights: params declared along a dim (class weights) are 1-D tensors, not scalars.
CLASS_WEIGHTS = False

# Steps per timed sample (--back-to-back): 1 waits for the GPU after every step, so the host's
# Python counts in full; more let the host queue the next step's kernels while the GPU runs
# (as a training loop does), so a step costs its GPU time where the host keeps ahead.
BACK_TO_BACK = 1

# --cpu-time: the clock for a step. On a CPU shared with other jobs, wall time counts the time
# the OS gave them; with one torch thread every kernel runs on the calling thread, so its CPU
# time (time.thread_time) is the step's own work.
CLOCK = time.perf_counter


def timed(steps: Steps, device: str) -> tuple[float, float]:
    """Seconds per step, and the host's seconds per step: until the last step's Python
    returned, before waiting for the GPU. Where the two agree, the host sets the pace.
    """
    reset, step = steps
    reset()  # freeing the last gradient is not part of the step
    synchronize(device)
    start = CLOCK()
    for index in range(BACK_TO_BACK):
        if index:
            reset()
        step()
    queued = CLOCK()
    synchronize(device)
    return (CLOCK() - start) / BACK_TO_BACK, (queued - start) / BACK_TO_BACK


def peak_extra_bytes(steps: Steps, device: str) -> int:
    """Most bytes allocated at once during a step beyond what was allocated before it."""
    reset, step = steps
    reset()
    if device.startswith("cuda"):
        synchronize(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def measure(
    variants: dict[str, Variant], device: str, repeats: int, warmup: int
) -> None:
    # Compile, autotune, and fault in the allocator's pages first.
    for variant in variants.values():
        for _ in range(warmup):
            timed(variant.steps, device)
    for variant in variants.values():
        variant.peak_bytes = peak_extra_bytes(variant.steps, device)
        variant.steps[0]()
    order = list(variants.values())
    for round_index in range(repeats):
        shift = round_index % len(order)
        for variant in order[shift:] + order[:shift]:
            elapsed, host = timed(variant.steps, device)
            variant.times.append(elapsed)
            variant.host_times.append(host)
        for variant in order:  # each round starts with no gradients held
            variant.steps[0]()


def median_ms(variant: Variant) -> float:
    return 1e3 * statistics.median(variant.times)


# --- reporting --------------------------------------------------------------------------------

COLUMNS = (
    "generated",
    "baseline",
    "generated-sync",
    "generated-multiply",
    "fused-eager",
    "fused-compile",
    "reference",
    "eager",
    "builtin",
    "compile",
)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def table(rows: list[Row], itemsize: int, columns: Sequence[str]) -> str:
    header = ["loss"] + [f"{c} ms" for c in columns]
    header += ["eager / generated", "compile / generated", "builtin / generated"]
    header += ["eager / reference"]
    before = "baseline" in columns  # before/after: the baseline's own ratio to compile
    if before:
        header += ["baseline / generated", "compile / baseline"]
    bounded = any(row.bound_ms is not None for row in rows)
    if bounded:  # CUDA: also the host's time per generated step (see timed)
        header += ["bound ms", "bound / generated", "generated host ms"]
    header += [f"{c} peak" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios: dict[str, list[float]] = {
        "eager": [],
        "compile": [],
        "builtin": [],
        "reference": [],
        "baseline": [],
        "compile-baseline": [],
    }
    for row in rows:
        cells = [row.loss]
        for c in columns:
            cells.append(_ms(median_ms(row.variants[c])) if c in row.variants else "")
        base = row.variants.get("generated")
        for c in ("eager", "compile", "builtin"):
            if base is not None and c in row.variants:
                ratio = median_ms(row.variants[c]) / median_ms(base)
                ratios[c].append(ratio)
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("")
        # the readable Function alone: lossgen v0's code
        if "reference" in row.variants and "eager" in row.variants:
            ratio = median_ms(row.variants["eager"]) / median_ms(
                row.variants["reference"]
            )
            ratios["reference"].append(ratio)
            cells.append(f"{ratio:.2f}x")
        else:
            cells.append("")
        if before:
            old = row.variants.get("baseline")
            pairs = [
                (old, base, "baseline"),
                (row.variants.get("compile"), old, "compile-baseline"),
            ]
            for numerator, denominator, key in pairs:
                if numerator is not None and denominator is not None:
                    ratio = median_ms(numerator) / median_ms(denominator)
                    ratios[key].append(ratio)
                    cells.append(f"{ratio:.2f}x")
                else:
                    cells.append("")
        if bounded:
            if row.bound_ms is not None and base is not None:
                fraction = row.bound_ms / median_ms(base)
                cells += [_ms(row.bound_ms), f"{100 * fraction:.0f}%"]
            else:
                cells += ["", ""]
            host = statistics.median(base.host_times) if base is not None else None
            cells.append(_ms(1e3 * host) if host is not None else "")
        for c in columns:
            v = row.variants.get(c)
            cells.append(
                f"{v.peak_bytes / (row.elements * itemsize):.2f}"
                if v is not None and v.peak_bytes is not None
                else ""
            )
        lines.append("| " + " | ".join(cells) + " |")
    if any(ratios.values()):
        cells = ["**median over losses**"] + [""] * len(columns)
        medians = ["eager", "compile", "builtin", "reference"]
        medians += ["baseline", "compile-baseline"] if before else []
        for c in medians:
            cells.append(
                f"**{statistics.median(ratios[c]):.2f}x**" if ratios[c] else ""
            )
        cells += [""] * (len(columns) + (3 if bounded else 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine(device: str) -> str:
    lines = [f"- date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"]
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    lines.append(
        f"- CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    if device.startswith("cuda"):
        lines.append(f"- GPU: {torch.cuda.get_device_name()}")
    versions = f"python {platform.python_version()}, torch {torch.__version__}"
    with contextlib.suppress(ImportError):
        import triton

        versions += f", triton {triton.__version__}"
    lines.append(f"- versions: {versions}")
    with contextlib.suppress(OSError):
        lines.append(f"- load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="spec files (default specs/*.py)")
    parser.add_argument("--losses", help="comma-separated loss names (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("-n", type=int, help="elements (default 2**22 CPU, 2**27 CUDA)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--back-to-back",
        type=int,
        default=1,
        help="steps per timed sample, one sync at its end (default 1: a sync after each)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="on CPU with --threads 1: time each step by the thread's CPU time, not wall "
        "time (other jobs on a shared machine then do not count)",
    )
    parser.add_argument("--grad-all", action="store_true")
    parser.add_argument(
        "--class-weights",
        action="store_true",
        help="class weights (params declared along a dim) as one random weight per class",
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--cross-entropy",
        default=None,
        help="ROWSxCLASSES softmax cross-entropy (default 8192x128256 on CUDA, none on CPU); "
        "none: skip it",
    )
    parser.add_argument("--markdown", help="write the report to this file too")
    parser.add_argument(
        "--variants",
        help="comma-separated columns to measure (default: all that apply)",
    )
    parser.add_argument(
        "--generated",
        help="import the generated files from this directory (e.g. the committed generated/) "
        "instead of generating them (no black needed)",
    )
    parser.add_argument(
        "--baseline",
        help="also time the generated files in this directory (e.g. an older commit's "
        "generated/) as the column `baseline`, for before/after ratios within one run",
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    global BACK_TO_BACK, CLASS_WEIGHTS, CLOCK
    if args.cpu_time:
        if args.device != "cpu" or args.threads != 1:
            parser.error("--cpu-time needs --device cpu and --threads 1")
        CLOCK = time.thread_time
    BACK_TO_BACK = args.back_to_back
    CLASS_WEIGHTS = args.class_weights
    device = args.device
    cuda = device.startswith("cuda")
    dtype = getattr(torch, args.dtype)
    n = args.n or (2**27 if cuda else 2**22)
    specs = args.specs or sorted(glob.glob("specs/*.py"))
    wanted = set(args.losses.split(",")) if args.losses else None
    use_compile = not args.no_compile

    models = [m for m in load_models(specs) if wanted is None or m.name in wanted]
    modules = generated_modules(models, args.generated)
    baselines = (
        generated_modules(models, args.baseline, "bench_baseline_")
        if args.baseline
        else {}
    )
    bandwidth = copy_bandwidth() if cuda else None
    rows: list[Row] = []
    notes: list[str] = []
    for model in models:
        module = modules[model.name]
        variants, elements = contenders(
            model,
            module,
            n,
            device,
            dtype,
            args.grad_all,
            use_compile,
            notes,
            baselines.get(model.name),
        )
        if args.variants:  # "generated" stays: the ratios are taken against it
            keep = {"generated", *args.variants.split(",")}
            variants = {k: v for k, v in variants.items() if k in keep}
        measure(variants, device, args.repeats, args.warmup)
        rows.append(Row(model.name, variants, elements, bound_ms(model, n, bandwidth)))
        print(
            f"{model.name}: "
            + ", ".join(f"{k} {median_ms(v):.2f} ms" for k, v in variants.items()),
            file=sys.stderr,
            flush=True,
        )
        del variants
        if cuda:
            torch.cuda.empty_cache()

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    report = [
        f"### {device}, N = {n} ({'2**' + str(int(math.log2(n))) if n & (n - 1) == 0 else n}),"
        f" {args.dtype}, mean reduction, forward+backward\n",
        f"Command: `{command}`\n",
        machine(device),
        f"Median of {args.repeats} interleaved rounds, ms"
        + (" of the thread's CPU time" if args.cpu_time else "")
        + (
            f" per step, each round's steps {BACK_TO_BACK} back to back (one sync)"
            if BACK_TO_BACK > 1
            else ", a sync after each step"
        )
        + "; ratios > 1 mean the generated code is faster. Peak: extra memory at the peak "
        "of one step, in input-sized tensors (the gradient left in `.grad` counts as 1).\n",
        # columns no loss has (fused-compile off CUDA) are left out
        table(
            rows,
            dtype.itemsize,
            [c for c in COLUMNS if any(c in r.variants for r in rows)],
        ),
    ]
    if notes:
        report.append("\n".join(f"- {note}" for note in notes) + "\n")

    ce_shape = args.cross_entropy or ("8192x128256" if cuda else None)
    if ce_shape and ce_shape != "none":
        ce_rows, classes = (int(v) for v in ce_shape.lower().split("x"))
        (cross_entropy,) = [
            m for m in load_models(["specs/reductions.py"]) if m.name == "CrossEntropy"
        ]
        module = generated_modules([cross_entropy], args.generated)["CrossEntropy"]
        variants = cross_entropy_contenders(
            ce_rows, classes, device, dtype, use_compile, module
        )
        measure(variants, device, args.repeats, args.warmup)
        lines = [
            f"Softmax cross-entropy {ce_rows} x {classes} {args.dtype}, class indices "
            "(generated: CrossEntropy of specs/reductions.py at its defaults):\n",
            "| variant | ms | peak extra GB |",
            "|---|---|---|",
        ]
        for name, variant in variants.items():
            peak = (variant.peak_bytes or 0) / 1e9
            lines.append(f"| {name} | {_ms(median_ms(variant))} | {peak:.2f} |")
        report.append("\n".join(lines) + "\n")

    text = "\n".join(report)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
