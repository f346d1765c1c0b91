"""The sample stage: questions JSONL -> generations.jsonl (+ config.json, skipped.jsonl).

Per question (docs/contracts.md, "Generations"): the prompt, one low-temperature "most
likely" answer and M samples, each with token ids and T=1 log-probabilities.

    run_sample(config)   # config.sampling.input -> config.sampling.out_dir

Input: one JSON object per line, {"id", "question", "answers"} ("answer" also accepted, a
string or a list; absent = no gold answers). Every line is checked before any work: not
JSON, not an object, no id, a duplicate id, an empty question, or a prompt too long for the
model's context (prompt + max_new_tokens) is reported with its file:line. With
`config.on_bad_input == "error"` the stage stops there, listing them; with "skip" they go
to skipped.jsonl ({"line", "id", "reason"}) and the rest runs.

Resumable: the valid questions, in input order, are cut into shards of
`prompts_per_batch` (`sampling.batch_size`; 1 + M times that for the low-temperature row
alone), one batch each, written atomically; a rerun (after kill -9, say)
computes only the missing shards and yields a byte-identical generations.jsonl, because
each shard is the same batch computed by the same program, and each answer's random key
depends only on (seed, question id, sample index).

Several processes (hosts of a slice, or launch/multihost.py): with the experiment's mesh of
each process's own devices, shard i is computed and written by process i % P alone; after
a barrier process 0 merges them (once). With a mesh spanning every process, all take part
in each shard and process 0 writes it.

With `config.probes` enabled the stage also writes `hidden_states.npz` (se_jax/io/
hidden_states.py): each question's residual stream at probes.layers, at the last prompt token
("tbg") and in its most likely answer ("slt"), from the same forward passes, in
generations.jsonl's order. Shards as above (`hidden_states.parts/<i>.npz`, each written
before its JSONL part), merged before generations.jsonl.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.parallel import distributed
from se_jax.parallel import preemption
from se_jax.generation import sampling
from se_jax.io import hidden_states as hidden_io
from se_jax.io import stage_io
from se_jax.data import prompts as prompt_lib
from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS, my_share
from se_jax.models.loading import load_config, load_tokenizer, open_checkpoint
from se_jax.parallel import mesh as mesh_lib
from se_jax.parallel.mesh import make_mesh
from se_jax.pipeline.resident import Resident


class QuestionsError(ValueError):
    """Bad questions input (file:line and the reason); raised with on_bad_input="error"."""


@dataclasses.dataclass(frozen=True)
class Question:
    """A validated input line with its prompt."""
    line: int
    id: str
    question: str
    answers: tuple[str, ...]
    prompt: str
    prompt_ids: tuple[int, ...]


def _answers(record: dict) -> tuple[str, ...] | None:
    value = record.get("answers", record.get("answer", []))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        return None
    return tuple(value)


def read_questions(path: str | Path, tokenizer: Any, *, prompt_kwargs: dict[str, Any],
                   max_prompt_tokens: int) -> tuple[list[Question], list[dict]]:
    """Valid questions in file order, and the problems ({"line", "id", "reason"})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample stage: questions file {path} does not exist")
    questions, bad, seen = [], [], set()
    for line_no, line, not_text in stage_io.text_lines(path):
        if not_text:
            bad.append({"line": line_no, "id": None, "reason": not_text})
            continue
        if not line.strip():
            continue
        where, rid = f"{path}:{line_no}", None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append({"line": line_no, "id": None,
                        "reason": f"{where}: not valid JSON ({e.msg})"})
            continue
        problem = None
        if not isinstance(record, dict):
            problem = "not a JSON object"
        else:
            rid = record.get("id")
            text = record.get("question")
            answers = _answers(record)
            if not isinstance(rid, (str, int)) or isinstance(rid, bool) or rid == "":
                problem = "field 'id' missing or not a string/integer"
            elif str(rid) in seen:
                problem = f"id {rid!r} occurs more than once"
            elif not isinstance(text, str) or not text.strip():
                problem = "field 'question' missing or empty"
            elif answers is None:
                problem = "field 'answers' is not a string or a list of strings"
        if problem is None:
            prompt = prompt_lib.format_prompt(tokenizer, text, **prompt_kwargs)
            ids = prompt_lib.encode_prompt(tokenizer, prompt)
            if len(ids) > max_prompt_tokens:
                problem = (f"prompt has {len(ids)} tokens; the model's context allows "
                           f"{max_prompt_tokens} with sampling.max_new_tokens")
        if problem is not None:
            bad.append({"line": line_no, "id": rid,
                        "reason": f"{where}: id={rid!r}: {problem}"})
            continue
        seen.add(str(rid))
        questions.append(Question(line_no, str(rid), text.strip(), answers, prompt,
                                  tuple(ids)))
    return questions, bad


