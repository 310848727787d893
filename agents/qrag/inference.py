"""Q-RAG's greedy step: Q of every chunk in a state, and the Q-threshold stop (the paper's Q-value chunk filter).

Episodes are played and measured by the one evaluation runner (:mod:`qrag_gym.evaluation`) with
:class:`qrag_agents.qrag.agent.QRAGAgent`; this module only scores.

Two step scorers give the same argmax. :func:`step_q_values` rotates every chunk to its position
and scores it (in batches, so a 10M-token document stays bounded). :func:`shortlist_step`, for long
documents, rotates the *state* instead (``<s, R(p) e> = <R(p)^T s, e>``) once per position bucket,
searches a faiss index of the un-rotated chunks per bucket and re-scores only a certified shortlist
exactly (see :mod:`qrag_agents.qrag.shortlist`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qrag_agents.qrag.candidates import SelectedContext, candidate_delta, floor_lift, refine
from qrag_agents.qrag.config import QRAGConfig
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.rotary import relative_positions, rotate
from qrag_agents.qrag.shortlist import ChunkIndex, ShortlistResult, certified_argmax, certified_top
from qrag_gym.corpus import first_occurrences
from qrag_gym.document import Document

CHUNK_BATCH = 8192
SHORTLIST_MIN_CHUNKS = 16_384
"""Below this many chunks (about 400K tokens) the shortlist gains little over a full scan (about 1x at
128K tokens; 2-4x at 1M and 2-10x at 10M across runs on a contended 2-core CPU, in
benchmarks/results/cost_curve*.md), so it is not used."""
BUCKET_WIDTH = 0.25
"""Position bucket width for continuous positions: narrower buckets mean tighter bounds (less
fallback re-scoring) but more faiss searches per step. Integer positions use exact buckets of 1."""
ROUNDING_SLACK = 1e-4
"""Added to every bound: faiss and torch round float32 sums differently."""


def keep_until_threshold(selected: list[int], max_q: list[float], threshold: float) -> list[int]:
    """Selections before the first step whose max-Q is at or below ``threshold``.

    With the shaped reward, Q falls toward 0 once every supporting chunk is in the state, so the
    threshold tells "still missing facts" from "done" without a STOP action.
    """
    kept = []
    for index, value in zip(selected, max_q):
        if value <= threshold:
            break
        kept.append(index)
    return kept


@torch.no_grad()
def embed_document(network: QNetwork, chunks: tuple[str, ...]) -> torch.Tensor:
    """E_a for every chunk of a document, written into one preallocated ``(m, d)`` tensor.

    Each distinct text is embedded once, in batches (long documents repeat sentences: a 10M-token
    BABILong document holds about 7 copies of each), and copied to its rows; peak memory is the
    result plus the distinct vectors plus one batch, with no list of parts to concatenate.
    """
    first, owner = first_occurrences(chunks)
    distinct = [chunks[i] for i in first.tolist()]
    vectors = torch.empty((len(distinct), network.dim), dtype=torch.float32, device=network.device)
    for start in range(0, len(distinct), CHUNK_BATCH):
        vectors[start : start + CHUNK_BATCH] = network.embed_chunks(distinct[start : start + CHUNK_BATCH])
    if len(distinct) == len(chunks):
        return vectors
    return vectors[torch.from_numpy(owner).to(network.device)]


@dataclass
class EncodedDocument:
    """One episode's document as a network reads it, built once at reset and then read by chunk id.

    ``chunks``: E_a of every chunk ``(m, d)``. Adapter build: also the question's frozen feature and the frozen
    features of the distinct chunks with each chunk's row among them, so a state's E_s is summed from rows by
    id (:meth:`state`) and no text is encoded or looked up during the episode. The full build's state encoder
    reads the texts, so there :meth:`state` is None and the scorers embed the state from the texts.
    """

    chunks: torch.Tensor
    question: torch.Tensor | None = None  # (1, d)
    features: torch.Tensor | None = None  # (distinct chunks, d)
    owner: torch.Tensor | None = None  # (m,) row of each chunk in ``features``
    asked: torch.Tensor | None = None  # (1, d) the question's E_a, for a stage that reads it (candidate_question)

    def state(self, network: QNetwork, selected: list[int]) -> torch.Tensor | None:
        """E_s ``(1, d)`` of "question + ``selected``" (adapter build): the same sum, in document order, that
        :meth:`QNetwork.embed_states` forms from the texts' features, so the same vector."""
        if self.features is None:
            return None
        ordered = torch.tensor(sorted(selected), dtype=torch.int64, device=self.chunks.device)
        picked = self.features[self.owner[ordered]]
        summed = torch.zeros_like(self.question).index_add(0, torch.zeros_like(ordered), picked)
        count = torch.tensor([[len(selected) / network.config.max_steps]], device=self.chunks.device)
        return network.adapt_states(self.question, summed, count)


