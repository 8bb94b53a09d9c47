"""lossgen: SymPy losses in, readable PyTorch Modules and autograd Functions out."""

from lossgen.api import BuildResult, build, generate, show
from lossgen.errors import LossgenError, SpecError
from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.reductions import LogSumExp, Max, Mean, Min, OneHot, Pick, Sum
from lossgen.vocabulary import Loss, Param, Tensor, clamp, relu

__all__ = [
    "BuildResult",
    "LogSumExp",
    "Loss",
    "LossgenError",
    "Max",
    "Mean",
    "Min",
    "OneHot",
    "Param",
    "Pick",
    "SpecError",
    "Sum",
    "Tensor",
    "build",
    "clamp",
    "generate",
    "logsigmoid",
    "logsumexp",
    "relu",
    "show",
    "sigmoid",
    "softplus",
    "xlogy",
]
