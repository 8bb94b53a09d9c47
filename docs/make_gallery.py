"""Rebuild docs/gallery.md and docs/gallery/*.png from specs/: `python docs/make_gallery.py`.

Run from the repository root. Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import sympy as sp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lossgen.api import load_models  # noqa: E402
from lossgen.plot import PlotSettings, plot  # noqa: E402

SPECS = [
    "specs/regression.py",
    "specs/robust.py",
    "specs/probabilistic.py",
    "specs/likelihood.py",
    "specs/naive.py",
    "specs/classification.py",
    "specs/ranking.py",
    "specs/learnable.py",
    "specs/tutorial.py",
    "specs/detection.py",
    "specs/reductions.py",
]
LOGITS = (-6.0, 6.0)

# What each figure shows: the swept range of the first tensor, the others fixed, one param varied.
SETTINGS = {
    "Huber": PlotSettings(vary=("delta", (0.5, 1.0, 2.0))),
    "Charbonnier": PlotSettings(vary=("eps", (0.1, 0.5, 1.0))),
    "Cauchy": PlotSettings(vary=("c", (0.5, 1.0, 2.0))),
    "Quantile": PlotSettings(vary=("tau", (0.1, 0.5, 0.9))),
    "SmoothL1": PlotSettings(vary=("beta", (0.5, 1.0, 2.0))),
    "GemanMcclure": PlotSettings(vary=("c", (0.5, 1.0, 2.0))),
    "Welsch": PlotSettings(vary=("c", (0.5, 1.0, 2.0))),
    "TukeyBiweight": PlotSettings(vary=("c", (1.0, 2.0, 3.0))),
    "Barron": PlotSettings(vary=("barron_alpha", (-2.0, -0.5, 0.5, 1.0, 1.5))),
    "Wing": PlotSettings(x_range=(-15.0, 15.0), vary=("curvature", (1.0, 2.0, 4.0))),
    "AdaptiveWing": PlotSettings(x_range=(-0.5, 1.5), fixed={"heatmap": 0.5}),
    "AsymmetricLaplaceNLL": PlotSettings(vary=("tau", (0.1, 0.5, 0.9))),
    "StudentNLL": PlotSettings(vary=("nu", (1.0, 3.0, 30.0))),
    "Expectile": PlotSettings(vary=("tau", (0.1, 0.5, 0.9))),
    "PoissonNLLRate": PlotSettings(x_range=(0.05, 6.0), fixed={"target": 2.0}),
    "KLDiv": PlotSettings(x_range=(-5.0, 0.0), fixed={"target": 0.3}),
    "BCEWithLogits": PlotSettings(x_range=LOGITS, fixed={"target": 1.0}),
    "PoissonNLL": PlotSettings(fixed={"target": 2.0}),
    "BCE": PlotSettings(fixed={"target": 1.0}),
    "WeightedBCEWithLogits": PlotSettings(
        x_range=LOGITS, fixed={"target": 1.0}, vary=("pos_weight", (0.5, 1.0, 3.0))
    ),
    "SoftMargin": PlotSettings(x_range=LOGITS),
    "SigmoidFocal": PlotSettings(
        x_range=LOGITS, fixed={"target": 1.0}, vary=("gamma", (0.0, 1.0, 2.0, 5.0))
    ),
    "BinaryFocal": PlotSettings(
        fixed={"target": 1.0}, vary=("gamma", (0.0, 1.0, 2.0, 5.0))
    ),
    "MarginRanking": PlotSettings(vary=("margin", (0.0, 0.5, 1.0))),
    "HingeEmbedding": PlotSettings(
        x_range=(-1.0, 3.0),
        fixed={"y": -1.0},
        vary=("embedding_margin", (0.5, 1.0, 2.0)),
    ),
    "NaiveBCE": PlotSettings(x_range=LOGITS, fixed={"target": 1.0}),
    "NaivePoissonNLL": PlotSettings(fixed={"target": 2.0}),
    "NaiveSoftMargin": PlotSettings(x_range=LOGITS),
    # The predicted box's left edge slides across a unit target box [0, 1] x [0, 1].
    "GeneralizedBoxIOU": PlotSettings(
        x_range=(-2.0, 1.9),
        fixed={
            "y1": 0.0,
            "x2": 2.0,
            "y2": 1.0,
            "target_x1": 0.0,
            "target_y1": 0.0,
            "target_x2": 1.0,
            "target_y2": 1.0,
        },
    ),
    "UncertaintyWeightedMSE": PlotSettings(vary=("log_variance", (-1.0, 0.0, 1.0))),
}


def main() -> None:
    models = load_models(SPECS)
    images = ROOT / "docs" / "gallery"
    plot(SPECS, images, SETTINGS)
    lines = [
        "# Loss gallery",
        "",
        "Every loss shipped in `specs/`, with its formula, where it comes from, and a plot of the",
        "loss and its derivative (the generated backward) over its first argument; other tensors",
        "are held at the values in the plot's title. Regenerate with",
        "`python docs/make_gallery.py`, or plot your own specs with `lossgen plot SPEC -o DIR`.",
        "Each loss is tested against the reference named here in `tests/test_zoo.py` (losses",
        "over dims in `tests/test_reductions_zoo.py`; they have no 1-D curve, so no plot).",
        "",
    ]
    by_spec: dict[str, list] = {}
    for model in models:
        by_spec.setdefault(model.spec_path, []).append(model)
    for spec, spec_models in by_spec.items():
        lines += [f"## `{spec}`", ""]
        for model in spec_models:
            arguments = ", ".join(a.name for a in model.arguments)
            lines += [
                f"### {model.name}",
                "",
                f"`generated.{model.snake_name}({arguments})`",
                "",
                model.doc or "",
                "",
                f"$$\\ell = {sp.latex(model.expr)}$$",
                "",
            ]
            if not model.reduces:
                lines += [f"![{model.name}](gallery/{model.snake_name}.png)", ""]
    (ROOT / "docs" / "gallery.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
