"""Transitions per second of the Q-RAG learner on ids and tensors (float32, and with ``rollout_precision=bfloat16``)
against the per-episode learner it replaced (issue 15, item 4), all in one process, same config, same seed.

"Today's learner" is :mod:`qrag_benchmarks.studies.baseline_learner`, a frozen copy of ``agents/qrag/learner.py``
and its scoring at commit d2713a5 (this study's baseline, not product code). All learners are built with the
same networks, envs and seed; the baseline and the float32 learner play the same episodes with the same Boltzmann
draws, and the script checks that every update's td_loss is equal between those two (a wrong speed-up would show
as a mismatch). The bfloat16 rollout's scores differ in the last bits, so its draws drift apart from the others.

Timing: ``--rounds`` rounds, each timing ``--updates`` updates (rollout + update) of each learner in turn (the
order reverses round by round, so load from other processes hits all alike), after
``--warmup`` untimed updates each. Two clocks: CPU seconds of this process (``time.process_time``; on this
machine other jobs share the 2 cores, so wall time mostly measures their scheduling) and wall seconds.
Reported: medians over rounds of s/update and transitions/s (``num_envs x rollout_steps`` per update); one
torch thread. Configs are the ``cpu/<task>`` presets with ``random_transitions=0`` (the Boltzmann phase the
runs spend nearly all their updates in); the BABILong features are prefetched as ``qrag-train`` does.

    python -m qrag_benchmarks.studies.learner_speed --tasks qa2 qa3 --rounds 5 --updates 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import torch

from qrag_agents.qrag.config import QRAGConfig, preset_config
from qrag_agents.qrag.learner import Learner
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.train import make_train_envs, prefetch_features
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_benchmarks.studies.baseline_learner import Learner as BaselineLearner
from qrag_gym.embedding import shared_embedder

BASELINE, IDS = "baseline (d2713a5)", "ids + tensors"
LEARNERS: dict[str, tuple[type, dict[str, Any]]] = {
    BASELINE: (BaselineLearner, {}),
    IDS: (Learner, {}),
    "ids + tensors, bfloat16 rollout": (Learner, {"rollout_precision": "bfloat16"}),
}
"""Each learner's class and its config changes from the preset (the bfloat16 rollout is ``rollout_precision``)."""


def build(cls: type, config: QRAGConfig, data_dir: str | None) -> Any:
    """A learner of ``cls`` with ``config``'s training envs (features prefetched as ``qrag-train`` does) and
    fresh networks seeded from ``config.seed``."""
    embedder = shared_embedder(config.encoder, config.chunk_max_tokens)
    envs = make_train_envs(config, data_dir)
    prefetch_features(envs[0], embedder)
    torch.manual_seed(config.seed)
    return cls(config, envs, QNetwork(config, embedder), QNetwork(config, embedder))


def timed(learner: Any, updates: int) -> tuple[float, float, list[float]]:
    """CPU and wall seconds per update over ``updates`` updates, and their td_losses."""
    losses = []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(updates):
        losses.append(learner.update(learner.rollout())["losses/td_loss"])
    count = max(updates, 1)  # the warm-up may be 0 updates: its times are not read
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count, losses


