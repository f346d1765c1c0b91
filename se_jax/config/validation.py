"""Config-value checks, one function per config section, run before any model loads.

Pure: each check reads a ConfigDict (or mapping) section and raises ConfigError naming the
field, its value and the rule, e.g.

    config.sampling.num_samples=0: must be >= 2 (semantic entropy compares M >= 2 answers)

A stage validates exactly the sections it uses (`validate_sections(config, SECTIONS)`);
the experiment validates all of them, so a bad value fails in seconds, not after a model
load or, worse, as a silently wrong result.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from se_jax.config import precision


# The correctness judges (se_jax/abstention/judges.py builds one per name).
JUDGE_NAMES = ("alias", "f1", "llm")


class ConfigError(ValueError):
    """A config value is out of range or of the wrong kind; the message names the field."""


def _fail(field: str, value: Any, rule: str) -> None:
    raise ConfigError(f"config.{field}={value!r}: {rule}")


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, "must be a number")
    return float(value)


def check_int(field: str, value: Any, *, minimum: int, why: str = "") -> None:
    """An integer >= minimum (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, value, "must be an integer")
    if value < minimum:
        _fail(field, value, f"must be >= {minimum}" + (f" ({why})" if why else ""))


def check_float(field: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None, positive: bool = False, why: str = "") -> None:
    """A finite number within [minimum, maximum] (and > 0 when `positive`)."""
    x = _number(field, value)
    suffix = f" ({why})" if why else ""
    if not math.isfinite(x):
        _fail(field, value, "must be a finite number" + suffix)
    if positive and x <= 0:
        _fail(field, value, "must be > 0" + suffix)
    if minimum is not None and x < minimum:
        _fail(field, value, f"must be >= {minimum}" + suffix)
    if maximum is not None and x > maximum:
        _fail(field, value, f"must be <= {maximum}" + suffix)


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        _fail(field, value, f"must be one of {list(choices)}")


