"""The Q-RAG learner: rotation, lambda-returns, networks, save/load, and a short real training run."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch

from qrag_agents.qrag.agent import QRAGAgent
from qrag_agents.qrag.checkpoint import load_model, load_trainer, save_model
from qrag_agents.qrag.config import ConfigError, cpu_config, preset_changes, preset_config, task_settings
from qrag_agents.qrag.evaluate import main as evaluate_main
from qrag_agents.qrag.inference import keep_until_threshold
from qrag_agents.qrag.learner import lambda_returns, soft_value
from qrag_agents.qrag.networks import QNetwork
from qrag_agents.qrag.pretrained import pretrained_folder
from qrag_agents.qrag.rotary import relative_positions, rotary_frequencies, rotate
from qrag_benchmarks.report import load_records
from qrag_benchmarks.run import main as bench_main
from qrag_agents.qrag.train import NIAH_TRAIN_VARIANTS, make_env, make_train_envs, make_validation_envs, train
from qrag_gym.data.niah import VARIANTS as NIAH_VARIANTS
from qrag_gym.embedding import shared_embedder
from qrag_gym.envs.babilong import BabilongEnv
from qrag_gym.envs.hotpotqa import HotpotQAEnv
from qrag_gym.envs.niah import NiahEnv
from qrag_gym.evaluation import Cell, make_eval_env, run_cell, summarize


def test_relative_positions_hand_example() -> None:
    # 10 chunks, chunks 3 and 7 selected: segments [0,3) [3,7) [7,10), each spread over [0, 18].
    expected = [0, 9, 18, 20, 26, 32, 38, 40, 49, 58]
    assert relative_positions(10, [7, 3]).tolist() == expected
    assert relative_positions(5, []).tolist() == [0, 4.5, 9, 13.5, 18]
    assert relative_positions(10, [3, 7], integer=True).tolist() == expected


def test_rotation_depends_only_on_relative_position() -> None:
    torch.manual_seed(0)
    frequencies = rotary_frequencies(8)
    x, y = torch.randn(16), torch.randn(16)
    def dot(p: float, q: float) -> float:
        return float(rotate(x, torch.tensor(p), frequencies) @ rotate(y, torch.tensor(q), frequencies))
    assert dot(3.0, 5.5) == pytest.approx(dot(10.0, 12.5), abs=1e-4)
    assert dot(0.0, 0.0) == pytest.approx(float(x @ y), abs=1e-5)
    assert float(rotate(x, torch.tensor(7.3), frequencies).norm()) == pytest.approx(float(x.norm()), rel=1e-5)
    assert dot(0.0, 1.0) != pytest.approx(dot(0.0, 2.0), abs=1e-3)


def test_lambda_returns_hand_computed() -> None:
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[0.0], [1.0], [0.0]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    values = torch.tensor([[0.2], [0.4], [0.6], [0.8]])
    # G2 = 0 + 0.9 * 0.8 = 0.72 ; G1 = 1 (episode ends) ; G0 = 0 + 0.9 * (0.5 * 0.4 + 0.5 * 1) = 0.63
    expected = torch.tensor([[0.63], [1.0], [0.72]])
    assert torch.allclose(lambda_returns(rewards, dones, values, gamma, lam), expected)
    with pytest.raises(ValueError, match="need 4 rows"):
        lambda_returns(rewards, dones, values[:3], gamma, lam)


def test_soft_value_is_logsumexp_over_top_k_available() -> None:
    q = torch.tensor([[[1.0, 0.5], [0.0, 0.5], [3.0, 3.0]]])  # (B=1, M=3, halves=2)
    valid = torch.tensor([[True, True, False]])
    alpha = 0.1
    expected = alpha * math.log(math.exp(10) + math.exp(0)) + alpha * math.log(2 * math.exp(5))
    assert float(soft_value(q, valid, alpha, top_k=5)) == pytest.approx(expected, rel=1e-5)
    assert float(soft_value(q, valid, 1e-9, top_k=1)) == pytest.approx(1.0 + 0.5)


def test_threshold_stop_keeps_prefix() -> None:
    assert keep_until_threshold([4, 9, 2, 7], [0.9, 0.8, 0.1, 0.7], 0.5) == [4, 9]
    assert keep_until_threshold([4], [0.2], 0.5) == []


@pytest.fixture(scope="module")
def network(data_dir) -> QNetwork:
    torch.manual_seed(0)
    net = QNetwork(cpu_config(), shared_embedder("default"))
    for parameter in net.parameters():  # move off the identity start so the round trip is meaningful
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    return net


def test_network_shapes(network: QNetwork) -> None:
    chunks = network.embed_chunks(["Mary went to the kitchen.", "John took the milk.", "It rained."])
    states = network.embed_states(["Where is Mary?", "Where is the milk?"], [[], ["John took the milk."]])
    assert chunks.shape == (3, network.dim) and states.shape == (2, network.dim)
    q = network.q_halves(states.unsqueeze(1), chunks.expand(2, 3, -1), torch.zeros(2, 3))
    assert q.shape == (2, 3, 2)


def test_shared_embedder_is_one_instance_per_canonical_name() -> None:
    """Aliases and keyword calls must share one encoder: two would pad batches differently and disagree."""
    first = shared_embedder("default")
    assert shared_embedder(None, 64) is first
    assert shared_embedder(model="sentence-transformers/all-MiniLM-L6-v2", max_length=64) is first
    assert shared_embedder("default", 128) is not first


def test_save_load_round_trip_gives_identical_q(network: QNetwork, tmp_path) -> None:
    save_model(network, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    texts = ["Mary went to the kitchen.", "Daniel went back to the garden."]
    positions = torch.tensor([[0.0, 18.0]])
    with torch.no_grad():
        a = network.q_halves(network.embed_states(["Where is Mary?"], [[]]).unsqueeze(1), network.embed_chunks(texts), positions)
        b = loaded.q_halves(loaded.embed_states(["Where is Mary?"], [[]]).unsqueeze(1), loaded.embed_chunks(texts), positions)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="not a Q-RAG model folder"):
        load_model(tmp_path)


@pytest.mark.slow
def test_short_training_on_qa1_beats_random(small_data_dir, tmp_path) -> None:
    config = cpu_config(task="qa1", train_num_sentences=50, eval_num_sentences=50, num_envs=32,
                        total_updates=120, warmup_updates=10, eval_every=1000, eval_episodes=100, random_transitions=128)
    metrics = train(config, tmp_path / "run", data_dir=str(small_data_dir), show_progress=False)
    random_success = []
    env = BabilongEnv(task="qa1", num_sentences=50, split="validation", never_terminate=True, data_dir=str(small_data_dir))
    rng = np.random.default_rng(0)
    for seed in range(100):
        _, info = env.reset(seed=10_000 + seed)
        random_success.append(float(rng.choice(env.num_chunks) in info["supporting_ids"]))
    assert metrics["success_at_k"] >= 0.6 > np.mean(random_success) + 0.4
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "trainer_state.pt").is_file()
    agent = QRAGAgent(model=str(tmp_path / "run" / "model"))
    resumed = summarize(run_cell(Cell("qrag", "qa1", "50s", None, 0, 20), agent, env))
    assert resumed["success_at_k"] >= 0.5


def test_task_families_get_the_authors_env_settings(small_data_dir) -> None:
    niah = cpu_config(task="niah:all", **task_settings("niah:all"))
    assert (niah.positions, niah.max_steps) == ("none", 5)
    niah.num_envs = 7
    train_envs = make_train_envs(niah, str(small_data_dir))
    assert [env.variant for env in train_envs] == [*NIAH_TRAIN_VARIANTS, NIAH_TRAIN_VARIANTS[0]]
    assert "multikey_3" not in NIAH_TRAIN_VARIANTS and len(NIAH_TRAIN_VARIANTS) == 6
    validation_envs = make_validation_envs(niah, str(small_data_dir))
    assert [env.unwrapped.variant for _, env in validation_envs] == list(NIAH_VARIANTS)
    assert all(env.unwrapped.never_terminate and env.unwrapped.split == "validation" for _, env in validation_envs)
    hotpot = cpu_config(task="hotpotqa", **task_settings("hotpotqa"))
    assert (hotpot.positions, hotpot.max_steps, hotpot.chunk_max_tokens) == ("none", 2, 256)
    train_env = make_env(hotpot, "hotpotqa", 0, None)
    assert isinstance(train_env, HotpotQAEnv) and train_env.never_terminate and train_env.split == "train"
    assert train_env.embedder.max_length == 256  # paragraphs, not BABILong's 64-token sentences
    assert task_settings("qa2") == {}


def test_preset_config_layers_preset_task_tuning_and_user_values() -> None:
    assert [preset_config(f"cpu/{task}").gamma for task in ("qa1", "qa4", "qa5")] == [0.5] * 3  # one-fact tuning
    assert preset_config("cpu/qa1", {"gamma": 0.9}, updates=7).gamma == 0.9  # --set wins
    assert preset_config("cpu/qa1", {}, updates=7).total_updates == 7
    qa2 = preset_config("cpu/qa2", {})
    assert (qa2.per_fact_reward, qa2.full_episode_share, qa2.gamma, qa2.candidate_stage) == (0.1, 1.0, 0.99, False)
    assert preset_config("paper/qa1", {}).gamma == 0.99  # the paper preset keeps the paper's values
    assert preset_config("cpu/niah:all", {}).positions == "none"


def test_the_stage_preset_is_how_every_shipped_stage_model_was_trained() -> None:
    """``cpu-stage/<task>`` with only ``stage_base`` given is the config of the shipped ``<task>-stage``, field for field
    (the base's path aside); without a base it is refused, since a stage trained with its base fails at 1M-10M."""
    for task in ("qa1", "qa2", "qa3", "qa4", "qa5"):
        shipped = json.loads((pretrained_folder(f"{task}-stage") / "config.json").read_text())
        config = preset_config(f"cpu-stage/{task}", {"stage_base": shipped["stage_base"]})
        made = dataclasses.asdict(config)
        differ = {key: (value, made[key]) for key, value in shipped.items()
                  if key != "preset" and made[key] != (tuple(value) if isinstance(value, list) else value)}
        assert differ == {}, task
        assert preset_changes(config) == {}  # the base is what the preset asks for, not a change
    with pytest.raises(ConfigError, match="--set stage_base=runs/qa3/best"):
        preset_config("cpu-stage/qa3")
    with pytest.raises(ConfigError, match="tuned for qa1"):
        preset_config("cpu-stage/hotpotqa", {"stage_base": "runs/hotpotqa/best"})


def test_a_run_records_its_preset_and_what_was_changed_from_it() -> None:
    config = preset_config("cpu/qa2", {"lr": 1e-4}, updates=7)
    assert config.preset == "cpu/qa2" and preset_changes(config) == {"lr": 1e-4, "total_updates": 7}
    assert preset_changes(preset_config("paper/hotpotqa")) == {}
    assert preset_changes(cpu_config()) == {} and cpu_config().preset == ""  # hand-built: nothing to compare with
    for name, named in (("gpu/qa2", "base one of"), ("cpu", "base one of"), ("cpu/qa9", "unknown task 'qa9'")):
        with pytest.raises(ConfigError, match=named):
            preset_config(name)


def test_agent_falls_back_to_the_mixed_niah_model(network: QNetwork, tmp_path) -> None:
    save_model(network, tmp_path / "niah" / "best")
    agent = QRAGAgent(models_dir=str(tmp_path))
    assert agent._network_for("multikey_3").dim == network.dim
    with pytest.raises(FileNotFoundError, match=r"qrag-train --task qa1"):
        agent._network_for("qa1")


def test_validation_envs_of_each_family_run_to_T(small_data_dir) -> None:
    for task, family_env in (("niah:multivalue", NiahEnv), ("hotpotqa", HotpotQAEnv), ("qa2", BabilongEnv)):
        config = cpu_config(task=task, **task_settings(task))
        (name, env), = make_validation_envs(config, str(small_data_dir) if task != "hotpotqa" else None)
        base = env.unwrapped
        assert name == task and isinstance(base, family_env) and base.never_terminate and base.split == "validation"
        assert base.max_steps == config.max_steps


def test_qrag_keeps_the_picks_before_its_q_threshold_stop(network: QNetwork, small_data_dir) -> None:
    env = make_eval_env("qa2", split="validation", num_sentences=40, data_dir=str(small_data_dir))
    for threshold in (-1e9, 0.0, 1e9):
        agent = QRAGAgent(network=network, threshold=threshold)
        for record in run_cell(Cell("qrag", "qa2", "40s", None, 0, 3), agent, env):
            assert record["steps"] == 6  # the episode runs to T whatever the agent keeps
            prefix = keep_until_threshold(record["selected"], agent._max_q, threshold)
            assert record["kept"] == sorted(prefix)
            assert len(prefix) == {-1e9: 6, 1e9: 0}.get(threshold, len(prefix))


def test_qrag_bench_and_qrag_evaluate_give_identical_records(network: QNetwork, small_data_dir, tmp_path) -> None:
    save_model(network, tmp_path / "runs" / "qa1" / "best")
    common = ["--lengths", "1K", "--data-dir", str(small_data_dir)]
    assert bench_main(["--agents", "qrag", "--tasks", "qa1", "--episodes", "4", "--qrag-models", str(tmp_path / "runs"),
                       "--out", str(tmp_path / "bench"), *common]) == 0
    assert evaluate_main(["--model", str(tmp_path / "runs" / "qa1" / "best"), "--task", "qa1", "--episodes", "4",
                          "--json", str(tmp_path / "eval.json"), *common]) == 0
    drop = {"seconds", "settings_id"}
    bench = [{k: v for k, v in r.items() if k not in drop} for r in load_records(tmp_path / "bench")]
    evaluated = [{k: v for k, v in r.items() if k not in drop} for r in json.loads((tmp_path / "eval.json").read_text())["records"]]
    assert bench == evaluated and len(bench) == 4 and all(r["split"] == "test" for r in bench)


def test_full_episode_share_sets_which_training_envs_run_all_steps(small_data_dir) -> None:
    config = cpu_config(task="qa1", full_episode_share=0.25, num_envs=8, train_num_sentences=50)
    train_envs = make_train_envs(config, str(small_data_dir))
    assert [env.never_terminate for env in train_envs] == [True, True] + [False] * 6


def test_full_finetune_build_trains_resumes_and_round_trips(small_data_dir, tmp_path, monkeypatch) -> None:
    """The paper's build (two trainable encoder copies, the GPU path) end to end on a tiny run: the
    memoised token ids equal the tokenizer's, a run stopped by the clock keeps its trainer state, the
    resumed run continues from it, and save/load keeps Q exact."""
    config = cpu_config(task="qa2", finetune_encoder=True, train_num_sentences=20, eval_num_sentences=20,
                        num_envs=2, rollout_steps=2, total_updates=3, warmup_updates=1, eval_every=2,
                        eval_episodes=2, random_transitions=0)
    network = QNetwork(config)
    texts = ["Mary went to the kitchen.", "Mary went to the kitchen.", "Where is Mary?"]
    expected = network.tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert network._piece_ids(texts, 64) == expected == network._piece_ids(texts, 64)
    start = {name: value.clone() for name, value in network.state_dict().items()}

    clock = iter(range(0, 10_000, 30))  # each reading of the clock is 30 s later: the 1-minute budget ends early
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    train(config, tmp_path / "run", max_minutes=1, data_dir=str(small_data_dir), show_progress=False)
    monkeypatch.undo()
    stopped = load_trainer(tmp_path / "run")
    assert 1 <= stopped["updates"] < config.total_updates

    loaded = load_model(tmp_path / "run" / "model")
    assert any(not torch.equal(start[name], value) for name, value in loaded.state_dict().items())
    query = (["Where is the football?"], [["John picked up the football."]])
    chunks, positions = ["John went to the office.", "Mary went to the garden."], torch.tensor([[20.0, 38.0]])
    trained = QNetwork(config)
    trained.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        a = trained.q_halves(trained.embed_states(*query).unsqueeze(1), trained.embed_chunks(chunks), positions)
        b = loaded.q_halves(loaded.embed_states(*query).unsqueeze(1), loaded.embed_chunks(chunks), positions)
    assert torch.equal(a, b)

    metrics = train(config, tmp_path / "run", resume=True, data_dir=str(small_data_dir), show_progress=False)
    assert set(metrics) >= {"success_at_k", "f1"}
    state = load_trainer(tmp_path / "run")
    assert (state["updates"], state["transitions"]) == (3, 3 * config.num_envs * config.rollout_steps)


@pytest.mark.parametrize("case, message", [
    ("episodes", "--episodes must be at least 1"),
    ("missing", "no model.safetensors there"),
    ("bad_config", "config.json: not a Q-RAG config"),
    ("lengths", "bad length 'inf'"),
])
def test_qrag_evaluate_names_bad_arguments(network: QNetwork, tmp_path, capsys, case: str, message: str) -> None:
    save_model(network, tmp_path / "model")
    argv = {"episodes": ["--model", str(tmp_path / "model"), "--episodes", "0"],
            "missing": ["--model", str(tmp_path / "nowhere")],
            "bad_config": ["--model", str(tmp_path / "model")],
            "lengths": ["--model", str(tmp_path / "model"), "--lengths", "inf"]}[case]
    if case == "bad_config":
        (tmp_path / "model" / "config.json").write_text("[]")
    with pytest.raises(SystemExit):
        evaluate_main(argv)
    assert message in capsys.readouterr().err


def test_shipped_models_load_and_beat_dense_multistep_on_test_stories(small_data_dir) -> None:
    """The float16 models inside the package load by default and do what the results table says: on the
    official qa2 test stories, far above the untrained multi-step dense retriever."""
    from qrag_agents import make_agent
    from qrag_agents.qrag.pretrained import available, pretrained_folder

    assert {"qa1", "qa2", "qa3"} <= set(available())
    assert {f"qa{n}-stage" for n in range(1, 6)} <= set(available())  # qrag-stage covers every bAbI task
    assert load_model(pretrained_folder("qa2")).config.task == "qa2"
    env = make_eval_env("qa2", 1_000, "test", data_dir=str(small_data_dir))
    scores = {name: summarize(run_cell(Cell(name, "qa2", "1K", 1_000, 0, 20), make_agent(name), env))["success_at_k"]
              for name in ("qrag", "dense-multistep")}
    assert scores["qrag"] >= 0.6 and scores["qrag"] >= scores["dense-multistep"] + 0.4, scores
    stage = make_agent("qrag-stage")  # the candidate-stage model ships beside faithful qa2, as qa2-stage
    staged = summarize(run_cell(Cell("qrag-stage", "qa2", "1K", 1_000, 0, 20), stage, env))["success_at_k"]
    assert stage.network.candidate_stage is not None and stage.network.config.task == "qa2"
    assert staged >= scores["dense-multistep"] + 0.4, staged
    faithful = load_model(pretrained_folder("qa2")).state_dict()  # trained on the shipped faithful model, frozen
    assert all(torch.equal(stage.network.state_dict()[name], value) for name, value in faithful.items())
    with pytest.raises(FileNotFoundError, match="shipped: "):
        QRAGAgent.from_pretrained("qa9")


def test_export_records_provenance_in_the_manifest_and_old_configs_still_load(network: QNetwork, tmp_path) -> None:
    """The export's provenance lives in ``manifest.json``, not in the model's config; a ``config.json``
    written by an earlier version (with its retired ``extra`` field) still loads."""
    from qrag_agents.qrag.pretrained import MANIFEST, export

    save_model(network, tmp_path / "run" / "best")
    shipped = tmp_path / "shipped"
    export(tmp_path / "run" / "best", "qa2", root=shipped)
    assert json.loads((shipped / MANIFEST).read_text()) == {"qa2": {"exported_from": str(tmp_path / "run" / "best")}}
    assert "extra" not in json.loads((shipped / "qa2" / "config.json").read_text())
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(tmp_path / "run" / "best", "qa2", root=shipped)
    export(tmp_path / "run" / "best", "qa2-stop", root=shipped, q_threshold=0.3)  # a stop chosen on validation
    assert load_model(shipped / "qa2-stop").config.q_threshold == 0.3
    assert json.loads((shipped / MANIFEST).read_text())["qa2-stop"]["q_threshold"] == 0.3
    old = json.loads((shipped / "qa2" / "config.json").read_text()) | {"extra": {"exported_from": "somewhere"}}
    (shipped / "qa2" / "config.json").write_text(json.dumps(old))
    assert load_model(shipped / "qa2").config.task == network.config.task


def test_staged_agent_reads_task_stage_folders_and_says_how_to_train_one(tmp_path, network: QNetwork) -> None:
    """``qrag-stage`` reads ``<models_dir>/<task>-stage/best`` (``qrag`` keeps ``<task>/best``); a missing one is
    an error that gives the command training it on the faithful model."""
    from qrag_agents import make_agent

    staged, faithful = make_agent("qrag-stage", models_dir=str(tmp_path), seed=0), make_agent("qrag", models_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"qa3-stage.*--set candidate_stage=true stage_base=runs/qa3/best"):
        staged.check_task("qa3")
    save_model(network, tmp_path / "qa3" / "best")
    with torch.no_grad():
        next(network.parameters()).add_(0.01)
    save_model(network, tmp_path / "qa3-stage" / "best")
    staged.check_task("qa3")
    assert staged.settings_fingerprint("qa3") != faithful.settings_fingerprint("qa3")
    before = staged.settings_fingerprint("qa3")
    config = tmp_path / "qa3-stage" / "best" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"q_threshold": 0.3}))
    assert staged.settings_fingerprint("qa3") != before  # another stop keeps other chunks: another cell
    assert staged._folder_for("qa3") == tmp_path / "qa3-stage" / "best"
