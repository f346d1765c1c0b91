"""The label stage: generations.jsonl (+ uncertainty.jsonl) -> sft.jsonl (+ config.json,
summary.json, skipped.jsonl) in `out_dir`.

Reads the files of the sample and entropy stages (docs/contracts.md), runs the
labeller `config.labels.method` names (se_jax/abstention/labels.py) and writes one SFT record per kept
question, in input order. Labelling is cheap and deterministic, so the stage simply redoes
all of it; the output file is written atomically (a kill leaves the old file or none).
Errors name the file, record and field at fault.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.abstention import judges
from se_jax.abstention import labels
from se_jax.abstention import probes
from se_jax.io import stage_io
from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS, claimed

METHODS = ("se", "rtuning", "rtuning_u", "idk", "slick", "sep")
SFT_FILE = "sft.jsonl"


def _read(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"label stage: {what} file {path} does not exist")
    return stage_io.read_jsonl(path)


def _check_backend(uncertainties: list[dict], backend: str, path: Path) -> str | None:
    """All records share one equivalence backend (the one configured, if any, unless the
    entropy stage recorded a fallback); returns the fallback reason, if any."""
    for i, u in enumerate(uncertainties, 1):
        if backend and u.get("backend") != backend and not u.get("fallback"):
            raise labels.LabelError(f"{path}:{i}: id={u.get('id')!r} has backend "
                                    f"{u.get('backend')!r}, config.labels.backend={backend!r}")
    found = {u.get("backend") for u in uncertainties}
    if len(found) > 1:
        raise labels.LabelError(f"{path}: mixes equivalence backends {sorted(map(str, found))}")
    fallback = next((u["fallback"] for u in uncertainties if u.get("fallback")), None)
    if fallback:
        logging.warning("labels: the uncertainties used a fallback backend: %s", fallback)
    return fallback


def slick_records_from_generations(generations: list[dict]) -> list[dict]:
    """An approximate SliCK input from zero-shot generations: one "exemplar set" whose greedy
    answer is the T=0.1 answer and whose samples are the T=1 samples (flagged approximate
    in the summary; the real categories need few-shot answers, `labels.slick_answers`)."""
    return [dict(id=g["id"], question=g["question"], answers=g["answers"],
                 greedy=[g["most_likely"]], sampled=[g["samples"]]) for g in generations]


def make_examples(config: RunConfig, gen_path: Path, unc_path: Path
                  ) -> tuple[list[labels.Example], dict]:
    """Run the configured labeller on the sample and entropy stages' files; returns
    (examples, summary fields)."""
    lc = config.labels
    method = lc.method
    if method not in METHODS:
        raise ValueError(f"config.labels.method={method!r} is not one of {METHODS}")
    judge = judges.string_judge(lc.judge, lc.f1_threshold)
    phrase = lc.abstention_phrase
    info: dict[str, Any] = {"method": method, "generations": str(gen_path)}
    if method == "slick":
        if lc.slick_answers:
            records = _read(Path(lc.slick_answers), "slick answers")
            info["slick_source"] = str(lc.slick_answers)
        else:
            records = slick_records_from_generations(_read(gen_path, "generations"))
            info["slick_source"] = "approximate: zero-shot generations, one exemplar set"
        return labels.slick_labels(records, judge=judge, unknown=lc.slick_unknown,
                                   phrase=phrase), info
    if method == "sep":
        records = _read(gen_path, "probe scores (the probe stage's train_scores.jsonl)")
        examples, threshold_info = sep_examples(records, lc.tau, phrase)
        return examples, {**info, "probe_scores": str(gen_path), **threshold_info}
    generations = _read(gen_path, "generations")
    if method in ("rtuning", "idk"):
        if method == "rtuning":
            return labels.r_tuning_labels(generations, judge=judge, phrase=phrase,
                                          answer_source=lc.answer_source), info
        return labels.idk_labels(generations, judge=judge, threshold=lc.idk_threshold,
                                 phrase=phrase, answer_source=lc.answer_source), info
    uncertainties = _read(unc_path, "uncertainty")
    fallback = _check_backend(uncertainties, lc.backend, unc_path)
    if fallback:
        info["backend_fallback"] = fallback
    info["uncertainty"] = str(unc_path)
    pairs = labels.join_by_id(generations, uncertainties)
    if method == "se":
        return labels.se_labels(pairs, tau=lc.tau, entropy_field=lc.entropy,
                                phrase=phrase), info
    return labels.r_tuning_u_labels(pairs, tau=lc.tau, phrase=phrase), info


def sep_examples(records: list[dict], tau: float, phrase: str
                 ) -> tuple[list[labels.Example], dict]:
    """The `sep` labeller at SE threshold `tau`: the probe-score threshold that abstains on
    the share of training questions SE > tau abstains on within the SE subset (records with
    an `entropy`). Why rate-matched: the probe's scores are probabilities of "SE above the
    best split", not entropies, so an entropy tau has no meaning on them; what a tau
    decides is how many questions abstain, and matching that share makes the sweep pick
    among the same abstention rates for SE and SEP (the experiment's taus, chosen on
    validation AED, as for SE)."""
    entropies = [float(r["entropy"]) for r in records if r.get("entropy") is not None]
    if not entropies:
        raise labels.LabelError("sep labeller: no record has an 'entropy' (the SE subset)")
    rate = sum(e > tau for e in entropies) / len(entropies)
    threshold = probes.rate_matched_threshold([float(r["score"]) for r in records], rate)
    examples = labels.sep_labels(records, {str(r["id"]): float(r["score"]) for r in records},
                                 threshold=threshold, phrase=phrase)
    return examples, dict(se_abstain_rate=rate, probe_threshold=threshold,
                          num_se_subset=len(entropies), tau=tau)


@claimed
def run_label(config: RunConfig, generations: str | Path, uncertainty: str | Path,
              out_dir: str | Path) -> Path:
    """Label the questions of generations.jsonl (with uncertainty.jsonl where the method
    reads entropies); write `sft.jsonl`, `summary.json` and `config.json` to `out_dir`;
    returns the sft path."""
    gen_path, unc_path, out_dir = Path(generations), Path(uncertainty), Path(out_dir)
    lc = config.labels
    inputs = {"generations": gen_path}
    if lc.method in ("se", "rtuning_u"):
        inputs["uncertainty"] = unc_path
    if lc.method == "slick" and lc.slick_answers:
        inputs = {"slick_answers": Path(lc.slick_answers)}
    # Missing files are reported by make_examples; the present ones are fingerprinted.
    stage_io.write_config(out_dir, config, ignore=NEUTRAL_KEYS, depends_on=DEPENDS_ON["label"],
                          inputs={k: p for k, p in inputs.items() if p.is_file()})
    examples, info = make_examples(config, gen_path, unc_path)
    # An empty target (the model's most-likely answer was empty) teaches nothing: skip it.
    skipped = [{"line": i + 1, "id": e.id, "reason": "empty target (empty most-likely answer)"}
               for i, e in enumerate(examples) if not e.target.strip()]
    examples = [e for e in examples if e.target.strip()]
    for s in skipped:
        logging.warning("label: skipping id=%r: %s", s["id"], s["reason"])
    stage_io.write_jsonl(out_dir / "skipped.jsonl", skipped)
    sft_path = out_dir / SFT_FILE
    stage_io.write_jsonl(sft_path, (e.to_json() for e in examples))
    summary = dict(info, num_examples=len(examples), num_skipped=len(skipped),
                   **labels.label_counts(examples))
    categories = collections.Counter(e.reason.get("category") for e in examples)
    if config.labels.method == "slick":
        summary["categories"] = {k: v for k, v in categories.items() if k}
    stage_io.atomic_write_text(out_dir / "summary.json",
                               json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logging.info("label: %s", json.dumps(summary, sort_keys=True))
    return sft_path
