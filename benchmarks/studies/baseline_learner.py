"""FROZEN BASELINE of ``benchmarks/studies/learner_speed.py``: the Q-RAG learner as it was before issue 15 item 4.

This is ``agents/qrag/learner.py`` at commit d2713a5 (one single env per slot, state texts embedded every
step, per-step padding, per-episode positions), together with that commit's scoring (cos/sin rotation
with a stack, per-half slice sums: :func:`_today_rotation`, :func:`_today_q_halves`), so the study can
measure "today's learner" in the same process as the product's learner after the switch. It is not
used by the product; ``tests/test_learner.py`` also uses it as the reference the new learner must
match update for update. Do not edit it except to keep it importable: the pieces the product has not changed
since (``lambda_returns``, ``soft_value``, ``boltzmann_top_k``, and ``LearnerBase``: optimiser, schedule, gradient step) are imported from
it, and the per-fact shaping its envs paid then is added in its rollout (it has left the envs).

Original docstring: the Q-RAG learner (the paper's Algorithm 1): on-policy soft Q-learning with
lambda-returns. :func:`lambda_returns` is the paper's Algorithm 1; :class:`Learner` collects
``rollout_steps`` transitions from each of ``num_envs`` episodes with a Boltzmann policy over the top-k
chunks, bootstraps with the soft value of EMA target networks, and regresses both Q halves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from qrag_agents.qrag.candidates import candidate_delta, refine
from qrag_agents.qrag.config import QRAGConfig
from qrag_agents.qrag.learner import LearnerBase, boltzmann_top_k, lambda_returns, soft_value  # unchanged by item 4
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.rotary import relative_positions
from qrag_gym.envs.retrieval import RetrievalEnv


def _today_rotation(network: QNetwork, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``QNetwork.rotation`` at d2713a5: ``(cos, sin)`` of the angles, or None without positions."""
    if network.config.positions != "relative":
        return None
    angles = positions.unsqueeze(-1).float() * network.frequencies.to(positions.device)
    return torch.cos(angles), torch.sin(angles)


