"""``qrag-train``: train a Q-RAG retriever, with validation, TensorBoard and resumable checkpoints.

The command line is in :mod:`qrag_agents.qrag.cli`. A run writes ``runs/qa2/model`` (last), ``runs/qa2/best`` (best validation success@k), TensorBoard event
files, and ``trainer_state.pt`` every ``checkpoint_every`` updates; ``--resume`` continues from it.
A run folder that already holds files is refused unless ``--resume`` or ``--overwrite`` says what to do
with it: a fresh run's first validation would otherwise replace the models already there.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.checkpoint import TRAINER, load_stage_base, load_trainer, save_model, save_trainer, verify_trainer
from qrag_agents.qrag.config import NIAH_ALL, NIAH_PREFIX, ConfigError, QRAGConfig, preset_changes, preset_config
from qrag_agents.qrag.learner import Learner
from qrag_agents.qrag.networks import QNetwork
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.embedding import TextEmbedder, shared_embedder
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.envs.hotpotqa import HotpotQAEnv
from qrag_gym.envs.niah import NiahEnv
from qrag_gym.envs.retrieval import RetrievalEnv
from qrag_gym.features import corpus_features
from qrag_gym.evaluation import MEAN_METRICS, make_eval_env, run_episodes, summarize
from qrag_gym.tasks import expand, short_name, task_family

VALIDATION_SEED = 10_000
"""Reset seeds of validation episodes start here (the benchmarks' cells start at 0)."""


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


def make_env(config: QRAGConfig, task: str, num_sentences: int, data_dir: str | None,
             full_episodes: bool = True) -> RetrievalEnv:
    """One training env of ``task`` with the authors' settings (their environment configs).

    BABILong: shaped reward, penalize_extra_steps and never_terminate (unless ``full_episodes`` is False:
    see ``config.full_episode_share``); stories from ``config.train_source``. NIAH (``niah:<variant>``,
    documents of ``train_context_tokens``): episodes end on completion. HotpotQA: never_terminate. The
    training-only ``per_fact_reward`` is not an env setting: the learner adds it to its rollouts.
    """
    embedder = config.env_embedder
    family = task_family(task)
    if family == "niah":
        return NiahEnv(variant=short_name(task), context_tokens=config.train_context_tokens, split="train",
                       max_steps=config.max_steps, data_dir=data_dir, embedder=embedder)
    if family == "hotpotqa":
        return HotpotQAEnv(split="train", data_dir=data_dir, max_steps=config.max_steps, never_terminate=True,
                           embedder=embedder)
    return BabilongEnv(task=task, num_sentences=num_sentences, split="train", max_steps=config.max_steps,
                       never_terminate=full_episodes, data_dir=data_dir, source=config.train_source, embedder=embedder)


NIAH_TRAIN_VARIANTS = tuple(name for name, variant in NIAH_VARIANTS.items() if variant.haystack != "needle")
"""``niah:all`` trains on the six variants whose haystack text repeats across episodes (book or fixed
sentences, encoded once and cached). multikey_2 and multikey_3 fill the haystack with fresh random
needles, a few hundred new sentences to encode per 4K episode: on a CPU that made an update 10x
slower, so they are validation-only (unseen variants)."""


def make_train_envs(config: QRAGConfig, data_dir: str | None) -> list[RetrievalEnv]:
    """``config.num_envs`` training envs of the configured task; ``niah:all`` deals
    :data:`NIAH_TRAIN_VARIANTS` round-robin. The first ``full_episode_share`` of them run full episodes."""
    tasks = [NIAH_PREFIX + variant for variant in NIAH_TRAIN_VARIANTS] if config.task == NIAH_ALL else [config.task]
    count, full = config.num_envs, round(config.full_episode_share * config.num_envs)
    return [make_env(config, tasks[index % len(tasks)], config.train_num_sentences, data_dir, full_episodes=index < full)
            for index in range(count)]


def make_validation_envs(config: QRAGConfig, data_dir: str | None) -> list[tuple[str, gym.Env]]:
    """(task, env) pairs validation runs on: the held-out split of the configured task (all eight
    variants for ``niah:all``), through the same evaluation env every benchmark uses (run to T)."""
    envs = []
    for task in expand(config.task):
        family = task_family(task)
        length = {"num_sentences": config.eval_num_sentences} if family == "babilong" else \
            {"tokens": config.train_context_tokens} if family == "niah" else {}
        envs.append((task, make_eval_env(task, split="validation", max_steps=config.max_steps, data_dir=data_dir,
                                         embedder=config.env_embedder, **length)))
    return envs


def prefetch_features(env: BabilongEnv, embedder: TextEmbedder) -> None:
    """Fill ``embedder``'s feature tables of every sentence ``env`` can draw (its books and stories) in one
    batched pass: the learner's embedder, which may differ from the env's (another ``chunk_max_tokens``).

    Misses are then encoded together instead of one forward pass per reset, and every later episode's
    features are gathered by chunk id (:mod:`qrag_gym.features`).
    """
    corpus_features(env.corpus, embedder).fill()


def validate(learner: Learner, envs: list[tuple[str, gym.Env]], writer: SummaryWriter, out: Path,
             best: float) -> tuple[dict[str, float], float]:
    """Greedy validation episodes through the evaluation runner, shared evenly between ``envs`` (one per
    NIAH variant for ``niah:all``); the model with the best mean success@k so far is kept in ``out/best``."""
    episodes = max(1, learner.config.eval_episodes // len(envs))
    agent = QRAGAgent(network=learner.online)
    seeds = range(VALIDATION_SEED, VALIDATION_SEED + episodes)
    records = [record for task, env in envs for record in run_episodes(agent, env, seeds, task)]
    metrics = {key: value for key, value in summarize(records).items() if key in MEAN_METRICS}
    for key, value in metrics.items():
        writer.add_scalar(f"eval/{key}", value, learner.transitions)
    tqdm.write(f"update {learner.updates}: validation {json.dumps({k: round(v, 3) for k, v in metrics.items()})}")
    if metrics["success_at_k"] > best:
        best = metrics["success_at_k"]
        save_model(learner.online, out / "best")
    return metrics, best


def save_checkpoint(learner: Learner, out: Path, best: float) -> None:
    """The last model and everything ``--resume`` needs: networks, optimiser, schedule, counters."""
    save_model(learner.online, out / "model")
    save_trainer(out, {"online": learner.online.state_dict(), "target": learner.target.state_dict(),
                       "optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
                       "updates": learner.updates, "transitions": learner.transitions, "best": best})


def train(config: QRAGConfig, out: Path, max_minutes: float | None = None, resume: bool = False,
          data_dir: str | None = None, show_progress: bool = True) -> dict[str, float]:
    """Train until ``total_updates`` or ``max_minutes``; returns the last validation metrics."""
    if resume and not (out / TRAINER).is_file():  # resuming nothing would start afresh and overwrite best/, model/
        raise FileNotFoundError(f"resume=True but {out / TRAINER} does not exist; nothing to resume")
    if resume:
        verify_trainer(out)  # a damaged state fails now, not after the envs are built
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    embedder = None if config.finetune_encoder else shared_embedder(config.encoder, config.chunk_max_tokens)
    online = QNetwork(config, embedder).to(config.device)
    target = QNetwork(config, embedder).to(config.device)
    if config.stage_base:
        load_stage_base(online, config.stage_base)  # before the learner copies online into target
    envs = make_train_envs(config, data_dir)
    validation = make_validation_envs(config, data_dir)
    if embedder is not None and isinstance(envs[0], BabilongEnv):
        prefetch_features(envs[0], embedder)
        prefetch_features(validation[0][1].unwrapped, embedder)
    learner = Learner(config, envs, online, target)
    best = -1.0
    state = load_trainer(out) if resume else None
    if state is not None:
        if config.stage_base:  # the learner adapted its chunks with this base: the run must have trained on it
            changed = [name for name, value in online.state_dict().items()
                       if not name.startswith("candidate_stage.") and not torch.equal(state["online"][name], value)]
            if changed:
                raise ConfigError(f"--resume: stage_base={config.stage_base!r} is not the base this run was trained on "
                                  f"({len(changed)} base tensors differ, e.g. {changed[0]}); was the folder replaced? "
                                  "Resume with the original base or start a new run")
        online.load_state_dict(state["online"])
        target.load_state_dict(state["target"])
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        learner.updates, learner.transitions, best = int(state["updates"]), int(state["transitions"]), float(state["best"])
    (out / "config.json").write_text(config.to_json())
    changes = preset_changes(config)
    tqdm.write(f"preset {config.preset or '(none: a hand-built config)'}"
               + (f", changed: {json.dumps(changes)}" if changes else "") + f"; full config in {out / 'config.json'}")
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
            save_checkpoint(learner, out, best)
    progress.close()
    if learner.updates < config.total_updates:  # stopped by the clock: validate and keep what was done
        if learner.updates % config.eval_every:
            metrics, best = validate(learner, validation, writer, out, best)
        save_checkpoint(learner, out, best)
    writer.add_scalar("charts/train_minutes", (time.time() - start) / 60, learner.transitions)
    writer.close()
    return metrics


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Why ``out`` must not be trained into as asked, or None when it may.

    A non-empty folder needs ``resume`` (which needs a trainer state there) or ``overwrite``; a fresh run
    in it would replace ``best/``, ``model/`` and the trainer state at its first validation.
    """
    if resume and overwrite:
        return "--resume and --overwrite exclude each other"
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a run folder"
    if resume:
        if not (out / TRAINER).is_file():
            return f"--resume: {out / TRAINER} does not exist, so there is nothing to resume; drop --resume to start a new run"
        return None
    if not overwrite and out.is_dir() and any(out.iterdir()):
        return (f"--out {out} already holds files (a previous run?); pass --resume to continue it, --overwrite to "
                "start afresh and replace its models, or choose an empty folder")
    return None


def run_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What ``qrag-train`` does once its arguments are parsed (:func:`qrag_agents.qrag.cli.train_main`)."""
    problem = check_run_folder(args.out, args.resume, args.overwrite)
    if problem:
        parser.error(problem)
    try:
        config = preset_config(f"{args.preset}/{args.task}", parse_overrides(args.set), args.updates)
        if args.resume:
            verify_trainer(args.out)  # a damaged state fails now, not after the envs are built
    except (ConfigError, ValueError) as err:
        parser.error(f"--updates {args.updates}: {err}" if args.updates is not None and "total_updates" in str(err)
                     else str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        metrics = train(config, args.out, args.max_minutes, args.resume, args.data_dir)
    except ConfigError as err:  # e.g. a stage_base that is not a faithful model, or not the one a resumed run used
        parser.error(str(err))
    print(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> None:
    """``qrag-train`` (the parser lives in :mod:`qrag_agents.qrag.cli`, so ``--help`` needs no torch)."""
    from qrag_agents.qrag.cli import train_main

    train_main(argv)


if __name__ == "__main__":
    main()
