"""Saving and loading Q-RAG models: safetensors weights plus a JSON config, written atomically.

``save_model``/``load_model`` are the one-call round trip for a trained model; ``save_trainer``
adds what resuming needs (target network, optimiser, schedule, counters), loaded with
``weights_only=True`` so a checkpoint can never run code.

Both carry a SHA-256 of their content, checked at load, and loaded weights must be finite: a damaged
file is an error naming it at load time, never a model that silently scores 0 or a crash minutes later.
The weights' digest sits in the safetensors metadata and the trainer state's in a first header line, so
each file and its checksum are replaced together by one atomic rename.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from qrag_agents.qrag.config import ConfigError, QRAGConfig
from qrag_gym.atomic import atomic_write
from qrag_agents.qrag.networks import QNetwork
from qrag_gym.embedding import TextEmbedder, shared_embedder

WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer_state.pt"
DIGEST_KEY = "qrag_sha256"
"""safetensors metadata key holding the digest of every tensor's name and bytes."""
TRAINER_MAGIC = b"QRAG-TRAINER-STATE sha256="


class CheckpointError(ValueError):
    """A checkpoint file is damaged, truncated or not ours; the message names the file."""


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_finite(tensors: Mapping[str, Any], path: Path) -> None:
    """Raise if any floating tensor holds NaN or infinity (a model with them scores garbage silently)."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values; retrain or restore the file")


def save_model(network: QNetwork, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Write ``model.safetensors`` (with its digest in the metadata) and ``config.json`` into ``folder``.

    ``dtype`` (e.g. ``torch.float16`` for the models that ship in the package) casts the floating
    tensors; loading casts them back to the network's float32.
    """
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {DIGEST_KEY: tensor_digest(tensors)}
    atomic_write(folder / WEIGHTS, lambda temp: save_file(tensors, temp, metadata=metadata))
    atomic_write(folder / CONFIG, lambda temp: Path(temp).write_text(network.config.to_json()))


def load_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors``, checked: readable, digest as recorded, all finite.

    Files saved before digests were recorded load without the digest check (still the finite check).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(DIGEST_KEY)
        tensors = load_safetensors_bytes(path.read_bytes())
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); restore it or retrain") from err
    if recorded is not None and tensor_digest(tensors) != recorded:
        raise CheckpointError(f"{path}: contents do not match the checksum recorded at save (the file is damaged); "
                              "restore it or retrain")
    check_finite(tensors, path)
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def require_model_folder(folder: Path, label: str) -> None:
    """Raise, naming ``label`` (the folder or the argument that gave it), unless ``folder`` holds a saved model."""
    for name in (WEIGHTS, CONFIG):  # ConfigError (a bad config.json) and CheckpointError both name the file
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{label} is not a Q-RAG model folder: {name} is missing")


def load_model(folder: str | Path, embedder: TextEmbedder | None = None, device: str = "cpu") -> QNetwork:
    """Load a model saved by :func:`save_model` (the frozen embedder is shared per process)."""
    folder = Path(folder)
    require_model_folder(folder, str(folder))
    config = QRAGConfig.load(folder / CONFIG)
    weights = load_weights(folder / WEIGHTS, device)
    if not config.finetune_encoder and embedder is None:
        embedder = shared_embedder(config.encoder, config.chunk_max_tokens)
    network = QNetwork(config, embedder)
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the network of {folder / CONFIG} ({err})") from err
    return network.to(device).eval()


STAGE_BASE_KEYS = ("encoder", "adapter_hidden", "chunk_max_tokens", "positions", "position_step", "position_span",
                   "integer_positions", "max_steps")
"""Settings a frozen base model must share with the stage run built on it: they shape its weights or its Q."""


def load_stage_base(network: QNetwork, folder: str | Path) -> None:
    """Load the faithful model in ``folder`` into ``network`` and freeze everything but its candidate stage.

    Why: trained jointly, base and stage share the work, and the base Q stops telling story facts from
    look-alike book sentences that a 100-sentence training document rarely holds (measured on qa2 at
    1M tokens). A stage on a frozen faithful base can only reorder what that base already ranks high.
    """
    folder = Path(folder)
    require_model_folder(folder, f"stage_base={str(folder)!r}")
    base = QRAGConfig.load(folder / CONFIG)
    if base.candidate_stage or base.finetune_encoder:
        raise ConfigError(f"stage_base={str(folder)!r}: expected a faithful adapter-build model (candidate_stage "
                          f"and finetune_encoder false), got candidate_stage={base.candidate_stage}, "
                          f"finetune_encoder={base.finetune_encoder}")
    differ = {key: (getattr(base, key), getattr(network.config, key)) for key in STAGE_BASE_KEYS
              if getattr(base, key) != getattr(network.config, key)}
    if differ:
        raise ConfigError(f"stage_base={str(folder)!r} was trained with other settings (base, this run): {differ}")
    weights = load_weights(folder / WEIGHTS, str(network.device))
    missing, unexpected = network.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith("candidate_stage.") for key in missing):
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit this network (missing {missing}, "
                              f"unexpected {unexpected})")
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.startswith("candidate_stage."))


def save_trainer(folder: Path, state: dict[str, Any]) -> None:
    """Write the resumable trainer state (tensors and plain values only) behind a digest header line."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = TRAINER_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(temp: str) -> None:
        with open(temp, "wb") as out:
            out.write(header)
            out.write(payload)

    atomic_write(Path(folder) / TRAINER, write)


def _trainer_payload(path: Path) -> bytes:
    """The checked ``torch.save`` bytes of a trainer state (files without a header are taken as they are)."""
    data = path.read_bytes()
    if not data.startswith(TRAINER_MAGIC):
        return data
    header, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(TRAINER_MAGIC):]:
        raise CheckpointError(f"{path}: contents do not match the checksum recorded at save (the file is damaged "
                              "or truncated); restore it, or start afresh with --overwrite")
    return payload


REQUIRED_TRAINER_KEYS = ("online", "target", "optimizer", "scheduler", "updates", "transitions", "best")


def verify_trainer(folder: Path) -> None:
    """Raise :class:`CheckpointError` now if ``folder``'s trainer state is damaged (cheap: a hash)."""
    path = Path(folder) / TRAINER
    if path.is_file():
        _trainer_payload(path)


def load_trainer(folder: Path) -> dict[str, Any] | None:
    """The trainer state saved in ``folder`` (checked: digest, keys, finite weights), or None if there is none."""
    path = Path(folder) / TRAINER
    if not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(_trainer_payload(path)), weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises anything (RuntimeError, UnpicklingError, EOFError...)
        raise CheckpointError(f"{path}: not a readable trainer state ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_TRAINER_KEYS):
        raise CheckpointError(f"{path}: not a Q-RAG trainer state (needs keys {REQUIRED_TRAINER_KEYS})")
    for network in ("online", "target"):
        check_finite(state[network], path)
    return state
