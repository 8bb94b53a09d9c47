"""Stage 8, verify: prove generated gradients right against autograd, and code current on disk.

Every check runs the generated code itself (executed from its source) against the reference
evaluator (`lossgen.reference`), which lets torch's autograd differentiate the loss as written.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sympy as sp
import torch

from lossgen.api import PathLike, derive_all, generate_derived
from lossgen.derive import DerivedLoss
from lossgen.emit import Drift, GeneratedFile, drift
from lossgen.errors import SpecError
from lossgen.model import Argument, LossModel
from lossgen.reductions import Amax, Amin, all_dims
from lossgen.reference import evaluate, reduced_loss
from lossgen.vocabulary import REDUCTIONS, clamp, relu

# Shapes of (tensors, params) for each case: plain, params broadcast, tensors broadcast.
SHAPE_CASES: tuple[tuple[tuple[tuple[int, ...], ...], tuple[int, ...] | None], ...] = (
    (((4, 3),), None),  # params as Python floats
    (((2, 3, 4),), (3, 1)),  # params as tensors broadcast over the inputs
    (((5, 1), (1, 4)), ()),  # tensors broadcast against each other, 0-dim params
)
MAGNITUDES = {"tiny (1e-30)": 1e-30, "huge (1e4)": 1e4, "logits (+-100)": 100.0}
KINK_CLEARANCE = 1e-3  # random points for gradcheck stay this far from kinks


@dataclass(frozen=True)
class CheckResult:
    loss: str
    check: str
    ok: bool
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class Report:
    drift: Drift | None
    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return (self.drift is None or self.drift.clean) and all(
            r.ok for r in self.results
        )

    def to_text(self) -> str:
        """Drift first, then one row per loss with one column per check, then failures."""
        lines = []
        if self.drift is not None:
            lines += _drift_lines(self.drift)
        if self.results:
            lines += _table(self.results)
        failures = [r for r in self.results if not r.ok]
        for r in failures:
            lines.append(f"FAIL {r.loss} {r.check}: {r.detail or 'failed'}")
        summary = "ok" if self.ok else "FAILED"
        drifted = self.drift is not None and not self.drift.clean
        counts = (
            f"{len(self.results)} checks, {len(failures)} failed"
            if self.results
            else "drift only, no numeric checks"
        )
        lines.append(
            f"lossgen check: {summary} ({counts}"
            + (", generated code drifted" if drifted else "")
            + ")"
        )
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """Stable, sorted JSON: ok, counts, drift and every check result."""
        payload = {
            "ok": self.ok,
            "checks": len(self.results),
            "failed": sum(not r.ok for r in self.results),
            "drift": (
                None
                if self.drift is None
                else {
                    "clean": self.drift.clean,
                    "stale": [name for name, _ in self.drift.stale],
                    "missing": list(self.drift.missing),
                    "unexpected": list(self.drift.unexpected),
                    "diffs": {name: diff for name, diff in self.drift.stale},
                }
            ),
            "results": [asdict(r) for r in self.results],
        }
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"


MAX_DIFF_LINES = 40  # per stale file in the text report; --json has the whole diff


def _table(results: Sequence[CheckResult]) -> list[str]:
    """loss x check: ok/FAIL per cell, and the worst abs/rel error over the loss's checks."""
    losses = list(dict.fromkeys(r.loss for r in results))
    checks = list(dict.fromkeys(r.check for r in results))
    cells = {(r.loss, r.check): r for r in results}
    loss_width = max(len("loss"), *(len(name) for name in losses))
    widths = [max(len(check), 4) for check in checks]
    header = [f"{'loss':<{loss_width}}"]
    header += [f"{check:<{width}}" for check, width in zip(checks, widths)]
    header += ["max abs err", "max rel err"]
    rows = ["  ".join(header)]
    for loss in losses:
        row = [f"{loss:<{loss_width}}"]
        for check, width in zip(checks, widths):
            result = cells.get((loss, check))
            verdict = "-" if result is None else ("ok" if result.ok else "FAIL")
            row.append(f"{verdict:<{width}}")
        mine = [r for r in results if r.loss == loss]
        row.append(f"{max(r.max_abs_error for r in mine):<11.2e}")
        row.append(f"{max(r.max_rel_error for r in mine):.2e}")
        rows.append("  ".join(row))
    return rows


