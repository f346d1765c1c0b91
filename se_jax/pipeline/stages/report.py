"""The report stage's analyses over finished artifacts (no model runs except an LLM judge):

- `uncertainty_analysis`: how well each uncertainty score of the original model's samples
  predicts that its most-likely answer is wrong (AUROC / AURAC / PRR, bootstrap 90%
  intervals), and the score histograms split by correct / incorrect.
- `slick_breakdown`: accuracy and abstention rate of every evaluated model per SliCK
  category (Gekhman et al. 2024) of the question, the category computed from the original
  model's zero-shot greedy (T=0.1) and sampled answers (one exemplar set: an approximation
  of SliCK's few-shot P_correct, flagged as such in the report).
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from se_jax.config.schema import RunConfig
from se_jax.abstention import evaluation
from se_jax.abstention import labels
from se_jax.io import stage_io
from se_jax.semantic.uncertainty import BACKEND_FREE, ESTIMATORS
from se_jax.pipeline import knowledge_report
from se_jax.pipeline import knowledge_report as kr


def _most_likely_correct(generations: Sequence[Mapping[str, Any]], judge: Any,
                         config: RunConfig) -> np.ndarray:
    """bool[n]: the most-likely answer is judged correct (an abstention is not correct)."""
    texts = [g["most_likely"]["text"] for g in generations]
    outcomes = evaluation.judge_outcomes(
        generations, texts, judge, abstention_variants=config.evaluation.abstention_variants,
        abstention_phrase=config.labels.abstention_phrase)
    return np.asarray([o["correct"] for o in outcomes], bool)


def uncertainty_analysis(config: RunConfig, generations: Mapping[str, Path],
                         uncertainty: Mapping[str, Mapping[str, Path]], judge: Any
                         ) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Over all sampled splits (train + val) pooled.

    Returns ({score name: {"auroc", "aurac", "prr": Interval}},
             {"discrete SE (<backend>)": (scores, incorrect)} for the histograms).
    """
    ev = config.evaluation
    gens, correct = [], []
    for split, path in generations.items():
        g = stage_io.read_jsonl(path)
        gens += [(split, r["id"]) for r in g]
        correct.append(_most_likely_correct(g, judge, config))
    incorrect = ~np.concatenate(correct)
    metrics, hist = {}, {}
    backends = list(next(iter(uncertainty.values())))
    for b_index, backend in enumerate(backends):
        by_key = {}
        for split in generations:
            for u in stage_io.read_jsonl(uncertainty[split][backend]):
                by_key[(split, u["id"])] = u
        for field, name in ESTIMATORS.items():
            free = field in BACKEND_FREE
            if (free and b_index > 0) or not all(field in by_key[k] for k in gens):
                continue   # the same for every backend, or absent (older outputs)
            label = name if free else f"{name} ({backend})"
            scores = np.asarray([float(by_key[k][field]) for k in gens])
            metrics[label] = evaluation.uncertainty_metrics(
                scores, incorrect, num_samples=ev.bootstrap_samples,
                confidence=ev.confidence, seed=config.seed)
            if field == "discrete_semantic_entropy":
                hist[label] = (scores, ~incorrect)
    return metrics, hist


def slick_categories(generations: Sequence[Mapping[str, Any]], judge: Any) -> dict[str, str]:
    """{question id: SliCK category} from zero-shot most-likely and sampled answers."""
    answers = [(g, [g["most_likely"], *g["samples"]]) for g in generations]
    items = [(a["text"], list(g["answers"]), g["question"]) for g, these in answers
             for a in these]
    verdicts = iter(judge.batch(*zip(*items)) if items else [])   # one batch: an LLM judge
    out = {}
    for g, these in answers:
        greedy, *sampled = (bool(next(verdicts)) for _ in these)
        out[g["id"]] = labels.slick_category([greedy], sampled)
    return out


def slick_breakdown(outcomes: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
                    categories: Mapping[str, str]) -> list[dict]:
    """Rows {method, split, category, n, accuracy, abstain_rate} for every (model, split)
    whose outcomes are given; accuracy is over answered questions."""
    rows = []
    for (method, split), outs in outcomes.items():
        groups = collections.defaultdict(list)
        for o in outs:
            if o["id"] in categories:
                groups[categories[o["id"]]].append(o)
        for cat in labels.SLICK_CATEGORIES:
            if cat not in groups:
                continue
            m = evaluation.outcome_metrics(groups[cat])
            rows.append(dict(method=method, split=split, category=cat, n=m.n,
                             accuracy=m.accuracy, abstain_rate=m.abstained / m.n))
    return rows


