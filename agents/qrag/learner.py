"""The Q-RAG learner (the paper's Algorithm 1): on-policy soft Q-learning with lambda-returns.

Read it top to bottom: :func:`lambda_returns` is the paper's Algorithm 1; :class:`Learner` collects
``rollout_steps`` transitions from each of ``num_envs`` episodes with a Boltzmann policy over the
top-k chunks, bootstraps with the soft value of EMA target networks, and regresses both Q halves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from qrag_agents.qrag.candidates import candidate_delta, refine
from qrag_agents.qrag.config import QRAGConfig
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.rotary import relative_positions
from qrag_gym.envs.retrieval import RetrievalEnv


def lambda_returns(rewards: torch.Tensor, dones: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Targets ``G_t`` for ``T`` transitions (rows) of ``B`` episodes (columns), Algorithm 1 of the paper.

    ``values`` has ``T + 1`` rows: ``values[t]`` is the soft target value of the state in which
    transition ``t`` was taken, and ``values[T]`` that of the state after the last transition.
    ``G_{T-1} = r_{T-1} + g m_{T-1} v_T``; ``G_t = r_t + g m_t ((1 - lam) v_{t+1} + lam G_{t+1})``.
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
    candidates: CandidateSets | None = None


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
    base = network.q_halves(states.unsqueeze(1), chunks, turn=turn)
    return refine(network, states, chunks, base, positions, valid.to(base.device))


class Learner:
    """Owns the online and target networks, the optimiser and the running episodes."""

    def __init__(self, config: QRAGConfig, envs: list[RetrievalEnv], online: QNetwork, target: QNetwork) -> None:
        self.config, self.online, self.target = config, online, target
        self.target.load_state_dict(online.state_dict())
        self.target.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(online.parameters(), lr=config.lr, betas=config.adam_betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.transitions = 0
        self.updates = 0
        self.slots = [Slot(env) for env in envs]
        self._start_episodes(self.slots, [config.seed + index for index in range(len(envs))])

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
            turn = self.online.rotation(rho_device)
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
        base = self.online.q_halves(states.unsqueeze(1), chunks, positions)
        delta = candidate_delta(self.online, states, chunks, base, positions, sets.index.to(device), sets.valid.to(device))
        column = sets.action_column.to(device)
        picked = delta.gather(1, column.clamp(min=0).view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        return action_q + picked * (column >= 0).unsqueeze(-1)

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the batch: MSE of ``2 Q_h`` toward ``G`` for both halves."""
        states = self.online.embed_states(batch.questions, batch.selected)
        chunks = self.online.embed_chunks(batch.actions)
        q = self.online.q_halves(states, chunks, batch.positions.to(self.online.device))
        if batch.candidates is not None:
            q = self._candidate_q(states, q, batch.candidates)
        targets = batch.targets.to(q.device)
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