def measure(task: str, rounds: int, updates: int, warmup: int, data_dir: str | None) -> dict[str, Any]:
    # Boltzmann phase from the start; faithful Q-RAG: the frozen baseline has no candidate stage.
    base = {"random_transitions": 0, "candidate_stage": False}
    learners = {name: build(cls, preset_config(f"cpu/{task}", {**base, **changes}), data_dir)
                for name, (cls, changes) in LEARNERS.items()}
    losses: dict[str, list[float]] = {name: [] for name in learners}
    for name, learner in learners.items():
        losses[name] += timed(learner, warmup)[2]
    cpu: dict[str, list[float]] = {name: [] for name in learners}
    wall: dict[str, list[float]] = {name: [] for name in learners}
    for round_index in range(rounds):
        order = list(learners) if round_index % 2 == 0 else list(reversed(learners))
        for name in order:
            seconds, wall_seconds, round_losses = timed(learners[name], updates)
            cpu[name].append(seconds)
            wall[name].append(wall_seconds)
            losses[name] += round_losses
        print(f"{task} round {round_index}: " + ", ".join(f"{name} {cpu[name][-1]:.3f} CPU s/update" for name in learners),
              flush=True)
    config = learners[IDS].config
    per_update = config.num_envs * config.rollout_steps
    entry: dict[str, Any] = {"num_envs": config.num_envs, "rollout_steps": config.rollout_steps,
                             "train_num_sentences": config.train_num_sentences, "seed": config.seed,
                             "same_td_loss_every_update": losses[BASELINE] == losses[IDS],
                             "updates_each": len(losses[IDS]), "learners": {}}
    for name in learners:
        cpu_s, wall_s = statistics.median(cpu[name]), statistics.median(wall[name])
        entry["learners"][name] = {"cpu_s_per_update": cpu_s, "wall_s_per_update": wall_s,
                                   "cpu_transitions_per_s": per_update / cpu_s, "wall_transitions_per_s": per_update / wall_s,
                                   "cpu_rounds": cpu[name], "wall_rounds": wall[name]}
    baseline = entry["learners"][BASELINE]
    for figures in entry["learners"].values():
        figures["speedup_cpu"] = baseline["cpu_s_per_update"] / figures["cpu_s_per_update"]
        figures["speedup_wall"] = baseline["wall_s_per_update"] / figures["wall_s_per_update"]
    return entry


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rounds``, ``--updates``, ``--warmup`` and ``--data-dir``, as every learner timing study takes them."""
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=5, help="timed updates per learner per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per learner first")
    parser.add_argument("--data-dir", default=None)


def check_timing_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse rounds or timed updates below 1 and a negative warm-up, naming the argument."""
    for name in ("rounds", "updates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--tasks", nargs="+", default=["qa2", "qa3"])
    add_timing_arguments(parser)
    args = parser.parse_args()
    claim_outputs(parser, args, "learner_speed.json", "learner_speed.md")
    check_timing_arguments(parser, args)
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    results: dict[str, Any] = {"rounds": args.rounds, "updates_per_round": args.updates, "warmup": args.warmup,
                               "threads": 1, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                               "load_average_at_start": os.getloadavg(), "tasks": {}}
    rows = []
    for task in args.tasks:
        entry = results["tasks"][task] = measure(task, args.rounds, args.updates, args.warmup, args.data_dir)
        for name, figures in entry["learners"].items():
            rows.append([task, name, f"{figures['cpu_s_per_update']:.3f}", f"{figures['cpu_transitions_per_s']:,.0f}",
                         f"**{figures['speedup_cpu']:.2f}x**", f"{figures['wall_s_per_update']:.3f}",
                         f"{figures['wall_transitions_per_s']:,.0f}", f"{figures['speedup_wall']:.2f}x"])
    results["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "learner_speed.json", results)
    first = results["tasks"][args.tasks[0]]
    same = all(entry["same_td_loss_every_update"] for entry in results["tasks"].values())
    text = (
        "# Q-RAG learner speed: ids + preallocated tensors vs the per-episode learner (issue 15, item 4)\n\n"
        f"One process, one torch thread, `cpu/<task>` presets with random_transitions=0 ({first['num_envs']} episodes x "
        f"{first['rollout_steps']} steps per update, {first['train_num_sentences']} sentences per episode), seed {first['seed']}. "
        f"Medians over {args.rounds} interleaved rounds of {args.updates} updates each, after {args.warmup} untimed "
        "updates. CPU = `time.process_time` of the process (other jobs share this machine's 2 cores: load average "
        f"{results['load_average_at_start'][0]:.1f} at the start, {results['load_average_at_end'][0]:.1f} at the end), "
        "wall = `time.perf_counter`.\n\n"
        + markdown_table(["task", "learner", "CPU s/update", "transitions/CPU s", "CPU speed-up", "wall s/update",
                          "transitions/wall s", "wall speed-up"], rows)
        + f"\nSame td_loss at every update in the baseline and the float32 ids + tensors learner (same episodes and "
        f"draws): **{same}** ({first['updates_each']} updates each per task). The bfloat16 rollout scores new "
        "episodes' chunks at lower precision, so its draws differ; its learning curves against float32 are in "
        "`rollout_precision.md`.\n\n"
        "Baseline: `benchmarks/studies/baseline_learner.py`, the learner and scoring of commit d2713a5, frozen.\n\n"
        "    python -m qrag_benchmarks.studies.learner_speed " + " ".join(
            ["--tasks", *args.tasks, "--rounds", str(args.rounds), "--updates", str(args.updates), "--warmup", str(args.warmup)])
        + "\n"
    )
    write_atomic(args.out / "learner_speed.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