def check_sizes(field: str, values: Any, *, minimum: int = 1) -> None:
    """A non-empty sequence of integers >= minimum (e.g. padding buckets)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        _fail(field, values, "must be a non-empty list of integers")
    for i, v in enumerate(values):
        check_int(f"{field}[{i}]", v, minimum=minimum)


# ----------------------------------------------------------------------------- sections

def validate_top(config: Any) -> None:
    check_int("seed", config.seed, minimum=0)
    check_choice("on_bad_input", config.on_bad_input, ("skip", "error"))


def validate_model(c: Any) -> None:
    if not isinstance(c.path, str) or not c.path:
        _fail("model.path", c.path, "must name a model (embedded, a directory, a .gguf, a hub id)")
    check_choice("model.dtype", c.dtype, (*precision.DTYPES, precision.AUTO))
    check_choice("model.param_dtype", c.param_dtype, precision.DTYPES)
    check_int("model.max_seq_len", c.max_seq_len, minimum=2)


def validate_mesh(c: Any) -> None:
    check_int("mesh.num_devices", c.get("num_devices", 0), minimum=0,
              why="0 uses every device")
    sizes = {axis: c[axis] for axis in c if axis != "num_devices"}
    for axis, size in sizes.items():
        check_int(f"mesh.{axis}", size, minimum=-1)
        if size == 0:
            _fail(f"mesh.{axis}", size, "must be >= 1, or -1 for the remaining devices")
    if list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"config.mesh={dict(sizes)}: at most one axis may be -1")


def validate_prompt(c: Any) -> None:
    check_choice("prompt.style", c.style, ("short", "sentence"))
    check_choice("prompt.chat", c.chat, ("auto", "chat", "plain"))
    for i, pair in enumerate(c.few_shot):
        if (isinstance(pair, str) or len(pair) != 2
                or not all(isinstance(s, str) and s.strip() for s in pair)):
            _fail(f"prompt.few_shot[{i}]", pair, "must be a (question, answer) pair of "
                  "non-empty strings")


def validate_sampling(c: Any) -> None:
    check_int("sampling.num_samples", c.num_samples, minimum=2,
              why="semantic entropy compares M >= 2 sampled answers")
    check_float("sampling.temperature", c.temperature, minimum=0.0, why="0 = greedy")
    check_float("sampling.low_temperature", c.low_temperature, minimum=0.0,
                why="0 = greedy")
    check_int("sampling.top_k", c.top_k, minimum=0, why="0 = off")
    check_float("sampling.top_p", c.top_p, positive=True, maximum=1.0, why="1.0 = off")
    check_int("sampling.max_new_tokens", c.max_new_tokens, minimum=1)
    check_int("sampling.batch_size", c.batch_size, minimum=1)
    check_sizes("sampling.buckets", c.buckets)


def validate_entropy(c: Any) -> None:
    check_choice("entropy.backend", c.backend, ("deberta", "llm_judge", "lexical"))
    check_choice("entropy.cluster_rule", c.cluster_rule, ("reference", "unassigned"))
    check_float("entropy.lexical_threshold", c.lexical_threshold, minimum=0.0, maximum=1.0)
    check_choice("entropy.nli_dtype", c.nli_dtype, precision.DTYPES)
    check_int("entropy.batch_size", c.batch_size, minimum=1)
    check_sizes("entropy.buckets", c.buckets)
    check_int("entropy.llm_batch_size", c.llm_batch_size, minimum=1)
    check_int("entropy.questions_per_shard", c.questions_per_shard, minimum=1)
    check_choice("entropy.pairs", c.pairs, ("rounds", "full"))
    check_int("entropy.judge_shots", c.judge_shots, minimum=-1, why="-1 = all examples")


def validate_labels(c: Any) -> None:
    check_choice("labels.method", c.method, ("se", "rtuning", "rtuning_u", "idk", "slick"))
    check_float("labels.tau", c.tau, minimum=0.0,
                why="entropies are >= 0; a negative tau labels every question 'abstain'")
    check_choice("labels.entropy", c.entropy,
                 ("discrete_semantic_entropy", "semantic_entropy"))
    if not isinstance(c.abstention_phrase, str) or not c.abstention_phrase.strip():
        _fail("labels.abstention_phrase", c.abstention_phrase, "must be a non-empty string")
    check_choice("labels.judge", c.judge, ("alias", "f1"))
    check_float("labels.f1_threshold", c.f1_threshold, minimum=0.0, maximum=1.0)
    check_choice("labels.answer_source", c.answer_source, ("gold", "model"))
    check_float("labels.idk_threshold", c.idk_threshold, minimum=0.0, maximum=1.0)
    check_choice("labels.slick_unknown", c.slick_unknown, ("drop", "abstain", "keep"))


def validate_training(c: Any) -> None:
    check_choice("training.mode", c.mode, ("lora", "full", "attention", "mlp"))
    lora = c.lora
    check_int("training.lora.rank", lora.rank, minimum=1)
    check_float("training.lora.alpha", lora.alpha, positive=True)
    check_float("training.lora.dropout", lora.dropout, minimum=0.0, maximum=0.999)
    if isinstance(lora.target_modules, str) or not lora.target_modules:
        _fail("training.lora.target_modules", lora.target_modules,
              "must be a non-empty list of projection names")
    check_int("training.lora.top_layers", lora.get("top_layers", 0), minimum=0)
    check_float("training.learning_rate", c.learning_rate, positive=True)
    check_int("training.batch_size", c.batch_size, minimum=1)
    check_int("training.epochs", c.epochs, minimum=1)
    check_int("training.grad_accum_steps", c.grad_accum_steps, minimum=1)
    check_float("training.warmup_ratio", c.warmup_ratio, minimum=0.0, maximum=1.0)
    check_float("training.end_lr_ratio", c.end_lr_ratio, minimum=0.0, maximum=1.0)
    check_float("training.weight_decay", c.weight_decay, minimum=0.0)
    check_float("training.max_grad_norm", c.max_grad_norm, positive=True)
    check_float("training.adam_b1", c.adam_b1, minimum=0.0, maximum=0.999999)
    check_float("training.adam_b2", c.adam_b2, minimum=0.0, maximum=0.999999)
    check_float("training.adam_eps", c.adam_eps, positive=True)
    check_choice("training.loss_on", c.loss_on, ("target", "sequence"))
    check_choice("training.loss_weighting", c.get("loss_weighting", "token"), ("token", "example"))
    d = c.distill
    check_float("training.distill.weight", d.weight, minimum=0.0)
    check_float("training.distill.temperature", d.temperature, positive=True)
    check_int("training.distill.teacher_epoch", d.teacher_epoch, minimum=0)
    check_int("training.pad_multiple", c.pad_multiple, minimum=1)
    check_int("training.bucket_batches", c.bucket_batches, minimum=1)
    check_int("training.loss_chunk_tokens", c.loss_chunk_tokens, minimum=1)
    check_int("training.save_every", c.save_every, minimum=1)
    check_int("training.keep", c.keep, minimum=1)
    if c.max_steps != -1:
        check_int("training.max_steps", c.max_steps, minimum=1, why="or -1 = no limit")
    check_float("training.log_every_seconds", c.log_every_seconds, positive=True)
    check_int("training.log_every_steps", c.log_every_steps, minimum=1)


def validate_evaluation(c: Any) -> None:
    check_choice("evaluation.judge", c.judge, JUDGE_NAMES)
    check_float("evaluation.f1_threshold", c.f1_threshold, minimum=0.0, maximum=1.0)
    check_int("evaluation.judge_batch_size", c.judge_batch_size, minimum=1)
    check_int("evaluation.judge_shots", c.judge_shots, minimum=-1, why="-1 = all examples")
    check_int("evaluation.max_new_tokens", c.max_new_tokens, minimum=1)
    check_int("evaluation.batch_size", c.batch_size, minimum=1)
    check_int("evaluation.bootstrap_samples", c.bootstrap_samples, minimum=1)
    check_float("evaluation.confidence", c.confidence, positive=True, maximum=0.999999)


def validate_data(c: Any) -> None:
    check_choice("data.source", c.source, ("catalog", "facts"))
    if c.source == "facts":
        return   # the draw is config.facts (validate_facts)
    for name in ("train_size", "val_size", "test_size", "ood_size"):
        check_int(f"data.{name}", c[name], minimum=1 if name == "train_size" else 0)
    check_int("data.seed", c.seed, minimum=0)
    if not isinstance(c.in_distribution, str) or not c.in_distribution:
        _fail("data.in_distribution", c.in_distribution, "must name a dataset")


def validate_facts(c: Any) -> None:
    for name in ("n_known", "n_unknown", "n_ood_known", "n_ood_unknown"):
        check_int(f"facts.{name}", c[name], minimum=0)
    if int(c.n_known) + int(c.n_unknown) < 1:
        _fail("facts.n_known", c.n_known, "n_known + n_unknown must be >= 1")
    check_int("facts.phrasings", c.phrasings, minimum=1)
    check_int("facts.seed", c.seed, minimum=0)
    if len(tuple(c.fractions)) != 3:
        _fail("facts.fractions", c.fractions, "must be three (train, val, test) weights")
    for i, f in enumerate(c.fractions):
        check_float(f"facts.fractions[{i}]", f, minimum=0.0)


def validate_teach(c: Any) -> None:
    if not isinstance(c.enabled, bool):
        _fail("teach.enabled", c.enabled, "must be True or False")
    t = c.training
    if "epochs" in t:
        check_int("teach.training.epochs", t.epochs, minimum=1)
    if "batch_size" in t:
        check_int("teach.training.batch_size", t.batch_size, minimum=1)
    if "learning_rate" in t:
        check_float("teach.training.learning_rate", t.learning_rate, positive=True)
    if "lora" in t and "rank" in t.lora:
        check_int("teach.training.lora.rank", t.lora.rank, minimum=1)


def validate_experiment(c: Any) -> None:
    for i, style in enumerate(c.settings):
        check_choice(f"experiment.settings[{i}]", style, ("short", "sentence"))
    taus = list(c.taus)
    for i, t in enumerate(taus):
        check_float(f"experiment.taus[{i}]", t, minimum=0.0)
    if not list(c.seeds):
        _fail("experiment.seeds", c.seeds, "must list at least one seed")
    for i, s in enumerate(c.seeds):
        check_int(f"experiment.seeds[{i}]", s, minimum=0)


SECTION_CHECKS: Mapping[str, Callable[[Any], None]] = dict(
    model=validate_model, mesh=validate_mesh, prompt=validate_prompt,
    sampling=validate_sampling, entropy=validate_entropy, labels=validate_labels,
    training=validate_training, evaluation=validate_evaluation, data=validate_data,
    experiment=validate_experiment, facts=validate_facts, teach=validate_teach)

# The sections each stage reads (the experiment: all of them).
STAGE_SECTIONS: Mapping[str, tuple[str, ...]] = dict(
    sample=("model", "mesh", "prompt", "sampling"),
    entropy=("model", "mesh", "entropy"),
    label=("labels",),
    train=("model", "mesh", "prompt", "labels", "training"),
    evaluate=("model", "mesh", "prompt", "sampling", "evaluation", "labels"),
    experiment=tuple(SECTION_CHECKS),
)


def validate_sections(config: Any, sections: Sequence[str]) -> None:
    """Check the top-level fields and each named section; ConfigError on the first bad value."""
    validate_top(config)
    for name in sections:
        if name not in SECTION_CHECKS:
            raise KeyError(f"validate_sections: unknown section {name!r}; "
                           f"known: {sorted(SECTION_CHECKS)}")
        if name not in config:
            raise ConfigError(f"config.{name}: section missing from the config")
        try:
            SECTION_CHECKS[name](config[name])
        except (AttributeError, KeyError) as e:
            raise ConfigError(f"config.{name}: field missing ({e})") from None


def validate_stage(config: Any, stage: str) -> None:
    """validate_sections with the sections `stage` reads (STAGE_SECTIONS)."""
    validate_sections(config, STAGE_SECTIONS[stage])
