"""The evaluate stage: greedy answers of a (fine-tuned or original) model on one split,
judged, written as `outcomes.jsonl` + `metrics.json` (+ `config.json`) in `out_dir`.

Resumable: questions are processed in fixed shards (stage_io.ShardedJsonl); a rerun skips
finished shards and a finished directory (metrics.json) is returned as is.

Multi-process (one process per host, or N local processes): shard i is computed by
process i % P with its local devices (data parallelism over hosts needs no cross-host
collectives for inference); after a barrier process 0 merges the shards and writes the
metrics. `out_dir` must be on storage every process sees (NFS/GCS-fuse on a pod). Inside
`distributed.alone()` (a sweep run owned by one process) this process does all of it.

With `answers_only` (a judge that runs in a stage of its own, se_jax/pipeline/judge_stage.py)
the answers are written as `answers.jsonl` and nothing is judged; `judge_answers` later
turns them into outcomes and metrics, every process together with the stage's judge.

With `config.probes` enabled, the original model's pass (model_tag "original") also writes
`hidden_states.npz` beside outcomes.jsonl (se_jax/io/hidden_states.py; SLT of the greedy
answer), sharded like the outcomes: the probe stage scores the test questions from it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.abstention import evaluation
from se_jax.io import hidden_states as hidden_io
from se_jax.io import stage_io
from se_jax.parallel.distributed import barrier, is_main_process
from se_jax.parallel import preemption
from se_jax.data import prompts as prompt_lib
from se_jax.pipeline.stages import NEUTRAL_KEYS, claimed, my_share
from se_jax.generation import sampling
from se_jax.pipeline.plan import ORIGINAL   # the model whose hidden states the probes read
from se_jax.pipeline.stages import sample

OUTCOMES = "outcomes"
ANSWERS = "answers"
METRICS_FILE = "metrics.json"


def prompt_texts(tokenizer: Any, questions: Sequence[Mapping[str, Any]], config: RunConfig) -> list[str]:
    """The prompts the sampler used (config.prompt), so evaluation asks exactly the same."""
    kwargs = config.prompt.format_kwargs()
    return [prompt_lib.format_prompt(tokenizer, q["question"], **kwargs) for q in questions]


def read_metrics(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.exists() else None


@claimed
def evaluate_split(model: Any, tokenizer: Any, questions: Sequence[Mapping[str, Any]],
                   out_dir: str | Path, config: RunConfig, *, judge: Any, model_tag: str,
                   mesh: Any = None, same_as: str | Path | None = None,
                   answers_only: bool = False) -> dict | None:
    """Evaluate `model` on `questions`; returns the metrics dict (also in metrics.json), or
    with `answers_only` None once answers.jsonl is written (`judge_answers` judges it).

    Args:
      questions: split records {"id", "question", "answers", ...}.
      config: the run's config (sections evaluation, sampling, prompt are read).
      judge: a se_jax.abstention.judges.Judge; its name is stored with every outcome and metric.
      model_tag: what was evaluated (e.g. "original", "se_lexical/tau_1.00/seed_0"),
        stored in config.json so a directory never mixes two models.
      mesh: this process's mesh (the model's); batches are sharded over its batch axes.
      same_as: the finished evaluation, on the same questions with the same judge, of a
        model known to be this one (a sweep run whose training input equals another's):
        its outcomes (or answers) are taken over (hard link) instead of answering again.
      answers_only: write the answers, judge nothing (`judge` is then only named).
    """
    out_dir = Path(out_dir)
    ev = config.evaluation
    keep = sample.keep_hidden(config) if model_tag == ORIGINAL else None
    stage_config = {"model": model_tag, "judge": judge.name,
                    "evaluation": stage_io.config_to_dict(ev),
                    "prompt": stage_io.config_to_dict(config.prompt),
                    "num_questions": len(questions),
                    # the questions' content: a rerun on other questions is refused
                    stage_io.INPUTS_KEY: {"questions": {
                        "path": "(split records)", "sha256": stage_io.records_sha256(questions)}}}
    if keep:   # only then: directories written without probes stay valid while they are off
        stage_config["probes"] = stage_io.config_to_dict(config.probes)
    if is_main_process():
        stage_io.write_config(out_dir, stage_config, ignore=NEUTRAL_KEYS)
    done = read_metrics(out_dir)
    if done is not None or (answers_only and answers_written(out_dir)):
        return done
    barrier(f"evaluate-config-{out_dir}")
    if same_as is not None and read_metrics(same_as) is not None:
        return _adopt(Path(same_as), out_dir, model_tag)
    if answers_only and same_as is not None and answers_written(same_as):
        return _adopt_answers(Path(same_as), out_dir, model_tag)
    shard_size = max(ev.batch_size, 1)   # one batch per shard
    num_shards = max(math.ceil(len(questions) / shard_size), 1)
    out = stage_io.ShardedJsonl(out_dir, ANSWERS if answers_only else OUTCOMES, num_shards)
    mine, progress = my_share(f"evaluate {model_tag}", out.parts_dir,
                              [len(questions[i * shard_size:(i + 1) * shard_size])
                               for i in range(num_shards)], out.pending())
    answer_fn = _greedy_fn(model, tokenizer, config, mesh, keep)
    for i in mine:
        chunk = list(questions[i * shard_size:(i + 1) * shard_size])
        ids = [q["id"] for q in chunk]
        predictions, states = answer_fn(prompt_texts(tokenizer, chunk, config), ids)
        if states is not None:   # first: a shard whose outcomes exist is complete
            hidden_io.write_shard(out_dir, i, sample.hidden_states(ids, states, config))
        out.write_shard(i, [{"id": q, "prediction": p} for q, p in zip(ids, predictions)]
                        if answers_only else _outcomes(chunk, predictions, judge, config))
        progress.update(len(chunk))
        # Processes answer different shards here: a stop is seen at the next shard or barrier.
        preemption.check(f"evaluate shard {i + 1} of {num_shards} in {out_dir}", lockstep=False)
    logging.info("evaluate %s: process %d answered %d of %d shards in %s", model_tag,
                 jax.process_index(), len(mine), num_shards, out_dir)
    barrier(f"evaluate-shards-{out_dir}")
    if is_main_process():
        if keep:
            hidden_io.merge_shards(out_dir, num_shards, layers=keep.layers,
                                   positions=keep.positions)
        out.finalize()
        if not answers_only:
            _write_metrics(out_dir, list(out.records()), judge.name, model_tag)
    barrier(f"evaluate-done-{out_dir}")
    return None if answers_only else read_metrics(out_dir)


def answers_written(out_dir: str | Path) -> bool:
    return (Path(out_dir) / f"{ANSWERS}.jsonl").exists()


def judge_answers(questions: Sequence[Mapping[str, Any]], out_dir: str | Path,
                  config: RunConfig, *, judge: Any, model_tag: str) -> dict:
    """answers.jsonl (an `answers_only` evaluation) judged into outcomes.jsonl and
    metrics.json (again, when they exist). Every process calls it with the same judge (the
    judge stage's model is collective); process 0 writes."""
    out_dir = Path(out_dir)
    answers = stage_io.read_jsonl(out_dir / f"{ANSWERS}.jsonl")
    if [a["id"] for a in answers] != [q["id"] for q in questions]:
        raise ValueError(f"{out_dir / ANSWERS}.jsonl: its question ids are not the split's")
    outcomes = _outcomes(questions, [a["prediction"] for a in answers], judge, config)
    if is_main_process():
        stage_io.write_jsonl(out_dir / f"{OUTCOMES}.jsonl", outcomes)
        _write_metrics(out_dir, outcomes, judge.name, model_tag)
    barrier(f"evaluate-judged-{out_dir}")
    return read_metrics(out_dir)


def _outcomes(questions: Sequence[Mapping[str, Any]], predictions: Sequence[str], judge: Any,
              config: RunConfig) -> list[dict]:
    return evaluation.judge_outcomes(
        questions, predictions, judge, abstention_variants=config.evaluation.abstention_variants,
        abstention_phrase=config.labels.abstention_phrase)


def _write_metrics(out_dir: Path, outcomes: Sequence[Mapping[str, Any]], judge_name: str,
                   model_tag: str) -> None:
    metrics = {**evaluation.outcome_metrics(outcomes).as_dict(), "judge": judge_name,
               "model": model_tag}
    stage_io.atomic_write_text(out_dir / METRICS_FILE,
                               json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    logging.info("evaluate %s: n=%d correct=%d incorrect=%d abstained=%d AED=%.3f "
                 "(judge: %s)", model_tag, metrics["n"], metrics["correct"],
                 metrics["incorrect"], metrics["abstained"], metrics["aed"], judge_name)


def _adopt(src: Path, out_dir: Path, model_tag: str) -> dict:
    """`src`'s outcomes as this directory's (process 0 writes; metrics.json last)."""
    if is_main_process():
        _link(src, out_dir, OUTCOMES)
        metrics = {**read_metrics(src), "model": model_tag}
        stage_io.atomic_write_text(out_dir / METRICS_FILE,
                                   json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        logging.info("evaluate %s: the outcomes of %s (the same model)", model_tag, src)
    barrier(f"evaluate-done-{out_dir}")
    return read_metrics(out_dir)


def _adopt_answers(src: Path, out_dir: Path, model_tag: str) -> None:
    """`src`'s answers as this directory's (to be judged like its own)."""
    if is_main_process():
        _link(src, out_dir, ANSWERS)
        logging.info("evaluate %s: the answers of %s (the same model)", model_tag, src)
    barrier(f"evaluate-done-{out_dir}")


def _link(src: Path, out_dir: Path, name: str) -> None:
    target = out_dir / f"{name}.jsonl"
    target.unlink(missing_ok=True)
    stage_io.link_or_copy(src / f"{name}.jsonl", target)


def _greedy_fn(model: Any, tokenizer: Any, config: RunConfig, mesh: Any,
               keep: sampling.KeepHidden | None):
    """answer(prompts, ids) -> (greedy answer texts, float32[N, P, L, E] or None)."""
    kwargs = config.sampling.generate_kwargs()
    kwargs["max_new_tokens"] = config.evaluation.max_new_tokens
    kwargs["batch_size"] = config.evaluation.batch_size
    kwargs["max_seq_len"] = config.model.max_seq_len

    def answer(prompts: list[str], ids: list[str]):
        answers, states = sampling.greedy_answers_and_states(
            model, tokenizer, prompts, ids, keep=keep, mesh=mesh, **kwargs)
        return [a.text for a in answers], states
    return answer


def read_outcomes(out_dir: str | Path) -> list[dict]:
    return stage_io.read_jsonl(Path(out_dir) / f"{OUTCOMES}.jsonl")