def _drift_lines(d: Drift) -> list[str]:
    lines = []
    for name, diff in d.stale:
        lines.append(f"stale: {name} differs from what the specs generate")
        diff_lines = diff.splitlines()
        lines += ["    " + line for line in diff_lines[:MAX_DIFF_LINES]]
        if len(diff_lines) > MAX_DIFF_LINES:
            lines.append(
                f"    ... {len(diff_lines) - MAX_DIFF_LINES} more diff lines (see --json)"
            )
    lines += [
        f"missing: {name} (run `lossgen build` to create it)" for name in d.missing
    ]
    lines += [
        f"unexpected: {name} (not generated by these specs)" for name in d.unexpected
    ]
    if d.clean:
        lines.append("generated code is up to date")
    else:
        lines.append(
            "generated code is out of date: run `lossgen build` with the same specs"
        )
    return lines


def check(
    spec_paths: Sequence[PathLike],
    out_dir: PathLike = "generated",
    *,
    numeric: bool = True,
) -> Report:
    """Drift of `out_dir` against the specs, then every numeric check of every loss."""
    if not spec_paths:
        raise SpecError("no spec files given")
    all_derived = derive_all(spec_paths)  # specs run once, losses derived once
    files = generate_derived(all_derived)
    report_drift = drift(Path(out_dir), files)
    results: list[CheckResult] = []
    if numeric:
        by_name = {f.name: f for f in files}
        for derived in all_derived:
            module = load_generated(by_name[f"{derived.model.snake_name}.py"])
            results += verify_loss(derived, module)
    return Report(report_drift, tuple(results))


def load_generated(file: GeneratedFile) -> types.ModuleType:
    """Execute a generated file's source as a fresh module (the code that would be on disk)."""
    module = types.ModuleType(f"lossgen_generated_{file.name[:-3]}")
    module.__file__ = file.name
    exec(
        compile(file.content, file.name, "exec"), module.__dict__
    )  # noqa: S102 - our own output
    return module


# --- the checks -------------------------------------------------------------------------------


def verify_loss(derived: DerivedLoss, module: types.ModuleType) -> list[CheckResult]:
    """All numeric checks of one loss."""
    try:
        case = LossCase(derived.model, module)
    except Exception as error:
        # no finite sampling domain, a name missing from the module
        detail = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        return [CheckResult(derived.model.name, "setup", False, detail=detail)]
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("gradcheck", case.gradcheck),
        ("gradgradcheck", case.gradgradcheck),
        ("autograd", case.against_autograd),
        ("interfaces", case.interfaces_agree),
        ("kinks", case.at_kinks),
        ("extremes", case.at_extremes),
        ("fastpath", case.fast_path_agrees),
    ]
    results = []
    for name, run in checks:
        try:
            results.append(run())
        except Exception as error:
            # a crash in generated code is a failed check, not ours
            detail = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            results.append(CheckResult(derived.model.name, name, False, detail=detail))
    return results


@dataclass
class Sample:
    """Arguments for one call, in signature order, plus which of them gradients flow to."""

    values: list[torch.Tensor | float]
    grad_positions: list[int]


