"""`lossgen plot` and the gallery in docs/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import ROOT, SPEC_ARGS
from lossgen.api import generate, load_models
from lossgen.cli import main
from lossgen.plot import PlotSettings, curves
from lossgen.verify import load_generated

# A small spec of its own: deriving all of specs/classification.py would take seconds.
SMALL_SPEC = """
import sympy as sp
from lossgen import Loss, Param, Tensor, relu

input = Tensor("input")
probability = Tensor("probability")
target = Tensor("target")
label = Tensor("label", differentiable=False)
alpha = Param("alpha", default=1.0)
delta = Param("delta", default=1.0)

hinge = Loss("Hinge", relu(1 - label * input))
bce = Loss("BCE", -(target * sp.log(probability) + (1 - target) * sp.log(1 - probability)))
barron = Loss(
    "Barron",
    sp.Abs(alpha - 2) / alpha
    * (((input - target) ** 2 / sp.Abs(alpha - 2) + 1) ** (alpha / 2) - 1),
)
huber = Loss(
    "Huber",
    sp.Piecewise(
        ((input - target) ** 2 / 2, sp.Abs(input - target) <= delta),
        (delta * (sp.Abs(input - target) - delta / 2), True),
    ),
)
"""


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("spec") / "small.py"
    path.write_text(SMALL_SPEC, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def small_modules(small_spec: str) -> dict:
    files = {f.name: f for f in generate([small_spec])}
    return {
        model.name: (model, load_generated(files[f"{model.snake_name}.py"]))
        for model in load_models([small_spec])
    }


def test_plotted_derivative_is_the_generated_backward(small_modules: dict) -> None:
    # Huber's derivative is clamp(r, -delta, delta): one curve per delta.
    data = curves(*small_modules["Huber"], PlotSettings(vary=("delta", (0.5, 2.0))))
    assert data.labels == ("delta = 0.5", "delta = 2")
    assert data.held == (("target", 0.0),)
    for delta, loss, derivative in zip((0.5, 2.0), data.losses, data.derivatives):
        torch.testing.assert_close(derivative, data.x.clamp(-delta, delta))
        assert loss.min().item() == pytest.approx(0.0, abs=1e-12)


def test_plotted_derivative_is_the_slope_of_the_plotted_loss(
    small_modules: dict,
) -> None:
    data = curves(*small_modules["Barron"], PlotSettings(vary=("alpha", (-2.0, 1.5))))
    step = float(data.x[1] - data.x[0])
    for loss, derivative in zip(data.losses, data.derivatives):
        slope = (loss[2:] - loss[:-2]) / (2 * step)
        torch.testing.assert_close(slope, derivative[1:-1], atol=1e-3, rtol=1e-3)


def test_domain_sets_the_range_and_labels_are_held_at_the_positive_class(
    small_modules: dict,
) -> None:
    data = curves(*small_modules["Hinge"])
    assert data.held == (("label", 1.0),)
    assert (data.x.min().item(), data.x.max().item()) == (-3.0, 3.0)
    data = curves(*small_modules["BCE"])
    assert 0.0 < data.x.min().item() < data.x.max().item() < 1.0  # probabilities


def test_plot_command_writes_deterministic_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert (
            main(["plot", "specs/tutorial.py", "-o", str(out), "--vary", "weight=1,2"])
            == 0
        )
        png = out / "custom_loss.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        outputs.append(png.read_bytes())
    assert outputs[0] == outputs[1]


def test_plot_command_rejects_a_name_no_loss_has(tmp_path: Path, capsys) -> None:
    assert (
        main(["plot", "specs/tutorial.py", "-o", str(tmp_path), "--set", "wieght=2"])
        == 2
    )
    assert "wieght" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_gallery_lists_every_zoo_loss_with_its_plot() -> None:
    gallery = (ROOT / "docs" / "gallery.md").read_text(encoding="utf-8")
    for model in load_models(SPEC_ARGS):
        assert f"### {model.name}\n" in gallery, model.name
        if model.reduces:
            # lossgen plot sweeps one element; a loss over a class dim has no such curve
            continue
        assert f"(gallery/{model.snake_name}.png)" in gallery
        assert (ROOT / "docs" / "gallery" / f"{model.snake_name}.png").is_file()


def test_plot_skips_losses_over_dims_and_says_so(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    spec = tmp_path / "mixed.py"
    spec.write_text(
        "from lossgen import Loss, LogSumExp, Tensor\n"
        "x = Tensor('x')\n"
        "Square = Loss('Square', x**2)\n"
        "Lse = Loss('Lse', LogSumExp(x, 1))\n"
    )
    out = tmp_path / "out"
    assert main(["plot", str(spec), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["square.png"]
    assert "skipped Lse: it reduces over dims" in capsys.readouterr().out
    only = tmp_path / "only.py"
    only.write_text(
        "from lossgen import Loss, LogSumExp, Tensor\n"
        "x = Tensor('x')\n"
        "Lse = Loss('Lse', LogSumExp(x, 1))\n"
    )
    assert main(["plot", str(only), "-o", str(tmp_path / "none")]) == 2
    assert "lossgen plot draws elementwise losses" in capsys.readouterr().err