@torch.no_grad()
def encode_document(network: QNetwork, document: Document) -> EncodedDocument:
    """:class:`EncodedDocument` of the current episode: each distinct chunk (:meth:`Document.distinct_chunks`)
    is encoded once, in batches, and spread to its copies. Adapter build: the frozen features come by corpus
    id from the network's encoder's feature tables (:meth:`Document.features`); full build: from the texts."""
    first, owner_np = document.distinct_chunks()
    owner = torch.from_numpy(owner_np).to(network.device)
    distinct = torch.empty((len(first), network.dim), dtype=torch.float32, device=network.device)
    if network.embedder is None:
        for start in range(0, len(first), CHUNK_BATCH):
            texts = [document.text(int(i)) for i in first[start : start + CHUNK_BATCH]]
            distinct[start : start + CHUNK_BATCH] = network.embed_chunks(texts)
        return EncodedDocument(distinct[owner])
    features = torch.from_numpy(document.features(network.embedder, first)).to(network.device)
    for start in range(0, len(first), CHUNK_BATCH):
        distinct[start : start + CHUNK_BATCH] = network.adapt_chunks(features[start : start + CHUNK_BATCH])
    question = torch.from_numpy(document.question_features(network.embedder)).to(network.device).unsqueeze(0)
    asked = network.adapt_chunks(question) if network.config.candidate_question else None
    return EncodedDocument(distinct[owner], question, features, owner, asked)


def _positions(network: QNetwork, num_chunks: int, selected: list[int]) -> torch.Tensor | None:
    config: QRAGConfig = network.config
    if config.positions != "relative":
        return None
    rho = relative_positions(num_chunks, selected, config.position_step, config.position_span, config.integer_positions)
    return torch.from_numpy(rho).float().to(network.device)


def selected_context(network: QNetwork, chunk_embeddings: torch.Tensor, selected: list[int], question: str,
                     asked: torch.Tensor | None = None) -> SelectedContext | None:
    """The selected chunks (and, for a ``candidate_question`` stage, the question's E_a: ``asked`` ``(1, d)``, else
    embedded from ``question``) as the stage's context for one state, or None for models whose stage reads neither."""
    if not network.config.candidate_context:
        return None
    if network.config.candidate_question and asked is None:
        asked = network.embed_chunks([question])
    ordered = torch.tensor([sorted(selected)], dtype=torch.int64, device=chunk_embeddings.device).reshape(1, -1)
    return SelectedContext.gather(chunk_embeddings.unsqueeze(0), ordered, asked if network.config.candidate_question else None)


@torch.no_grad()
def step_q_values(network: QNetwork, chunk_embeddings: torch.Tensor, question: str, chunks: tuple[str, ...],
                  selected: list[int], action_mask, state: torch.Tensor | None = None,
                  asked: torch.Tensor | None = None) -> torch.Tensor:
    """Q of every chunk in the current state (``-inf`` where masked): one state forward, one re-rotation
    of every chunk, done ``CHUNK_BATCH`` rows at a time so the rotation's temporaries stay small. A model
    with a candidate stage then corrects its top candidates (:func:`refine`, as in training). ``state``: E_s
    ``(1, d)`` when the caller has it by id (:meth:`EncodedDocument.state`); else it is embedded from the texts.
    ``asked``: the question's E_a (:attr:`EncodedDocument.asked`) for a ``candidate_question`` stage; else from the text."""
    if state is None:
        state = network.embed_states([question], [[chunks[i] for i in sorted(selected)]])
    rho = _positions(network, len(chunks), selected)
    halves = torch.empty((len(chunks), 2), dtype=torch.float32, device=network.device)
    for start in range(0, len(chunks), CHUNK_BATCH):
        part = slice(start, start + CHUNK_BATCH)
        halves[part] = network.q_halves(state, chunk_embeddings[part], None if rho is None else rho[part])
    valid = torch.from_numpy(np.asarray(action_mask[: len(chunks)], dtype=bool)).to(halves.device)
    halves, _ = refine(network, state, chunk_embeddings.unsqueeze(0), halves.unsqueeze(0),
                       None if rho is None else rho.unsqueeze(0), valid.unsqueeze(0),
                       selected_context(network, chunk_embeddings, selected, question, asked))
    return halves[0].sum(-1).masked_fill(~valid, -torch.inf)


