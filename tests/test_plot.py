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


def _curves(spec: str, name: str, settings: PlotSettings):
    model = next(m for m in load_models([spec]) if m.name == name)
    files = {f.name: f for f in generate([spec])}
    return curves(model, load_generated(files[f"{model.snake_name}.py"]), settings)


def test_plotted_derivative_is_the_generated_backward() -> None:
    # Huber's derivative is clamp(r, -delta, delta): one curve per delta.
    data = _curves(
        "specs/regression.py", "Huber", PlotSettings(vary=("delta", (0.5, 2.0)))
    )
    assert data.labels == ("delta = 0.5", "delta = 2")
    assert data.held == (("target", 0.0),)
    for delta, loss, derivative in zip((0.5, 2.0), data.losses, data.derivatives):
        torch.testing.assert_close(derivative, data.x.clamp(-delta, delta))
        assert loss.min().item() == pytest.approx(0.0, abs=1e-12)


def test_plotted_derivative_is_the_slope_of_the_plotted_loss() -> None:
    data = _curves(
        "specs/robust.py", "Barron", PlotSettings(vary=("barron_alpha", (-2.0, 1.5)))
    )
    step = float(data.x[1] - data.x[0])
    for loss, derivative in zip(data.losses, data.derivatives):
        slope = (loss[2:] - loss[:-2]) / (2 * step)
        torch.testing.assert_close(slope, derivative[1:-1], atol=1e-3, rtol=1e-3)


def test_domain_sets_the_range_and_labels_are_held_at_the_positive_class() -> None:
    data = _curves("specs/classification.py", "Hinge", PlotSettings())
    assert data.held == (("label", 1.0),)
    assert (data.x.min().item(), data.x.max().item()) == (-3.0, 3.0)
    data = _curves("specs/classification.py", "BCE", PlotSettings())
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
        assert f"(gallery/{model.snake_name}.png)" in gallery
        assert (ROOT / "docs" / "gallery" / f"{model.snake_name}.png").is_file()
