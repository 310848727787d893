"""A candidate-aware second scoring stage over the top chunks of Q (issue 16; an extension beyond the paper).

Why: the paper's Q(s, a) = <E_s(s), R(p) E_a(a)> (its Q-function, with the relative rotary positions of
:mod:`qrag_agents.qrag.rotary`) scores every chunk on its own. On bAbI qa2/qa3 most misses of the CPU
model are a fact of the right kind (the same object, the same person) picked *before the latest one*:
"the latest of several similar facts" is a statement about the other candidates, which a per-chunk
score cannot make. This stage lets the top ``candidate_count`` chunks by base Q see each other.

Each candidate becomes a token of its chunk vector ``e``, its match with the state ``s * e`` (the terms
whose halves sum to its base Q before rotation), its base Q halves, its Boltzmann weight against the best
candidate at the policy's temperature, its rank in document order among the candidates and its relative
position (segment and place inside the gap between selected facts). Self-attention blocks whose logits
add a learned per-head bias for "the other candidate is earlier / the same / later in the document"
mix the tokens, and a zero-initialised output layer adds a residual to each candidate's Q halves: a
new stage starts exactly at the faithful model. Chunks outside the top ``candidate_count`` keep their base Q.

:func:`refine` is the one place the final Q is made from the base Q: acting
(:func:`qrag_agents.qrag.inference.step_q_values`), the learner's rollouts (policy and soft target
values) and the Q-threshold stop all read its output; the learner's update scores the same candidate
set through :func:`candidate_delta`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from qrag_agents.qrag.config import QRAGConfig

if TYPE_CHECKING:
    from qrag_agents.qrag.networks import QNetwork

SCALAR_FEATURES = 7
"""Per-candidate scalars: two base Q halves, two Boltzmann weights, document-order rank, segment, place in gap."""


class OrderAttention(nn.Module):
    """A pre-norm self-attention block over the candidates with a learned document-order bias.

    The bias (per head: one value each for "key earlier than / same as / later than the query", plus a
    slope on their rank difference) is what makes "prefer the later of two similar facts" a direct
    function of the attention, not something the content vectors would have to encode.
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.order_bias = nn.Parameter(torch.zeros(heads, 3))
        self.order_slope = nn.Parameter(torch.zeros(heads))
        self.project = nn.Linear(hidden, hidden)
        self.norm_mlp = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, tokens: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, M, H)``, ``rank`` ``(B, M)`` document-order ranks in [0, 1], ``valid`` ``(B, M)``."""
        batch, count, hidden = tokens.shape
        query, key, value = self.qkv(self.norm_attention(tokens)).view(batch, count, 3, self.heads, -1).unbind(2)
        logits = torch.einsum("bihd,bjhd->bhij", query, key) / math.sqrt(query.shape[-1])
        difference = rank.unsqueeze(1) - rank.unsqueeze(2)  # (B, i, j): rank of key j minus rank of query i
        relation = (torch.sign(difference) + 1).long()  # 0: key earlier, 1: same, 2: later
        logits = logits + self.order_bias[:, relation].transpose(0, 1) + self.order_slope.view(1, -1, 1, 1) * difference.unsqueeze(1)
        logits = logits.masked_fill(~valid.view(batch, 1, 1, count), torch.finfo(logits.dtype).min)
        mixed = torch.einsum("bhij,bjhd->bihd", torch.softmax(logits, dim=-1), value).reshape(batch, count, hidden)
        tokens = tokens + self.project(mixed)
        return tokens + self.mlp(self.norm_mlp(tokens))


class CandidateStage(nn.Module):
    """The second stage's weights: token embedding, :class:`OrderAttention` blocks, zeroed output."""

    def __init__(self, dim: int, config: QRAGConfig) -> None:
        super().__init__()
        hidden = config.candidate_hidden
        self.embed = nn.Linear(2 * dim + SCALAR_FEATURES, hidden)
        self.blocks = nn.ModuleList(OrderAttention(hidden, config.candidate_heads) for _ in range(config.candidate_layers))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 2)
        nn.init.zeros_(self.out.weight)  # the stage starts as the identity: final Q = base Q
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        for block in self.blocks:
            hidden = block(hidden, rank, valid)
        return self.out(self.norm(hidden))


