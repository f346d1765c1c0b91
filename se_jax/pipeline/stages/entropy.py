"""The entropy stage: generations.jsonl -> uncertainty.jsonl (+ config.json, skipped.jsonl).

Per question (docs/contracts.md, "Uncertainties"): the M x M equivalence matrix of the
sampled answers, their semantic ids (the reference's greedy rule), and every estimator:
discrete and likelihood-weighted semantic entropy, naive predictive entropy, the
exact-string entropy and (where the samples carry token_logprobs) the first-token entropy;
plus the backend and checkpoint that produced them. A backend that cannot run as named
(deberta without entropy.nli_path) stops the stage before any work; none is replaced by
another.

Questions are processed in shards of `entropy.questions_per_shard` (each shard: one backend
call over all its pairs, one jitted clustering call) written atomically, so a killed run
resumes where it stopped and produces the same file. With several processes, shard i is
computed and written by process i % P on its own devices (the backend's mesh is local);
process 0 writes config.json and, after a barrier, merges the shards once.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.semantic import clustering
from se_jax.semantic import entailment
from se_jax.io import stage_io
from se_jax.parallel import preemption
from se_jax.semantic import uncertainty
from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS, claimed, my_share
from se_jax.parallel.distributed import barrier
from se_jax.parallel.mesh import make_mesh
from se_jax.models.loading import judge_dtypes, load_llama, load_tokenizer, same_model


class GenerationsError(ValueError):
    """A generations record is missing a field or has a wrong type; names file:line and id."""


@dataclasses.dataclass(frozen=True)
class Item:
    """What the stage needs of one generations record."""
    id: str
    question: str
    texts: tuple[str, ...]          # the M sampled answers
    mean_logprobs: tuple[float, ...]  # their length-normalised log-likelihoods
    # Their first tokens' log-probabilities; None when a sample has no token_logprobs.
    first_logprobs: tuple[float, ...] | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_record(record: Any, where: str) -> Item:
    """Validate one generations record; GenerationsError naming `where`, id and field."""
    if not isinstance(record, dict):
        raise GenerationsError(f"{where}: not a JSON object")
    rid = record.get("id")
    label = f"{where}: id={rid!r}"
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise GenerationsError(f"{label}: field 'id' missing or not a string")
    question = record.get("question")
    if not isinstance(question, str):
        raise GenerationsError(f"{label}: field 'question' missing or not a string")
    samples = record.get("samples")
    if not isinstance(samples, list) or len(samples) < 2:
        raise GenerationsError(f"{label}: field 'samples' missing, not a list, or with fewer "
                               f"than 2 answers (semantic entropy compares M >= 2)")
    texts, lps, firsts = [], [], []
    for k, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str):
            raise GenerationsError(f"{label}: field 'samples[{k}].text' missing or not a string")
        lp = s.get("mean_logprob")
        if not _finite(lp):
            raise GenerationsError(f"{label}: field 'samples[{k}].mean_logprob' missing or "
                                   f"not a finite number (got {lp!r})")
        tokens = s.get("token_logprobs")
        if tokens is not None and not (isinstance(tokens, list) and tokens
                                       and _finite(tokens[0])):
            raise GenerationsError(f"{label}: field 'samples[{k}].token_logprobs' is not a "
                                   f"non-empty list starting with a finite number")
        texts.append(s["text"])
        lps.append(float(lp))
        firsts.append(None if tokens is None else float(tokens[0]))
    first = None if None in firsts else tuple(firsts)
    return Item(str(rid), question, tuple(texts), tuple(lps), first)


def read_generations(path: Path, on_bad_input: str) -> tuple[list[Item], list[dict]]:
    """Valid items in file order, and skipped records ({"line", "id", "reason"})."""
    items, skipped = [], []
    for line_no, line, not_text in stage_io.text_lines(path):
        if not (not_text or line.strip()):
            continue
        where, rid, problem = f"{path}:{line_no}", None, not_text
        if not problem:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"{where}: not valid JSON ({e.msg})"
            else:
                rid = record.get("id") if isinstance(record, dict) else None
                try:
                    items.append(parse_record(record, where))
                    continue
                except GenerationsError as e:
                    problem = str(e)
        if on_bad_input == "error":
            raise GenerationsError(problem)
        logging.warning("entropy: skipping %s", problem)
        skipped.append({"line": line_no, "id": rid, "reason": problem})
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise GenerationsError(f"{path}: id {dup!r} occurs more than once")
    return items, skipped


def _padded(rows: Sequence[Sequence[Any]], width: int, fill: Any, dtype) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def uncertainty_records(backend: entailment.Backend, items: Sequence[Item], *, strict: bool,
                        cluster_rule: str = "reference",
                        pairs: str = "full") -> tuple[list[dict], int]:
    """The output records of a batch of questions, and the number of pairs labelled.

    pairs="full": one backend call for all pairs of the batch; "rounds": only the pairs the
    clustering rule reads, one backend call per round (unread pairs are null in
    `equivalence`). Clustering and estimators jitted over the batch, answers padded to the
    largest M (padding masked out).
    """
    if not items:
        return [], 0
    eq = entailment.equivalences(backend, [it.question for it in items],
                                 [it.texts for it in items], strict=strict, pairs=pairs,
                                 rule=cluster_rule)
    m = max(len(it.texts) for it in items)
    valid = _padded([[True] * len(it.texts) for it in items], m, False, bool)
    matrix = np.zeros((len(items), m, m), bool)
    for i, e in enumerate(eq.equivalence):
        matrix[i, :len(e), :len(e)] = e
    lps = _padded([it.mean_logprobs for it in items], m, 0.0, np.float32)
    firsts = _padded([it.first_logprobs or () for it in items], m, 0.0, np.float32)
    exact = _padded([uncertainty.exact_string_ids(it.texts) for it in items], m, -1, np.int32)
    ids = clustering.semantic_ids(matrix, valid, rule=cluster_rule)
    columns = dict(
        discrete_semantic_entropy=uncertainty.cluster_entropy(ids, valid),
        semantic_entropy=uncertainty.semantic_entropy(ids, lps, valid),
        naive_entropy=uncertainty.naive_entropy(lps, valid),
        exact_entropy=uncertainty.cluster_entropy(exact, valid),
        first_token_entropy=uncertainty.naive_entropy(firsts, valid),
    )
    ids, columns = np.asarray(ids), {k: np.asarray(v) for k, v in columns.items()}
    records = []
    for i, it in enumerate(items):
        n = len(it.texts)
        record = dict(id=it.id, backend=backend.name, checkpoint=backend.checkpoint,
                      semantic_ids=ids[i, :n].tolist(),
                      equivalence=_equivalence_json(eq.equivalence[i], eq.known[i]),
                      num_clusters=int(ids[i, :n].max()) + 1,
                      **{k: float(v[i]) for k, v in columns.items()
                         if k != "first_token_entropy" or it.first_logprobs is not None})
        record.update(getattr(backend, "record_fields", {}))
        records.append(record)
    return records, eq.pairs_labelled


def _equivalence_json(equivalent: np.ndarray, known: np.ndarray) -> list[list[bool | None]]:
    """Rows of the M x M matrix; None marks a pair that was never labelled (rounds)."""
    return [[bool(e) if k else None for e, k in zip(er, kr)]
            for er, kr in zip(equivalent, known)]


def _local_mesh(config: RunConfig, axes: Any = None):
    """A mesh over this process's own devices: the entropy stage spreads its shards over
    processes, each on its devices (no cross-host collective, host arrays stay local)."""
    return make_mesh(axes or config.mesh, devices=jax.local_devices())


def _load_backend(config: RunConfig, resident: Any = None):
    """The backend; an LLM judge that is the generator (model.path; in the experiment with
    teach.enabled the taught one) runs on the `resident` model when one is given, any
    other judge loads with weights in the compute dtype (judge_dtypes)."""
    if config.entropy.backend == "lexical":
        return entailment.make_backend(config.entropy, None)
    if config.entropy.backend == "deberta":   # small: replicated, pairs over every device
        return entailment.make_backend(config.entropy, _local_mesh(config, {"data": -1}))
    path = config.entropy.judge_model or config.model.path
    if resident is not None and same_model(path, config.model.path):
        return entailment.make_backend(config.entropy, resident.mesh, decoder=resident.model,
                                       decoder_tokenizer=resident.tokenizer,
                                       decoder_path=path)
    mesh = _local_mesh(config)
    model = load_llama(path, mesh=mesh, **judge_dtypes(config.model.dtype),
                       scan_layers=config.model.scan_layers)
    return entailment.make_backend(config.entropy, mesh, decoder=model,
                                   decoder_tokenizer=load_tokenizer(path), decoder_path=path)


def _with_true_m(config: RunConfig, items: Sequence[Item]) -> dict:
    """`config` as config.json records it: sampling.num_samples is the M the generations
    hold (-1 if mixed)."""
    ms = {len(it.texts) for it in items}
    m = ms.pop() if len(ms) == 1 else -1
    recorded = config.to_dict()
    recorded["sampling"]["num_samples"] = m
    if m != config.sampling.num_samples:
        logging.warning("entropy: the generations hold M=%s samples per question "
                        "(config.sampling.num_samples=%s); config.json records M",
                        sorted({len(it.texts) for it in items}), config.sampling.num_samples)
    return recorded


@claimed
def run_entropy(config: RunConfig, generations: str | Path, out_dir: str | Path,
                resident: Any = None) -> Path:
    """Run (or resume) the stage on generations.jsonl, writing to `out_dir`; returns the
    path of uncertainty.jsonl. `resident`: the loaded generator (pipeline/resident.py),
    which an LLM judge of the same path runs on instead of loading a second copy."""
    gen_path, out_dir = Path(generations), Path(out_dir)
    entailment.check_runnable(config.entropy)   # before any work: no stand-in backend
    if not gen_path.is_file():
        raise FileNotFoundError(f"entropy stage: generations file {gen_path} does not exist")
    items, skipped = read_generations(gen_path, config.on_bad_input)
    # Record what the input really holds (its sha256, refused if it changes; its M).
    if jax.process_index() == 0:   # one writer of the directory's own files
        stage_io.write_config(out_dir, _with_true_m(config, items), ignore=NEUTRAL_KEYS,
                              depends_on=DEPENDS_ON["entropy"], inputs={"generations": gen_path})
        stage_io.write_jsonl(out_dir / "skipped.jsonl", skipped)
    barrier(f"entropy-config-{out_dir}")
    per_shard = config.entropy.questions_per_shard
    shards = [items[i:i + per_shard] for i in range(0, len(items), per_shard)]
    out = stage_io.ShardedJsonl(out_dir, "uncertainty", len(shards))
    # Shard i is computed and written by process i % P alone (each on its own devices).
    pending, progress = my_share("entropy", out.parts_dir, [len(s) for s in shards],
                                 out.pending())
    if pending:
        backend = _load_backend(config, resident)
        for i in pending:
            records, pairs = uncertainty_records(backend, shards[i],
                                                 strict=config.entropy.strict,
                                                 cluster_rule=config.entropy.cluster_rule,
                                                 pairs=config.entropy.pairs)
            out.write_shard(i, records)
            all_pairs = sum(len(it.texts) ** 2 for it in shards[i])
            progress.update(len(shards[i]), pairs=pairs, pairs_before_dedup=all_pairs)
            # Each process its own shards: loops of different lengths, no lockstep exchange.
            preemption.check(f"entropy shard {i + 1} of {len(shards)} in {out_dir}",
                             lockstep=False)
        logging.info("entropy: %s", progress.line())
    logging.info("entropy: process %d computed shards %s of %d in %s", jax.process_index(),
                 pending, len(shards), out_dir)
    barrier(f"entropy-shards-{out_dir}")
    path = out.finalize() if jax.process_index() == 0 else out.final_path
    barrier(f"entropy-final-{out_dir}")
    logging.info("entropy: wrote %s (%d questions, %d skipped)", path, len(items), len(skipped))
    return path
