"""Trained Q-RAG models that ship inside the package, so the method runs without a training run first.

    from qrag_agents.qrag.agent import QRAGAgent
    agent = QRAGAgent.from_pretrained("qa2")            # or make_agent("qrag"): every task's shipped model
    python -m qrag_agents.qrag.pretrained export runs/qa2/best qa2      # refresh one after the learner changes

Each model is the ``best`` checkpoint of ``qrag-train`` with the CPU preset (its ``config.json`` names
the preset; ``shipped/manifest.json`` records the run folder each was exported from), stored in float16
(about 3 MB; loading casts back to float32). A user's own run folder works the same way (``QRAGAgent(model="runs/qa2/best")``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRETRAINED_DIR = Path(__file__).parent / "shipped"
"""The model folders (a data folder, not a package: the module beside it is pretrained.py)."""
MANIFEST = "manifest.json"
"""In :data:`PRETRAINED_DIR`: for each shipped model, the run folder it was exported from."""


def available() -> list[str]:
    """Names of the shipped models (``qa1``..``qa5``, their ``-stage`` twins, ``niah``, ``hotpotqa``)."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.safetensors").is_file()) \
        if PRETRAINED_DIR.is_dir() else []


def pretrained_folder(name: str) -> Path:
    """The folder of a shipped model, or an error listing the ones that ship."""
    folder = PRETRAINED_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no shipped Q-RAG model {name!r}; shipped: {', '.join(available()) or 'none'}. "
                                f"Train one with `qrag-train --task {name} --out runs/{name}` and pass runs/{name}/best")
    return folder


def export(model: Path, name: str, overwrite: bool = False, root: Path = PRETRAINED_DIR,
           q_threshold: float | None = None) -> Path:
    """Copy a trained model into the package as float16, recording where it came from. ``q_threshold``: the
    Q-threshold stop chosen for it on validation stories (the run's own otherwise); the manifest records it."""
    import dataclasses

    import torch

    from qrag_agents.qrag.checkpoint import load_model, save_model
    from qrag_gym.atomic import atomic_write_bytes

    target = root / name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass --overwrite to replace the shipped model")
    network = load_model(model)
    if q_threshold is not None:
        network.config = dataclasses.replace(network.config, q_threshold=q_threshold)
    save_model(network, target, dtype=torch.float16)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest[name] = {"exported_from": str(model)} | ({} if q_threshold is None else {"q_threshold": q_threshold})
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrag_agents.qrag.pretrained", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped models")
    out = sub.add_parser("export", help="store a trained model (a qrag-train best/ folder) in the package")
    out.add_argument("model", type=Path)
    out.add_argument("name", help="qa1..qa5, niah, hotpotqa, or <task>-stage for a candidate-stage model")
    out.add_argument("--overwrite", action="store_true")
    out.add_argument("--q-threshold", type=float, default=None,
                     help="the Q-threshold stop chosen on validation stories (default: the run's own)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(available()))
        return 0
    try:
        print(f"wrote {export(args.model, args.name, args.overwrite, q_threshold=args.q_threshold)}")
    except (FileExistsError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
