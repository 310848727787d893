"""The Q-function Q(s, a) = <E_s(s), R(p) E_a(a)> (the paper's Q-function), in two interchangeable builds.

- Adapter build (CPU default): a frozen encoder's sentence vectors, computed once per text and
  cached, feed small trainable adapters. Chunk side ``normalize(e + MLP(e))``; state side starts as
  the untrained multi-step dense retriever ``normalize(q + sum(selected))`` plus a learned residual
  (measured here: a state that starts as the bare question never saw a reward on qa2).
- Full build (the paper, for GPUs): two trainable copies of an HF encoder, mean pooled and scaled.

Both take texts (what acting uses). The adapter build also exposes the frozen features and the adapters
on them (:meth:`QNetwork.chunk_features`, :meth:`QNetwork.adapt_chunks`, :meth:`QNetwork.adapt_states`),
which the learner uses to roll out on chunk ids and tensors; the full build keeps a text path there. The embedding is split into two halves,
each giving its own Q estimate; acting uses their sum. With ``candidate_stage`` on, a second stage
(:mod:`qrag_agents.qrag.candidates`, beyond the paper) corrects the Q halves of the top candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoModel

from qrag_agents.qrag.candidates import CandidateStage
from qrag_agents.qrag.config import QRAGConfig
from qrag_agents.qrag.rotary import apply_rotation, rotary_frequencies, rotation
from qrag_gym.embedding import TextEmbedder, mean_pool
from qrag_gym.models import load_tokenizer, resolve_model
from qrag_agents.qrag.tokens import token_ids
from qrag_gym.episode import Episode
from qrag_gym.features import corpus_features


def corpus_groups(sizes: Sequence[int], keys: Sequence[int | None]) -> list[tuple[int | None, list[int], np.ndarray]]:
    """Episodes grouped by a key (their corpus's ``id``, or None for those read without ids), with each group's rows
    in the concatenation of all episodes' items: ``(key, episode rows, item positions)``, ``sizes[i]`` items for
    episode ``i``. Why: gathering by id is one table read per corpus, whatever the order of the episodes."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    groups: dict[int | None, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return [(key, rows, np.concatenate([np.arange(starts[row], starts[row + 1]) for row in rows]))
            for key, rows in groups.items()]


