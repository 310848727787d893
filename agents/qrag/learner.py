"""The Q-RAG learner (the paper's Algorithm 1): on-policy soft Q-learning with lambda-returns.

Read it top to bottom: :func:`lambda_returns` is the paper's Algorithm 1; :class:`Learner` collects
``rollout_steps`` transitions from each of ``num_envs`` episodes with a Boltzmann policy over the
top-k chunks, bootstraps with the soft value of EMA target networks, and regresses both Q halves.

The rollout works on ids and preallocated tensors (issue 15, item 4): the episodes are stepped as
:class:`~qrag_gym.vector.RetrievalVectorEnv` slots on arrays of chunk ids; each episode's chunks are
encoded once, at its reset (one batched call for all slots that reset on a step), into padded
``(B, max_chunks, d)`` buffers; positions are computed for the whole batch at once
(:func:`~qrag_agents.qrag.rotary.relative_positions_batch`) and rotated once per step; in the adapter
build a state is three tensors (question feature, sum of the selected chunks' features, their count)
gathered by id, so neither the rollout nor the update touches a text after an episode's reset. Within a
rollout each network adapts a chunk id once (:class:`ChunkVectors`: the weights move only at the update),
and a step scores the few episodes longer than the rest beyond a common width (:class:`ScoreTiers`). The full
fine-tune build (``finetune_encoder``, the GPU path) reads token ids of the state's text, so for it the
rollout also keeps each transition's texts and the update encodes them (slower, as before).

A candidate stage trained on a frozen base (``stage_base``) shares that base between the online and target
networks: each chunk id is adapted once per run (:class:`ChunkVectors`) and E_s and the base Q are computed
once per step for both (``benchmarks/studies/results/frozen_base_speed_qa3.md``).

It plays exactly what the previous, per-episode learner played for the same seed (same episodes, same
draws from the same generator, same features in the same order): ``tests/test_learner.py`` holds the two
together update for update (the previous learner is kept, frozen, as the baseline of
``benchmarks/studies/learner_speed.py``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from qrag_agents.qrag.candidates import SelectedContext, candidate_delta, refine
from qrag_agents.qrag.config import QRAGConfig
from qrag_agents.qrag.networks import QNetwork, corpus_groups
from qrag_agents.qrag.rotary import relative_positions_batch
from qrag_gym.envs.retrieval import RetrievalEnv
from qrag_gym.episode import Episode
from qrag_gym.vector import RetrievalVectorEnv


def lambda_returns(rewards: torch.Tensor, dones: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Targets ``G_t`` for ``T`` transitions (rows) of ``B`` episodes (columns), Algorithm 1 of the paper.

    ``values`` has ``T + 1`` rows: ``values[t]`` is the soft target value of the state in which
    transition ``t`` was taken, and ``values[T]`` that of the state after the last transition.
    ``G_{T-1} = r_{T-1} + g m_{T-1} v_T``; ``G_t = r_t + g m_t ((1 - lam) v_{t+1} + lam G_{t+1})``.
    Only rows 1..T are read (row 0 keeps the layout of the paper's indices).
    """
    steps = rewards.shape[0]
    if values.shape[0] != steps + 1:
        raise ValueError(f"need {steps + 1} rows of values for {steps} transitions, got {values.shape[0]}")
    not_done = 1.0 - dones.float()
    returns = torch.zeros_like(rewards)
    returns[-1] = rewards[-1] + gamma * not_done[-1] * values[-1]
    for t in range(steps - 2, -1, -1):
        mixed = (1 - lam) * values[t + 1] + lam * returns[t + 1]
        returns[t] = rewards[t] + gamma * not_done[t] * mixed
    return returns


def soft_value(q_halves: torch.Tensor, valid: torch.Tensor, alpha: float, top_k: int) -> torch.Tensor:
    """``V = sum_h alpha * logsumexp(Q_h / alpha)`` over each half's top-k available chunks."""
    masked = q_halves.masked_fill(~valid.unsqueeze(-1), -math.inf)
    k = min(top_k, masked.shape[-2])
    best = masked.topk(k, dim=-2).values
    alpha = max(alpha, 1e-6)
    finite = torch.isfinite(best)
    scaled = torch.where(finite, best / alpha, torch.full_like(best, -math.inf))
    value = alpha * torch.logsumexp(scaled, dim=-2)
    return torch.where(finite.any(-2), value, torch.zeros_like(value)).sum(-1)


