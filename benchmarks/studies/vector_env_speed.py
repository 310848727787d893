"""Steps per second of the batched vector env against Gymnasium's SyncVectorEnv, N episodes in one process.

Both play the same episodes (same seeds, same actions: a random chunk from each slot's mask, drawn by one
seeded rng on the batched mask), which the script checks by comparing every reward and ending. Two
figures per env, configurations interleaved round by round so that load from other processes hits them
alike (medians reported), timed in CPU seconds of this process (:data:`clock`):

- *loop*: ``--steps`` batched steps with next-step autoreset (what a learner's rollout sees);
- *step only*: the steps of ``--episodes`` episodes per slot, resets untimed, no episode ends early
  (``never_terminate``);

and, once per round, *assembly*: ms per unseeded ``reset()`` of one single env that has already seen the
questions (BABILong's haystack assembly, the code both vector envs run when a slot autoresets), from which
the share of each loop's time spent assembling episodes follows (autoresets per slot step x assembly time x
slot steps per second). That share is a lower bound: in the loop a slot also meets questions new to it,
whose facts' tokens are counted on first sight.

    python -m qrag_benchmarks.studies.vector_env_speed --num-envs 4 16 64 --task qa2 --num-sentences 100 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np

import qrag_gym  # noqa: F401  (registers the envs)
from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json

MODES = ("vector_entry_point", "sync")

clock = time.process_time
"""CPU seconds of this process: on a machine whose cores other jobs share (a load average several times the
core count here), wall-clock time mostly measures their scheduling. Everything timed is single-threaded."""


def make(mode: str, num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    return gym.make_vec("QRAG-Babilong-v0", num_envs=num_envs, vectorization_mode=mode, **kwargs)


def random_valid(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """One random selectable chunk per slot (a slot about to autoreset ignores its action)."""
    return np.argmax(masks * rng.random(masks.shape), axis=1)


def loop(envs: gym.vector.VectorEnv, steps: int, seed: int) -> tuple[float, list[Any]]:
    """Seconds for ``steps`` batched steps with autoreset, and every reward and ending (to compare the envs)."""
    obs, _ = envs.reset(seed=seed)
    rng, trace = np.random.default_rng(seed), []
    start = clock()
    for _ in range(steps):
        obs, rewards, terminated, truncated, _ = envs.step(random_valid(rng, obs["action_mask"]))
        trace.append((rewards.tolist(), terminated.tolist(), truncated.tolist()))
    return clock() - start, trace


def steps_only(envs: gym.vector.VectorEnv, max_steps: int, seed: int, episodes: int) -> float:
    """Seconds of the ``max_steps - 1`` steps after each of ``episodes`` resets (untimed; no episode ends on
    the way), summed."""
    rng, total = np.random.default_rng(seed), 0.0
    for episode in range(episodes):
        obs, _ = envs.reset(seed=seed + episode * envs.num_envs)
        start = clock()
        for _ in range(max_steps - 1):
            obs, *_ = envs.step(random_valid(rng, obs["action_mask"]))
        total += clock() - start
    return total


def assembly_seconds(env: gym.Env, resets: int) -> float:
    """Seconds per unseeded reset of a single env (episode assembly), after the env has seen its questions."""
    start = clock()
    for _ in range(resets):
        env.reset()
    return (clock() - start) / resets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, STUDY_RESULTS)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--task", default="qa2")
    parser.add_argument("--num-sentences", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="batched steps per loop measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=20, help="episodes per slot per step-only measurement")
    parser.add_argument("--resets", type=int, default=500, help="single-env resets per assembly measurement")
    args = parser.parse_args()
    claim_outputs(parser, args, "vector_env_speed.json", "vector_env_speed.md")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # fact token counts on one thread too, so CPU time is the cost
    settings = {"task": args.task, "num_sentences": args.num_sentences, "split": "train", "source": "real"}
    single = gym.make("QRAG-Babilong-v0", **settings).unwrapped
    max_steps = single.max_steps
    single.reset(seed=0)
    assembly_seconds(single, args.resets)  # warm-up: token counts of the facts it meets are computed once
    assembly = []
    results: dict[str, Any] = {}
    rows = []
    for n in args.num_envs:
        envs = {mode: make(mode, n, **settings) for mode in MODES}
        quiet = {mode: make(mode, n, never_terminate=True, **settings) for mode in MODES}
        times: dict[str, dict[str, list[float]]] = {mode: {"loop": [], "step": []} for mode in MODES}
        for mode in MODES:  # warm-up: the first reset loads the stories and books (shared per process)
            loop(envs[mode], 10, seed=0)
        for round_index in range(args.rounds):
            traces = {}
            for mode in MODES:
                seconds, traces[mode] = loop(envs[mode], args.steps, seed=1000 + round_index)
                times[mode]["loop"].append(seconds)
                times[mode]["step"].append(steps_only(quiet[mode], max_steps, 10_000 * (round_index + 1), args.episodes))
            assembly.append(assembly_seconds(single, args.resets))
            if traces["vector_entry_point"] != traces["sync"]:
                raise AssertionError(f"N={n} round {round_index}: the two envs played different episodes")
            print(f"N={n} round {round_index}: " + ", ".join(
                f"{mode} loop {n * args.steps / times[mode]['loop'][-1]:,.0f} steps/s" for mode in MODES), flush=True)
        ends = sum(sum(te) + sum(tr) for _, te, tr in traces["sync"])
        entry: dict[str, Any] = {"resets_per_slot_step": ends / (n * args.steps)}
        assembly_s = statistics.median(assembly)
        for mode in MODES:
            loop_s, step_s = (statistics.median(times[mode][key]) for key in ("loop", "step"))
            rate = n * args.steps / loop_s
            entry[mode] = {"loop_steps_per_s": rate, "step_only_steps_per_s": args.episodes * n * (max_steps - 1) / step_s,
                           "assembly_share_of_loop": entry["resets_per_slot_step"] * assembly_s * rate,
                           "seconds": times[mode]}
        vec, sync = entry["vector_entry_point"], entry["sync"]
        results[str(n)] = entry
        rows.append([n, f"{vec['loop_steps_per_s']:,.0f}", f"{sync['loop_steps_per_s']:,.0f}",
                     f"{vec['loop_steps_per_s'] / sync['loop_steps_per_s']:.2f}x",
                     f"{vec['step_only_steps_per_s']:,.0f}", f"{sync['step_only_steps_per_s']:,.0f}",
                     f"{vec['step_only_steps_per_s'] / sync['step_only_steps_per_s']:.2f}x",
                     f"{vec['assembly_share_of_loop']:.0%} / {sync['assembly_share_of_loop']:.0%}"])
        for group in (envs, quiet):
            for env in group.values():
                env.close()
    meta = {**settings, "max_steps": max_steps, "episodes": args.episodes, "assembly_ms_per_episode": 1000 * statistics.median(assembly),
            "assembly_seconds": assembly, "resets": args.resets, "steps": args.steps, "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "gymnasium": gym.__version__, "load_average": os.getloadavg()}
    write_json(args.out / "vector_env_speed.json", {"meta": meta, "num_envs": results})
    text = (f"# Vector env speed: `vector_entry_point` vs `sync`, {args.task}, {args.num_sentences} sentences, "
            f"one process\n\nMedian of {args.rounds} interleaved rounds, in CPU seconds of the process (load average "
            f"{meta['load_average'][0]:.1f} on {meta['cpu_count']} cores shared with other jobs: wall-clock rates would "
            f"mostly measure them). Both envs played the same episodes (every reward and ending compared).\n\n"
            + markdown_table(["N", f"loop steps/s, vector ({args.steps} steps, autoreset)", "loop steps/s, sync",
                              "loop ratio", f"step-only steps/s, vector ({args.episodes} x {max_steps - 1} steps)", "step-only, sync",
                              "step-only ratio", "loop time assembling episodes, vector / sync"], rows)
            + "\nOne step in *loop* is N slot steps; "
            + ", ".join(f"at N={n} {entry['resets_per_slot_step']:.3f}" for n, entry in results.items())
            + " of the slot steps were autoresets (a new episode assembled), and one assembly (an unseeded `reset()` of "
            f"a single env, median of {args.rounds} x {args.resets}) took {meta['assembly_ms_per_episode']:.3f} ms.\n")
    write_atomic(args.out / "vector_env_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
