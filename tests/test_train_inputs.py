"""Hostile inputs to the Q-RAG side (issue 14): run folders, config values, damaged checkpoints.

Everything here runs on a tiny adapter network over a stand-in embedder (only ``dim`` is read), so no
model is loaded and each test takes milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from qrag_agents.qrag.checkpoint import (TRAINER, WEIGHTS, CheckpointError, load_model, load_trainer, save_model,
                                    save_trainer)
from qrag_agents.qrag.config import ConfigError, QRAGConfig, cpu_config, preset_config
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.train import main as train_main

FAKE_EMBEDDER = SimpleNamespace(dim=8, name="fake")


def _network() -> QNetwork:
    torch.manual_seed(0)
    network = QNetwork(cpu_config(adapter_hidden=16), FAKE_EMBEDDER)
    for parameter in network.parameters():
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    return network


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as stopped:
        train_main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


# ----- item 2: a run folder is never overwritten by accident -----------------------------------------
def test_train_refuses_a_non_empty_out_without_resume_or_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / WEIGHTS).write_bytes(b"the best model so far")
    err = _usage_error(["--task", "qa1", "--out", str(out)], capsys)
    assert "already holds files" in err and "--resume" in err and "--overwrite" in err
    err = _usage_error(["--task", "qa1", "--out", str(out), "--resume"], capsys)
    assert f"{out / TRAINER} does not exist" in err
    assert (out / "best" / WEIGHTS).read_bytes() == b"the best model so far"


def test_train_resume_checks_the_trainer_state_before_building_anything(tmp_path: Path, capsys) -> None:
    """A damaged trainer_state.pt used to crash 24 s later, deep in the resume."""
    out = tmp_path / "run"
    save_trainer(out, {"online": {}, "target": {}, "optimizer": {}, "scheduler": {}, "updates": 3, "transitions": 9,
                       "best": 0.5})
    state = (out / TRAINER).read_bytes()
    (out / TRAINER).write_bytes(state[:-20] + bytes(20))
    err = _usage_error(["--task", "qa1", "--out", str(out), "--resume"], capsys)
    assert str(out / TRAINER) in err and "checksum" in err


# ----- item 7: config values are checked when a config is built or loaded --------------------------
@pytest.mark.parametrize("overrides, named", [
    ({"positions": "Relative"}, "positions"),
    ({"train_source": "generated"}, "train_source"),
    ({"lr": "abc"}, "lr"),
    ({"eval_every": 0}, "eval_every"),
    ({"num_envs": 0}, "num_envs"),
    ({"num_envs": 2.5}, "num_envs"),
    ({"gamma": 1.5}, "gamma"),
    ({"finetune_encoder": "no"}, "finetune_encoder"),
    ({"adam_betas": [0.9]}, "adam_betas"),
])
def test_bad_config_values_are_refused_naming_the_key(overrides: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{named}="):
        cpu_config(**overrides)


def test_updates_zero_is_an_error_not_the_preset(capsys) -> None:
    """``qrag-train --updates 0`` trained the preset's 1,500 updates."""
    with pytest.raises(ConfigError, match="total_updates=0"):
        preset_config("cpu/qa1", {}, updates=0)
    assert preset_config("cpu/qa1", {}, updates=7).total_updates == 7
    err = _usage_error(["--task", "qa1", "--out", "/nonexistent/never-created", "--updates", "0"], capsys)
    assert "--updates 0" in err and "total_updates" in err
    err = _usage_error(["--task", "qa1", "--out", "/nonexistent/never-created", "--set", "lr=abc"], capsys)
    assert "lr='abc'" in err


# ----- items 8 and 13: damaged weights and configs fail at load, naming the file ------------------
def test_round_trip_still_loads(tmp_path: Path) -> None:
    network = _network()
    save_model(network, tmp_path / "model")
    loaded = load_model(tmp_path / "model", embedder=FAKE_EMBEDDER)
    for name, tensor in network.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])


def test_random_bytes_or_nan_in_weights_are_refused(tmp_path: Path) -> None:
    """Random bytes or NaN inside model.safetensors evaluated silently to 0.0 success."""
    folder = tmp_path / "model"
    save_model(_network(), folder)
    path = folder / WEIGHTS
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[-64:-32] = bytes(range(32))  # inside the tensor data: the header still parses
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=rf"{path}.*checksum"):
        load_model(folder, embedder=FAKE_EMBEDDER)
    path.write_bytes(bytes(range(256)) * 4)  # random bytes: not a safetensors file at all
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable safetensors file"):
        load_model(folder, embedder=FAKE_EMBEDDER)
    tensors = {k: v.clone() for k, v in _network().state_dict().items()}
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path))  # NaN written with no digest (an older file, or someone else's)
    with pytest.raises(CheckpointError, match=rf"{path}: tensor '{name}' holds NaN"):
        load_model(folder, embedder=FAKE_EMBEDDER)


def test_damaged_trainer_state_is_refused_at_load(tmp_path: Path) -> None:
    network = _network()
    state = {"online": network.state_dict(), "target": network.state_dict(), "optimizer": {}, "scheduler": {},
             "updates": 1, "transitions": 2, "best": 0.0}
    save_trainer(tmp_path, state)
    assert load_trainer(tmp_path)["updates"] == 1
    path = tmp_path / TRAINER
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{path}.*checksum"):
        load_trainer(tmp_path)
    path.write_bytes(b"\x00garbage, no header")
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable trainer state"):
        load_trainer(tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("", "not a valid JSON config"),
    ("{", "not a valid JSON config"),
    ("[1, 2]", "expected a JSON object"),
    ('{"positions": "Relative"}', "positions='Relative'"),
    ('{"no_such_key": 1}', "unknown Q-RAG config keys"),
])
def test_empty_or_invalid_config_json_names_the_file(tmp_path: Path, text: str, expected: str) -> None:
    folder = tmp_path / "model"
    save_model(_network(), folder)
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=rf"{folder / 'config.json'}: .*{expected}"):
        load_model(folder, embedder=FAKE_EMBEDDER)
    assert QRAGConfig.from_dict(json.loads(cpu_config().to_json())) == cpu_config()


def test_train_with_resume_and_no_state_is_an_error(tmp_path: Path) -> None:
    """The library call too: ``train(resume=True)`` without a state used to start from scratch."""
    from qrag_agents.qrag.train import train

    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / TRAINER} does not exist"):
        train(cpu_config(task="qa1", encoder="no/such-model-never-loaded"), tmp_path, resume=True)