def keep_hidden(config: RunConfig) -> sampling.KeepHidden | None:
    """What the sampler keeps for the probes (config.probes), None when they are off."""
    pc = config.probes
    return sampling.KeepHidden(tuple(pc.layers), tuple(pc.positions)) if pc.enabled else None


def hidden_states(ids: Sequence[str], states: np.ndarray, config: RunConfig
                  ) -> hidden_io.HiddenStates:
    """The sampler's float32[N, P, L, E] as a file's rows, in config.probes.dtype."""
    pc = config.probes
    return hidden_io.HiddenStates(tuple(str(i) for i in ids), tuple(pc.layers),
                                  tuple(pc.positions), states.astype(pc.dtype))


def check_probe_layers(config: RunConfig, num_layers: int) -> None:
    """Refuse probes.layers past the model's decoder layers, before any work."""
    bad = [l for l in config.probes.layers if l > num_layers]
    if bad:
        raise ValueError(f"config.probes.layers names layer {bad[0]}, but the model has "
                         f"{num_layers} decoder layers (0 = embeddings, -1 = final norm)")


def depends_on(config: RunConfig) -> tuple[str, ...]:
    """The config sections the stage's outputs depend on: `probes` only when enabled, so a
    directory written before probes existed (or with them off) stays valid while they are
    off, and one without hidden states is refused once they are on."""
    return DEPENDS_ON["sample"] + (("probes",) if config.probes.enabled else ())


