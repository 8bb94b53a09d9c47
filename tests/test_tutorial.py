"""The PyTorch tutorial's custom loss, used verbatim through the generated code."""

import torch

from conftest import needs_apply_keywords
from generated.custom_loss import CustomLoss, CustomLossFunction, custom_loss


def tutorial_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    targets = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    return inputs, targets


def test_module_with_tensor_weight() -> None:
    inputs, targets = tutorial_tensors()
    loss = CustomLoss(torch.tensor(2.0))(inputs, targets)
    assert loss.item() == 10.0
    loss.backward()
    assert inputs.grad.tolist() == [2.0, 2.0, 2.0, 2.0, 2.0]


def test_function_apply_positional() -> None:
    inputs, targets = tutorial_tensors()
    weight = torch.tensor(2.0)
    loss = CustomLossFunction.apply(inputs, targets, weight)
    assert loss.item() == 10.0
    loss.backward()
    assert inputs.grad.tolist() == [2.0, 2.0, 2.0, 2.0, 2.0]


def test_functional_and_keywords() -> None:
    inputs, targets = tutorial_tensors()
    assert custom_loss(inputs, targets, weight=2.0).item() == 10.0
    assert CustomLossFunction.apply(inputs, targets, 1.0, "mean").item() == 1.0
    per_element = custom_loss(inputs, targets, 3.0, reduction="none")
    assert per_element.tolist() == [3.0] * 5


@needs_apply_keywords
def test_function_apply_keywords() -> None:
    inputs, targets = tutorial_tensors()
    assert CustomLossFunction.apply(inputs, targets, reduction="mean").item() == 1.0


def test_learned_weight_gets_its_gradient() -> None:
    inputs, targets = tutorial_tensors()
    weight = torch.tensor(2.0, requires_grad=True)
    CustomLossFunction.apply(inputs, targets, weight).backward()
    assert weight.grad.item() == 5.0  # sum of |inputs - targets|
