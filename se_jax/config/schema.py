"""The run configuration as typed, frozen sections: what every stage and core function reads.

Users write and override ml_collections files (`configs/*.py`, `--config.a.b=...`);
`RunConfig.from_configdict` turns one into this tree in exactly one place, the launchers'
edge (`se_jax/pipeline/cli.py`, `experiment.run`). The defaults live in `configs/base.py`
only: a section here has no defaults, so a config that lacks a field fails by name.

Each section checks itself when built (`__post_init__`) and raises `ConfigError` naming the
field, its value and the rule:

    config.sampling.num_samples=0: must be >= 2 (semantic entropy compares M >= 2 answers)

`to_dict()` gives back the ConfigDict's nested keys, so `config.json` beside every output is
unchanged and workdirs written before the typed config resume.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from se_jax.config import precision
from se_jax.config.validation import (JUDGE_NAMES, ConfigError, check_choice, check_float,
                                      check_int, check_sizes, fail)

STYLES = ("short", "sentence")
# How runs are chosen (se_jax/pipeline/plan.py): the paper's Best-Threshold Evaluation, or the
# full tau x seed product.
PROTOCOLS = ("paper", "grid")


def _section(cls):
    """A frozen, keyword-only dataclass (fields in configs/base.py's order)."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


@_section
class ModelConfig:
    """The generator LLM (Llama family)."""
    path: str            # "embedded", an HF directory, a .gguf file, or a hub id
    adapter: str         # a PEFT adapter directory folded into the weights at load
    dtype: str           # compute dtype: float32 | bfloat16 | auto (precision.py)
    param_dtype: str     # storage dtype of the weights
    max_seq_len: int     # KV-cache length: prompt + generated tokens
    scan_layers: bool    # the layers as one lax.scan (compile once per program, not per layer)

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            fail("model.path", self.path,
                 "must name a model (embedded, a directory, a .gguf, a hub id)")
        check_choice("model.dtype", self.dtype, (*precision.DTYPES, precision.AUTO))
        check_choice("model.param_dtype", self.param_dtype, precision.DTYPES)
        check_int("model.max_seq_len", self.max_seq_len, minimum=2)
        if not isinstance(self.scan_layers, bool):
            fail("model.scan_layers", self.scan_layers, "must be True or False")


@_section
class MeshConfig:
    """Device mesh axis sizes (-1 = the remaining devices); num_devices > 0 keeps the first N."""
    data: int
    fsdp: int
    tensor: int
    num_devices: int

    def __post_init__(self):
        check_int("mesh.num_devices", self.num_devices, minimum=0, why="0 uses every device")
        sizes = self.axes()
        for axis, size in sizes.items():
            check_int(f"mesh.{axis}", size, minimum=-1)
            if size == 0:
                fail(f"mesh.{axis}", size, "must be >= 1, or -1 for the remaining devices")
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(f"config.mesh={dict(sizes)}: at most one axis may be -1")

    def axes(self) -> dict[str, int]:
        """{axis: size} of the mesh axes (what `parallel.mesh.make_mesh` takes)."""
        return dict(data=self.data, fsdp=self.fsdp, tensor=self.tensor)


@_section
class PromptConfig:
    """How a question becomes a prompt (se_jax/data/prompts.py)."""
    style: str                                  # short | sentence
    chat: str                                   # auto | chat | plain
    few_shot: tuple[tuple[str, str], ...]       # (question, answer) examples

    def __post_init__(self):
        check_choice("prompt.style", self.style, STYLES)
        check_choice("prompt.chat", self.chat, ("auto", "chat", "plain"))
        for i, pair in enumerate(self.few_shot):
            if (isinstance(pair, str) or len(pair) != 2
                    or not all(isinstance(s, str) and s.strip() for s in pair)):
                fail(f"prompt.few_shot[{i}]", pair,
                     "must be a (question, answer) pair of non-empty strings")

    def format_kwargs(self) -> dict[str, Any]:
        """`prompts.format_prompt` keyword arguments (chat: None = the tokenizer decides)."""
        chat = dict(auto=None, chat=True, plain=False)[self.chat]
        return dict(style=self.style, chat=chat, few_shot=tuple(map(tuple, self.few_shot)))


@_section
class SamplingConfig:
    """The sample stage: 1 low-temperature + M sampled answers per question."""
    num_samples: int
    temperature: float
    low_temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    batch_size: int
    buckets: tuple[int, ...]
    stop_strings: tuple[str, ...]
    input: str       # questions JSONL of the stand-alone launcher (launch/sample.py)
    out_dir: str

    def __post_init__(self):
        check_int("sampling.num_samples", self.num_samples, minimum=2,
                  why="semantic entropy compares M >= 2 sampled answers")
        check_float("sampling.temperature", self.temperature, minimum=0.0, why="0 = greedy")
        check_float("sampling.low_temperature", self.low_temperature, minimum=0.0,
                    why="0 = greedy")
        check_int("sampling.top_k", self.top_k, minimum=0, why="0 = off")
        check_float("sampling.top_p", self.top_p, positive=True, maximum=1.0, why="1.0 = off")
        check_int("sampling.max_new_tokens", self.max_new_tokens, minimum=1)
        check_int("sampling.batch_size", self.batch_size, minimum=1)
        check_sizes("sampling.buckets", self.buckets)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `sampling.generate` / `sample_answers`."""
        return dict(max_new_tokens=self.max_new_tokens, top_k=self.top_k, top_p=self.top_p,
                    stop_strings=self.stop_strings, batch_size=self.batch_size,
                    buckets=self.buckets)


@_section
class ProbesConfig:
    """Hidden states for semantic entropy probes (se_jax/io/hidden_states.py); () = off."""
    layers: tuple[int, ...]      # 0 = embeddings' output, i = layer i's output, -1 = final norm
    positions: tuple[str, ...]   # tbg (last prompt token) | slt (2nd-to-last greedy token)
    dtype: str                   # storage dtype of hidden_states.npz
    l2: float                    # the probes' L2 penalty on standardised features (1/C)
    val_fraction: float          # SE-subset share held out to pick position and layer
    max_iter: int                # Newton steps at most per probe fit

    def __post_init__(self):
        if not isinstance(self.layers, tuple) or not all(
                isinstance(l, int) and not isinstance(l, bool) and l >= -1 for l in self.layers):
            fail("probes.layers", self.layers, "must be a tuple of layer indices >= -1")
        if len(set(self.layers)) != len(self.layers):
            fail("probes.layers", self.layers, "names a layer twice")
        if not self.positions or any(p not in ("tbg", "slt") for p in self.positions) \
                or len(set(self.positions)) != len(self.positions):
            fail("probes.positions", self.positions,
                 "must be a non-empty tuple of distinct 'tbg' / 'slt'")
        check_choice("probes.dtype", self.dtype, ("float16", "float32"))
        check_float("probes.l2", self.l2, positive=True,
                    why="separable features have no unpenalised optimum")
        check_float("probes.val_fraction", self.val_fraction, positive=True, maximum=0.9,
                    why="the held-out share of the SE subset that picks position and layer")
        check_int("probes.max_iter", self.max_iter, minimum=1)

    @property
    def enabled(self) -> bool:
        return bool(self.layers)


@_section
class EntropyConfig:
    """The entropy stage: equivalence backend, clustering rule, batching."""
    backend: str
    strict: bool
    condition_on_question: bool
    cluster_rule: str
    lexical_threshold: float
    nli_path: str
    nli_dtype: str
    batch_size: int
    buckets: tuple[int, ...]
    judge_model: str
    judge_prompt: str
    judge_shots: int
    llm_batch_size: int
    pairs: str
    questions_per_shard: int
    generations: str   # generations.jsonl of the stand-alone launcher (launch/entropy.py)
    out_dir: str

    def __post_init__(self):
        check_choice("entropy.backend", self.backend, ("deberta", "llm_judge", "lexical"))
        check_choice("entropy.cluster_rule", self.cluster_rule, ("reference", "unassigned"))
        check_float("entropy.lexical_threshold", self.lexical_threshold, minimum=0.0,
                    maximum=1.0)
        check_choice("entropy.nli_dtype", self.nli_dtype, precision.DTYPES)
        check_int("entropy.batch_size", self.batch_size, minimum=1)
        check_sizes("entropy.buckets", self.buckets)
        check_int("entropy.llm_batch_size", self.llm_batch_size, minimum=1)
        check_int("entropy.questions_per_shard", self.questions_per_shard, minimum=1)
        check_choice("entropy.pairs", self.pairs, ("rounds", "full"))
        check_int("entropy.judge_shots", self.judge_shots, minimum=-1, why="-1 = all examples")


@_section
class SepConfig:
    """The `sep` labeller: semantic entropy on `train_size` training questions, a probe on
    their hidden states labels every training question (se_jax/abstention/probes.py)."""
    train_size: int      # questions SE is computed on (the first of the train split)

    def __post_init__(self):
        check_int("labels.sep.train_size", self.train_size, minimum=4,
                  why="the probe is fitted and validated on the SE subset")


@_section
class LabelsConfig:
    """The label stage: generations (+ uncertainties) -> SFT set."""
    method: str
    tau: float
    entropy: str
    backend: str
    abstention_phrase: str
    judge: str
    f1_threshold: float
    answer_source: str
    idk_threshold: float
    slick_unknown: str
    generations: str     # the stand-alone launcher's inputs and output (launch/label.py)
    uncertainty: str
    slick_answers: str
    out_dir: str
    sep: SepConfig

    def __post_init__(self):
        check_choice("labels.method", self.method,
                     ("se", "rtuning", "rtuning_u", "idk", "slick", "sep"))
        check_float("labels.tau", self.tau, minimum=0.0,
                    why="entropies are >= 0; a negative tau labels every question 'abstain'")
        check_choice("labels.entropy", self.entropy,
                     ("discrete_semantic_entropy", "semantic_entropy"))
        if not isinstance(self.abstention_phrase, str) or not self.abstention_phrase.strip():
            fail("labels.abstention_phrase", self.abstention_phrase,
                 "must be a non-empty string")
        check_choice("labels.judge", self.judge, ("alias", "f1"))
        check_float("labels.f1_threshold", self.f1_threshold, minimum=0.0, maximum=1.0)
        check_choice("labels.answer_source", self.answer_source, ("gold", "model"))
        check_float("labels.idk_threshold", self.idk_threshold, minimum=0.0, maximum=1.0)
        check_choice("labels.slick_unknown", self.slick_unknown, ("drop", "abstain", "keep"))


@_section
class LoraConfig:
    """LoRA adapters: rank, scale alpha / rank, dropout, targets, top layers only (> 0)."""
    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | str   # names, or one regex
    top_layers: int

    def __post_init__(self):
        check_int("training.lora.rank", self.rank, minimum=1)
        check_float("training.lora.alpha", self.alpha, positive=True)
        check_float("training.lora.dropout", self.dropout, minimum=0.0, maximum=0.999)
        if not self.target_modules:
            fail("training.lora.target_modules", self.target_modules,
                 "must be a non-empty list of projection names, or one regex (as PEFT's)")
        check_int("training.lora.top_layers", self.top_layers, minimum=0)


@_section
class DistillConfig:
    """Self-distillation: CE + weight * temperature^2 * KL(teacher || student)."""
    enabled: bool
    weight: float
    temperature: float
    teacher_epoch: int

    def __post_init__(self):
        check_float("training.distill.weight", self.weight, minimum=0.0)
        check_float("training.distill.temperature", self.temperature, positive=True)
        check_int("training.distill.teacher_epoch", self.teacher_epoch, minimum=0)


@_section
class TrainingConfig:
    """The train stage: LoRA or partly frozen full fine-tuning with optax, Orbax state."""
    mode: str
    lora: LoraConfig
    learning_rate: float
    batch_size: int
    epochs: int
    grad_accum_steps: int
    warmup_ratio: float
    end_lr_ratio: float
    weight_decay: float
    max_grad_norm: float
    adam_b1: float
    adam_b2: float
    adam_eps: float
    loss_on: str
    loss_weighting: str
    distill: DistillConfig
    shared_prefix: bool
    loss_columns: bool
    pad_multiple: int
    bucket_batches: int
    loss_chunk_tokens: int
    save_every: int
    keep: int
    async_checkpoint: bool
    max_steps: int
    log_every_seconds: float
    log_every_steps: int
    export_adapter: bool
    export_merged: bool
    sft: str        # the stand-alone launcher's input and output (launch/train.py)
    out_dir: str

    def __post_init__(self):
        check_choice("training.mode", self.mode, ("lora", "full", "attention", "mlp"))
        check_float("training.learning_rate", self.learning_rate, positive=True)
        check_int("training.batch_size", self.batch_size, minimum=1)
        check_int("training.epochs", self.epochs, minimum=1)
        check_int("training.grad_accum_steps", self.grad_accum_steps, minimum=1)
        check_float("training.warmup_ratio", self.warmup_ratio, minimum=0.0, maximum=1.0)
        check_float("training.end_lr_ratio", self.end_lr_ratio, minimum=0.0, maximum=1.0)
        check_float("training.weight_decay", self.weight_decay, minimum=0.0)
        check_float("training.max_grad_norm", self.max_grad_norm, positive=True)
        check_float("training.adam_b1", self.adam_b1, minimum=0.0, maximum=0.999999)
        check_float("training.adam_b2", self.adam_b2, minimum=0.0, maximum=0.999999)
        check_float("training.adam_eps", self.adam_eps, positive=True)
        check_choice("training.loss_on", self.loss_on, ("target", "sequence"))
        check_choice("training.loss_weighting", self.loss_weighting, ("token", "example"))
        check_int("training.pad_multiple", self.pad_multiple, minimum=1)
        check_int("training.bucket_batches", self.bucket_batches, minimum=1)
        check_int("training.loss_chunk_tokens", self.loss_chunk_tokens, minimum=1)
        check_int("training.save_every", self.save_every, minimum=1)
        check_int("training.keep", self.keep, minimum=1)
        if self.max_steps != -1:
            check_int("training.max_steps", self.max_steps, minimum=1, why="or -1 = no limit")
        check_float("training.log_every_seconds", self.log_every_seconds, positive=True)
        check_int("training.log_every_steps", self.log_every_steps, minimum=1)


def dataset_names(in_distribution: str | tuple[str, ...]) -> tuple[str, ...]:
    """`data.in_distribution` as a tuple of names (a single name is a one-name tuple)."""
    return ((in_distribution,) if isinstance(in_distribution, str)
            else tuple(in_distribution))


@_section
class DataConfig:
    """Datasets (se_jax/data/catalog.py names them) and the paper's fixed-seed splits."""
    source: str
    # One dataset name, or several (the paper's "Mult": train and validation are the unions
    # of each dataset's own draws); config.json keeps whichever form the config gave.
    in_distribution: str | tuple[str, ...]
    out_of_distribution: tuple[str, ...]
    train_size: int
    val_size: int
    test_size: int
    ood_size: int
    seed: int
    source_dir: str
    tfds_dir: str
    download: bool

    def __post_init__(self):
        check_choice("data.source", self.source, ("catalog", "facts"))
        if self.source == "facts":
            return   # the draw is config.facts
        for name in ("train_size", "val_size", "test_size", "ood_size"):
            check_int(f"data.{name}", getattr(self, name),
                      minimum=1 if name == "train_size" else 0)
        check_int("data.seed", self.seed, minimum=0)
        names = self.in_distribution_names
        if not names or not all(isinstance(n, str) and n for n in names):
            fail("data.in_distribution", self.in_distribution,
                 "must name a dataset, or several as a tuple of names")
        if len(set(names)) != len(names):
            fail("data.in_distribution", self.in_distribution, "lists a dataset twice")

    @property
    def in_distribution_names(self) -> tuple[str, ...]:
        """The in-distribution dataset names, one or several."""
        return dataset_names(self.in_distribution)

    @property
    def in_distribution_label(self) -> str:
        """How reports name the in-distribution data: the dataset, or "Mult (a + b + c)"."""
        names = self.in_distribution_names
        return names[0] if len(names) == 1 else f"Mult ({' + '.join(names)})"


@_section
class FactsConfig:
    """The knowledge-controlled fact pool and its draw (data.source = "facts")."""
    pool: str
    relations: tuple[str, ...]
    ood_relations: tuple[str, ...]
    n_known: int
    n_unknown: int
    n_ood_known: int
    n_ood_unknown: int
    fractions: tuple[float, float, float]
    seed: int
    phrasings: int

    def __post_init__(self):
        for name in ("n_known", "n_unknown", "n_ood_known", "n_ood_unknown"):
            check_int(f"facts.{name}", getattr(self, name), minimum=0)
        if self.n_known + self.n_unknown < 1:
            fail("facts.n_known", self.n_known, "n_known + n_unknown must be >= 1")
        check_int("facts.phrasings", self.phrasings, minimum=1)
        check_int("facts.seed", self.seed, minimum=0)
        if len(self.fractions) != 3:
            fail("facts.fractions", self.fractions, "must be three (train, val, test) weights")
        for i, f in enumerate(self.fractions):
            check_float(f"facts.fractions[{i}]", f, minimum=0.0)


@_section
class TeachConfig:
    """The teach step: `training` holds only the `config.training` fields it changes."""
    enabled: bool
    training: Mapping[str, Any]

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            fail("teach.enabled", self.enabled, "must be True or False")
        t = self.training
        if "epochs" in t:
            check_int("teach.training.epochs", t["epochs"], minimum=1)
        if "batch_size" in t:
            check_int("teach.training.batch_size", t["batch_size"], minimum=1)
        if "learning_rate" in t:
            check_float("teach.training.learning_rate", t["learning_rate"], positive=True)
        if "rank" in t.get("lora", {}):
            check_int("teach.training.lora.rank", t["lora"]["rank"], minimum=1)


@_section
class EvaluationConfig:
    """Greedy evaluation: correctness judge, abstention detection, bootstrap intervals."""
    judge: str
    f1_threshold: float
    judge_model: str
    judge_batch_size: int
    judge_prompt: str
    judge_shots: int
    abstention_variants: tuple[str, ...]
    max_new_tokens: int
    batch_size: int
    bootstrap_samples: int
    confidence: float

    def __post_init__(self):
        check_choice("evaluation.judge", self.judge, JUDGE_NAMES)
        check_float("evaluation.f1_threshold", self.f1_threshold, minimum=0.0, maximum=1.0)
        check_int("evaluation.judge_batch_size", self.judge_batch_size, minimum=1)
        check_int("evaluation.judge_shots", self.judge_shots, minimum=-1,
                  why="-1 = all examples")
        check_int("evaluation.max_new_tokens", self.max_new_tokens, minimum=1)
        check_int("evaluation.batch_size", self.batch_size, minimum=1)
        check_int("evaluation.bootstrap_samples", self.bootstrap_samples, minimum=1)
        check_float("evaluation.confidence", self.confidence, positive=True, maximum=0.999999)


@_section
class ExperimentConfig:
    """The tau sweep against baselines (se_jax/pipeline/experiment.py)."""
    methods: tuple[str, ...]
    taus: tuple[float, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    slick_breakdown: bool
    settings: tuple[str, ...]
    protocol: str        # paper: taus swept at the first seed, the pick at the rest | grid
    out_dir: str

    def __post_init__(self):
        check_choice("experiment.protocol", self.protocol, PROTOCOLS)
        for i, style in enumerate(self.settings):
            check_choice(f"experiment.settings[{i}]", style, STYLES)
        for i, t in enumerate(self.taus):
            check_float(f"experiment.taus[{i}]", t, minimum=0.0)
        if not self.seeds:
            fail("experiment.seeds", self.seeds, "must list at least one seed")
        for i, s in enumerate(self.seeds):
            check_int(f"experiment.seeds[{i}]", s, minimum=0)


SECTIONS: Mapping[str, type] = dict(
    model=ModelConfig, mesh=MeshConfig, prompt=PromptConfig, sampling=SamplingConfig,
    probes=ProbesConfig,
    entropy=EntropyConfig, data=DataConfig, evaluation=EvaluationConfig,
    experiment=ExperimentConfig, labels=LabelsConfig, training=TrainingConfig,
    facts=FactsConfig, teach=TeachConfig)
NESTED: Mapping[tuple[str, str], type] = {("training", "lora"): LoraConfig,
                                          ("training", "distill"): DistillConfig,
                                          ("labels", "sep"): SepConfig}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run's whole configuration: the top-level fields and one section per stage."""
    workdir: str
    seed: int
    on_bad_input: str
    model: ModelConfig
    mesh: MeshConfig
    prompt: PromptConfig
    sampling: SamplingConfig
    probes: ProbesConfig
    entropy: EntropyConfig
    data: DataConfig
    evaluation: EvaluationConfig
    experiment: ExperimentConfig
    labels: LabelsConfig
    training: TrainingConfig
    facts: FactsConfig
    teach: TeachConfig

    def __post_init__(self):
        check_int("seed", self.seed, minimum=0)
        for where, value in _path_fields(self):
            if _URL.match(value):
                fail(where, value, "URLs are not supported for files se_jax reads or writes "
                     "(stage outputs are written atomically with local renames): mount the "
                     "bucket (e.g. gcsfuse on every host) and give the mount's path; the "
                     "compile cache alone takes gs:// (SE_JAX_COMPILE_CACHE)")
        check_choice("on_bad_input", self.on_bad_input, ("skip", "error"))

    @classmethod
    def from_configdict(cls, config: Any) -> "RunConfig":
        """The typed tree of an ml_collections ConfigDict (or nested mapping), checked.
        A RunConfig passes through unchanged."""
        if isinstance(config, cls):
            return config
        tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        top = {k: v for k, v in tree.items() if k not in SECTIONS}
        sections = {}
        for name, section in SECTIONS.items():
            if name not in tree:
                raise ConfigError(f"config.{name}: section missing from the config")
            sections[name] = _build(section, name, tree[name])
        return _build(cls, "", {**top, **sections}, typed=set(SECTIONS))

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of the ConfigDict this came from (config.json's keys)."""
        return _plain(self)

    def replace(self, **sections: Mapping[str, Any] | Any) -> "RunConfig":
        """A copy with top-level fields, or fields of sections, replaced (and checked):
        `config.replace(seed=1, labels=dict(method="rtuning", tau=0.5))`."""
        changes = {}
        for name, value in sections.items():
            if name in SECTIONS and isinstance(value, Mapping):
                current = getattr(self, name)
                nested = {k: dataclasses.replace(getattr(current, k), **v)
                          for k, v in value.items() if (name, k) in NESTED}
                changes[name] = dataclasses.replace(
                    current, **{**dict(value), **nested})
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PATH_NAMES = re.compile(r"(^|_)(path|dir|workdir|input|sft|generations|uncertainty|"
                         r"slick_answers|adapter|judge_model|nli_path)$")


def _path_fields(config: RunConfig):
    """(config.<section>.<field>, value) of every string field that names a file or a
    directory."""
    if isinstance(config.workdir, str):
        yield "workdir", config.workdir
    for name in SECTIONS:
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, str) and _PATH_NAMES.search(f.name):
                yield f"{name}.{f.name}", value


def _build(cls: type, where: str, values: Mapping[str, Any], typed: set[str] = frozenset()):
    """cls(**values) with nested sections built, sequences as tuples, and unknown or
    missing fields reported by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"config.{prefix}{unknown[0]}: unknown field (known: {sorted(names)})")
    missing = sorted(names - set(values))
    if missing:
        raise ConfigError(f"config.{where or 'top level'}: field missing ({missing[0]!r})")
    kwargs = {}
    for name, value in values.items():
        nested = NESTED.get((where, name))
        if nested is not None:
            value = _build(nested, f"{where}.{name}", value)
        elif name not in typed:
            value = _frozen(value)
        kwargs[name] = value
    return cls(**kwargs)


def _frozen(value: Any) -> Any:
    """Lists as tuples (recursively), so sections are hashable and compare by value."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


__all__ = ["RunConfig", "ConfigError", "SECTIONS", *(c.__name__ for c in SECTIONS.values()),
           "LoraConfig", "DistillConfig", "SepConfig"]