def _today_q_halves(network: QNetwork, states: torch.Tensor, chunks: torch.Tensor, positions: torch.Tensor | None = None,
                    turn: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``QNetwork.q_halves`` at d2713a5 (rotation by separate cos/sin products and a stack)."""
    if turn is None and positions is not None:
        turn = _today_rotation(network, positions)
    if turn is not None:
        cos, sin = turn
        *lead, dim = chunks.shape
        pairs = chunks.reshape(*lead, 2, dim // 4, 2)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        chunks = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).reshape(*lead, dim)
    products = states * chunks
    half = network.dim // 2
    return torch.stack((products[..., :half].sum(-1), products[..., half:].sum(-1)), dim=-1)


@dataclass
class Slot:
    """One running episode: its env, the chunk embeddings computed at reset, what was selected."""

    env: RetrievalEnv
    chunks: torch.Tensor | None = None  # online E_a at episode start, (m, d)
    target_chunks: torch.Tensor | None = None  # target E_a at episode start, (m, d)
    selected: list[int] = field(default_factory=list)
    episode_return: float = 0.0

    def positions(self, config: QRAGConfig) -> torch.Tensor:
        rho = relative_positions(self.env.num_chunks, self.selected, config.position_step,
                                 config.position_span, config.integer_positions)
        return torch.from_numpy(rho).float()

    def state_texts(self) -> tuple[str, list[str]]:
        chunks = self.env.chunks
        return self.env.question, [chunks[i] for i in sorted(self.selected)]


@dataclass
class Batch:
    """Transitions of one rollout, flattened time-major for the update."""

    questions: list[str]
    selected: list[list[str]]
    actions: list[str]
    positions: torch.Tensor
    targets: torch.Tensor
    episode_returns: list[float]
    episode_success: list[float]
    candidates: "CandidateSets | None" = None


@dataclass
class CandidateSets:
    """The candidate set the online network's stage scored at each transition (``candidate_stage`` only).

    The update scores the same set again, with gradients, so the Q it regresses is the Q the policy
    acted on; an action outside the set (the random warm-up) keeps its base Q, as in acting.
    """

    texts: list[str]  # chunk texts, (transitions * M) flat
    index: torch.Tensor  # chunk ids, (transitions, M)
    positions: torch.Tensor  # relative positions, (transitions, M)
    valid: torch.Tensor  # (transitions, M) bool
    action_column: torch.Tensor  # where the action sits in its set, -1 when outside, (transitions,)


@dataclass
class StepTensors:
    """The running episodes padded to one width: built once per step, shared by both networks."""

    chunks: torch.Tensor  # online E_a, (B, M, d), on the networks' device
    target_chunks: torch.Tensor  # target E_a, (B, M, d), on the networks' device
    positions: torch.Tensor  # (B, M), CPU
    valid: torch.Tensor  # (B, M) bool, CPU

    @classmethod
    def build(cls, slots: list[Slot], config: QRAGConfig) -> "StepTensors":
        """Chunk embeddings padded on the networks' device; positions and masks on the CPU, where the
        sampling generator and the returns live."""
        width = max(slot.env.num_chunks for slot in slots)
        chunks = nn.utils.rnn.pad_sequence([slot.chunks for slot in slots], batch_first=True)
        target_chunks = nn.utils.rnn.pad_sequence([slot.target_chunks for slot in slots], batch_first=True)
        positions = torch.zeros(len(slots), width)
        valid = torch.zeros(len(slots), width, dtype=torch.bool)
        for row, slot in enumerate(slots):
            m = slot.env.num_chunks
            positions[row, :m] = slot.positions(config)
            valid[row, :m] = torch.from_numpy(slot.env.action_masks()[:m])
        return cls(chunks, target_chunks, positions, valid)


def slot_q_halves(network: QNetwork, slots: list[Slot], chunks: torch.Tensor, turn, positions: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final per-half Q of every chunk of every running episode ``(B, M, 2)`` (:func:`refine`: the base
    Q, corrected on the candidates when the network has a candidate stage) and the candidate ids or None."""
    questions, selected = zip(*(slot.state_texts() for slot in slots))
    states = network.embed_states(list(questions), list(selected))
    base = _today_q_halves(network, states.unsqueeze(1), chunks, turn=turn)
    return refine(network, states, chunks, base, positions, valid.to(base.device))


class Learner(LearnerBase):
    """Owns the running episodes; networks, optimiser and gradient step are the product's :class:`LearnerBase`."""

    def __init__(self, config: QRAGConfig, envs: list[RetrievalEnv], online: QNetwork, target: QNetwork) -> None:
        super().__init__(config, online, target)
        self.slots = [Slot(env) for env in envs]
        self._start_episodes(self.slots, [config.seed + index for index in range(len(envs))])

    @torch.no_grad()
    def _start_episodes(self, slots: list[Slot], seeds: list[int | None] | None = None) -> None:
        """Reset these episodes and embed all their chunks in one batched pass per network."""
        for slot, seed in zip(slots, seeds or [None] * len(slots)):
            slot.env.reset(seed=seed)
            slot.selected, slot.episode_return = [], 0.0
        texts = [text for slot in slots for text in slot.env.chunks]
        sizes = [slot.env.num_chunks for slot in slots]
        online, target = self.online.embed_chunks(texts).split(sizes), self.target.embed_chunks(texts).split(sizes)
        for slot, chunks, target_chunks in zip(slots, online, target):
            slot.chunks, slot.target_chunks = chunks, target_chunks

    @torch.no_grad()
    def rollout(self) -> Batch:
        """``rollout_steps`` steps of every episode; episodes carry over between rollouts."""
        config = self.config
        steps, width = config.rollout_steps, len(self.slots)
        rewards, dones = torch.zeros(steps, width), torch.zeros(steps, width)
        values = torch.zeros(steps + 1, width)
        questions, selected, actions = [], [], []
        positions = torch.zeros(steps, width)
        returns, successes = [], []
        sets = _SetCollector() if self.online.candidate_stage is not None else None
        random_phase = self.transitions < config.random_transitions
        for t in range(steps + 1):
            step = StepTensors.build(self.slots, config)
            valid, rho = step.valid, step.positions
            rho_device = rho.to(self.online.device)
            turn = _today_rotation(self.online, rho_device)
            # Scores come back to the CPU, where the sampling generator and the returns live.
            target_q, _ = slot_q_halves(self.target, self.slots, step.target_chunks, turn, rho_device, valid)
            values[t] = soft_value(target_q.cpu(), valid, self.alpha, config.top_k)
            if t == steps:
                break
            online_q, candidates = slot_q_halves(self.online, self.slots, step.chunks, turn, rho_device, valid)
            online_q = online_q.cpu()
            candidates = None if candidates is None else candidates.cpu()
            if random_phase:
                scores = torch.rand(valid.shape, generator=self.generator).masked_fill(~valid, -1.0)
                chosen = scores.argmax(-1)
            else:
                chosen = boltzmann_top_k(online_q.sum(-1), valid, self.alpha, config.top_k, self.generator)
            finished = []
            for row, slot in enumerate(self.slots):
                action = int(chosen[row])
                question, texts = slot.state_texts()
                questions.append(question)
                selected.append(texts)
                actions.append(slot.env.chunks[action])
                positions[t, row] = rho[row, action]
                if candidates is not None:
                    sets.add(slot, candidates[row], rho[row], action)
                _, reward, terminated, truncated, info = slot.env.step(action)
                # The per-fact shaping the env paid at d2713a5 (it moved out of the env since): a valid action
                # that selects a supporting chunk.
                reward = float(reward) + config.per_fact_reward * (action in info["supporting_ids"])
                slot.selected.append(action)
                rewards[t, row], dones[t, row] = float(reward), float(terminated or truncated)
                slot.episode_return += float(reward)
                if terminated or truncated:
                    returns.append(slot.episode_return)
                    successes.append(float(set(info["supporting_ids"]) <= set(info["selected_order"])))
                    finished.append(slot)
            if finished:
                self._start_episodes(finished)
        self.transitions += steps * width
        targets = lambda_returns(rewards, dones, values, config.gamma, config.lam)
        return Batch(questions, selected, actions, positions.reshape(-1), targets.reshape(-1), returns, successes,
                     None if sets is None else sets.done())

    def _candidate_q(self, states: torch.Tensor, action_q: torch.Tensor, sets: CandidateSets) -> torch.Tensor:
        """The final Q halves of each taken action: its base Q plus the stage's correction, scored within the
        candidate set it was taken from (none where the action was outside its set).

        The other candidates' chunk vectors enter as features without gradient (the chunk adapter learns
        through the actions, as in faithful Q-RAG): that keeps the update's cost near the faithful one.
        """
        device = self.online.device
        count = sets.index.shape[1]
        with torch.no_grad():
            chunks = self.online.embed_chunks(sets.texts).view(len(states), count, -1)
        positions = sets.positions.to(device)
        base = _today_q_halves(self.online, states.unsqueeze(1), chunks, positions)
        delta = candidate_delta(self.online, states, chunks, base, positions, sets.index.to(device), sets.valid.to(device))
        column = sets.action_column.to(device)
        picked = delta.gather(1, column.clamp(min=0).view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        return action_q + picked * (column >= 0).unsqueeze(-1)

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the batch: MSE of ``2 Q_h`` toward ``G`` for both halves."""
        states = self.online.embed_states(batch.questions, batch.selected)
        chunks = self.online.embed_chunks(batch.actions)
        q = _today_q_halves(self.online, states, chunks, batch.positions.to(self.online.device))
        if batch.candidates is not None:
            q = self._candidate_q(states, q, batch.candidates)
        return self.regress(q, batch.targets)


class _SetCollector:
    """Gathers each transition's candidate set during a rollout, in the batch's time-major order."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.index: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        self.columns: list[int] = []

    def add(self, slot: Slot, index: torch.Tensor, rho: torch.Tensor, action: int) -> None:
        """One transition: :func:`refine`'s candidate ids of ``slot``'s state (-1 past the available chunks:
        stored as copies of the best one, marked invalid, as :func:`refine` scores them) and the action taken."""
        real = index >= 0
        index = torch.where(real, index, index[0])
        self.texts.extend(slot.env.chunks[i] for i in index.tolist())
        self.index.append(index)
        self.positions.append(rho[index])
        self.valid.append(real)
        hits = ((index == action) & real).nonzero()
        self.columns.append(int(hits[0, 0]) if len(hits) else -1)

    def done(self) -> CandidateSets:
        return CandidateSets(self.texts, torch.stack(self.index), torch.stack(self.positions), torch.stack(self.valid),
                             torch.tensor(self.columns, dtype=torch.long))
