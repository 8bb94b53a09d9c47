"""The PyTorch tutorial's custom loss: a weighted L1, summed."""

import sympy as sp

from lossgen import Loss, Param, Tensor

inputs = Tensor("inputs")
targets = Tensor("targets")
weight = Param("weight", default=1.0)

custom_loss = Loss("CustomLoss", weight * sp.Abs(inputs - targets), reduction="sum")
