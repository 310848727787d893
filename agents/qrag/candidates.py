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
With ``candidate_context`` the selected chunks join as extra tokens (:class:`SelectedContext`), and with
``candidate_question`` the question too (as the chunk encoder embeds it, after the document in the order).

Train it on a frozen faithful model (``stage_base``, :func:`qrag_agents.qrag.checkpoint.load_stage_base`): the
base Q then stays the faithful one, which is what holds up on 1M-10M-token documents; trained together with its
base, the base learned to rank look-alike book sentences first there.

:func:`refine` is the one place the final Q is made from the base Q: acting
(:func:`qrag_agents.qrag.inference.step_q_values`), the learner's rollouts (policy and soft target
values) and the Q-threshold stop all read its output; the learner's update scores the same candidate
set through :func:`candidate_delta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from qrag_agents.qrag.config import QRAGConfig

if TYPE_CHECKING:
    from qrag_agents.qrag.networks import QNetwork

SCALAR_FEATURES = 7
"""Per-candidate scalars: two base Q halves, two Boltzmann weights, document-order rank, segment, place in gap.
With ``candidate_context`` an eighth says whether the token is a selected chunk (1) or a candidate (0), and with
``candidate_question`` a ninth whether it is the question (1)."""


FLOOR_MARGIN = 1e-4
"""With ``candidate_floor``: how far above the best other chunk's base Q a floored candidate sits (strictly above,
so the argmax stays among the candidates)."""


def floor_lift(final: torch.Tensor, floor: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """What to add to each Q half ``(B, M, 2)`` of candidates whose final Q ``final`` ``(B, M)`` fell below ``floor``
    ``(B, 1)`` (the best non-candidate's base Q; ``-inf`` where there is none) to put them at ``floor +``
    :data:`FLOOR_MARGIN`; zero elsewhere and on the padding slots (``real`` false)."""
    lift = (floor + FLOOR_MARGIN - final).clamp(min=0.0)
    lift = torch.where(torch.isfinite(floor) & real, lift, torch.zeros_like(lift))
    return (lift / 2).unsqueeze(-1).expand(-1, -1, 2)


@dataclass
class SelectedContext:
    """The chunks already selected, which a stage with ``candidate_context`` reads beside its candidates.

    Why: on qa3 every miss of the stage on a frozen faithful model had the right fact among its 8 candidates
    (150 of 150 validation misses); what it lacks is *which* facts are already in the state (it saw them only
    summed into the state vector): "the move of that person just before the selected one" needs them as tokens.
    """

    chunks: torch.Tensor  # un-rotated E_a of the selected chunks, (B, S, d), document order
    index: torch.Tensor  # their chunk ids, (B, S), -1 padding last
    question: torch.Tensor | None = None  # the question as the chunk encoder embeds it, (B, d) (candidate_question)

    @classmethod
    def gather(cls, chunks: torch.Tensor, ordered: torch.Tensor, question: torch.Tensor | None = None) -> "SelectedContext":
        """From every chunk's E_a ``(B, N, d)`` and the selected ids ``(B, S)`` in document order (-1 padding);
        ``question`` ``(B, d)`` for a stage that reads it."""
        rows = ordered.clamp(min=0).unsqueeze(-1).expand(-1, -1, chunks.shape[-1])
        return cls(chunks.gather(1, rows) * (ordered >= 0).unsqueeze(-1), ordered, question)


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
        self.embed = nn.Linear(2 * dim + SCALAR_FEATURES + int(config.candidate_context) + int(config.candidate_question),
                               hidden)
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
                    positions: torch.Tensor | None, index: torch.Tensor, valid: torch.Tensor,
                    context: SelectedContext | None = None) -> torch.Tensor:
    """The stage's correction ``(B, M, 2)`` to the Q halves of ``M`` candidates per state.

    ``states`` ``(B, d)``; ``chunks`` ``(B, M, d)`` un-rotated chunk vectors; ``base`` ``(B, M, 2)`` their
    base Q halves; ``positions`` ``(B, M)`` relative positions (None without positions); ``index``
    ``(B, M)`` chunk ids (document order); ``valid`` ``(B, M)`` which candidates are real. Rows of
    invalid candidates come back zero. A stage with ``candidate_context`` also reads ``context`` (the
    selected chunks, required then) as tokens that attend and are attended to but get no correction.
    """
    config: QRAGConfig = network.config
    stage: CandidateStage = network.candidate_stage
    if config.candidate_context and context is None:
        raise ValueError("this model's stage reads the selected chunks (candidate_context): pass context=")
    if config.candidate_question and context.question is None:
        raise ValueError("this model's stage reads the question (candidate_question): pass a context with question=")
    count = chunks.shape[1]
    tokens_index, tokens_valid = index, valid
    if config.candidate_context:
        tokens_index, tokens_valid = torch.cat((index, context.index), 1), torch.cat((valid, context.index >= 0), 1)
    asked = int(config.candidate_question)  # the question token, after the document: last among the valid tokens
    if asked:
        after = torch.full_like(index[:, :1], torch.iinfo(index.dtype).max - 1)
        tokens_index = torch.cat((tokens_index, after), 1)
        tokens_valid = torch.cat((tokens_valid, torch.ones_like(valid[:, :1])), 1)
    # Document-order rank among the valid tokens, in [0, 1]; invalid ones sort last.
    order = tokens_index.masked_fill(~tokens_valid, torch.iinfo(index.dtype).max).argsort(dim=1).argsort(dim=1)
    if config.candidate_context:  # spread over the candidates and the *real* selected chunks (padding varies)
        rank = order.float() / (count - 1 + asked + (context.index >= 0).sum(1, keepdim=True)).clamp(min=1)
    else:
        rank = order.float() / max(count - 1, 1)
    total = base.sum(-1)
    best = total.masked_fill(~valid, -math.inf).max(dim=1, keepdim=True).values
    gap = (total - torch.where(torch.isfinite(best), best, total)).clamp(max=0.0)
    temperature = max(config.alpha, 1e-6)
    relative = positions is not None and config.positions == "relative"
    if not relative:
        segment = place = torch.zeros_like(total)
    else:
        segment = torch.div(positions, config.position_step, rounding_mode="floor")
        place = (positions - segment * config.position_step) / config.position_span
        segment = segment / (config.max_steps + 1)
    scalars = [base[..., 0], base[..., 1], torch.exp(gap / temperature), torch.exp(gap / (10 * temperature)),
               rank[:, :count], segment, place]
    match = states.unsqueeze(1) * chunks * math.sqrt(chunks.shape[-1])
    if config.candidate_context:
        flags = [torch.zeros_like(total)] * (1 + asked)  # "a selected chunk", "the question": no for a candidate
        tokens = torch.cat((chunks, match, torch.stack((*scalars, *flags), dim=-1)), dim=-1)
        selected = context.chunks
        zero = torch.zeros(selected.shape[:2], device=selected.device)
        # A selected chunk sits at the start of its own segment: the j-th in document order is segment j + 1.
        own_segment = zero
        if relative:
            own_segment = (torch.arange(1, selected.shape[1] + 1, device=selected.device) / (config.max_steps + 1)).expand_as(zero)
        stop = count + selected.shape[1]
        extra = torch.stack((zero, zero, zero, zero, rank[:, count:stop], own_segment, zero, torch.ones_like(zero),
                             *[zero] * asked), dim=-1)
        extra_match = states.unsqueeze(1) * selected * math.sqrt(selected.shape[-1])
        tokens = torch.cat((tokens, torch.cat((selected, extra_match, extra), dim=-1)), dim=1)
        if asked:
            question = context.question.unsqueeze(1)  # (B, 1, d)
            none = torch.zeros_like(question[..., 0])
            scalars_q = torch.stack((none, none, none, none, rank[:, stop:], none, none, none, torch.ones_like(none)),
                                    dim=-1)
            question_match = states.unsqueeze(1) * question * math.sqrt(question.shape[-1])
            tokens = torch.cat((tokens, torch.cat((question, question_match, scalars_q), dim=-1)), dim=1)
    else:
        tokens = torch.cat((chunks, match, torch.stack(scalars, dim=-1)), dim=-1)
    delta = stage(tokens, rank, tokens_valid)[:, :count]
    if config.candidate_bound > 0:
        delta = config.candidate_bound * torch.tanh(delta / config.candidate_bound)
    return delta * valid.unsqueeze(-1)


def refine(network: "QNetwork", states: torch.Tensor, chunks: torch.Tensor, base: torch.Tensor,
           positions: torch.Tensor | None, valid: torch.Tensor,
           context: SelectedContext | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final Q halves ``(B, N, 2)`` of every chunk, and the candidate ids ``(B, M)`` (-1 past the available
    chunks; None without a stage).

    ``states`` ``(B, d)``, ``chunks`` ``(B, N, d)`` un-rotated, ``base`` ``(B, N, 2)`` their base Q halves
    (:meth:`QNetwork.q_halves`), ``positions`` ``(B, N)`` or None, ``valid`` ``(B, N)`` the available
    chunks. Without a stage the base Q comes back untouched (faithful Q-RAG). With one, the top
    ``candidate_count`` available chunks by base Q get :func:`candidate_delta` added; where fewer are
    available, the extra slots score a copy of the best one as invalid, which changes nothing. With
    ``candidate_floor`` no candidate ends below the best other chunk's base Q (:func:`floor_lift`).
    """
    if network.candidate_stage is None:
        return base, None
    count = min(network.config.candidate_count, base.shape[1])
    scores = base.sum(-1).masked_fill(~valid, -math.inf)
    floored = network.config.candidate_floor and base.shape[1] > count
    ranked = scores.topk(count + int(floored), dim=1)
    top_values, top_indices = ranked.values[:, :count], ranked.indices[:, :count]
    real = torch.isfinite(top_values)
    index = torch.where(real, top_indices, top_indices[:, :1])
    gathered = chunks.gather(1, index.unsqueeze(-1).expand(-1, -1, chunks.shape[-1]))
    pairs = index.unsqueeze(-1).expand(-1, -1, 2)
    where = None if positions is None else positions.gather(1, index)
    candidates = base.gather(1, pairs)
    delta = candidate_delta(network, states, gathered, candidates, where, index, real, context)
    if floored:
        delta = delta + floor_lift((candidates + delta).sum(-1), ranked.values[:, count:], real)
    return base.scatter_add(1, pairs, delta), index.masked_fill(~real, -1)