def boltzmann_top_k(q: torch.Tensor, valid: torch.Tensor, alpha: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """Sample one action per row from softmax(Q / alpha) restricted to the top-k available chunks."""
    masked = q.masked_fill(~valid, -math.inf)
    k = min(top_k, masked.shape[-1])
    best, index = masked.topk(k, dim=-1)
    logits = (best - best[:, :1]) / max(alpha, 1e-6)
    probs = torch.softmax(logits.masked_fill(~torch.isfinite(best), -math.inf), dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return index.gather(1, choice).squeeze(1)


def summed_selected(features: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Sum of the features ``(B, M, d)`` of each row's selected chunks ``(B, S)`` (ids in document order,
    -1 padding last): ``(B, d)``.

    Added one column at a time, in document order, as ``index_add`` adds a state's chunk features
    (:meth:`QNetwork.embed_states`): the same float sums, so a state has the same E_s either way.
    """
    total = torch.zeros(features.shape[0], features.shape[-1], dtype=features.dtype, device=features.device)
    for column in range(selected.shape[1]):
        ids = selected[:, column]
        picked = features.gather(1, ids.clamp(min=0).view(-1, 1, 1).expand(-1, 1, features.shape[-1])).squeeze(1)
        total = torch.where((ids >= 0).unsqueeze(-1), total + picked, total)
    return total


class ChunkVectors:
    """E_a by corpus id while an adapter's weights stay the same: each id is adapted once, the first time an
    episode draws it, and gathered by id afterwards.

    Why: the episodes of one rollout share many chunks (the same book sentences and bAbI facts: 23 % of a qa2
    rollout's chunk rows repeat an id, 50 % of qa3's), and the adapter is the learner's largest matmul. A trained
    adapter changes at every update, so its learner calls :meth:`clear` before each rollout; a frozen one (a
    candidate stage on a frozen base, ``stage_base``) keeps its vectors for the whole run. A row of a matmul does
    not depend on the other rows, so a vector gathered by id is bit for bit the one a full batch would give.
    One dense ``(n, d)`` table per corpus (45,758 ids, 70 MB, for qa3's books, stories and questions; a corpus of
    millions of texts would cost gigabytes); episodes of episode-local corpora (NIAH) or without ids (built by
    hand) are adapted directly, as before.
    """

    def __init__(self, adapt: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.adapt = adapt
        self.tables: dict[int, tuple[object, torch.Tensor, np.ndarray]] = {}  # id(corpus): (corpus, E_a, filled)

    def clear(self) -> None:
        """Forget every vector (the adapter's weights changed); the tables' memory is kept for the next rollout."""
        for _, _, filled in self.tables.values():
            filled[:] = False

    def vectors(self, episodes: list[Episode], features: torch.Tensor) -> torch.Tensor:
        """E_a of every chunk of ``episodes`` ``(sum of sizes, d)``; ``features`` are their frozen features, in the
        same order (:meth:`QNetwork.episode_features`)."""
        keys = [id(episode.corpus) if episode.chunk_ids is not None
                and not any(table.episode_local for table in episode.corpus.tables) else None for episode in episodes]
        groups = corpus_groups([len(episode.chunks) for episode in episodes], keys)
        out = None if len(groups) == 1 else torch.empty_like(features)
        for key, rows, positions in groups:
            spans = torch.from_numpy(positions)
            if key is None:
                part = self.adapt(features if out is None else features.index_select(0, spans))
            else:
                part = self._by_id(episodes[rows[0]].corpus, np.concatenate([episodes[row].chunk_ids for row in rows]),
                                   features, spans)
            if out is None:  # one group: it is every row, in order
                return part
            out.index_copy_(0, spans, part)
        return out

    def _by_id(self, corpus: object, ids: np.ndarray, features: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
        """E_a of corpus ``ids`` whose features sit at rows ``spans`` of ``features``: the ids not in the table yet
        are adapted (once each, from their first row) and stored, then all are gathered."""
        if id(corpus) not in self.tables:
            self.tables[id(corpus)] = (corpus, torch.zeros(len(corpus), features.shape[1], device=features.device),
                                       np.zeros(len(corpus), dtype=bool))
        _, table, filled = self.tables[id(corpus)]
        missing, first = np.unique(ids, return_index=True)
        new = ~filled[missing]
        if new.any():
            rows_new = spans.index_select(0, torch.from_numpy(first[new]))
            table.index_copy_(0, torch.from_numpy(missing[new]), self.adapt(features.index_select(0, rows_new)).to(table.dtype))
            filled[missing[new]] = True
        return table.index_select(0, torch.from_numpy(ids))


def cheapest_base_width(num_chunks: np.ndarray, width: int) -> int:
    """The width up to which all ``B`` slots are scored together; the slots with more chunks are scored beyond it
    on their own. Chosen among the episodes' sizes to score the fewest (slot, chunk) pairs:
    ``B * base + (slots longer than base) * (width - base)``."""
    sizes = np.unique(np.minimum(num_chunks, width))
    longer = (num_chunks[None, :] > sizes[:, None]).sum(1)
    return int(sizes[np.argmin(len(num_chunks) * sizes + longer * (width - sizes))])


class ScoreTiers:
    """Where one step scores the chunks of ``B`` slots: all slots up to a base width, the longer slots beyond it.

    Why: a padded batch scores every slot at its widest episode's width. Most qa3 episodes have 100 chunks but
    a few stories run to 200, so half of the rotations and products the rollout made were of padding. Each
    (slot, chunk) is scored by the same elementwise operations either way: the Q values are the padded batch's
    bit for bit (``tests/test_learner.py``). The rotation phases are computed once per step for both networks.
    """

    def __init__(self, network: QNetwork, num_chunks: np.ndarray, positions: torch.Tensor) -> None:
        self.width = positions.shape[1]
        self.base = cheapest_base_width(num_chunks, self.width)
        self.long_rows = torch.from_numpy(np.flatnonzero(num_chunks > self.base)).to(positions.device)
        self.turn = network.rotation(positions[:, : self.base])
        self.long_turn = network.rotation(positions[self.long_rows, self.base:]) if len(self.long_rows) else None

    def q_halves(self, network: QNetwork, states: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """Base Q halves ``(B, width, 2)`` of ``chunks`` ``(B, >= width, d)`` for ``states`` ``(B, d)`` (zero past
        each slot's chunks, as the zero vectors of the padding score)."""
        main = network.q_halves(states.unsqueeze(1), chunks[:, : self.base], turn=self.turn)
        if self.base == self.width:
            return main
        q = main.new_zeros(len(states), self.width, 2)
        q[:, : self.base] = main
        if len(self.long_rows):
            q[self.long_rows, self.base:] = network.q_halves(
                states[self.long_rows].unsqueeze(1), chunks[self.long_rows, self.base: self.width], turn=self.long_turn)
        return q


@dataclass
class StateInputs:
    """What the update needs to embed the states and actions of ``N`` transitions again, with gradients.

    Adapter build: ``question``, ``summed`` ``(N, d)``, ``count`` ``(N, 1)`` and the action chunks'
    frozen features ``actions`` ``(N, d)``. Full build: the texts (``questions``, ``selected`` in document
    order, ``action_texts``), since its encoders read token ids.
    """

    question: torch.Tensor | None = None
    summed: torch.Tensor | None = None
    count: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    questions: list[str] | None = None
    selected: list[list[str]] | None = None
    action_texts: list[str] | None = None


@dataclass
class CandidateSets:
    """The candidate set the online network's stage scored at each transition (``candidate_stage`` only).

    The update scores the same set again, with gradients, so the Q it regresses is the Q the policy
    acted on; an action outside the set (the random warm-up) keeps its base Q, as in acting.
    """

    index: torch.Tensor  # chunk ids, (transitions, M)
    positions: torch.Tensor  # relative positions, (transitions, M)
    valid: torch.Tensor  # (transitions, M) bool
    action_column: torch.Tensor  # where the action sits in its set, -1 when outside, (transitions,)
    features: torch.Tensor | None = None  # frozen chunk features, (transitions, M, d) (adapter build)
    adapted: bool = False  # features (and context_features) are already E_a: the chunk adapter is frozen
    texts: list[str] | None = None  # chunk texts, (transitions * M) flat (full build)
    context_index: torch.Tensor | None = None  # selected ids in document order, -1 padding, (transitions, S)
    context_features: torch.Tensor | None = None  # their frozen features, (transitions, S, d) (candidate_context)


@dataclass
class Batch:
    """Transitions of one rollout, flattened time-major for the update."""

    inputs: StateInputs
    positions: torch.Tensor
    targets: torch.Tensor
    episode_returns: list[float]
    episode_success: list[float]
    candidates: CandidateSets | None = None


def step_settings(env: RetrievalEnv) -> tuple:
    """The settings a :class:`RetrievalVectorEnv` applies to all its slots' steps (it reads them from its first
    env): envs that agree on them can be stepped together, whatever episodes they draw."""
    return (env.max_chunks, env.max_steps, env.reward_variant, env.penalize_extra_steps, env.never_terminate,
            env.invalid_action_penalty)


class EnvSlots:
    """The learner's ``B`` training envs stepped as slots of vector envs, in the order they were given.

    Envs are grouped by :func:`step_settings` (e.g. the ``full_episode_share`` envs that never terminate and
    the others), one :class:`RetrievalVectorEnv` per group built on the very env objects given, with
    same-step autoreset: an ended slot is reset unseeded at once, continuing its env's random stream.
    """

    def __init__(self, envs: list[RetrievalEnv]) -> None:
        groups: dict[tuple, list[int]] = {}
        for row, env in enumerate(envs):
            groups.setdefault(step_settings(env), []).append(row)
        self.size = len(envs)
        self.max_chunks = max(env.max_chunks for env in envs)  # NIAH variants differ: masks are padded to the widest
        self.max_steps = max(env.max_steps for env in envs)
        # A vector env builds its slots by calling a factory; this one hands out the given envs in order.
        self.groups = [(RetrievalVectorEnv(partial(next, iter([envs[row] for row in rows])), len(rows),
                                           autoreset_mode="SameStep"), np.array(rows)) for rows in groups.values()]
        self.episodes: list[Episode | None] = [None] * self.size

    def reset(self, seeds: list[int]) -> None:
        """Reset every slot, slot ``i`` with ``seeds[i]``."""
        for vector, rows in self.groups:
            vector.reset(seed=[seeds[row] for row in rows])
            for row, episode in zip(rows.tolist(), vector.episodes):
                self.episodes[row] = episode

    def action_masks(self) -> np.ndarray:
        """``(B, max_chunks)`` chunks each slot may select (False past a narrower env's ``max_chunks``)."""
        masks = np.zeros((self.size, self.max_chunks), dtype=bool)
        for vector, rows in self.groups:
            masks[rows, : vector.max_chunks] = vector.action_masks()
        return masks

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every slot; returns rewards and ends ``(B,)``. Ended slots are already reset (read
        :attr:`episodes` for their new episodes)."""
        rewards, ended = np.zeros(self.size), np.zeros(self.size, dtype=bool)
        for vector, rows in self.groups:
            _, reward, terminated, truncated, _ = vector.step(actions[rows])
            rewards[rows], ended[rows] = reward, terminated | truncated
            if ended[rows].any():
                for row, episode in zip(rows.tolist(), vector.episodes):
                    self.episodes[row] = episode
        return rewards, ended


class LearnerBase:
    """What a soft-Q learner owns besides its rollouts: the online and target networks, AdamW with its
    warm-up/decay schedule, the temperature that follows it, the sampling generator, and the gradient step.

    The product's :class:`Learner` and the speed study's frozen baseline learner both build on it, so the
    two optimise alike by construction.
    """

    def __init__(self, config: QRAGConfig, online: QNetwork, target: QNetwork) -> None:
        self.config, self.online, self.target = config, online, target
        self.target.load_state_dict(online.state_dict())
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(online.parameters(), lr=config.lr, betas=config.adam_betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.transitions = 0
        self.updates = 0

    def _lr_factor(self, update: int) -> float:
        """Linear warm-up from 0, then linear decay to ``final_lr_ratio`` at ``total_updates``."""
        config = self.config
        if update < config.warmup_updates:
            return (update + 1) / config.warmup_updates
        progress = min(1.0, (update - config.warmup_updates) / max(1, config.total_updates - config.warmup_updates))
        return 1.0 - (1.0 - config.final_lr_ratio) * progress

    @property
    def alpha(self) -> float:
        """The temperature follows the learning-rate schedule: ``alpha_0 * lr_now / lr_0``."""
        return self.config.alpha * self.scheduler.get_last_lr()[0] / self.config.lr

    def regress(self, q: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """One gradient step: MSE of ``2 Q_h`` (the Q halves of a batch's actions) toward ``G`` for both halves,
        clipped AdamW step, schedule step, EMA of the target network; returns the logged figures."""
        targets = targets.to(q.device)
        loss = 0.5 * nn.functional.mse_loss(2 * q[:, 0], targets) + 0.5 * nn.functional.mse_loss(2 * q[:, 1], targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.online.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.updates += 1
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.online.parameters()):
                target.lerp_(online, self.config.tau)
        return {
            "losses/td_loss": loss.item(),
            "losses/q_values": q.detach().sum(-1).mean().item(),
            "losses/grad_norm": float(grad_norm),
            "charts/learning_rate": self.scheduler.get_last_lr()[0],
            "charts/alpha": self.alpha,
        }


class Learner(LearnerBase):
    """Owns the running episodes (slots) and their rollouts; the optimisation is :class:`LearnerBase`'s."""

    def __init__(self, config: QRAGConfig, envs: list[RetrievalEnv], online: QNetwork, target: QNetwork,
                 share_frozen_base: bool = True) -> None:
        super().__init__(config, online, target)
        self.texts = config.finetune_encoder  # the full build's encoders read token ids of texts
        # A stage on a frozen base (stage_base): online and target share every weight but the stage's (the EMA of
        # equal weights leaves them equal), so E_a, E_s and the base Q are computed once for both, E_a once per id.
        frozen = online.candidate_stage is not None and not any(
            parameter.requires_grad for name, parameter in online.named_parameters() if not name.startswith("candidate_stage."))
        self.frozen_base = share_frozen_base and frozen and not self.texts
        # E_a by id (adapter build): one table on a frozen base, kept for the run; online and target otherwise,
        # cleared before each rollout (their weights moved).
        networks = [] if self.texts else [online] if self.frozen_base else [online, target]
        self.chunk_vectors = [ChunkVectors(network.adapt_chunks) for network in networks]
        self.slots = EnvSlots(envs)
        size, width, device = self.slots.size, self.slots.max_chunks, online.device
        self.num_chunks = np.zeros(size, dtype=np.int64)
        self.selected = np.full((size, self.slots.max_steps), -1, dtype=np.int64)  # selection order
        self.num_selected = np.zeros(size, dtype=np.int64)
        self.episode_return = np.zeros(size)
        dim = online.dim
        self.chunks = torch.zeros(size, width, dim, device=device)  # online E_a at episode start
        # target E_a at episode start (the same buffer on a frozen base)
        self.target_chunks = self.chunks if self.frozen_base else torch.zeros(size, width, dim, device=device)
        self.features = None if self.texts else torch.zeros(size, width, dim, device=device)  # frozen, by id
        self.question = None if self.texts else torch.zeros(size, dim, device=device)
        self.slots.reset([config.seed + index for index in range(size)])
        self._start_episodes(np.arange(size))

    @torch.no_grad()
    def _start_episodes(self, rows: np.ndarray) -> None:
        """Load the new episodes of slots ``rows`` (already reset): all their chunks and questions are encoded in
        one batched pass per network and written into those rows of the padded buffers."""
        episodes = [self.slots.episodes[row] for row in rows.tolist()]
        sizes = [len(episode.chunks) for episode in episodes]
        buffers = [self.chunks, self.target_chunks]
        if self.texts:
            texts = [text for episode in episodes for text in episode.chunks]
            with self._rollout_precision():
                values = [self.online.embed_chunks(texts), self.target.embed_chunks(texts)]
        else:
            features = self.online.episode_features(episodes)  # by chunk id
            if self.frozen_base:  # float32 even under a bfloat16 rollout: the update reuses these rows
                buffers, values = [self.chunks], [self.chunk_vectors[0].vectors(episodes, features)]
            else:
                with self._rollout_precision():
                    values = [table.vectors(episodes, features) for table in self.chunk_vectors]
            values.append(features)
            buffers.append(self.features)
            self.question[rows] = self.online.question_features(episodes)
        # Episode chunk j goes to flat row ``slot * width + j`` of each buffer. Rows past a slot's chunks stay zero:
        # only those the slot's previous, longer episode wrote are cleared.
        width = self.chunks.shape[1]
        flat = torch.from_numpy(np.concatenate([row * width + np.arange(size) for row, size in zip(rows.tolist(), sizes)]))
        stale = [(row, size, old) for row, size, old in zip(rows.tolist(), sizes, self.num_chunks[rows].tolist()) if old > size]
        for buffer, value in zip(buffers, values):
            buffer.view(-1, buffer.shape[-1]).index_copy_(0, flat.to(buffer.device), value.to(buffer.dtype))
            for row, size, old in stale:
                buffer[row, size:old] = 0.0
        self.num_chunks[rows] = sizes
        self.selected[rows], self.num_selected[rows], self.episode_return[rows] = -1, 0, 0.0

    def _rollout_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to bfloat16 for the rollout's chunk encoding when ``rollout_precision`` asks for it (the
        buffers stay float32, so everything downstream of the chunk encoders runs as before)."""
        if self.config.rollout_precision == "bfloat16":
            return torch.autocast(self.online.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _document_order(self) -> np.ndarray:
        """Each slot's selected ids in document order, -1 padding last ``(B, max_steps)``."""
        beyond = np.iinfo(np.int64).max
        ordered = np.sort(np.where(self.selected >= 0, self.selected, beyond), axis=1)
        return np.where(ordered == beyond, -1, ordered)

    def _state_texts(self, ordered: np.ndarray) -> tuple[list[str], list[list[str]]]:
        """Questions and selected chunk texts (document order) of every slot (full build only)."""
        episodes = self.slots.episodes
        return ([episode.question for episode in episodes],
                [[episodes[row].chunks[i] for i in ids if i >= 0] for row, ids in enumerate(ordered.tolist())])

    def _states(self, network: QNetwork, inputs: tuple) -> torch.Tensor:
        """E_s of every slot's state: from texts (full build) or from the three feature tensors (adapter build)."""
        return network.embed_states(*inputs) if self.texts else network.adapt_states(*inputs)

    def _base_q(self, network: QNetwork, state_inputs: tuple, chunks: torch.Tensor,
                tiers: ScoreTiers) -> tuple[torch.Tensor, torch.Tensor]:
        """E_s of every slot's state and the base Q halves of every chunk ``(B, M, 2)`` under ``network``."""
        states = self._states(network, state_inputs)
        return states, tiers.q_halves(network, states, chunks)

    def _q_halves(self, network: QNetwork, states: torch.Tensor, base: torch.Tensor, chunks: torch.Tensor,
                  positions: torch.Tensor, valid: torch.Tensor, ordered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Final per-half Q of every chunk of every slot ``(B, M, 2)`` (:func:`refine`: the base Q ``base``,
        corrected on the candidates when the network has a candidate stage) and the candidate ids or None.
        ``ordered``: the selected ids in document order ``(B, S)``, which a stage with ``candidate_context`` reads."""
        context = None
        if self.config.candidate_context:
            question = network.adapt_chunks(self.question) if self.config.candidate_question else None
            context = SelectedContext.gather(chunks, ordered, question)
        return refine(network, states, chunks, base, positions, valid.to(base.device), context)

    @torch.no_grad()
    def rollout(self) -> Batch:
        """``rollout_steps`` steps of every episode; episodes carry over between rollouts."""
        config, device = self.config, self.online.device
        steps, size, dim = config.rollout_steps, self.slots.size, self.online.dim
        rewards, dones = torch.zeros(steps, size), torch.zeros(steps, size)
        values = torch.zeros(steps + 1, size)
        positions = torch.zeros(steps, size)
        rows = torch.arange(size)
        if self.texts:
            inputs = StateInputs(questions=[], selected=[], action_texts=[])
        else:
            inputs = StateInputs(torch.zeros(steps, size, dim, device=device), torch.zeros(steps, size, dim, device=device),
                                 torch.zeros(steps, size, 1, device=device), torch.zeros(steps, size, dim, device=device))
        sets: list[tuple] = []
        returns, successes = [], []
        random_phase = self.transitions < config.random_transitions
        if not self.frozen_base:
            for table in self.chunk_vectors:
                table.clear()
        for t in range(steps + 1):
            width = int(self.num_chunks.max())
            ordered = self._document_order()
            rho = torch.from_numpy(relative_positions_batch(self.num_chunks, ordered, width, config.position_step,
                                                            config.position_span, config.integer_positions)).float()
            valid = torch.from_numpy(self.slots.action_masks()[:, :width])
            rho_device = rho.to(device)
            ordered_device = torch.from_numpy(ordered).to(device)
            tiers = ScoreTiers(self.online, self.num_chunks, rho_device)
            if self.texts:
                questions, selected = self._state_texts(ordered)
                state_inputs: tuple = (questions, selected)
            else:
                summed = summed_selected(self.features, torch.from_numpy(ordered).to(device))
                count = torch.from_numpy(self.num_selected / config.max_steps).float().unsqueeze(-1).to(device)
                state_inputs = (self.question, summed, count)
            # Scores come back to the CPU, where the sampling generator and the returns live. The returns read
            # values[1..T] only (the value of the state a transition leads to), so step 0 scores no target.
            online_base = None
            if t < steps or self.frozen_base:
                online_base = self._base_q(self.online, state_inputs, self.chunks, tiers)
            if t > 0:
                target_base = online_base if self.frozen_base else self._base_q(self.target, state_inputs,
                                                                                 self.target_chunks, tiers)
                target_q, _ = self._q_halves(self.target, *target_base, self.target_chunks[:, :width], rho_device, valid,
                                             ordered_device)
                values[t] = soft_value(target_q.cpu(), valid, self.alpha, config.top_k)
            if t == steps:  # the bootstrap state needs only its target value
                break
            online_q, candidates = self._q_halves(self.online, *online_base, self.chunks[:, :width], rho_device, valid,
                                                  ordered_device)
            online_q = online_q.cpu()
            if random_phase:
                scores = torch.rand(valid.shape, generator=self.generator).masked_fill(~valid, -1.0)
                chosen = scores.argmax(-1)
            else:
                chosen = boltzmann_top_k(online_q.sum(-1), valid, self.alpha, config.top_k, self.generator)
            positions[t] = rho[rows, chosen]
            actions = chosen.numpy()
            if self.texts:
                inputs.questions.extend(questions)
                inputs.selected.extend(selected)
                inputs.action_texts.extend(episode.chunks[a] for episode, a in zip(self.slots.episodes, actions.tolist()))
            else:
                inputs.question[t], inputs.summed[t], inputs.count[t] = self.question, summed, count
                inputs.actions[t] = self.features[rows.to(device), chosen.to(device)]
            if candidates is not None:
                sets.append(self._candidate_set(candidates.cpu(), rho, chosen, ordered_device))
            self.selected[np.arange(size), self.num_selected] = actions
            self.num_selected += 1
            playing = list(self.slots.episodes)  # ended slots are reset within the step
            reward, ended = self.slots.step(actions)
            if config.per_fact_reward:  # training-only shaping (the env pays none); actions are always valid here
                reward = reward + config.per_fact_reward * np.array(
                    [action in episode.supporting_ids for episode, action in zip(playing, actions.tolist())])
            rewards[t], dones[t] = torch.from_numpy(reward).float(), torch.from_numpy(ended).float()
            self.episode_return += reward
            finished = np.flatnonzero(ended)
            for row in finished.tolist():
                returns.append(float(self.episode_return[row]))
                picked = set(self.selected[row, : self.num_selected[row]].tolist())
                successes.append(float(set(playing[row].supporting_ids) <= picked))
            if len(finished):
                self._start_episodes(finished)
        self.transitions += steps * size
        targets = lambda_returns(rewards, dones, values, config.gamma, config.lam)
        if not self.texts:
            inputs = StateInputs(inputs.question.reshape(-1, dim), inputs.summed.reshape(-1, dim),
                                 inputs.count.reshape(-1, 1), inputs.actions.reshape(-1, dim))
        return Batch(inputs, positions.reshape(-1), targets.reshape(-1), returns, successes,
                     self._candidate_sets(sets) if sets else None)

    def _candidate_set(self, index: torch.Tensor, rho: torch.Tensor, chosen: torch.Tensor, ordered: torch.Tensor) -> tuple:
        """One step's candidate sets: :func:`refine`'s ids (-1 past the available chunks: stored as copies of the
        best one, marked invalid, as :func:`refine` scores them), their positions, where the action sits, and
        (``candidate_context``) the selected ids and features the stage read beside them."""
        real = index >= 0
        index = torch.where(real, index, index[:, :1])
        hits = (index == chosen.unsqueeze(1)) & real
        column = torch.where(hits.any(1), hits.int().argmax(1), torch.full_like(chosen, -1))
        # On a frozen base the sets keep E_a (the update would adapt the same features to the same vectors).
        vectors = self.chunks if self.frozen_base else self.features
        if self.texts:
            episodes = self.slots.episodes
            found = [episodes[row].chunks[i] for row, ids in enumerate(index.tolist()) for i in ids]
        else:
            found = vectors.gather(1, index.to(vectors.device).unsqueeze(-1).expand(-1, -1, vectors.shape[-1]))
        context = (None, None)
        if self.config.candidate_context:
            context = (ordered.cpu(), SelectedContext.gather(vectors, ordered).chunks)
        return index, rho.gather(1, index), real, column, found, *context

    def _candidate_sets(self, sets: list[tuple]) -> CandidateSets:
        """The rollout's candidate sets, time-major like the batch."""
        index, positions, valid, column, found, context_index, context_features = zip(*sets)
        cat = partial(torch.cat, dim=0)
        if self.texts:
            return CandidateSets(cat(index), cat(positions), cat(valid), cat(column),
                                 texts=[text for step in found for text in step])
        context = {}
        if self.config.candidate_context:
            context = {"context_index": cat(context_index), "context_features": cat(context_features)}
        return CandidateSets(cat(index), cat(positions), cat(valid), cat(column), features=cat(found),
                             adapted=self.frozen_base, **context)

    def _candidate_q(self, states: torch.Tensor, action_q: torch.Tensor, sets: CandidateSets,
                     question: torch.Tensor | None = None) -> torch.Tensor:
        """The final Q halves of each taken action: its base Q plus the stage's correction, scored within the
        candidate set it was taken from (none where the action was outside its set). ``question``: the
        transitions' question features, which a ``candidate_question`` stage reads.

        The other candidates' chunk vectors enter as features without gradient (the chunk adapter learns
        through the actions, as in faithful Q-RAG): that keeps the update's cost near the faithful one. The
        ``candidate_floor`` is left out here on purpose: a floored candidate's Q would not move with the stage,
        so the stage could never learn its way back up from below the floor.
        """
        device = self.online.device
        count = sets.index.shape[1]
        context = None
        with torch.no_grad():
            if self.texts:
                chunks = self.online.embed_chunks(sets.texts).view(len(states), count, -1)
            elif sets.adapted:
                chunks = sets.features.to(device)
            else:
                chunks = self.online.adapt_chunks(sets.features.reshape(-1, sets.features.shape[-1])).view(len(states), count, -1)
            if sets.context_index is not None:
                ids = sets.context_index.to(device)
                selected = sets.context_features.to(device)
                selected = (selected if sets.adapted else self.online.adapt_chunks(selected)) * (ids >= 0).unsqueeze(-1)
                asked = self.online.adapt_chunks(question) if self.config.candidate_question else None
                context = SelectedContext(selected, ids, asked)
        positions = sets.positions.to(device)
        base = self.online.q_halves(states.unsqueeze(1), chunks, positions)
        delta = candidate_delta(self.online, states, chunks, base, positions, sets.index.to(device), sets.valid.to(device),
                                context)
        column = sets.action_column.to(device)
        picked = delta.gather(1, column.clamp(min=0).view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        return action_q + picked * (column >= 0).unsqueeze(-1)

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the batch: MSE of ``2 Q_h`` toward ``G`` for both halves."""
        inputs = batch.inputs
        if self.texts:
            states = self.online.embed_states(inputs.questions, inputs.selected)
            chunks = self.online.embed_chunks(inputs.action_texts)
        else:
            states = self.online.adapt_states(inputs.question, inputs.summed, inputs.count)
            chunks = self.online.adapt_chunks(inputs.actions)
        q = self.online.q_halves(states, chunks, batch.positions.to(self.online.device))
        if batch.candidates is not None:
            q = self._candidate_q(states, q, batch.candidates, None if self.texts else inputs.question)
        return self.regress(q, batch.targets)
