"""A knowledge-controlled fact pool: which facts the model is taught (K) and which not (U).

The embedded model knows almost no EntityQuestions facts, so the experiment first teaches it
a known set K (the `teach` step) and then runs on splits that mix K with never-taught facts U.
Ground truth of what the model should know is then a column of every record (`"taught"`).

Pure functions; the only I/O is `load_pool` (the shipped JSONL or an EntityQuestions folder).

    pool = load_pool()                                   # se_jax/data/demo_facts/facts.jsonl
    cfg = FactsConfig(n_known=120, n_unknown=120, ...)
    splits = make_splits(pool, cfg)    # {"train", "val", "test", OOD_SPLIT: [record]}
    teach = teach_set(splits, cfg)     # SFT records for the teach step

A split record is the sample stage's input: {"id", "question", "answers", "relation",
"subject", "dataset", "taught"}. The draw is by entity (subject): K and U never share one.
K facts of val, test and OOD are taught in the teach step but are never in the abstention
fine-tuning split ("train"), so the tuned model must abstain from its own knowledge, not
from memorised questions.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from se_jax.config import schema
from se_jax.data import prompts, sources

SHIPPED_POOL = Path(__file__).parent / "demo_facts" / "facts.jsonl"
DATASET = "demo_facts"
OOD_SPLIT = "ood_demo_facts"
IN_DISTRIBUTION_SPLITS = ("train", "val", "test")
POOL_FIELDS = ("id", "question", "answers", "relation", "subject")

# Question phrasings per relation, "{s}" = subject. Phrasing 0 is EntityQuestions' own
# template (the question the experiment asks); the others are the teach step's paraphrases.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "P36": ("What is the capital of {s}?", "Which city is the capital of {s}?",
            "{s} has which city as its capital?"),
    "P17": ("Which country is {s} located in?", "In which country is {s}?",
            "{s} is in which country?"),
    "P19": ("Where was {s} born?", "What is the birthplace of {s}?",
            "In which place was {s} born?"),
    "P26": ("Who is {s} married to?", "Who is the spouse of {s}?", "Whom did {s} marry?"),
    "P40": ("Who is {s}'s child?", "Who is a child of {s}?", "Which person is a child of {s}?"),
    "P495": ("Which country was {s} created in?", "In which country was {s} created?",
             "What is the country of origin of {s}?"),
    "P131": ("Where is {s} located?", "In which area is {s}?",
             "What administrative region is {s} in?"),
    "P50": ("Who is the author of {s}?", "Who wrote {s}?", "{s} was written by whom?"),
    "P176": ("Which company is {s} produced by?", "Which company made {s}?",
             "Who is the manufacturer of {s}?"),
    "P407": ("Which language was {s} written in?", "In what language is {s} written?",
             "What is the language of {s}?"),
}

# Sentence-length answers per relation (Long-QA), "{s}" = subject, "{a}" = answer. Several
# forms give the taught model real rephrasings of one fact.
SENTENCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "P36": ("The capital of {s} is {a}.", "{a} is the capital of {s}.",
            "{s} has {a} as its capital."),
    "P17": ("{s} is located in {a}.", "{s} is in {a}.", "{a} is the country where {s} is."),
    "P19": ("{s} was born in {a}.", "The birthplace of {s} is {a}.", "{a} is where {s} was born."),
    "P26": ("{s} is married to {a}.", "The spouse of {s} is {a}.", "{a} is married to {s}."),
    "P40": ("{a} is a child of {s}.", "{s}'s child is {a}.", "One of {s}'s children is {a}."),
    "P495": ("{s} was created in {a}.", "The country of origin of {s} is {a}.",
             "{s} comes from {a}."),
    "P131": ("{s} is located in {a}.", "{s} lies in {a}.", "{a} is where {s} is located."),
    "P50": ("{s} was written by {a}.", "The author of {s} is {a}.", "{a} is the author of {s}."),
    "P176": ("{s} is produced by {a}.", "{s} was made by {a}.",
             "The manufacturer of {s} is {a}."),
    "P407": ("{s} was written in {a}.", "The language of {s} is {a}.", "{s} is written in {a}."),
}


@dataclasses.dataclass(frozen=True)
class FactsConfig:
    """What to draw and how to teach it.

    n_known / n_unknown: in-distribution facts taught (K) / never taught (U), over all of
      train + val + test; each split gets `fractions` of both, so each mixes K and U.
    n_ood_known / n_ood_unknown: OOD facts (from `ood_relations`) taught / never taught.
    relations / ood_relations: EntityQuestions relation ids (e.g. "P36").
    seed: the draw (which entities are K, U, and in which split).
    phrasings: teach records per K fact (question paraphrases; sentence forms for Long-QA).
    style: "short" (target = the gold answer) | "sentence" (a sentence holding it).
    """
    n_known: int
    n_unknown: int
    relations: tuple[str, ...]
    ood_relations: tuple[str, ...] = ()
    n_ood_known: int = 0
    n_ood_unknown: int = 0
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)  # train, val, test
    seed: int = 0
    phrasings: int = 1
    style: str = "short"

    def __post_init__(self):
        prompts.instruction(self.style)  # ValueError naming the known styles
        counts = dict(n_known=self.n_known, n_unknown=self.n_unknown,
                      n_ood_known=self.n_ood_known, n_ood_unknown=self.n_ood_unknown)
        if any(v < 0 for v in counts.values()) or self.n_known + self.n_unknown == 0:
            raise ValueError(f"FactsConfig: counts must be >= 0 and n_known + n_unknown > 0, "
                             f"got {counts}")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or sum(self.fractions) <= 0:
            raise ValueError(f"FactsConfig.fractions: three non-negative (train, val, test) "
                             f"weights, got {self.fractions}")
        if self.phrasings < 1:
            raise ValueError(f"FactsConfig.phrasings must be >= 1, got {self.phrasings}")
        if not self.relations:
            raise ValueError("FactsConfig.relations is empty")
        overlap = set(self.relations) & set(self.ood_relations)
        if overlap:
            raise ValueError(f"FactsConfig: relations {sorted(overlap)} are both in- and "
                             f"out-of-distribution")
        needs = SENTENCE_TEMPLATES if self.style == "sentence" else (
            QUESTION_TEMPLATES if self.phrasings > 1 else {})
        missing = [r for r in (*self.relations, *self.ood_relations) if needs and r not in needs]
        if missing:
            raise ValueError(f"FactsConfig: relations {missing} have no templates for "
                             f"style={self.style!r}, phrasings={self.phrasings}; known: "
                             f"{sorted(needs)}")

    @classmethod
    def from_config(cls, section: schema.FactsConfig, style: str) -> "FactsConfig":
        """From the `config.facts` section and `config.prompt.style`."""
        return cls(n_known=section.n_known, n_unknown=section.n_unknown,
                   relations=section.relations, ood_relations=section.ood_relations,
                   n_ood_known=section.n_ood_known, n_ood_unknown=section.n_ood_unknown,
                   fractions=section.fractions, seed=section.seed,
                   phrasings=section.phrasings, style=style)


# ---- the pool -------------------------------------------------------------------------

def template_regex(template: str) -> re.Pattern:
    """EntityQuestions template 'What is the capital of [X]?' -> regex, group 1 = subject."""
    head, tail = template.split("[X]")
    return re.compile("^" + re.escape(head) + "(.+?)" + re.escape(tail) + "$")


def _check_record(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for field in POOL_FIELDS:
        value = rec.get(field)
        ok = (isinstance(value, list) and value and all(isinstance(a, str) and a for a in value)
              if field == "answers" else isinstance(value, str) and value.strip())
        if not ok:
            raise ValueError(f"{where}: field {field!r} is missing or empty")
    return {f: rec[f] for f in POOL_FIELDS}


def read_pool_jsonl(path: str | Path) -> list[dict]:
    """A pool JSONL ({"id", "question", "answers", "relation", "subject"} a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fact pool JSONL not found")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            out.append(_check_record(raw, f"{path}:{lineno}"))
    if not out:
        raise ValueError(f"{path}: no facts")
    return out


def read_entity_questions_pool(root: str | Path, split: str = "train",
                               relations: Sequence[str] | None = None) -> list[dict]:
    """Pool records from a full EntityQuestions folder (`<root>/<split>/P*.json` and
    `<root>/relation_query_templates.json`); questions whose subject does not parse from the
    template are left out."""
    root = Path(root)
    tpath = root / "relation_query_templates.json"
    if not tpath.is_file():
        raise FileNotFoundError(f"{tpath}: EntityQuestions question templates not found")
    templates = {k: template_regex(v) for k, v in json.loads(tpath.read_text()).items()}
    out = []
    for _, rec in sources.read_entity_questions(root, split, tuple(relations) if relations
                                                else None):
        m = templates.get(rec["relation"], re.compile("$^")).match(rec["question"])
        if m:
            out.append({**rec, "subject": m.group(1)})
    return out


def load_pool(path: str | Path | None = None) -> list[dict]:
    """The shipped pool (None), a pool JSONL, or an EntityQuestions folder (its train split)."""
    path = Path(path) if path else SHIPPED_POOL
    if path.is_dir():
        return read_entity_questions_pool(path)
    return read_pool_jsonl(path)


# ---- the draw -------------------------------------------------------------------------

def _by_entity(records: Iterable[dict], n_known: int, n_unknown: int, rng: np.random.Generator,
               label: str) -> tuple[list[dict], list[dict]]:
    """Seeded draw of whole subjects into K (n_known records) and U (n_unknown records)."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["id"]):
        groups.setdefault(r["subject"].casefold(), []).append(r)
    known: list[dict] = []
    unknown: list[dict] = []
    subjects = sorted(groups)
    for i in rng.permutation(len(subjects)):
        group = groups[subjects[i]]
        if len(known) + len(group) <= n_known:
            known += group
        elif len(unknown) + len(group) <= n_unknown:
            unknown += group
        if len(known) == n_known and len(unknown) == n_unknown:
            return known, unknown
    raise ValueError(f"fact pool ({label}) has {sum(map(len, groups.values()))} facts over "
                     f"{len(groups)} entities; the config asks for {n_known} taught + "
                     f"{n_unknown} untaught: lower the counts or use a larger pool")


def cut(records: list[dict], fractions: Sequence[float]) -> list[list[dict]]:
    """Split into len(fractions) consecutive parts of (rounded) proportional sizes."""
    total = float(sum(fractions))
    bounds = np.round(np.cumsum([0.0, *fractions]) / total * len(records)).astype(int)
    return [records[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _tag(records: Sequence[dict], taught: bool) -> list[dict]:
    return [{**r, "dataset": DATASET, "taught": taught} for r in records]


def make_splits(pool: Sequence[Mapping], cfg: FactsConfig) -> dict[str, list[dict]]:
    """{"train", "val", "test", OOD_SPLIT (when OOD facts are asked for): [record]}.

    Deterministic in (pool, cfg). Each split holds its share of K and of U, shuffled.
    """
    rng = np.random.default_rng(cfg.seed)
    ind = [dict(r) for r in pool if r["relation"] in cfg.relations]
    known, unknown = _by_entity(ind, cfg.n_known, cfg.n_unknown, rng, "in-distribution "
                                + ",".join(cfg.relations))
    out: dict[str, list[dict]] = {}
    for name, k, u in zip(IN_DISTRIBUTION_SPLITS, cut(known, cfg.fractions),
                          cut(unknown, cfg.fractions)):
        mixed = _tag(k, True) + _tag(u, False)
        out[name] = [mixed[i] for i in rng.permutation(len(mixed))]
    if cfg.n_ood_known + cfg.n_ood_unknown:
        ood = [dict(r) for r in pool if r["relation"] in cfg.ood_relations]
        k, u = _by_entity(ood, cfg.n_ood_known, cfg.n_ood_unknown, rng,
                          "out-of-distribution " + ",".join(cfg.ood_relations))
        mixed = _tag(k, True) + _tag(u, False)
        out[OOD_SPLIT] = [mixed[i] for i in rng.permutation(len(mixed))]
    return out


# ---- the teach set --------------------------------------------------------------------

def question_phrasing(record: Mapping, i: int) -> str:
    """Phrasing i of a fact's question; 0 is the record's own question."""
    if i == 0:
        return record["question"]
    forms = QUESTION_TEMPLATES[record["relation"]]
    return forms[i % len(forms)].format(s=record["subject"])


def answer_phrasing(record: Mapping, i: int, style: str) -> str:
    """The teach target of phrasing i: the first gold answer ("short"), or sentence form
    i of the relation with it ("sentence")."""
    answer = record["answers"][0]
    if style == "short":
        return answer
    forms = SENTENCE_TEMPLATES[record["relation"]]
    return forms[i % len(forms)].format(s=record["subject"], a=answer)


def teach_set(splits: Mapping[str, Sequence[Mapping]], cfg: FactsConfig) -> list[dict]:
    """SFT records of the teach step: `cfg.phrasings` per taught fact of every split.

    Records are {"id": "<fact id>~p<i>", "question", "target", "label": "answer", "fact_id"},
    what the train stage reads (se_jax/pipeline/stages/train.py read_sft); the train stage builds the
    prompt from `question` with config.prompt, so teach with the prompt style the experiment
    samples with (style "short" or "sentence").
    """
    out = []
    for name in sorted(splits):
        for r in splits[name]:
            if r["taught"]:
                out += [{"id": f"{r['id']}~p{i}", "question": question_phrasing(r, i),
                         "target": answer_phrasing(r, i, cfg.style), "label": "answer",
                         "fact_id": r["id"]} for i in range(cfg.phrasings)]
    return out
