"""Margin losses on pairs and embeddings' distances, with torch's gradient at the margin."""

import sympy as sp

from lossgen import Loss, Param, Tensor, clamp

input = Tensor("input")
input1 = Tensor("input1")
input2 = Tensor("input2")
y = Tensor("y", differentiable=False)  # +1 / -1

margin = Param("margin", default=0.0)
embedding_margin = Param("embedding_margin", default=1.0)

# torch uses clamp_min(0) here, which passed gradient 1 at the margin itself up to torch 2.13
# (0 from 2.14 on): clamp passes 1.
margin_ranking = Loss(
    "MarginRanking",
    clamp(-y * (input1 - input2) + margin, 0, sp.oo),
    doc="max(0, -y (x1 - x2) + margin), as torch.nn.MarginRankingLoss.",
)
hinge_embedding = Loss(
    "HingeEmbedding",
    sp.Piecewise((clamp(embedding_margin - input, 0, sp.oo), sp.Ne(y, 1)), (0, True))
    + sp.Piecewise((input, sp.Ne(y, -1)), (0, True)),
    doc="x for y = 1, max(0, margin - x) for y = -1, as torch.nn.HingeEmbeddingLoss.",
)