class LossCase:
    """Numeric checks of one generated loss against the reference evaluator."""

    def __init__(self, model: LossModel, module: types.ModuleType) -> None:
        self.model = model
        self.module = module
        self.function = getattr(module, f"{model.name}Function")
        self.module_class = getattr(module, model.name)
        self.functional = getattr(module, model.snake_name)
        self.switches = switch_functions(model.expr)
        self.shape_cases = shape_cases(model)
        self.domains = self._find_domains()

    # --- sampling ---------------------------------------------------------------------------

    def _find_domains(self) -> dict[str, str]:
        """A sampling domain per tensor where the loss and its reference gradient are finite."""
        tensors = [t for t in self.model.tensors if t.index_of is None]
        for combo in itertools.product(DOMAINS, repeat=len(tensors)):
            domains = {t.name: d for t, d in zip(tensors, combo)}
            sample = self.sample(self.shape_cases[0], seed=0, domains=domains)
            value, grads = self.reference(sample, "none")
            if _finite(value, *grads):
                return domains
        raise AssertionError(
            f"{self.model.name}: no sampling domain gives a finite loss and gradient"
        )

    def sample(
        self,
        shapes: tuple[tuple[tuple[int, ...], ...], tuple[int, ...] | None],
        seed: int,
        domains: dict[str, str] | None = None,
        dtype: torch.dtype = torch.float64,
        dyadic: bool = False,
    ) -> Sample:
        domains = domains or self.domains
        generator = torch.Generator().manual_seed(seed)
        tensor_shapes, param_shape = shapes
        full = torch.broadcast_shapes(*tensor_shapes)
        values: list[torch.Tensor | float] = []
        grad_positions = []
        for index, argument in enumerate(self.model.arguments):
            if argument.index_of is not None:
                values.append(class_indices(full, argument.index_of, generator))
            elif argument.is_tensor:
                shape = tensor_shapes[min(index, len(tensor_shapes) - 1)]
                value = draw(domains[argument.name], shape, generator, dtype, dyadic)
                values.append(value)
                if argument.differentiable:
                    grad_positions.append(index)
            else:
                base = param_value(argument, generator)
                if param_shape is None:
                    values.append(base)
                elif argument.along is not None:  # one value per class, like weights
                    count = full[argument.along]
                    jitter = 0.5 + torch.rand((count,), generator=generator)
                    values.append((base * jitter).to(dtype))
                    grad_positions.append(index)
                else:
                    jitter = 1 + 0.05 * (
                        torch.rand(param_shape, generator=generator) - 0.5
                    )
                    values.append((base * jitter).to(dtype))
                    grad_positions.append(index)
        return Sample(values, grad_positions)

    def away_from_kinks(
        self,
        shapes: tuple[tuple[tuple[int, ...], ...], tuple[int, ...] | None],
        seed: int,
    ) -> Sample:
        for attempt in range(50):
            sample = self.sample(shapes, seed=seed * 1000 + attempt)
            if self.kink_distance(sample) > KINK_CLEARANCE:
                return sample
        return sample

    def kink_distance(self, sample: Sample) -> float:
        if not self.switches:
            return math.inf
        env = self.environment(sample.values)
        return min(float(evaluate(g, env).abs().min()) for g in self.switches)

    def environment(
        self, values: Sequence[torch.Tensor | float]
    ) -> dict[sp.Symbol, torch.Tensor]:
        return environment(self.model, values)

    # --- evaluation -------------------------------------------------------------------------

    def reference(
        self, sample: Sample, reduction: str
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and gradients from autograd of the expression as written."""
        leaves = _leaves(sample)
        env = self.environment(leaves)
        with torch.enable_grad():
            model = self.model
            value = reduced_loss(
                model.expr, env, reduction, model.dropped, model.mean_weight
            )
            grads = _gradients(value, [leaves[i] for i in sample.grad_positions])
        return value.detach(), grads

    def generated(
        self,
        sample: Sample,
        reduction: str,
        call: Callable[..., torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = _leaves(sample)
        call = call or (lambda *args: self.function.apply(*args, reduction))
        with torch.enable_grad():
            value = call(*leaves)
            grads = _gradients(value, [leaves[i] for i in sample.grad_positions])
        return value.detach(), grads

    # --- checks -----------------------------------------------------------------------------

    def result(self, check: str, errors: Errors) -> CheckResult:
        return CheckResult(
            self.model.name,
            check,
            errors.ok,
            errors.max_abs,
            errors.max_rel,
            errors.detail,
        )

    def gradcheck(self) -> CheckResult:
        return self._gradchecks("gradcheck", torch.autograd.gradcheck, REDUCTIONS)

    def gradgradcheck(self) -> CheckResult:
        return self._gradchecks(
            "gradgradcheck", torch.autograd.gradgradcheck, ("none", "mean")
        )

    def _gradchecks(
        self, name: str, checker: Callable[..., bool], reductions: Sequence[str]
    ) -> CheckResult:
        failures = []
        for case_index, shapes in enumerate(self.shape_cases):
            sample = self.away_from_kinks(shapes, seed=case_index)
            leaves = _leaves(sample)
            positions = sample.grad_positions

            for reduction in reductions:

                def call(
                    *differentiable: torch.Tensor,
                    reduction: str = reduction,
                    leaves: list = leaves,
                    positions: list[int] = positions,
                ) -> torch.Tensor:
                    args = list(leaves)
                    for position, tensor in zip(positions, differentiable):
                        args[position] = tensor
                    return self.function.apply(*args, reduction)

                inputs = tuple(leaves[i] for i in positions)
                if not inputs:
                    continue
                # gradgradcheck draws its grad_outputs from the global RNG: seed it, so a
                # verdict never depends on what ran before in the same process.
                with torch.random.fork_rng():
                    torch.manual_seed(case_index)
                    passed = checker(call, inputs, raise_exception=False)
                if not passed:
                    failures.append(f"case {case_index} reduction={reduction}")
        return CheckResult(
            self.model.name, name, not failures, detail="; ".join(failures)
        )

    def against_autograd(self) -> CheckResult:
        errors = Errors()
        for case_index, shapes in enumerate(self.shape_cases):
            for seed in range(3):
                sample = self.sample(shapes, seed=100 + 10 * case_index + seed)
                for reduction in REDUCTIONS:
                    errors.compare(
                        self.generated(sample, reduction),
                        self.reference(sample, reduction),
                    )
        return self.result("autograd", errors)

    def interfaces_agree(self) -> CheckResult:
        """Module, Function and functional give identical values and gradients."""
        errors = Errors(rtol=0.0, atol=0.0)
        names = [a.name for a in self.model.arguments]
        params = [a for a in self.model.params]
        for shapes in self.shape_cases:
            sample = self.sample(shapes, seed=7)
            tensors_count = len(self.model.tensors)
            for reduction in REDUCTIONS:
                expected = self.generated(sample, reduction)

                def functional(
                    *args: torch.Tensor, reduction: str = reduction
                ) -> torch.Tensor:
                    return self.functional(*args, reduction=reduction)

                errors.compare(self.generated(sample, reduction, functional), expected)
                if any(p.learnable for p in params):
                    continue  # the Module owns learnable params: compared below
                module = self.module_class(
                    *sample.values[tensors_count:], reduction=reduction
                )
                module_sample = Sample(
                    sample.values[:tensors_count],
                    [i for i in sample.grad_positions if i < tensors_count],
                )
                expected_tensors = (
                    expected[0],
                    [
                        g
                        for i, g in zip(sample.grad_positions, expected[1])
                        if i < tensors_count
                    ],
                )
                errors.compare(
                    self.generated(module_sample, reduction, module), expected_tensors
                )
        learnable = [p.name for p in params if p.learnable]
        if learnable:
            module = self.module_class(
                **{p.name: p.default if p.default is not None else 1.0 for p in params}
            )
            registered = {name for name, _ in module.named_parameters()}
            if registered != set(learnable):
                errors.fail(
                    f"learnable params {learnable} but Module has {sorted(registered)}"
                )
        del names
        return self.result("interfaces", errors)

    def at_kinks(self) -> CheckResult:
        """Gradients exactly where Abs/Max/Min/Piecewise/Heaviside switch, vs torch's own ops."""
        errors = Errors()
        points = 0
        for switch in self.switches:
            for sample in self.samples_on(switch):
                points += 1
                errors.compare(
                    self.generated(sample, "sum"), self.reference(sample, "sum")
                )
        for sample in self.samples_with_ties():
            points += 1
            errors.compare(self.generated(sample, "sum"), self.reference(sample, "sum"))
        detail = f"{points} kink samples" if points else "no kinks"
        errors.detail = errors.detail or detail
        return self.result("kinks", errors)

    def samples_with_ties(self) -> Iterator[Sample]:
        """Where a Max/Min over dims has tied candidates: values on a coarse grid (-1, 0, 1;
        0.5, 1 where only positive values are allowed), so ties are everywhere.
        torch.amax/amin split the gradient evenly there."""
        if not self.model.expr.atoms(Amax, Amin):
            return
        for seed in range(3):
            sample = self.sample(self.shape_cases[0], seed=700 + seed)
            for index, argument in enumerate(self.model.arguments):
                value = sample.values[index]
                if argument.is_tensor and argument.index_of is None:
                    grid = torch.round(value.clamp(-1, 1))
                    if self.domains[argument.name] != "normal":
                        grid = torch.round(value.clamp(0.5, 1) * 2) / 2
                    sample.values[index] = grid
            value, grads = self.reference(sample, "none")
            if _finite(value, *grads):
                yield sample

    def samples_on(self, switch: sp.Expr) -> Iterator[Sample]:
        """Samples where `switch` is exactly 0, solving for one tensor at a time."""
        tensors = [
            a
            for a in self.model.tensors
            if a.symbol in switch.free_symbols and a.index_of is None
        ]
        for seed, argument in enumerate(tensors):
            try:
                solutions = sp.solve(sp.Eq(switch, 0), argument.symbol, dict=False)
            except (NotImplementedError, ValueError, TypeError):
                continue
            for solution in solutions[:2]:
                if not isinstance(solution, sp.Expr) or solution.has(sp.I):
                    continue
                sample = self.sample(self.shape_cases[0], seed=500 + seed, dyadic=True)
                env = self.environment(sample.values)
                position = self.model.arguments.index(argument)
                try:
                    exact = evaluate(solution, env).expand(
                        sample.values[position].shape
                    )
                except (NotImplementedError, RuntimeError):
                    continue
                sample.values[position] = exact.clone()
                env = self.environment(sample.values)
                on_kink = evaluate(switch, env) == 0
                value, grads = self.reference(sample, "none")
                if bool(on_kink.any()) and _finite(value, *grads):
                    yield sample

    def at_extremes(self) -> CheckResult:
        """Tiny and huge magnitudes: no NaN/inf where autograd of the loss has none."""
        errors = Errors(rtol=1e-5, atol=1e-12)
        for label in MAGNITUDES:
            sample = self.sample_at_magnitude(label)
            for reduction in ("none", "sum"):
                expected = self.reference(sample, reduction)
                errors.compare(
                    self.generated(sample, reduction),
                    expected,
                    where=label,
                    skip_nonfinite=True,
                )
                low = Sample(
                    [
                        v.float() if isinstance(v, torch.Tensor) else v
                        for v in sample.values
                    ],
                    sample.grad_positions,
                )
                got = self.generated(low, reduction)
                errors.finite_where(got, expected, where=f"{label}, float32")
        return self.result("extremes", errors)

    def fast_path_agrees(self) -> CheckResult:
        """The fast path (the fused body, uncompiled: the code torch.compile is given) against
        the Function: random points, points on kinks and ties, extreme magnitudes; mean and
        sum with grad_output 0.5, so the saved gradients are rescaled."""
        if not hasattr(self.module, "FUSED_MIN_NUMEL"):
            return self.result("fastpath", Errors())  # generated without one
        errors = Errors()
        calls = taken = 0
        with _fast_path_at_any_size(self.module):
            for where, sample in self._fast_path_samples():
                for reduction in ("mean", "sum"):
                    nodes: list[str] = []
                    functional = self.functional_noting(reduction, nodes)
                    expected = self.generated(sample, reduction)
                    got = self.generated(sample, reduction, functional)
                    errors.compare(got, expected, where, skip_nonfinite=True)
                    errors.finite_where(got, expected, where)
                    calls += 1
                    taken += nodes[0].endswith("FusedBackward")
        if not taken:
            errors.fail(f"the fast path was taken in none of {calls} calls")
        errors.detail = errors.detail or f"{taken} of {calls} calls on the fast path"
        return self.result("fastpath", errors)

    def functional_noting(
        self, reduction: str, nodes: list[str]
    ) -> Callable[..., torch.Tensor]:
        """The functional form with `reduction`, appending to `nodes` the name of each call's
        autograd node (which says the path it took: `_<Loss>FusedBackward` the fast path).
        """

        def call(*args: torch.Tensor | float) -> torch.Tensor:
            value = self.functional(*args, reduction=reduction)
            nodes.append(type(value.grad_fn).__name__)
            return value

        return call

    def _fast_path_samples(self) -> Iterator[tuple[str, Sample]]:
        for case_index, shapes in enumerate(self.shape_cases):
            yield f"(shapes {case_index})", self.sample(shapes, seed=300 + case_index)
        for switch in self.switches:
            for sample in self.samples_on(switch):
                yield f"(on {switch} = 0)", sample
        for sample in self.samples_with_ties():
            yield "(ties)", sample
        for label in MAGNITUDES:
            yield f"({label})", self.sample_at_magnitude(label)

    def sample_at_magnitude(self, label: str) -> Sample:
        """shape case 0 with its unbounded tensors scaled to one of MAGNITUDES."""
        scale = MAGNITUDES[label]
        sample = self.sample(self.shape_cases[0], seed=900)
        for index, argument in enumerate(self.model.arguments):
            if argument.is_tensor and self.domains.get(argument.name) in (
                "normal",
                "positive",
            ):
                value = sample.values[index]
                if label.startswith("logits"):
                    value = torch.sign(value) * scale
                else:
                    value = value * scale
                sample.values[index] = value
        return sample


@contextlib.contextmanager
def _fast_path_at_any_size(module: types.ModuleType) -> Iterator[None]:
    """The module's fast path taken at the small sizes checked, its body uncompiled."""
    saved = module.FUSED_MIN_NUMEL, module.COMPILE
    module.FUSED_MIN_NUMEL, module.COMPILE = 0, False
    try:
        yield
    finally:
        module.FUSED_MIN_NUMEL, module.COMPILE = saved


class Errors:
    """Accumulates the worst absolute/relative error and the first failure."""

    def __init__(self, rtol: float = 1e-6, atol: float = 1e-9) -> None:
        self.rtol = rtol
        self.atol = atol
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.ok = True
        self.detail = ""

    def fail(self, detail: str) -> None:
        if self.ok:
            self.detail = detail
        self.ok = False

    def compare(
        self,
        got: tuple[torch.Tensor, list[torch.Tensor]],
        expected: tuple[torch.Tensor, list[torch.Tensor]],
        where: str = "",
        skip_nonfinite: bool = False,
    ) -> None:
        pairs = [(got[0], expected[0], "value")] + [
            (g, e, f"gradient {i}") for i, (g, e) in enumerate(zip(got[1], expected[1]))
        ]
        for actual, wanted, what in pairs:
            what = f"{what} {where}" if where else what
            actual = actual.double()
            wanted = wanted.double()
            if actual.shape != wanted.shape:
                self.fail(
                    f"{what}: shape {tuple(actual.shape)} != {tuple(wanted.shape)}"
                )
                continue
            usable = (
                torch.isfinite(wanted)
                if skip_nonfinite
                else torch.ones_like(wanted, dtype=torch.bool)
            )
            if not bool(usable.any()):
                continue
            a, w = actual[usable], wanted[usable]
            if not torch.isfinite(a).all() and torch.isfinite(w).all():
                self.fail(f"{what}: not finite where autograd is")
                continue
            difference = (a - w).abs()
            difference = torch.where(torch.isnan(a) & torch.isnan(w), 0.0, difference)
            finite = torch.isfinite(difference)
            if finite.any():
                self.max_abs = max(self.max_abs, float(difference[finite].max()))
                # Relative error only where the expected value is not itself ~0 (below atol it
                # measures nothing: 1e-14 / 1e-300 would read 1e286).
                sizable = finite & (w.abs() > self.atol)
                if sizable.any():
                    relative = difference[sizable] / w.abs()[sizable]
                    self.max_rel = max(self.max_rel, float(relative.max()))
            if not torch.allclose(a, w, rtol=self.rtol, atol=self.atol, equal_nan=True):
                self.fail(f"{what}: differs from autograd")

    def finite_where(
        self,
        got: tuple[torch.Tensor, list[torch.Tensor]],
        expected: tuple[torch.Tensor, list[torch.Tensor]],
        where: str,
    ) -> None:
        """`got` must be finite wherever `expected` is finite and fits in float32."""
        for actual, wanted in zip([got[0], *got[1]], [expected[0], *expected[1]]):
            representable = torch.isfinite(wanted) & (wanted.abs() < 1e30)
            if not bool(torch.isfinite(actual.double()[representable]).all()):
                self.fail(f"{where}: NaN/inf where autograd is finite")


# --- helpers ---------------------------------------------------------------------------------

DOMAINS = ("normal", "positive", "unit")


def draw(
    domain: str,
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype,
    dyadic: bool,
) -> torch.Tensor:
    if domain == "normal":
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
    elif domain == "positive":
        value = 0.1 + 1.9 * torch.rand(shape, generator=generator, dtype=torch.float64)
    else:
        value = 0.05 + 0.9 * torch.rand(shape, generator=generator, dtype=torch.float64)
    if dyadic:  # exactly representable, so solved kink points are exact too
        value = torch.round(value * 8) / 8
        if domain != "normal":
            value = value.clamp_min(0.125)
        if domain == "unit":
            value = value.clamp_max(0.875)
    return value.to(dtype)


def environment(
    model: LossModel, values: Sequence[torch.Tensor | float]
) -> dict[sp.Symbol, torch.Tensor]:
    """Argument values by symbol, as the expression sees them: floats as tensors, class
    indices unsqueezed at their dim, 1-D params laid along theirs."""
    like = next(
        v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()
    )
    ndim = max(v.dim() for v in values if isinstance(v, torch.Tensor))
    env = {}
    for argument, v in zip(model.arguments, values):
        if not isinstance(v, torch.Tensor):
            v = torch.tensor(v, dtype=like.dtype)
        if argument.index_of is not None:
            v = v.unsqueeze(argument.index_of)
        if argument.along is not None and v.dim() == 1:
            sizes = [1] * ndim
            sizes[argument.along] = v.numel()
            v = v.reshape(sizes)
        env[argument.symbol] = v
    return env


def class_indices(
    full: torch.Size, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """Random class indices into `dim` of `full`, shaped like `full` without that dim."""
    shape = list(full)
    classes = shape.pop(dim)
    return torch.randint(0, classes, shape, generator=generator)


def all_dims_of(model: LossModel) -> list[int]:
    exprs = [model.expr]
    if model.mean_weight is not None:
        exprs.append(model.mean_weight)
    return all_dims(sp.Tuple(*exprs))


def needed_ndim(model: LossModel) -> int:
    """The fewest dims the inputs need for every dim the loss names (-3 needs 3, 3 needs 4)."""
    return max([d + 1 if d >= 0 else -d for d in all_dims_of(model)] or [0])


def shape_cases(model: LossModel) -> tuple:
    """SHAPE_CASES, with as many dims as the loss names, and 0-dim (or per-class) tensor
    params where the loss reduces: a param varying along a reduced dim of the loss's top
    level would not be one value per element of the reduced loss."""
    if not model.reduces:
        return SHAPE_CASES
    ndim = needed_ndim(model)
    cases = []
    for tensor_shapes, param_shape in SHAPE_CASES:
        padded = tuple(
            shape + (2,) * max(0, ndim - len(shape)) for shape in tensor_shapes
        )
        cases.append((padded, None if param_shape is None else ()))
    return tuple(cases)


def param_value(argument: Argument, generator: torch.Generator) -> float:
    if argument.default is not None and argument.default != 0:
        return argument.default
    return 0.5 + float(torch.rand((), generator=generator, dtype=torch.float64))


def switch_functions(expr: sp.Expr) -> list[sp.Expr]:
    """Expressions whose zeros are where `expr` switches branch or has a kink."""
    found: list[sp.Expr] = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Abs, sp.sign, relu)):
            found.append(node.args[0])
        elif isinstance(node, sp.Heaviside):
            found.append(node.args[0])
        elif isinstance(node, (sp.Max, sp.Min)):
            found += [a - b for a, b in itertools.combinations(node.args, 2)]
        elif isinstance(node, clamp):
            x, low, high = node.args
            found += [
                x - bound for bound in (low, high) if bound.is_finite is not False
            ]
        elif isinstance(node, sp.core.relational.Relational):
            found.append(node.lhs - node.rhs)
    unique = []
    for g in found:
        if g.free_symbols and g not in unique and -g not in unique:
            unique.append(g)
    return unique


def _leaves(sample: Sample) -> list[torch.Tensor | float]:
    leaves: list[torch.Tensor | float] = []
    for index, value in enumerate(sample.values):
        if isinstance(value, torch.Tensor):
            value = (
                value.detach().clone().requires_grad_(index in sample.grad_positions)
            )
        leaves.append(value)
    return leaves


def _gradients(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    if not inputs:
        return []
    seed = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(
        value.shape
    )
    grads = torch.autograd.grad(value, inputs, grad_outputs=seed, allow_unused=True)
    return [
        torch.zeros_like(x) if g is None else g.detach() for x, g in zip(inputs, grads)
    ]


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)
