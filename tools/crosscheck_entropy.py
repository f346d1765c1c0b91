"""Cross-check the entropy stage against the reference implementation's way, in PyTorch.

On the same generations, the reference side does exactly what jlko/semantic_uncertainty
does: transformers' DeBERTa classifies one pair per call (`EntailmentDeberta.
check_implication`: tokenizer(text1, text2), argmax), answers conditioned on the question
("{question} {answer}"), `get_semantic_ids`' greedy loop (which only ever compares against
cluster representatives), then `cluster_assignment_entropy`, `logsumexp_by_id` +
`predictive_entropy_rao`, `predictive_entropy`; plus R-Tuning-U's exact-string entropy.
Ours: se_jax.pipeline.stages.entropy.uncertainty_records with the jitted, batched, sharded DeBERTa
backend. Every question must get the same semantic ids and the same entropies.

    python -m tools.crosscheck_entropy                       # tiny random DeBERTa, built here
    python -m tools.crosscheck_entropy --nli_dir=/models/deberta-v2-xlarge-mnli \\
        --generations=runs/demo/sample/generations.jsonl

(The reference hard-codes MNLI's class order 0/1/2 = contradiction/neutral/entailment; here
both sides read the order from config.json, which is the same thing for MNLI checkpoints.)
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from absl import app, flags, logging

_GENERATIONS = flags.DEFINE_string("generations", None, "generations.jsonl (default: a small "
                                   "built-in set with repeated answers)")
_NLI_DIR = flags.DEFINE_string("nli_dir", None, "HF DeBERTa NLI directory (default: a tiny "
                               "random v3-style model built in a temp dir)")
_STRICT = flags.DEFINE_bool("strict", False, "strict entailment")
_MAX_QUESTIONS = flags.DEFINE_integer("max_questions", 50, "questions to check")
_ATOL = flags.DEFINE_float("atol", 1e-5, "entropy tolerance (float32 ours vs float64 theirs)")

ESTIMATORS = ("discrete_semantic_entropy", "semantic_entropy", "naive_entropy",
              "exact_entropy")


# ----------------------------------------------------------------------------- reference

class ReferenceDeberta:
    """jlko/semantic_uncertainty EntailmentDeberta: one pair per forward, argmax."""

    def __init__(self, nli_dir: str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(nli_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
        names = [self.model.config.id2label[i].lower() for i in range(len(self.model.config.id2label))]
        self.to_mnli = [("contradiction", "neutral", "entailment").index(n) for n in names]
        self.calls = 0

    def check_implication(self, text1: str, text2: str) -> int:
        self.calls += 1
        inputs = self.tokenizer(text1, text2, return_tensors="pt")
        with self.torch.no_grad():
            logits = self.model(**inputs).logits
        largest_index = self.torch.argmax(self.torch.nn.functional.softmax(logits, dim=1))
        return self.to_mnli[largest_index.cpu().item()]


def reference_semantic_ids(strings_list: Sequence[str], model, strict_entailment=False):
    """get_semantic_ids, as in the reference (including its overwrite of later ids)."""

    def are_equivalent(text1, text2):
        implication_1 = model.check_implication(text1, text2)
        implication_2 = model.check_implication(text2, text1)
        assert (implication_1 in [0, 1, 2]) and (implication_2 in [0, 1, 2])
        if strict_entailment:
            return (implication_1 == 2) and (implication_2 == 2)
        implications = [implication_1, implication_2]
        return (0 not in implications) and ([1, 1] != implications)

    semantic_set_ids = [-1] * len(strings_list)
    next_id = 0
    for i, string1 in enumerate(strings_list):
        if semantic_set_ids[i] == -1:
            semantic_set_ids[i] = next_id
            for j in range(i + 1, len(strings_list)):
                if are_equivalent(string1, strings_list[j]):
                    semantic_set_ids[j] = next_id
            next_id += 1
    assert -1 not in semantic_set_ids
    return semantic_set_ids


def reference_entropies(semantic_ids, mean_logprobs, texts) -> dict[str, float]:
    from se_jax.data.text import normalize_answer
    ids = np.asarray(semantic_ids)

    def cluster_assignment_entropy(ids):
        probabilities = np.bincount(ids) / len(ids)
        return float(-(probabilities * np.log(probabilities)).sum())

    log_likelihoods = np.asarray(mean_logprobs, np.float64)
    per_id = []
    for uid in sorted(set(semantic_ids)):
        members = log_likelihoods[ids == uid]
        log_lik_norm = members - np.log(np.sum(np.exp(log_likelihoods)))
        per_id.append(np.log(np.sum(np.exp(log_lik_norm))))
    per_id = np.asarray(per_id)
    normalised = [normalize_answer(t) for t in texts]
    exact = np.array([sorted(set(normalised), key=normalised.index).index(n) for n in normalised])
    return dict(discrete_semantic_entropy=cluster_assignment_entropy(ids),
                semantic_entropy=float(-np.sum(np.exp(per_id) * per_id)),
                naive_entropy=float(-np.sum(log_likelihoods) / len(log_likelihoods)),
                exact_entropy=cluster_assignment_entropy(exact))


# ----------------------------------------------------------------------------- compare

@dataclasses.dataclass
class CrosscheckReport:
    questions: int
    mismatches: list[str]
    reference_calls: int
    our_pairs: int
    clusters: list[int]       # clusters per question (a check that sees only 1s proves little)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def crosscheck(items, nli_dir: str, *, strict: bool = False, atol: float = 1e-5,
               mesh=None) -> CrosscheckReport:
    """Compare ours with the reference on `items` (se_jax.pipeline.stages.entropy.Item)."""
    from se_jax.semantic import entailment
    from se_jax.parallel.mesh import make_mesh
    from se_jax.models.deberta_loading import load_nli
    from se_jax.pipeline.stages.entropy import uncertainty_records

    mesh = mesh if mesh is not None else make_mesh({"data": -1})
    backend = entailment.DebertaBackend(load_nli(nli_dir), mesh)
    ours, pairs = uncertainty_records(backend, items, strict=strict)
    reference = ReferenceDeberta(nli_dir)
    mismatches = []
    for it, mine in zip(items, ours):
        ids = reference_semantic_ids([f"{it.question} {t}" for t in it.texts], reference,
                                     strict_entailment=strict)
        if ids != mine["semantic_ids"]:
            mismatches.append(f"id={it.id}: semantic ids ours {mine['semantic_ids']} "
                              f"reference {ids}")
        for name, value in reference_entropies(ids, it.mean_logprobs, it.texts).items():
            if not abs(value - mine[name]) <= atol:
                mismatches.append(f"id={it.id}: {name} ours {mine[name]:.7f} "
                                  f"reference {value:.7f}")
    return CrosscheckReport(len(items), mismatches, reference.calls, pairs,
                            [r["num_clusters"] for r in ours])


def builtin_generations(num_questions: int = 8, num_samples: int = 10, seed: int = 0):
    """Questions with short answers that repeat, as sampled answers do."""
    from se_jax.pipeline.stages.entropy import Item
    pools = {
        "Who wrote Hamlet?": ["Shakespeare", "William Shakespeare", "Marlowe",
                              "I don't know the answer.", "Shakespeare, around 1600"],
        "What is the capital of Australia?": ["Canberra", "Sydney", "Canberra.", "Melbourne"],
        "How many legs does a spider have?": ["Eight", "8", "eight legs", "Six"],
        "Which planet is called the red planet?": ["Mars", "Mars.", "Jupiter", "Venus"],
    }
    rng = np.random.default_rng(seed)
    questions = list(pools)
    items = []
    for i in range(num_questions):
        q = questions[i % len(questions)]
        texts = [pools[q][k] for k in rng.integers(0, len(pools[q]), size=num_samples)]
        lps = rng.uniform(-3.0, -0.05, size=num_samples).round(6)
        items.append(Item(f"q{i}", q, tuple(texts), tuple(float(x) for x in lps)))
    return items


def random_nli_dir(out_dir: Path, items) -> Path:
    """A tiny random v3-style DeBERTa whose classifier is calibrated on these questions."""
    from tools import random_nli
    sentences = [f"{it.question} {t}" for it in items for t in dict.fromkeys(it.texts)]
    return random_nli.save_random_nli(out_dir, random_nli.TINY["v3"],
                                      random_nli.DEFAULT_SENTENCES + sentences, seed=2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from se_jax.pipeline.stages.entropy import read_generations
    if _GENERATIONS.value:
        items, skipped = read_generations(Path(_GENERATIONS.value), "skip")
        if skipped:
            logging.warning("%d bad generation records skipped", len(skipped))
    else:
        items = builtin_generations()
    items = items[:_MAX_QUESTIONS.value]
    with tempfile.TemporaryDirectory() as tmp:
        nli_dir = _NLI_DIR.value or str(random_nli_dir(Path(tmp) / "nli", items))
        report = crosscheck(items, nli_dir, strict=_STRICT.value, atol=_ATOL.value)
    for line in report.mismatches:
        print("MISMATCH", line)
    print(json.dumps(dict(questions=report.questions, mismatches=len(report.mismatches),
                          reference_pair_calls=report.reference_calls,
                          our_pairs_labelled=report.our_pairs,
                          clusters_per_question=report.clusters, nli_dir=_NLI_DIR.value
                          or "tiny random (built here)", strict=_STRICT.value)))
    print("crosscheck:", "OK: same semantic ids and entropies for every question"
          if report.ok else "FAILED")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