def prompts_per_batch(config: RunConfig, num_samples: int | None) -> int:
    """Prompts per compiled batch: `sampling.batch_size` with 1 + M rows each, more prompts
    when there are fewer rows (`num_samples` 0: the low-temperature row only), so a batch
    keeps about the same number of decode rows and the device the same load."""
    sc = config.sampling
    rows = 1 + (sc.num_samples if num_samples is None else num_samples)
    return max(sc.batch_size * (1 + sc.num_samples) // rows, 1)


def generation_records(model: Any, tokenizer: Any, questions: Sequence[Question],
                       config: RunConfig, mesh: Any = None, num_samples: int | None = None
                       ) -> tuple[list[dict], int, hidden_io.HiddenStates | None]:
    """The output records of one batch of questions, the answer tokens they hold, and
    their hidden states (None unless config.probes is enabled).
    `num_samples`: None = config.sampling.num_samples; 0 = the low-temperature answer only."""
    sc = config.sampling
    kwargs = {**sc.generate_kwargs(), "batch_size": prompts_per_batch(config, num_samples)}
    ids = [q.id for q in questions]
    num_samples = sc.num_samples if num_samples is None else num_samples
    most_likely, samples, states = sampling.sample_answers_and_states(
        model, tokenizer, [q.prompt_ids for q in questions], ids,
        keep=keep_hidden(config), num_samples=num_samples, temperature=sc.temperature,
        low_temperature=sc.low_temperature, seed=config.seed,
        max_seq_len=config.model.max_seq_len, mesh=mesh, **kwargs)
    records, tokens = [], 0
    for q, ml, ss in zip(questions, most_likely, samples):
        records.append(dict(id=q.id, question=q.question, answers=list(q.answers),
                            prompt=q.prompt, most_likely=ml.to_json(),
                            samples=[s.to_json() for s in ss]))
        tokens += len(ml.token_ids) + sum(len(s.token_ids) for s in ss)
    return records, tokens, (None if states is None else hidden_states(ids, states, config))


def run_sample(config: RunConfig, questions: str | Path, out_dir: str | Path,
               resident: Any = None, num_samples: int | None = None) -> Path:
    """Run (or resume) the stage on the questions JSONL, writing to `out_dir`; returns the
    path of generations.jsonl.

    `num_samples`: None = config.sampling.num_samples; 0 = the low-temperature answer only
    (`samples` empty): the questions a semantic entropy probe labels pay for one answer row,
    not 1 + M (se_jax/pipeline/sep_flow.py). The caller keeps such runs in their own
    directory (config.json records config.sampling, not this argument).

    `resident`: the caller's loaded generator (se_jax.pipeline.resident.Resident); loaded here from
    config.model when None and there is work to do."""
    in_path, out_dir = Path(questions), Path(out_dir)
    if not in_path.is_file():  # before the tokenizer loads
        raise FileNotFoundError(f"sample stage: questions file {in_path} does not exist")
    sc = config.sampling
    tokenizer = resident.tokenizer if resident else load_tokenizer(config.model.path)
    model_config = (resident.model.config if resident
                    else load_config(open_checkpoint(config.model.path)))
    check_probe_layers(config, model_config.num_hidden_layers)
    max_prompt = sampling.max_prompt_length(model_config, sc.max_new_tokens,
                                            config.model.max_seq_len)
    questions, bad = read_questions(in_path, tokenizer,
                                    prompt_kwargs=config.prompt.format_kwargs(),
                                    max_prompt_tokens=max_prompt)
    if bad and config.on_bad_input == "error":
        shown = "\n  ".join(b["reason"] for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise QuestionsError(f"{len(bad)} bad input line(s) (config.on_bad_input='error'; "
                             f"nothing was run):\n  {shown}{more}")
    for b in bad:
        logging.warning("sample: skipping %s", b["reason"])

    writer = distributed.is_main_process()
    # One writer per directory (a second would write orphan shards of its own).
    with stage_io.writer_lock(out_dir) if writer else contextlib.nullcontext():
        return _write(config, tokenizer, questions, bad, out_dir, writer, in_path, resident,
                      num_samples)


def _write(config: RunConfig, tokenizer: Any, questions: list[Question], bad: list[dict],
           out_dir: Path, writer: bool, in_path: Path, resident: Any,
           num_samples: int | None = None) -> Path:
    """Compute the missing shards and merge them (process 0 writes)."""
    if writer:
        # The questions' sha256 is recorded: a rerun after the file changed is refused.
        stage_io.write_config(out_dir, config, ignore=NEUTRAL_KEYS,
                              depends_on=depends_on(config), inputs={"questions": in_path})
        stage_io.write_jsonl(out_dir / "skipped.jsonl", bad)
    distributed.barrier(f"sample-config-{out_dir}")   # checked before anyone writes shards
    per_shard = prompts_per_batch(config, num_samples)
    shards = [questions[i:i + per_shard] for i in range(0, len(questions), per_shard)]
    out = stage_io.ShardedJsonl(out_dir, "generations", len(shards))
    pending = out.pending()
    if pending:
        if resident is None:
            resident = Resident.load(config.model, make_mesh(config.mesh),
                                     adapter=config.model.adapter)
        model, mesh = resident.model, resident.mesh
        # A mesh of this process's own devices (the experiment's): each process computes
        # and writes its share of the shards. A mesh over every process's devices: every
        # process takes part in every shard, process 0 writes it.
        spread = mesh_lib.process_local(mesh)
        pending, progress = my_share("sample", out.parts_dir, [len(s) for s in shards],
                                     pending, spread=spread)
        for i in pending:
            records, tokens, states = generation_records(model, tokenizer, shards[i],
                                                         config, mesh, num_samples)
            if writer or spread:
                if states is not None:   # first: a shard whose JSONL exists is complete
                    hidden_io.write_shard(out_dir, i, states)
                out.write_shard(i, records)
            progress.update(len(shards[i]), answer_tokens=tokens)
            # Spread shards: the processes' loops differ in length, so no lockstep exchange.
            preemption.check(f"sample shard {i + 1} of {len(shards)} in {out_dir}",
                             lockstep=not spread)
        logging.info("sample: %s", progress.line())
        logging.info("sample: process %d computed shards %s of %d in %s",
                     jax.process_index(), list(pending), len(shards), out_dir)
    distributed.barrier(f"sample-shards-{out_dir}")
    if writer and config.probes.enabled:   # before generations.jsonl, which marks the end
        hidden_io.merge_shards(out_dir, len(shards), layers=config.probes.layers,
                               positions=config.probes.positions)
    path = out.finalize() if writer else out.final_path
    distributed.barrier(f"sample-final-{out_dir}")
    logging.info("sample: wrote %s (%d questions, %d skipped)", path, len(questions), len(bad))
    return path
