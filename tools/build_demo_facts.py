"""Build the shipped demo fact pool (se_jax/data/demo_facts/facts.jsonl) from EntityQuestions.

    PYTHONPATH=. python -m tools.build_demo_facts --source_dir=../shared/data

Deterministic in the source files and the flags: per relation, a seeded permutation of the
train split, keeping facts whose subject parses from the relation's question template, whose
first answer is short (few words, ASCII) and whose subject is not already in the pool (so a
split by record is a split by entity). No single answer may take more than `max_answer_share`
of a relation's facts, so "United States of America" cannot make country questions guessable.
"""
from __future__ import annotations

import json
from collections import Counter
import re
from pathlib import Path

import numpy as np
from absl import app, flags

from se_jax.data import sources
from se_jax.data.facts import template_regex

_SOURCE = flags.DEFINE_string("source_dir", "../shared/data", "folder holding entity_questions/")
_OUT = flags.DEFINE_string("out", "se_jax/data/demo_facts/facts.jsonl", "output JSONL")
_IN_REL = flags.DEFINE_list("relations", ["P36", "P17", "P19", "P26", "P40", "P495", "P131"],
                            "in-distribution relations (SliCK's)")
_OOD_REL = flags.DEFINE_list("ood_relations", ["P50", "P176", "P407"],
                             "out-of-distribution relations (SliCK's)")
_N_IN = flags.DEFINE_integer("per_relation", 80, "facts per in-distribution relation")
_N_OOD = flags.DEFINE_integer("per_ood_relation", 60, "facts per out-of-distribution relation")
_SHARE = flags.DEFINE_float("max_answer_share", 0.08, "largest share of one answer per relation")
_SEED = flags.DEFINE_integer("seed", 0, "draw seed")

MAX_ANSWER_WORDS = 4
MAX_ANSWER_CHARS = 30
MAX_SUBJECT_CHARS = 45


def usable(subject: str, answer: str) -> bool:
    return (subject.isascii() and answer.isascii() and len(subject) <= MAX_SUBJECT_CHARS
            and len(answer) <= MAX_ANSWER_CHARS and len(answer.split()) <= MAX_ANSWER_WORDS
            and answer.lower() not in subject.lower())  # the answer must not be in the question


def pick(root: Path, relation: str, n: int, seen: set[str], rng: np.random.Generator,
         template: re.Pattern) -> list[dict]:
    items = list(sources.read_entity_questions(root, "train", (relation,)))
    cap = max(2, int(_SHARE.value * n))
    counts: Counter = Counter()
    out = []
    for i in rng.permutation(len(items)):
        ident, rec = items[i]
        m = template.match(rec["question"])
        if not m:
            continue
        subject, answer = m.group(1), rec["answers"][0]
        if subject in seen or counts[answer] >= cap or not usable(subject, answer):
            continue
        seen.add(subject)
        counts[answer] += 1
        out.append({"id": ident, "question": rec["question"], "answers": rec["answers"],
                    "relation": relation, "subject": subject})
        if len(out) == n:
            return sorted(out, key=lambda r: r["id"])
    raise ValueError(f"{root}/train/{relation}.train.json: only {len(out)} usable facts, "
                     f"--per_relation asks for {n}")


def main(argv):
    del argv
    root = Path(_SOURCE.value) / "entity_questions"
    templates = json.loads((root / "relation_query_templates.json").read_text())
    rng = np.random.default_rng(_SEED.value)
    seen: set[str] = set()
    rows = []
    for rels, n in ((_IN_REL.value, _N_IN.value), (_OOD_REL.value, _N_OOD.value)):
        for rel in rels:
            rows += pick(root, rel, n, seen, rng, template_regex(templates[rel]))
    out = Path(_OUT.value)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{out}: {len(rows)} facts, {out.stat().st_size} bytes; "
          + ", ".join(f"{r}={sum(x['relation'] == r for x in rows)}"
                      for r in (*_IN_REL.value, *_OOD_REL.value)))


if __name__ == "__main__":
    app.run(main)
