"""The env's start-up time and a 10M-token episode's peak memory, each in a fresh process (issue 15).

Two measurements, each run in its own new Python process (``--repeats`` times; disk caches are warmed by
one untimed run first, so both code versions read the same warm embedding cache):

- *first gym.make*: seconds from process start to the end of the first ``gym.make("QRAG-Babilong-v0",
  ...)`` and of its first ``reset`` (a 4K qa2 validation episode);
- *10M-token episode*: ``context_tokens=10_000_000`` (qa1, validation books, ``embedder="default"``): the
  process's peak resident memory (``ru_maxrss``) after ``gym.make`` and after ``reset`` plus one dense
  scoring of the question (what the dense baseline's first step does), and the seconds of that reset + score.

``--pythonpath DIR`` runs the same measurements on another checkout of the package (its ``qrag_gym`` comes
first on the path), to compare code versions on one machine in one run:

    git worktree add /tmp/before f3e99c6
    python -m qrag_benchmarks.studies.env_footprint --pythonpath /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from qrag_benchmarks.results_io import STUDY_RESULTS, add_out_argument, claim_outputs, markdown_table, write_atomic, write_json

PROBE = r"""
import json, resource, sys, time
start = time.perf_counter()
import gymnasium as gym
import qrag_gym  # noqa: F401
kind = sys.argv[1]
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if kind == "make":
    env = gym.make("QRAG-Babilong-v0", task="qa2", context_tokens=4_000, split="validation")
    made = time.perf_counter() - start
    env.reset(seed=0)
    print(json.dumps({"make_s": made, "make_reset_s": time.perf_counter() - start}))
else:
    env = gym.make("QRAG-Babilong-v0", task="qa1", context_tokens=10_000_000, split="validation", embedder="default")
    base = env.unwrapped
    base.embedder.encode(["warm up the encoder"], persist=False)
    made_mb = peak_mb()
    begin = time.perf_counter()
    _, info = env.reset(seed=0)
    scores = base.score(base.embedder.encode([base.question], persist=False)[0])
    print(json.dumps({"chunks": info["num_chunks"], "tokens": info["num_tokens"], "after_make_mb": made_mb,
                      "peak_mb": peak_mb(), "reset_score_s": time.perf_counter() - begin,
                      "best": int(scores.argmax())}))
"""


def probe(kind: str, pythonpath: str | None) -> dict[str, Any]:
    """One measurement in a fresh interpreter (``pythonpath`` first on its path; ``-P`` keeps the working
    folder off it, so the checkout measured is the one asked for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, kind], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"probe {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(folder: str) -> str:
    done = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def summary(label: str, pythonpath: str | None, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    median = lambda kind, key: statistics.median(run[key] for run in runs[kind])  # noqa: E731
    return {"label": label, "commit": commit_of(pythonpath or str(Path(__file__).resolve().parent)), "runs": runs,
            "make_s": median("make", "make_s"), "make_reset_s": median("make", "make_reset_s"),
            "after_make_mb": median("long", "after_make_mb"), "peak_mb": median("long", "peak_mb"),
            "reset_score_s": median("long", "reset_score_s"), "chunks": runs["long"][0]["chunks"],
            "tokens": runs["long"][0]["tokens"], "best": [run["best"] for run in runs["long"]]}


def measure(versions: list[tuple[str, str | None]], repeats: int) -> list[dict[str, Any]]:
    """Every version's probes, interleaved round by round so that other load on the machine hits them alike."""
    for _, pythonpath in versions:
        for kind in ("make", "long"):
            probe(kind, pythonpath)  # untimed: fills this version's disk caches
    runs = {label: {"make": [], "long": []} for label, _ in versions}
    for _ in range(repeats):
        for label, pythonpath in versions:
            for kind in ("make", "long"):
                runs[label][kind].append(probe(kind, pythonpath))
    return [summary(label, pythonpath, runs[label]) for label, pythonpath in versions]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pythonpath", help="another checkout to measure beside this one (e.g. the code before issue 15)")
    parser.add_argument("--repeats", type=int, default=3)
    add_out_argument(parser, STUDY_RESULTS)
    args = parser.parse_args(argv)
    claim_outputs(parser, args, "env_footprint.json", "env_footprint.md")
    versions = measure(([("before", args.pythonpath)] if args.pythonpath else []) + [("this checkout", None)],
                       args.repeats)
    rows = [[v["label"], v["commit"], f"{v['make_s']:.2f}", f"{v['make_reset_s']:.2f}", f"{v['chunks']:,}",
             f"{v['after_make_mb']:,.0f}", f"{v['peak_mb']:,.0f}", f"{v['reset_score_s']:.1f}"] for v in versions]
    command = "python -m qrag_benchmarks.studies.env_footprint" + \
        (f" --pythonpath {args.pythonpath}" if args.pythonpath else "") + f" --repeats {args.repeats}"
    text = "\n".join([
        "# Env start-up time and the peak memory of a 10M-token episode (issue 15)", "",
        f"Each figure is the median of {args.repeats} fresh processes, the versions interleaved round by round (one "
        "untimed run of each first warms the disk caches); "
        "wall seconds on a shared 2-core machine, so compare the rows, measured in one run, more than the absolute "
        "times. First gym.make: qa2, 4K tokens, validation. 10M: qa1, `context_tokens=10_000_000`, validation books, "
        "`embedder=\"default\"`; peak = `ru_maxrss` after reset and one dense scoring of the question.", "",
        markdown_table(["code", "commit", "import + gym.make s", "+ first reset s", "10M chunks",
                        "peak MB after make", "peak MB after reset + score", "10M reset + score s"], rows), "",
        f"Same best-scoring chunk in every run of each version: {[v['best'] for v in versions]}", "",
        "    " + command, ""])
    write_json(args.out / "env_footprint.json", {"command": command, "versions": versions})
    write_atomic(args.out / "env_footprint.md", text)
    print(text)


if __name__ == "__main__":
    main()