def _zero_last(mlp: nn.Sequential) -> nn.Sequential:
    """Zero the output layer so the adapter starts as the identity (the frozen retriever)."""
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class QNetwork(nn.Module):
    """State encoder, chunk encoder and the rotary scoring between them."""

    def __init__(self, config: QRAGConfig, embedder: TextEmbedder | None = None) -> None:
        super().__init__()
        self.config = config
        if config.finetune_encoder:
            path = resolve_model(config.encoder)
            self.state_encoder = AutoModel.from_pretrained(path)
            self.chunk_encoder = AutoModel.from_pretrained(path)
            self.tokenizer = load_tokenizer(config.encoder)
            dim = int(self.state_encoder.config.hidden_size)
        else:
            if embedder is None:
                raise ValueError("the adapter build needs the frozen TextEmbedder that supplies features")
            self._embedder = embedder  # plain attribute: shared, frozen, never in state_dict
            dim, hidden = embedder.dim, config.adapter_hidden
            self.chunk_adapter = _zero_last(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)))
            self.state_adapter = _zero_last(
                nn.Sequential(nn.Linear(3 * dim + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))
            )
        self.dim = dim
        self.register_buffer("frequencies", rotary_frequencies(dim // 2), persistent=False)
        # Built last, and only when asked for, so faithful models draw the same initial weights as before.
        self.candidate_stage = CandidateStage(dim, config) if config.candidate_stage else None

    @property
    def device(self) -> torch.device:
        return self.frequencies.device

    @property
    def embedder(self) -> TextEmbedder | None:
        """The frozen encoder whose features the adapters read (adapter build); None in the full build."""
        return None if self.config.finetune_encoder else self._embedder

    # ----- features ------------------------------------------------------------------------------
    def _features(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self._embedder.encode(texts)).to(self.device)

    def _encode_full(self, encoder: nn.Module, input_ids: list[list[int]]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id or 0
        lengths = np.fromiter(map(len, input_ids), dtype=np.int64, count=len(input_ids))
        ids = np.full((len(input_ids), int(lengths.max())), pad, dtype=np.int64)
        for row, seq in enumerate(input_ids):
            ids[row, : len(seq)] = seq
        mask = np.arange(ids.shape[1]) < lengths[:, None]
        ids, mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).long().to(self.device)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask) * self.config.embed_scale

    def _piece_ids(self, texts: list[str], limit: int) -> list[list[int]]:
        """Token ids of each text, at most ``limit`` (memoised per process, shared with the twin network)."""
        return token_ids(self.config.encoder, texts, limit)

    # ----- the two encoders -----------------------------------------------------------------------
    def embed_chunks(self, texts: list[str]) -> torch.Tensor:
        """E_a for chunk texts, before rotation: ``(n, d)``."""
        if self.config.finetune_encoder:
            cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
            pieces = self._piece_ids(texts, self.config.chunk_max_tokens)
            return self._encode_full(self.chunk_encoder, [[cls_id, *p, sep_id] for p in pieces])
        return self.adapt_chunks(self.chunk_features(texts))

    def chunk_features(self, texts: list[str]) -> torch.Tensor:
        """The frozen encoder's features of ``texts`` ``(n, d)`` (adapter build): what the learner keeps per
        episode and gathers by chunk id, so no text is looked up again within an episode."""
        return self._features(texts)

    def episode_features(self, episodes: list[Episode]) -> torch.Tensor:
        """The frozen features of every chunk of ``episodes``, concatenated ``(sum of sizes, d)`` (adapter
        build): gathered by chunk id from each corpus's feature tables, encoded from the texts for episodes
        without ids (built by hand)."""
        return self._features_by_id(episodes, lambda episode: episode.chunk_ids, lambda episode: episode.chunks)

    def question_features(self, episodes: list[Episode]) -> torch.Tensor:
        """The frozen features of each episode's question ``(len(episodes), d)`` (adapter build): gathered by
        question id from its corpus's feature tables, encoded from the text where an episode has no id."""
        return self._features_by_id(
            episodes, lambda episode: None if episode.question_id is None else np.array([episode.question_id]),
            lambda episode: (episode.question,))

    def _features_by_id(self, episodes: list[Episode], ids_of: Callable[[Episode], np.ndarray | None],
                        texts_of: Callable[[Episode], Sequence[str]]) -> torch.Tensor:
        """Frozen features of some texts of each episode, concatenated in episode order: gathered by the corpus ids
        ``ids_of(episode)`` in one table read per corpus, or encoded from ``texts_of(episode)`` where it has none."""
        sizes = [len(texts_of(episode)) for episode in episodes]
        out = np.empty((sum(sizes), self.dim), dtype=np.float32)
        keys = [None if ids_of(episode) is None else id(episode.corpus) for episode in episodes]
        for key, rows, spans in corpus_groups(sizes, keys):
            if key is None:
                out[spans] = self._embedder.encode([text for row in rows for text in texts_of(episodes[row])])
            else:
                ids = np.concatenate([ids_of(episodes[row]) for row in rows])
                out[spans] = corpus_features(episodes[rows[0]].corpus, self._embedder).rows(ids)
        return torch.from_numpy(out).to(self.device)

    def adapt_chunks(self, features: torch.Tensor) -> torch.Tensor:
        """E_a from frozen features ``(..., d)`` (adapter build): ``normalize(e + MLP(e))``."""
        return nn.functional.normalize(features + self.chunk_adapter(features), dim=-1)

    def embed_states(self, questions: list[str], selected: list[list[str]]) -> torch.Tensor:
        """E_s for states "question + selected chunks" (each list already in document order): ``(B, d)``."""
        if self.config.finetune_encoder:
            return self._encode_full(self.state_encoder, self._state_ids(questions, selected))
        question = self._features(questions)
        flat = [text for texts in selected for text in texts]
        summed = torch.zeros_like(question)
        if flat:
            owner = torch.tensor([row for row, texts in enumerate(selected) for _ in texts], device=self.device)
            summed = summed.index_add(0, owner, self._features(flat))
        count = torch.tensor([[len(s) / self.config.max_steps] for s in selected], device=self.device)
        return self.adapt_states(question, summed, count)

    def adapt_states(self, question: torch.Tensor, summed: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """E_s from the three tensors that fully describe an adapter-build state: the question's feature
        ``(n, d)``, the sum of the selected chunks' features ``(n, d)`` and their count over ``max_steps``
        ``(n, 1)``. The learner keeps these per transition instead of texts."""
        base = nn.functional.normalize(question + summed, dim=-1)
        return base + self.state_adapter(torch.cat([question, summed, base, count], dim=-1))

    def _state_ids(self, questions: list[str], selected: list[list[str]]) -> list[list[int]]:
        """``[CLS] q [SEP] c1 [SEP] c2 ... [SEP]`` per state, each piece capped (the authors' ``stack_memory``)."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pieces = iter(self._piece_ids([text for q, s in zip(questions, selected) for text in (q, *s)],
                                      self.config.state_piece_max_tokens))
        states = []
        for chunks in selected:
            ids = [cls_id]
            for _ in range(1 + len(chunks)):
                ids.extend([*next(pieces), sep_id])
            states.append(ids)
        return states

    # ----- scoring -------------------------------------------------------------------------------
    def rotation(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The rotation (complex phases) for chunk ``positions``, or None when this model uses no positions."""
        return rotation(positions, self.frequencies) if self.config.positions == "relative" else None

    def q_halves(self, states: torch.Tensor, chunks: torch.Tensor, positions: torch.Tensor | None = None,
                 turn: torch.Tensor | None = None) -> torch.Tensor:
        """Per-half Q values ``(..., 2)`` of chunks ``(..., d)`` at ``positions`` for states ``(..., d)``.

        ``states`` broadcasts against ``chunks`` (e.g. ``(B, 1, d)`` against ``(B, M, d)``). Pass
        ``turn=self.rotation(positions)`` instead of ``positions`` to reuse a rotation.
        """
        if turn is None and positions is not None:
            turn = self.rotation(positions)
        if turn is not None:
            chunks = apply_rotation(chunks, turn)
        products = states * chunks
        return products.unflatten(-1, (2, self.dim // 2)).sum(-1)  # each half summed as its own run
