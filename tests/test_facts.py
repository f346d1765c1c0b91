"""The knowledge-controlled fact pool: shipped file, draw by entity, teach set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from se_jax.data import facts
from se_jax.pipeline.stages.train import read_sft

IND = ("P36", "P17", "P19", "P26", "P40", "P495", "P131")
OOD = ("P50", "P176", "P407")
SHARED_EQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "entity_questions"


def _cfg(**kw) -> facts.FactsConfig:
    base = dict(n_known=60, n_unknown=60, relations=IND, ood_relations=OOD, n_ood_known=10,
                n_ood_unknown=10, seed=0, phrasings=3, style="sentence")
    return facts.FactsConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pool():
    return facts.load_pool()


def test_shipped_pool_loads_and_is_small(pool):
    assert facts.SHIPPED_POOL.stat().st_size < 1_000_000
    assert (facts.SHIPPED_POOL.parent / "LICENSE").read_text().startswith("MIT License")
    assert "096c261" in (facts.SHIPPED_POOL.parent / "SOURCE.md").read_text()
    assert len(pool) >= 500
    assert {r["relation"] for r in pool} == set(IND) | set(OOD)
    # One fact per entity: a split by record is a split by entity.
    assert len({r["subject"] for r in pool}) == len(pool)
    assert set(facts.QUESTION_TEMPLATES) >= set(IND) | set(OOD)
    # Phrasing 0 of the templates is the question itself.
    for r in pool:
        assert facts.QUESTION_TEMPLATES[r["relation"]][0].format(s=r["subject"]) == r["question"]


def test_splits_sizes_mix_and_flags(pool):
    cfg = _cfg()
    s = facts.make_splits(pool, cfg)
    assert sorted(s) == sorted([*facts.IN_DISTRIBUTION_SPLITS, facts.OOD_SPLIT])
    sizes = {k: (sum(r["taught"] for r in v), sum(not r["taught"] for r in v))
             for k, v in s.items()}
    assert sizes == {"train": (30, 30), "val": (15, 15), "test": (15, 15),
                     facts.OOD_SPLIT: (10, 10)}
    for name, records in s.items():
        rels = {r["relation"] for r in records}
        assert rels <= (set(OOD) if name == facts.OOD_SPLIT else set(IND))
        for r in records:
            assert {"id", "question", "answers", "relation", "subject", "dataset",
                    "taught"} <= set(r)
            assert isinstance(r["taught"], bool)
    ids = [r["id"] for v in s.values() for r in v]
    assert len(ids) == len(set(ids))


def test_draw_is_deterministic_by_seed(pool):
    a, b = facts.make_splits(pool, _cfg()), facts.make_splits(pool, _cfg())
    c = facts.make_splits(pool, _cfg(seed=1))
    assert a == b
    assert [r["id"] for r in a["test"]] != [r["id"] for r in c["test"]]


def test_no_entity_leak_between_known_and_unknown(pool):
    s = facts.make_splits(pool, _cfg())
    known = {r["subject"].casefold() for v in s.values() for r in v if r["taught"]}
    unknown = {r["subject"].casefold() for v in s.values() for r in v if not r["taught"]}
    assert known and unknown and not known & unknown


def test_entity_groups_stay_together():
    """A pool where subjects repeat (the full dataset): one subject is all K or all U."""
    pool = [{"id": f"f{i:03d}", "question": f"q{i}?", "answers": ["a"], "relation": "P36",
             "subject": f"S{i // 2}"} for i in range(40)]
    s = facts.make_splits(pool, facts.FactsConfig(n_known=10, n_unknown=10,
                                                  relations=("P36",)))
    taught = {}
    for r in (r for v in s.values() for r in v):
        taught.setdefault(r["subject"], set()).add(r["taught"])
    assert all(len(v) == 1 for v in taught.values())


def test_teach_set_holds_every_taught_fact_and_no_untaught(pool):
    cfg = _cfg()
    s = facts.make_splits(pool, cfg)
    teach = facts.teach_set(s, cfg)
    taught = {r["id"]: r for v in s.values() for r in v if r["taught"]}
    assert len(teach) == cfg.phrasings * len(taught)
    assert {t["fact_id"] for t in teach} == set(taught)
    # K facts of val / test / OOD are taught but never in the abstention fine-tuning split.
    train_ids = {r["id"] for r in s["train"]}
    held_out_k = [i for name in ("val", "test", facts.OOD_SPLIT) for i in
                  (r["id"] for r in s[name] if r["taught"])]
    assert held_out_k and not train_ids & set(held_out_k)
    assert set(held_out_k) <= {t["fact_id"] for t in teach}
    for t in teach:
        fact = taught[t["fact_id"]]
        assert t["label"] == "answer"
        assert text_has(t["target"], fact["answers"][0]) and fact["subject"] in t["target"]
    # Several phrasings: distinct questions and distinct sentences per fact.
    per_fact: dict[str, list[dict]] = {}
    for t in teach:
        per_fact.setdefault(t["fact_id"], []).append(t)
    for rows in per_fact.values():
        assert len({r["question"] for r in rows}) == 3
        assert len({r["target"] for r in rows}) == 3
        assert rows[0]["question"] == taught[rows[0]["fact_id"]]["question"]


def text_has(sentence: str, answer: str) -> bool:
    from se_jax.data import text
    return text.alias_match(sentence, [answer])


def test_short_style_targets_are_the_gold_answer(pool):
    cfg = _cfg(style="short", phrasings=1)
    s = facts.make_splits(pool, cfg)
    teach = facts.teach_set(s, cfg)
    gold = {r["id"]: r["answers"][0] for v in s.values() for r in v}
    assert all(t["target"] == gold[t["fact_id"]] for t in teach)


def test_teach_set_is_what_the_train_stage_reads(pool, tmp_path):
    cfg = _cfg(n_known=6, n_unknown=6, n_ood_known=0, n_ood_unknown=0)
    teach = facts.teach_set(facts.make_splits(pool, cfg), cfg)
    path = tmp_path / "teach.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in teach))
    assert len(read_sft(path)) == len(teach) == 18


@pytest.mark.parametrize("kw, needle", [
    (dict(n_known=10_000), "lower the counts"),
    (dict(style="essay"), "unknown prompt style"),
    (dict(relations=("P36",), ood_relations=("P36",)), "both in- and out-of-distribution"),
    (dict(relations=("P36", "P999"), style="sentence"), "P999"),
    (dict(phrasings=0), "phrasings"),
])
def test_bad_configs_name_the_problem(pool, kw, needle):
    with pytest.raises(ValueError, match=needle):
        facts.make_splits(pool, _cfg(**kw))


def test_bad_pool_file_names_line_and_field(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "q?", "answers": ["x"], "relation": "P36",
                                "subject": "s"}) + "\n"
                    + json.dumps({"id": "b", "question": "q?", "answers": [],
                                  "relation": "P36", "subject": "s"}) + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:2: field 'answers'"):
        facts.load_pool(path)


@pytest.mark.skipif(not SHARED_EQ.is_dir(), reason=f"{SHARED_EQ} absent (full EntityQuestions)")
def test_full_dataset_loads_by_path():
    pool = facts.read_entity_questions_pool(SHARED_EQ, "dev", ("P36", "P50"))
    assert len(pool) > 500 and {r["relation"] for r in pool} == {"P36", "P50"}
    assert all(r["subject"] in r["question"] for r in pool)
    shipped = {r["id"]: r for r in facts.load_pool()}
    full_train = {r["id"]: r for r in facts.read_entity_questions_pool(SHARED_EQ, "train",
                                                                      ("P36",))}
    # The shipped facts are the upstream records, ids included.
    for i, r in shipped.items():
        if r["relation"] == "P36":
            assert full_train[i]["answers"] == r["answers"]
            assert full_train[i]["subject"] == r["subject"]


def test_default_facts_section_builds_a_draw_that_fits_the_shipped_pool(pool):
    from configs import base
    config = base.get_config()
    for style in ("short", "sentence"):
        cfg = facts.FactsConfig.from_config(config.facts, style)
        s = facts.make_splits(pool, cfg)
        assert len(s["test"]) == 30 and len(s[facts.OOD_SPLIT]) == 40
        assert len(facts.teach_set(s, cfg)) == 3 * 80
    # The teach section only names config.training fields (it overrides them).
    assert set(config.teach.training) <= set(config.training)
