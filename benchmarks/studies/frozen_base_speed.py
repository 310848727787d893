"""Updates per second of a candidate stage trained on a frozen base (``stage_base``), with the learner's frozen-base
path (E_a adapted once per chunk id, E_s and the base Q computed once for online and target) against the general
path (every new episode's chunks adapted by both networks, the base scored twice), in one process.

Both learners start from the same shipped faithful model as their base, the same fresh stage and the same seed, and
play the same episodes; the frozen-base path adapts a chunk in another batch than the general path does, so their
scores may differ by float rounding. The script reports how many of the updates drew the same candidate sets and the
largest relative difference of their td_loss.

Timing as in :mod:`qrag_benchmarks.studies.learner_speed`: ``--rounds`` interleaved rounds of ``--updates`` updates
per learner after ``--warmup`` untimed ones, medians of CPU seconds (``time.process_time``) and wall seconds per
update, one torch thread, the ``cpu/<task>`` preset with the stage settings of the shipped ``<task>-stage`` model
(read from its ``config.json``) and ``random_transitions=0``.

    python -m qrag_benchmarks.studies.frozen_base_speed --task qa3 --rounds 5 --updates 5 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from qrag_agents.qrag.checkpoint import load_stage_base
from qrag_agents.qrag.config import preset_config
from qrag_agents.qrag.learner import Learner
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.pretrained import pretrained_folder
from qrag_agents.qrag.train import make_train_envs, prefetch_features
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json
from qrag_benchmarks.studies.learner_speed import add_timing_arguments, check_timing_arguments
from qrag_gym.embedding import shared_embedder

STAGE_KEYS = ("candidate_count", "candidate_hidden", "candidate_heads", "candidate_layers", "candidate_context",
              "candidate_question", "candidate_floor", "candidate_bound")
"""The shipped stage's settings this study copies (everything else is the preset's)."""

PATHS = {"frozen base (ids)": True, "general": False}


def build(task: str, share: bool, data_dir: str | None) -> Learner:
    """A stage learner on the shipped faithful ``task`` model, with the shipped ``<task>-stage``'s stage settings."""
    shipped = json.loads((pretrained_folder(f"{task}-stage") / "config.json").read_text())
    base = str(pretrained_folder(task))
    config = preset_config(f"cpu/{task}", {"random_transitions": 0, "candidate_stage": True, "stage_base": base,
                                           **{key: shipped[key] for key in STAGE_KEYS}})
    embedder = shared_embedder(config.encoder, config.chunk_max_tokens)
    envs = make_train_envs(config, data_dir)
    prefetch_features(envs[0], embedder)
    torch.manual_seed(config.seed)
    online, target = QNetwork(config, embedder), QNetwork(config, embedder)
    load_stage_base(online, base)
    return Learner(config, envs, online, target, share_frozen_base=share)


def timed(learner: Learner, updates: int) -> tuple[float, float, list[float], list[torch.Tensor]]:
    """CPU and wall seconds per update over ``updates`` updates, their td_losses and candidate sets."""
    losses, sets = [], []
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(updates):
        batch = learner.rollout()
        losses.append(learner.update(batch)["losses/td_loss"])
        sets.append(batch.candidates.index)
    count = max(updates, 1)
    return (time.process_time() - cpu) / count, (time.perf_counter() - wall) / count, losses, sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--task", default="qa3")
    add_timing_arguments(parser)
    args = parser.parse_args()
    claim_outputs(parser, args, f"frozen_base_speed_{args.task}.json", f"frozen_base_speed_{args.task}.md")
    check_timing_arguments(parser, args)
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    learners = {name: build(args.task, share, args.data_dir) for name, share in PATHS.items()}
    losses: dict[str, list[float]] = {name: [] for name in learners}
    sets: dict[str, list[torch.Tensor]] = {name: [] for name in learners}
    cpu: dict[str, list[float]] = {name: [] for name in learners}
    wall: dict[str, list[float]] = {name: [] for name in learners}
    for name, learner in learners.items():
        _, _, round_losses, round_sets = timed(learner, args.warmup)
        losses[name] += round_losses
        sets[name] += round_sets
    for round_index in range(args.rounds):
        for name in (list(learners) if round_index % 2 == 0 else list(reversed(learners))):
            cpu_s, wall_s, round_losses, round_sets = timed(learners[name], args.updates)
            cpu[name].append(cpu_s)
            wall[name].append(wall_s)
            losses[name] += round_losses
            sets[name] += round_sets
        print(f"round {round_index}: " + ", ".join(f"{name} {cpu[name][-1]:.3f} CPU s/update" for name in learners), flush=True)
    fast, general = list(learners)
    same_sets = sum(torch.equal(a, b) for a, b in zip(sets[fast], sets[general]))
    loss_gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses[fast], losses[general]))
    config = learners[fast].config
    per_update = config.num_envs * config.rollout_steps
    results: dict[str, Any] = {"task": args.task, "rounds": args.rounds, "updates_per_round": args.updates,
                               "warmup": args.warmup, "threads": 1, "torch": torch.__version__,
                               "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
                               "updates_each": len(losses[fast]), "same_candidate_sets": same_sets,
                               "largest_relative_td_loss_difference": loss_gap, "paths": {}}
    rows = []
    for name in learners:
        cpu_s, wall_s = statistics.median(cpu[name]), statistics.median(wall[name])
        results["paths"][name] = {"cpu_s_per_update": cpu_s, "wall_s_per_update": wall_s, "cpu_rounds": cpu[name],
                                  "wall_rounds": wall[name], "speedup_cpu": statistics.median(cpu[general]) / cpu_s}
        rows.append([name, f"{cpu_s:.3f}", f"{per_update / cpu_s:,.0f}", f"**{results['paths'][name]['speedup_cpu']:.2f}x**",
                     f"{wall_s:.3f}"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"frozen_base_speed_{args.task}.json", results)
    text = (
        f"# A stage on a frozen base: the learner's frozen-base path against the general path ({args.task})\n\n"
        f"One process, one torch thread, `cpu/{args.task}` with the shipped `{args.task}-stage`'s stage settings on the "
        f"shipped faithful `{args.task}` as base, random_transitions=0, seed {config.seed}. Medians over {args.rounds} "
        f"interleaved rounds of {args.updates} updates each, after {args.warmup} untimed updates. CPU = "
        f"`time.process_time` (load average {load_start[0]:.1f} at the start, {results['load_average_at_end'][0]:.1f} "
        "at the end), wall = `time.perf_counter`.\n\n"
        + markdown_table(["path", "CPU s/update", "transitions/CPU s", "CPU speed-up", "wall s/update"], rows)
        + f"\nSame candidate sets in {same_sets} of {len(losses[fast])} updates; "
        + ("the same td_loss at every update, bit for bit.\n\n" if loss_gap == 0 else
           f"largest relative td_loss difference {loss_gap:.1e} (float rounding: the frozen-base path adapts each "
           "chunk in another batch).\n\n")
        + f"    python -m qrag_benchmarks.studies.frozen_base_speed --task {args.task} --rounds {args.rounds} "
        f"--updates {args.updates} --warmup {args.warmup}\n"
    )
    write_atomic(args.out / f"frozen_base_speed_{args.task}.md", text.encode())
    print(text)


if __name__ == "__main__":
    main()
