"""``qrag-train``: train a Q-RAG retriever on BABILong, with validation, TensorBoard and resumable checkpoints.

    qrag-train --task qa2 --out runs/qa2 --max-minutes 30

writes ``runs/qa2/model`` (last), ``runs/qa2/best`` (best validation success@k), TensorBoard event
files, and ``trainer_state.pt`` every ``checkpoint_every`` updates; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agents.qrag.checkpoint import load_trainer, save_model, save_trainer
from agents.qrag.config import QRAGConfig, cpu_config
from agents.qrag.inference import evaluate
from agents.qrag.learner import Learner
from agents.qrag.networks import QNetwork
from qrag_gym.embedding import shared_embedder
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.envs.niah import NiahEnv
from qrag_gym.envs.retrieval import RetrievalEnv


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, values parsed as JSON when possible (``lr=1e-4``, ``num_envs=32``)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


NIAH_PREFIX = "niah:"


def make_env(config: QRAGConfig, split: str, num_sentences: int, data_dir: str | None) -> RetrievalEnv:
    """The authors' settings: BabiLong with shaped reward, penalize_extra_steps and never_terminate;
    NIAH (``task="niah:<variant>"``, documents of ``train_context_tokens``) ending on completion (§6.2)."""
    embedder = None if config.finetune_encoder else config.encoder
    shaping = config.per_fact_reward if split == "train" else 0.0
    if config.task.startswith(NIAH_PREFIX):
        return NiahEnv(variant=config.task[len(NIAH_PREFIX):], context_tokens=config.train_context_tokens, split=split,
                       max_steps=config.max_steps, data_dir=data_dir, embedder=embedder, per_fact_reward=shaping)
    return BabilongEnv(task=config.task, num_sentences=num_sentences, split=split, max_steps=config.max_steps,
                       never_terminate=True, data_dir=data_dir, embedder=embedder, per_fact_reward=shaping)


def prefetch_features(env: BabilongEnv) -> None:
    """Encode every sentence an env can draw (its books and stories) in one batched pass.

    Misses are then encoded together instead of one forward pass per reset, and the frozen features
    stay in memory for the whole run.
    """
    embedder = env.embedder
    source = env._source
    embedder.encode(list(source.noise.sentences) + sorted({f for s in source.samples for f in s.facts}))


def validate(learner: Learner, env: RetrievalEnv, writer: SummaryWriter, out: Path, best: float) -> tuple[dict[str, float], float]:
    """Greedy validation episodes; the model with the best success@k so far is kept in ``out/best``."""
    metrics = evaluate(learner.online, env, learner.config.eval_episodes, seed=10_000)
    for key, value in metrics.items():
        writer.add_scalar(f"eval/{key}", value, learner.transitions)
    tqdm.write(f"update {learner.updates}: validation {json.dumps({k: round(v, 3) for k, v in metrics.items()})}")
    if metrics["success_at_k"] > best:
        best = metrics["success_at_k"]
        save_model(learner.online, out / "best")
    return metrics, best


def train(config: QRAGConfig, out: Path, max_minutes: float | None = None, resume: bool = False,
          data_dir: str | None = None, show_progress: bool = True) -> dict[str, float]:
    """Train until ``total_updates`` or ``max_minutes``; returns the last validation metrics."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    embedder = None if config.finetune_encoder else shared_embedder(config.encoder)
    online = QNetwork(config, embedder).to(config.device)
    target = QNetwork(config, embedder).to(config.device)
    envs = [make_env(config, "train", config.train_num_sentences, data_dir) for _ in range(config.num_envs)]
    validation = make_env(config, "validation", config.eval_num_sentences, data_dir)
    if embedder is not None and isinstance(validation, BabilongEnv):
        prefetch_features(envs[0])
        prefetch_features(validation)
    learner = Learner(config, envs, online, target)
    best = -1.0
    state = load_trainer(out) if resume else None
    if state is not None:
        online.load_state_dict(state["online"])
        target.load_state_dict(state["target"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        learner.updates, learner.transitions, best = int(state["updates"]), int(state["transitions"]), float(state["best"])
    (out / "config.json").write_text(config.to_json())
    writer = SummaryWriter(str(out / "tensorboard"))
    start, first_transitions, returns, successes, metrics = time.time(), learner.transitions, [], [], {}
    progress = tqdm(total=config.total_updates, initial=learner.updates, desc=f"q-rag {config.task}", disable=not show_progress)
    while learner.updates < config.total_updates:
        if max_minutes is not None and time.time() - start > 60 * max_minutes:
            break
        batch = learner.rollout()
        logs = learner.update(batch)
        returns = (returns + batch.episode_returns)[-500:]
        successes = (successes + batch.episode_success)[-500:]
        logs["rollout/ep_rew_mean"] = float(np.mean(returns)) if returns else 0.0
        logs["rollout/success_rate"] = float(np.mean(successes)) if successes else 0.0
        logs["charts/SPS"] = (learner.transitions - first_transitions) / max(time.time() - start, 1e-9)
        for key, value in logs.items():
            writer.add_scalar(key, value, learner.transitions)
        progress.update(1)
        progress.set_postfix(ret=f"{logs['rollout/ep_rew_mean']:.3f}", succ=f"{logs['rollout/success_rate']:.2f}")
        last = learner.updates >= config.total_updates
        if learner.updates % config.eval_every == 0 or last:
            metrics, best = validate(learner, validation, writer, out, best)
        if learner.updates % config.checkpoint_every == 0 or last:
            save_model(online, out / "model")
            save_trainer(out, {"online": online.state_dict(), "target": target.state_dict(),
                               "optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
                               "updates": learner.updates, "transitions": learner.transitions, "best": best})
    progress.close()
    if learner.updates % config.eval_every and learner.updates < config.total_updates:  # stopped by the clock
        metrics, best = validate(learner, validation, writer, out, best)
    save_model(online, out / "model")
    writer.add_scalar("charts/train_minutes", (time.time() - start) / 60, learner.transitions)
    writer.close()
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="qrag-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="qa1", help="qa1..qa5, or niah:<variant> (RULER, trained at 4K tokens)")
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                        help="cpu: frozen MiniLM + adapters (default); paper: full fine-tuning of contriever (GPU)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--updates", type=int, help="total optimiser updates (overrides the preset)")
    parser.add_argument("--max-minutes", type=float, help="stop after this much wall time")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/trainer_state.pt")
    parser.add_argument("--data-dir", help="folder with babi/ and noise/ (else $QRAG_DATA_DIR)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"task": args.task, **parse_overrides(args.set)}
    if args.updates:
        overrides["total_updates"] = args.updates
    config = cpu_config(**overrides) if args.preset == "cpu" else QRAGConfig.from_dict(overrides)
    metrics = train(config, args.out, args.max_minutes, args.resume, args.data_dir)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
