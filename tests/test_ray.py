"""The Ray paths on a local Ray instance (2 CPUs, no dashboard, no network): they only distribute, so
their outputs must equal the single-machine path's, bit for bit. Skipped without the ``ray`` extra."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from qrag_benchmarks.report import load_records  # noqa: E402
from qrag_benchmarks.run import main as bench  # noqa: E402
from qrag_gym.cache import EmbeddingDiskCache  # noqa: E402
from qrag_gym.integrations.ray_cluster import init_ray  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the module (started once: about 5 s)."""
    session = init_ray("local", num_cpus=2)
    yield session
    session.shutdown()


def test_core_commands_never_import_ray() -> None:
    """--help and the core stay free of Ray (its import alone takes seconds)."""
    code = ("import sys, qrag_gym, qrag_gym.cache_cli, qrag_benchmarks.run\n"
            "for main in (qrag_gym.cache_cli.main, qrag_benchmarks.run.main):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_ray_sizing_flags_need_ray(capsys) -> None:
    from qrag_gym.cache_cli import main as cache_main

    with pytest.raises(SystemExit):
        cache_main(["warm", "--ray-workers", "2"])
    assert "--ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench(["--agents", "random", "--ray-workers", "2"])
    assert "give --ray too" in capsys.readouterr().err


@pytest.fixture
def tiny_data(data_dir: Path, tmp_path: Path) -> Path:
    """One real book and the first 60 lines of the real qa1 training file (about 400 distinct texts: 4 forward batches)."""
    books = tmp_path / "data" / "noise" / "gutenberg"
    books.mkdir(parents=True)
    (books / "blake-poems.txt").symlink_to(data_dir / "noise" / "gutenberg" / "blake-poems.txt")
    babi = tmp_path / "data" / "babi" / "en-10k"
    babi.mkdir(parents=True)
    name = "qa1_single-supporting-fact_train.txt"
    lines = (data_dir / "babi" / "en-10k" / name).read_text().splitlines(keepends=True)
    (babi / name).write_text("".join(lines[:60]))
    return tmp_path / "data"


def test_warm_on_ray_writes_the_local_vectors(ray_session, tiny_data: Path, tmp_path: Path, monkeypatch,
                                              single_thread) -> None:
    from qrag_gym.cache_cli import warm
    from qrag_gym.embedding import TextEmbedder

    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "local"))
    local_count = warm(None, str(tiny_data))
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "ray"))
    ray_count = warm(None, str(tiny_data), ray="local", ray_workers=2)
    assert local_count == ray_count > 300
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "ray"))
    assert warm(None, str(tiny_data), ray="local") == 0  # everything is on disk now: nothing left to encode

    embedder = TextEmbedder(None, disk_cache=False)
    local = EmbeddingDiskCache(embedder.fingerprint, embedder.dim, root=tmp_path / "local")
    remote = EmbeddingDiskCache(embedder.fingerprint, embedder.dim, root=tmp_path / "ray")
    keys = sorted(local._index)
    assert len(keys) == local_count and sorted(remote._index) == keys
    local_vectors = local._vectors[[local._index[k] for k in keys]]
    remote_vectors = remote._vectors[[remote._index[k] for k in keys]]
    assert np.array_equal(local_vectors, remote_vectors)  # bit-identical, not merely close
    assert np.allclose(np.linalg.norm(remote_vectors, axis=1), 1.0, atol=1e-5)


def test_bench_on_ray_equals_local_and_resumes(ray_session, small_data_dir: Path, tmp_path: Path) -> None:
    common = ["--agents", "random", "dense-multistep", "--tasks", "qa1", "--lengths", "1K", "--episodes", "2",
              "--threads", "1", "--data-dir", str(small_data_dir)]
    bench([*common, "--seeds", "0", "1", "--out", str(tmp_path / "local")])
    bench([*common, "--seeds", "0", "--out", str(tmp_path / "ray"), "--ray"])
    assert len(load_records(tmp_path / "ray")) == 4  # 2 agents x 1 seed x 2 episodes, written as cells finished
    bench([*common, "--seeds", "0", "1", "--out", str(tmp_path / "ray"), "--ray", "--resume"])
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["cells_skipped_as_finished"] == 2 and run["cells_done"] == 2 and run["ray"]["address"] == "local"

    def comparable(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in load_records(folder)]

    local, remote = comparable(tmp_path / "local"), comparable(tmp_path / "ray")
    assert len(local) == 8 and remote == local  # same records, same order
    assert {r["agent"] for r in remote} == {"random", "dense-multistep"}


def test_masked_view_has_rllibs_layout(small_data_dir: Path, single_thread) -> None:
    from qrag_gym.integrations.rllib import make_masked_env

    env = make_masked_env({"task": "qa1", "context_tokens": 1_000, "split": "validation", "k": 4,
                           "data_dir": str(small_data_dir)})
    observation, info = env.reset(seed=3)
    assert set(env.observation_space.spaces) == {"observations", "action_mask"}
    assert env.observation_space.contains(observation)
    assert observation["action_mask"].dtype == np.float32
    assert np.array_equal(observation["action_mask"] > 0, env.env.action_masks())
    observation, _, _, _, after = env.step(0)  # slot 0: the first candidate of the view it saw
    assert after["selected_order"] == [int(info["candidates"][0])]
    assert env.observation_space.contains(observation)
    with pytest.raises(TypeError, match="ShortlistView"):
        from qrag_gym.integrations.rllib import MaskedShortlistView

        MaskedShortlistView(env.unwrapped)


def test_rllib_ppo_trains_on_the_masked_view(ray_session, small_data_dir: Path, single_thread) -> None:
    """One small PPO iteration through RLlib's action-masking module; the greedy module then plays valid slots."""
    from qrag_gym.integrations.rllib import greedy_policy, make_masked_env, play, ppo_config

    config = {"task": "qa1", "context_tokens": 1_000, "split": "train", "k": 4, "data_dir": str(small_data_dir)}
    algo = ppo_config(config, num_env_runners=0, train_batch_size=64, minibatch_size=32, num_epochs=1).build_algo()
    try:
        result = algo.train()
        assert result["num_env_steps_sampled_lifetime"] >= 64
        assert np.isfinite(result["env_runners"]["episode_return_mean"])
        env = make_masked_env({**config, "split": "validation"})
        policy = greedy_policy(algo.get_module())
        observation, _ = env.reset(seed=0)
        assert observation["action_mask"][policy(observation)] == 1.0
        outcome = play(policy, env, range(3))
        assert outcome["episodes"] == 3 and 0.0 <= outcome["success"] <= 1.0
    finally:
        algo.stop()