def reference_rows(original_outcomes: Mapping[str, Sequence[Mapping[str, Any]]], seed: int,
                   judge: str) -> list[dict]:
    """Result rows of the two reference policies on each test split, from the original
    model's outcomes: abstain on everything, and the oracle that abstains exactly where the
    original model is not right."""
    rows = []
    for split, outcomes in original_outcomes.items():
        records = [{"base": {"correct": bool(o["correct"]), "abstained": bool(o["abstained"])}}
                   for o in outcomes]
        rows += knowledge_report.reference_rows(records, split, seed=seed, judge=judge)
    return rows


def knowledge_sections(questions: Mapping[str, Path], original: Mapping[str, Path],
                       uncertainty: Path, generations: Path,
                       tuned: Mapping[str, Mapping[str, Path]], *,
                       example: tuple[str, float] | None, entropy_field: str,
                       num_samples: int, confidence: float) -> list[str]:
    """Markdown sections a knowledge-controlled report leads with (se_jax/pipeline/knowledge_report.py).

    questions[split]: split files (records carry "taught"); original[split]: the original
    model's outcomes.jsonl; uncertainty / generations: the validation split's;
    tuned[method][split]: outcomes.jsonl of each method's picked run (first seed);
    example: (SE method, its picked tau) for the examples table on validation, where the
    label shown is what that method's rule gives the question (entropy > tau: abstain).
    """
    read = stage_io.read_jsonl
    unc, gens = read(uncertainty), read(generations)
    val_questions, val_original = read(questions["val"]), read(original["val"])
    val = kr.join_records(val_questions, val_original, unc, gens)
    summary = kr.uncertainty_summary(val, num_samples=num_samples, confidence=confidence)
    parts = ["## Does the base model's uncertainty predict its errors? (validation)\n",
             "The base model was taught half of the facts (K) before the experiment; the "
             "other half (U) it never saw. AUROC (errors): the score ranks the base model's "
             "wrong or abstained answers above its right ones; AUROC (untaught): it ranks "
             "untaught facts above taught ones.\n",
             kr.uncertainty_markdown(summary, confidence) + "\n"]
    if "first_token_entropy" in summary:
        parts.append("First-token entropy is the base model's uncertainty over its first "
                     "answer token, where a tuned model's abstention begins (\"I\" against "
                     "that token): where it does not rank untaught facts high, the tuned "
                     "model has little to tell them apart by when it decides.\n")
    for split in [s for s in questions if s not in ("train", "val")]:
        tuned_split = {m: read(paths[split]) for m, paths in tuned.items() if split in paths}
        records = kr.join_records(read(questions[split]), read(original[split]),
                                  tuned=tuned_split)
        methods = [kr.ORIGINAL, *tuned_split, kr.ALL_ABSTAIN, kr.ORACLE]
        parts += [f"## Abstention on taught and untaught facts ({split})\n",
                  kr.knowledge_markdown(kr.knowledge_rates(records, methods)) + "\n"]
        if split == "test" and tuned_split and all(r["relation"] for r in records):
            parts += ["## Abstention by relation (test)\n",
                      "Abstentions / facts of each relation, taught · untaught. Abstention "
                      "that tracks what the base model knows differs between a relation's "
                      "taught and untaught facts; abstention keyed on the question's form "
                      "(its relation) is the same for both.\n",
                      kr.relation_markdown(kr.relation_counts(records, list(tuned_split)))
                      + "\n"]
    if example is not None and "val" in tuned.get(example[0], {}):
        method, tau = example
        # The label stage's own rule, applied to the validation questions.
        rule = [{"id": e.id, "label": e.label} for e in labels.se_labels(
            labels.join_by_id(gens, unc), tau=tau, entropy_field=entropy_field)]
        records = kr.join_records(val_questions, val_original, unc, gens,
                                  labels={method: rule},
                                  tuned={method: read(tuned[method]["val"])})
        parts += [f"## Examples (validation; {kr.label(method)} at tau {tau:g})\n",
                  kr.examples_markdown(records, method, score=entropy_field) + "\n"]
    return parts