def position_buckets(rho: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous runs of chunks whose positions share one ``width`` cell: (starts, centres, half-widths).

    Positions never decrease along the document (segment * step + an offset below step), so a cell
    is one run of chunk ids, which is what a faiss range search needs.
    """
    cell = np.floor(rho / width)
    starts = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))
    last = np.append(starts[1:], len(rho)) - 1
    low, high = rho[starts], rho[last]
    return starts, (low + high) / 2, (high - low) / 2


def rotation_bounds(state: np.ndarray, frequencies: np.ndarray, half_widths: np.ndarray, max_norm: float) -> np.ndarray:
    """Largest ``|<R(p)^T s - R(c)^T s, e>|`` for ``|p - c| <= half_width`` and ``|e| <= max_norm``.

    Each pair of ``s`` (both halves turn by the same angles) moves by ``2 |sin(theta_j (p - c) / 2)|``
    times its length; the sine is capped at its maximum once the angle passes pi.
    """
    pair_sq = (state.reshape(2, -1, 2) ** 2).sum(-1).sum(0)
    angles = np.minimum(np.outer(half_widths, frequencies) / 2, np.pi / 2)
    moved = np.sqrt(((2 * np.sin(angles)) ** 2 * pair_sq).sum(1))
    return max_norm * moved + ROUNDING_SLACK * max_norm * float(np.linalg.norm(state))


@torch.no_grad()
def shortlist_step(network: QNetwork, index: ChunkIndex, chunk_embeddings: torch.Tensor, question: str,
                   chunks: tuple[str, ...], selected: list[int], action_mask, k: int,
                   state: torch.Tensor | None = None, asked: torch.Tensor | None = None) -> ShortlistResult:
    """The same argmax and max-Q as :func:`step_q_values`, from a faiss shortlist of ``k`` per position bucket.

    Faithful Q-RAG: the certified argmax of the base Q. With a candidate stage: the certified top
    ``candidate_count + 1`` by base Q; the first ``candidate_count`` are the stage's candidates (as in
    :func:`refine`) and get its correction, and the next one stands for every other chunk, which keeps its
    base Q, so the result is the full scan's argmax of the final Q. (Chunks of exactly equal base Q at the
    edge of the candidate set are taken lowest id first, which a full scan's ``topk`` need not do.) ``state`` and
    ``asked`` as in :func:`step_q_values`.
    """
    if state is None:
        state = network.embed_states([question], [[chunks[i] for i in sorted(selected)]])
    state = state[0]
    rho = _positions(network, len(chunks), selected)
    state_np = state.cpu().numpy()
    if rho is None:
        starts, queries, bounds = np.zeros(1, dtype=np.int64), state_np[None], np.full(1, ROUNDING_SLACK * index.max_norm)
    else:
        width = 1.0 if network.config.integer_positions else BUCKET_WIDTH
        starts, centres, half_widths = position_buckets(rho.cpu().numpy(), width)
        turned = rotate(state.expand(len(starts), -1), -torch.from_numpy(centres).float(), network.frequencies.cpu())
        queries = turned.cpu().numpy()
        bounds = rotation_bounds(state_np, network.frequencies.cpu().numpy(), half_widths, index.max_norm)

    def halves(ids: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(ids).to(network.device)
        positions = None if rho is None else rho[rows]
        return network.q_halves(state, chunk_embeddings[rows], positions)

    valid = np.asarray(action_mask[: len(chunks)], dtype=bool)
    exact = lambda ids: halves(ids).sum(-1).cpu().numpy()  # noqa: E731
    if network.candidate_stage is None:
        return certified_argmax(index, queries, bounds, starts, valid, k, exact)
    count = min(network.config.candidate_count, len(chunks))
    top = certified_top(index, queries, bounds, starts, valid, k, exact, count=count + 1)
    picked = top.ids[:count]
    # As refine does: a candidate set of fewer valid chunks than ``count`` is padded with copies of the best
    # one marked invalid (the stage's document-order ranks are spread over ``count`` slots either way).
    slots = np.concatenate([picked, np.full(count - len(picked), picked[0])])
    real = torch.from_numpy(np.arange(count) < len(picked)).to(network.device)
    rows = torch.from_numpy(slots).to(network.device)
    base = halves(slots)
    delta = candidate_delta(network, state[None], chunk_embeddings[rows][None], base[None],
                            None if rho is None else rho[rows][None], rows[None], real[None],
                            selected_context(network, chunk_embeddings, selected, question, asked))
    if network.config.candidate_floor and len(top.values) > count:  # as refine: no candidate below the next chunk
        floor = torch.tensor([[float(top.values[count])]], device=network.device)
        delta = delta + floor_lift((base[None] + delta).sum(-1), floor, real[None])
    final = np.concatenate([(base + delta[0]).sum(-1).cpu().numpy()[: len(picked)], top.values[count:]])
    ids = top.ids[: len(final)]
    best = int(np.lexsort((ids, -final))[0])
    return ShortlistResult(int(ids[best]), float(final[best]), top.shortlisted, top.fallback)


def use_shortlist(shortlist: int | None, num_chunks: int) -> bool:
    """Whether to take the shortlist path: asked for (``shortlist=k``) and the document is long."""
    return shortlist is not None and num_chunks >= SHORTLIST_MIN_CHUNKS