def candidate_delta(network: "QNetwork", states: torch.Tensor, chunks: torch.Tensor, base: torch.Tensor,
                    positions: torch.Tensor | None, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The stage's correction ``(B, M, 2)`` to the Q halves of ``M`` candidates per state.

    ``states`` ``(B, d)``; ``chunks`` ``(B, M, d)`` un-rotated chunk vectors; ``base`` ``(B, M, 2)`` their
    base Q halves; ``positions`` ``(B, M)`` relative positions (None without positions); ``index``
    ``(B, M)`` chunk ids (document order); ``valid`` ``(B, M)`` which candidates are real. Rows of
    invalid candidates come back zero.
    """
    config: QRAGConfig = network.config
    stage: CandidateStage = network.candidate_stage
    count = chunks.shape[1]
    # Document-order rank among the valid candidates, in [0, 1]; invalid ones sort last.
    order = index.masked_fill(~valid, torch.iinfo(index.dtype).max).argsort(dim=1).argsort(dim=1)
    rank = order.float() / max(count - 1, 1)
    total = base.sum(-1)
    best = total.masked_fill(~valid, -math.inf).max(dim=1, keepdim=True).values
    gap = (total - torch.where(torch.isfinite(best), best, total)).clamp(max=0.0)
    temperature = max(config.alpha, 1e-6)
    if positions is None or config.positions != "relative":
        segment = place = torch.zeros_like(rank)
    else:
        segment = torch.div(positions, config.position_step, rounding_mode="floor")
        place = (positions - segment * config.position_step) / config.position_span
        segment = segment / (config.max_steps + 1)
    scalars = torch.stack((base[..., 0], base[..., 1], torch.exp(gap / temperature), torch.exp(gap / (10 * temperature)),
                           rank, segment, place), dim=-1)
    match = states.unsqueeze(1) * chunks * math.sqrt(chunks.shape[-1])
    tokens = torch.cat((chunks, match, scalars), dim=-1)
    delta = stage(tokens, rank, valid)
    if config.candidate_bound > 0:
        delta = config.candidate_bound * torch.tanh(delta / config.candidate_bound)
    return delta * valid.unsqueeze(-1)


def refine(network: "QNetwork", states: torch.Tensor, chunks: torch.Tensor, base: torch.Tensor,
           positions: torch.Tensor | None, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final Q halves ``(B, N, 2)`` of every chunk, and the candidate ids ``(B, M)`` (-1 past the available
    chunks; None without a stage).

    ``states`` ``(B, d)``, ``chunks`` ``(B, N, d)`` un-rotated, ``base`` ``(B, N, 2)`` their base Q halves
    (:meth:`QNetwork.q_halves`), ``positions`` ``(B, N)`` or None, ``valid`` ``(B, N)`` the available
    chunks. Without a stage the base Q comes back untouched (faithful Q-RAG). With one, the top
    ``candidate_count`` available chunks by base Q get :func:`candidate_delta` added; where fewer are
    available, the extra slots score a copy of the best one as invalid, which changes nothing.
    """
    if network.candidate_stage is None:
        return base, None
    count = min(network.config.candidate_count, base.shape[1])
    scores = base.sum(-1).masked_fill(~valid, -math.inf)
    top = scores.topk(count, dim=1)
    real = torch.isfinite(top.values)
    index = torch.where(real, top.indices, top.indices[:, :1])
    gathered = chunks.gather(1, index.unsqueeze(-1).expand(-1, -1, chunks.shape[-1]))
    pairs = index.unsqueeze(-1).expand(-1, -1, 2)
    where = None if positions is None else positions.gather(1, index)
    delta = candidate_delta(network, states, gathered, base.gather(1, pairs), where, index, real)
    return base.scatter_add(1, pairs, delta), index.masked_fill(~real, -1)
