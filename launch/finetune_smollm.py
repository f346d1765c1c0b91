"""End to end on the embedded SmolLM2-135M-Instruct: SE labels -> LoRA SFT -> does the model
now follow its labels?

Runs the real stages on the first N NQ-open dev questions of ../shared/data:
sample (1 answer at T=0.1 + M at T=1) -> entropy (lexical equivalence backend; no NLI
checkpoint can be downloaded here) -> label (SE: semantic entropy > tau -> "I don't know the
answer.", else the model's own T=0.1 answer; the probability-weighted SE, see make_config)
-> train (LoRA, default r=8 on q_proj/v_proj) -> greedy answers of the trained model on the same
training questions (one model load: every stage shares it). Prints, before and after training, the fraction of abstain-labelled
questions on which the model abstains and the fraction of answer-labelled questions on which
it gives its own (target) answer. "Before" reads the base model's T=0.1 answers from the
sample stage (the targets themselves), so no second base-model decode is needed.

    python launch/finetune_smollm.py --num_questions=300 --workdir=/tmp/smollm_ft

What it showed, and with which flags: docs/experiments.md.

tau defaults to the observed entropy value that splits the set closest to half abstain, half
answer (`labels.balanced_tau`; the paper sweeps tau instead). Every stage is resumable:
rerunning the same command continues.
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import json
import os
from pathlib import Path
from typing import Any

from absl import flags, logging

from se_jax.config.schema import RunConfig

_N = flags.DEFINE_integer("num_questions", 300, "NQ-open dev questions to label and train on")
_M = flags.DEFINE_integer("num_samples", 6, "sampled answers per question (T=1)")
_TAU = flags.DEFINE_float("tau", None, "SE threshold; default: labels.balanced_tau")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "training epochs")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "peak learning rate")
_BATCH = flags.DEFINE_integer("batch_size", 16, "training batch size")
# The paper's adapter (r=8 on q, v) learns here to abstain, but not where: which of its own
# few hundred training questions to abstain on is memorised with r=16 on every projection.
_RANK = flags.DEFINE_integer("lora_rank", 16, "LoRA rank")
_TARGETS = flags.DEFINE_list("lora_targets", ["q_proj", "k_proj", "v_proj", "o_proj",
                                              "gate_proj", "up_proj", "down_proj"],
                             "LoRA target modules")
_TRAIN_NAME = flags.DEFINE_string("train_name", "train", "train stage directory under workdir "
                                  "(one per training setting; sample/entropy/label are shared)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/se_jax_finetune_smollm", "output directory")
_DATA = flags.DEFINE_string("shared_data", "", "../shared/data ('' = $SE_JAX_SHARED_DATA or "
                            "the directory beside the checkout)")


def shared_data_dir(path: str = "") -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(path or os.environ.get("SE_JAX_SHARED_DATA", root.parent / "shared" / "data"))


def write_questions(shared_data: Path, n: int, out: Path) -> Path:
    """The first `n` NQ-open dev questions as {"id", "question", "answers"} JSONL."""
    source = shared_data / "nq_open" / "NQ-open.dev.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()[:n]
    records = []
    for i, line in enumerate(lines):
        r = json.loads(line)
        records.append({"id": f"nq-dev-{i}", "question": r["question"], "answers": r["answer"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return out


def make_config(workdir: Path, questions: Path, *, num_samples: int, mesh: dict | None = None):
    """The config of the sample and entropy stages (they record the whole config, so the
    label/train options are set later on a copy, keeping those stages resumable)."""
    from configs.base import get_config
    c = get_config()
    c.workdir = str(workdir)
    c.model.path = "embedded"
    if mesh is not None:
        c.mesh.update(mesh)
    c.sampling.update(dict(input=str(questions), num_samples=num_samples, max_new_tokens=16,
                           batch_size=8))
    c.entropy.backend = "lexical"
    c.labels.method = "se"
    # The probability-weighted SE: SmolLM2-135M's samples are so scattered that the discrete
    # (cluster-count) entropy of 6 samples is at its maximum for most questions, which no
    # threshold can split; the weighted one still ranks them.
    c.labels.entropy = "semantic_entropy"
    return RunConfig.from_configdict(c)


def greedy(model: Any, tokenizer: Any, questions: list[dict], config: Any, mesh) -> dict:
    """id -> greedy answer text, prompted exactly as the sampler prompts."""
    from se_jax.generation import sampling
    from se_jax.data import prompts as prompt_lib
    kwargs = config.prompt.format_kwargs()
    prompts = [prompt_lib.format_prompt(tokenizer, q["question"], **kwargs) for q in questions]
    ids = [q["id"] for q in questions]
    sc = config.sampling
    answers = sampling.greedy_answers(
        model, tokenizer, prompts, ids, max_new_tokens=int(sc.max_new_tokens),
        stop_strings=tuple(sc.stop_strings), batch_size=int(sc.batch_size),
        buckets=tuple(sc.buckets), max_seq_len=int(config.model.max_seq_len), mesh=mesh)
    return {i: a.text for i, a in zip(ids, answers)}


def finetune_and_measure(workdir: str | Path, *, num_questions: int, num_samples: int = 6,
                         tau: float | None = None, epochs: int = 3,
                         learning_rate: float = 2e-3, batch_size: int = 16,
                         lora_rank: int = 8, lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
                         train_name: str = "train", mesh: dict | None = None,
                         pad_multiple: int = 32, shared_data: str = "") -> dict:
    """Run sample -> entropy -> label -> train on the embedded model and measure how the
    greedy answers on the training questions follow the labels, before and after.

    The training run goes to workdir/<train_name> with its result in finetune_result.json
    there, so several training settings can share one set of labels."""
    from se_jax.abstention import labels
    from se_jax.io import stage_io
    from se_jax.parallel.mesh import make_mesh
    from se_jax.pipeline import layout
    from se_jax.pipeline.resident import Resident
    from se_jax.pipeline.stages.entropy import run_entropy
    from se_jax.pipeline.stages.label import run_label
    from se_jax.pipeline.stages.sample import run_sample
    from se_jax.pipeline.stages.train import run_train

    workdir = Path(workdir)
    questions = write_questions(shared_data_dir(shared_data), num_questions,
                                workdir / "questions.jsonl")
    config = make_config(workdir, questions, num_samples=num_samples, mesh=mesh)
    # One load: the sampler, the trainer and the evaluation share the resident base.
    resident = Resident.load(config.model, make_mesh(config.mesh))
    gen_path = run_sample(config, *layout.sample_paths(config), resident)
    unc_path = run_entropy(config, *layout.entropy_paths(config))
    entropies = [u[config.labels.entropy] for u in stage_io.read_jsonl(unc_path)]
    # Label/train with the chosen tau and training options on a copy (see make_config).
    config = config.replace(
        labels=dict(tau=float(labels.balanced_tau(entropies) if tau is None else tau)),
        training=dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                      warmup_ratio=0.1, save_every=5, keep=2, log_every_steps=5,
                      pad_multiple=pad_multiple, out_dir=str(workdir / train_name),
                      lora=dict(rank=lora_rank, alpha=2.0 * lora_rank,
                                target_modules=tuple(lora_targets))))
    sft_path = run_label(config, *layout.label_paths(config))
    sft = [labels.Example(**r) for r in stage_io.read_jsonl(sft_path)]
    trained = run_train(config, *layout.train_paths(config), resident)
    train_dir = trained.out_dir
    model = trained.run_model(config, resident)

    qs = stage_io.read_jsonl(questions)
    before = {g["id"]: g["most_likely"]["text"] for g in stage_io.read_jsonl(gen_path)}
    # The trained LoRA model as it is in memory, as the sweep engine evaluates its runs.
    after = greedy(model, resident.tokenizer, qs, config, resident.mesh)
    summary = json.loads((train_dir / "summary.json").read_text())
    result = dict(num_questions=len(qs), tau=config.labels.tau,
                  train_first_loss=summary["first_loss"], train_last_loss=summary["last_loss"],
                  before=labels.label_adherence(sft, before),
                  after=labels.label_adherence(sft, after))
    stage_io.atomic_write_text(train_dir / "finetune_result.json",
                               json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(argv):
    del argv
    r = finetune_and_measure(_WORKDIR.value, num_questions=_N.value, num_samples=_M.value,
                             tau=_TAU.value, epochs=_EPOCHS.value,
                             learning_rate=_LR.value, batch_size=_BATCH.value,
                             lora_rank=_RANK.value, lora_targets=tuple(_TARGETS.value),
                             train_name=_TRAIN_NAME.value, shared_data=_DATA.value)
    logging.info("result: %s", json.dumps(r, sort_keys=True))
    b, a = r["before"], r["after"]
    print(f"SmolLM2-135M, {r['num_questions']} NQ-open questions, SE tau={r['tau']:.3f}: "
          f"{a['num_abstain']} labelled abstain, {a['num_answer']} labelled answer; "
          f"train loss {r['train_first_loss']:.3f} -> {r['train_last_loss']:.3f}")
    print(f"abstains on abstain-labelled:      before {b['abstain_rate_on_abstain']:.3f}  "
          f"after {a['abstain_rate_on_abstain']:.3f}")
    print(f"keeps own answer on answer-labelled: before {b['kept_rate_on_answer']:.3f}  "
          f"after {a['kept_rate_on_answer']:.3f}  (abstains there: before "
          f"{b['abstain_rate_on_answer']:.3f}, after {a['abstain_rate_on_answer']:.3f})")


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
