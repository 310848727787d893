"""Train RLlib PPO with action masking on the qa1 shortlist view, then compare it with a random policy.

    pip install "qrag-gym[ray]"
    python examples/rllib_ppo_shortlist.py --iterations 8 --env-runners 1 --episodes 100
    python examples/rllib_ppo_shortlist.py --address auto ...     # on a running cluster (ray start / ray up)

PPO trains on the qa1 *training* stories (1K tokens, shortlist of 8, RLlib's ``ActionMaskingTorchRLModule``);
then the greedy policy and a uniformly random valid slot play the same ``--episodes`` *validation*
episodes (reset seeds 0..N-1, same stories, same books). The reward is the env's shaped reward:
0.5 + 0.5 k/|selected| on the step that completes the supporting facts, so a policy that finds the fact
sooner earns more. Slot 0 is the frozen multi-step dense retriever's best candidate (reported too, as
``slot_0_dense``): PPO learns from the features how far to trust it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from qrag_gym.integrations.ray_cluster import LOCAL, init_ray
from qrag_gym.integrations.rllib import greedy_policy, make_masked_env, play, ppo_config, random_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8, help="PPO training iterations")
    parser.add_argument("--env-runners", type=int, default=1, help="RLlib EnvRunner actors (0: sample in the driver)")
    parser.add_argument("--batch", type=int, default=512, help="env steps per iteration")
    parser.add_argument("--episodes", type=int, default=100, help="validation episodes for each policy")
    parser.add_argument("--task", default="qa1")
    parser.add_argument("--tokens", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default=LOCAL, help="Ray address (default: a local instance)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local instance (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here (new file)")
    args = parser.parse_args()
    for name in ("iterations", "batch", "episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.env_runners < 0:
        parser.error(f"--env-runners must be non-negative, got {args.env_runners}")
    if args.out is not None and args.out.exists():
        parser.error(f"--out {args.out} exists; name a new file")
    torch.set_num_threads(1)
    init_ray(args.address, args.cpus if args.address == LOCAL else None)
    env_config = {"task": args.task, "context_tokens": args.tokens, "split": "train"}
    if os.environ.get("QRAG_DATA_DIR"):
        env_config["data_dir"] = os.environ["QRAG_DATA_DIR"]
    algo = ppo_config(env_config, num_env_runners=args.env_runners, seed=args.seed,
                      train_batch_size=args.batch).build_algo()
    history = []
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        result = algo.train()
        runners = result["env_runners"]
        history.append({"iteration": iteration, "env_steps": int(result["num_env_steps_sampled_lifetime"]),
                        "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
                        "episode_len_mean": float(runners.get("episode_len_mean", float("nan"))),
                        "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(history[-1]))
    train_seconds = time.perf_counter() - start
    evaluation = make_masked_env({**env_config, "split": "validation"})
    seeds = range(args.episodes)
    trained = play(greedy_policy(algo.get_module()), evaluation, seeds)
    floor = play(random_policy(args.seed), evaluation, seeds)
    dense = play(lambda observation: 0, evaluation, seeds)  # slot 0: the frozen multi-step dense retriever
    algo.stop()
    report = {"command": " ".join(["python", "examples/rllib_ppo_shortlist.py", *sys.argv[1:]]),
              "task": args.task, "context_tokens": args.tokens, "train_seconds": round(train_seconds, 1),
              "history": history, "ppo_greedy": trained, "random": floor, "slot_0_dense": dense, "validation_reset_seeds": f"0..{args.episodes - 1}"}
    for name in ("ppo_greedy", "random", "slot_0_dense"):
        r = report[name]
        print(f"{name:10s} return {r['return_mean']:.3f} [{r['return_low']:.3f}, {r['return_high']:.3f}]  "
              f"success {r['success']:.2f} [{r['success_low']:.2f}, {r['success_high']:.2f}]  "
              f"steps {r['steps_mean']:.2f}  ({r['episodes']} validation episodes)")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
