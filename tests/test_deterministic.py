"""The fast path under `torch.use_deterministic_algorithms(True)`: the losses whose gradient is
a scatter (_spread, _spread_onto) still take it, compiled, and give torch's own values, the
same bits twice. On CUDA (where a GPU is present: benchmarks/cuda_run.sh) the torch path's
scatters are torch's, deterministic there from torch 2.1 on (README, "What the generated
Function does").
"""

from __future__ import annotations

import importlib
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

CE = importlib.import_module("generated.cross_entropy")
NLL = importlib.import_module("generated.nll")
HAS_COMPILER = bool(
    shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
)
ROWS, CLASSES = 40, 24


def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(ROWS, CLASSES, generator=generator)
    target = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    target[::6] = -100
    weight = 0.5 + torch.rand(CLASSES, generator=generator)
    return logits, target, weight


def ce_ours(x, target, weight, smoothing):  # noqa: ANN001, ANN201
    return CE.cross_entropy(x, target, weight, smoothing, -100.0)


def ce_torch(x, target, weight, smoothing):  # noqa: ANN001, ANN201
    return F.cross_entropy(x, target, weight, label_smoothing=smoothing)


def nll_ours(x, target, weight, smoothing):  # noqa: ANN001, ANN201
    return NLL.nll(x.log_softmax(1), target, weight)


def nll_torch(x, target, weight, smoothing):  # noqa: ANN001, ANN201
    return F.nll_loss(x.log_softmax(1), target, weight)


# name: (module, ours, torch's, class weights, label smoothing)
LOSSES = {
    "CrossEntropy": (CE, ce_ours, ce_torch, False, 0.0),
    "CrossEntropy weighted": (CE, ce_ours, ce_torch, True, 0.0),
    "CrossEntropy smoothed": (CE, ce_ours, ce_torch, False, 0.1),
    "NLL": (NLL, nll_ours, nll_torch, False, 0.0),
    "NLL weighted": (NLL, nll_ours, nll_torch, True, 0.0),
}


@pytest.fixture
def deterministic():
    was, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


# On CUDA these rows (24 classes, under ROW_MIN) and class weights take the compiled torch
# path, not the row kernel: the scatters are torch's. Run there by benchmarks/cuda_run.sh.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_scatter_gradients_take_the_fast_path_in_deterministic_mode(
    name: str, device: str, deterministic, monkeypatch
) -> None:
    module, ours_loss, torch_loss, weighted, smoothing = LOSSES[name]
    monkeypatch.setattr(module, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(module, "_compiled_fused", None)  # compiled in this mode
    logits, target, weight = (tensor.to(device) for tensor in case())
    ours_weight, torch_weight = (weight, weight) if weighted else (1.0, None)

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ours_x = logits.clone().requires_grad_()
        torch_x = logits.clone().requires_grad_()
        ours = ours_loss(ours_x, target, ours_weight, smoothing)
        want = torch_loss(torch_x, target, torch_weight, smoothing)
        assert type(ours.grad_fn).__name__.endswith("FusedBackward")
        ours.backward()
        want.backward()
        return ours.detach(), ours_x.grad, want.detach(), torch_x.grad

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the plain body
        first = step()
        second = step()
    loss, grad, want, want_grad = first
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(grad, want_grad)
    assert grad[::6].abs().sum().item() == 0  # ignored rows
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    if HAS_COMPILER:
        assert module._compiled_fused is not module._fused
