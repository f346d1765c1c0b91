"""Knowledge-controlled report pieces on hand-made records."""
from __future__ import annotations

import math

import numpy as np
import pytest

from se_jax.abstention import evaluation
from se_jax.pipeline import knowledge_report as kr


def _records():
    """8 questions: 4 taught (base right on 3), 4 untaught (base wrong on all).

    discrete SE is low exactly where the base is right; exact-string entropy is high on
    one right answer (a rephrasing) so it ranks worse. Method "se" abstains on the 5 base
    errors; "rt_u" also abstains on the rephrased right answer.
    """
    rows = []
    spec = [  # id, taught, base correct, dse, exact, se abstains, rt_u abstains
        ("a", True, True, 0.0, 0.0, False, False),
        ("b", True, True, 0.1, 1.6, False, True),
        ("c", True, True, 0.2, 0.3, False, False),
        ("d", True, False, 1.5, 1.5, True, True),
        ("e", False, False, 2.0, 2.0, True, True),
        ("f", False, False, 1.8, 1.9, True, True),
        ("g", False, False, 1.2, 1.7, True, True),
        ("h", False, False, 2.2, 2.1, True, False),
    ]
    for k, (i, taught, right, dse, ex, se_abs, rtu_abs) in enumerate(spec):
        rows.append({"id": i, "question": f"Q {i}?", "answers": [f"gold {i}"], "taught": taught,
                     "relation": "P36" if k % 2 else "P17"})
    base = [{"id": s[0], "prediction": f"gold {s[0]}" if s[2] else "nope", "correct": s[2],
             "abstained": False} for s in spec]
    unc = [{"id": s[0], "discrete_semantic_entropy": s[3], "exact_entropy": s[4],
            "num_clusters": 1 + int(s[3] > 0.5) * 4} for s in spec]
    tuned = {m: [{"id": s[0], "prediction": "I don't know." if s[col] else
                  (f"gold {s[0]}" if s[2] else "nope"),
                  "correct": (not s[col]) and s[2], "abstained": s[col]} for s in spec]
             for m, col in (("se", 5), ("rt_u", 6))}
    labels = {"se": [{"id": "a", "label": "answer"}, {"id": "e", "label": "abstain"}]}
    gens = [{"id": "a", "samples": [{"text": "gold a"}, {"text": "gold a!"}]}]
    return kr.join_records(rows, base, unc, gens, labels, tuned)


def test_join_records_carries_every_column():
    recs = _records()
    a = recs[0]
    assert a["taught"] and a["base"]["correct"] and a["labels"] == {"se": "answer"}
    assert a["samples"] == ["gold a", "gold a!"] and a["num_clusters"] == 1
    assert set(a["tuned"]) == {"se", "rt_u"} and recs[1]["labels"] == {}
    with pytest.raises(KeyError, match="'zz'"):
        kr.join_records([{"id": "zz", "question": "q", "answers": ["x"], "taught": True}], [])


def test_uncertainty_summary_matches_evaluation_and_ranks_scores():
    recs = _records()
    s = kr.uncertainty_summary(recs, num_samples=200)
    assert set(s) == {"discrete_semantic_entropy", "exact_entropy"}  # only scores present
    dse = s["discrete_semantic_entropy"]
    assert dse["auroc"].value == pytest.approx(1.0)   # separates errors perfectly
    assert s["exact_entropy"]["auroc"].value < 1.0    # the rephrasing costs it
    error = np.array([not r["base"]["correct"] for r in recs])
    ex = np.array([r["scores"]["exact_entropy"] for r in recs])
    assert s["exact_entropy"]["auroc"].value == pytest.approx(
        float(evaluation.auroc(ex, error)))
    # untaught: 4 untaught have the 4 highest DSE except 'd' (1.5 > g's 1.2): 15/16.
    assert dse["untaught"].value == pytest.approx(15 / 16)
    md = kr.uncertainty_markdown(s)
    assert "discrete SE" in md and "exact-string entropy" in md and "90%" in md


def test_reference_rows_all_abstain_and_oracle():
    recs = _records()
    rows = {r["method"]: r for r in kr.reference_rows(recs, "val", judge="alias")}
    assert rows["all_abstain"]["aed"] == pytest.approx(math.sqrt(0.5))
    assert rows["all_abstain"]["abstained"] == 8 and rows["all_abstain"]["engagement"] == 0
    # Oracle: 3 right, 0 wrong, n=8 -> sqrt((0 + 25) / 128).
    assert rows["oracle"]["correct"] == 3 and rows["oracle"]["incorrect"] == 0
    assert rows["oracle"]["aed"] == pytest.approx(math.sqrt(25 / 128))
    assert float(evaluation.aed(3, 0, 8)) == pytest.approx(rows["oracle"]["aed"])
    assert all(r["split"] == "val" and r["judge"] == "alias" for r in rows.values())


def test_aed_interval_brackets_the_value_and_is_degenerate_when_constant():
    c = np.array([True, True, False, False, False, True])
    a = np.array([False, False, True, False, True, False])
    iv = kr.aed_interval(c, a, num_samples=300)
    assert iv.value == pytest.approx(evaluation.abstention_metrics(c, a).aed)
    assert iv.low <= iv.value <= iv.high and iv.high > iv.low
    all_abs = kr.aed_interval(np.zeros(6, bool), np.ones(6, bool), num_samples=50)
    assert all_abs.low == pytest.approx(math.sqrt(0.5)) == pytest.approx(all_abs.high)


def test_knowledge_rates_per_method():
    rates = kr.knowledge_rates(_records(), ["original", "se", "rt_u", "all_abstain", "oracle"])
    assert rates["se"]["abstain_untaught"] == 1.0
    assert rates["se"]["abstain_taught"] == 0.25 and rates["se"]["correct_taught"] == 0.75
    assert rates["rt_u"]["abstain_untaught"] == 0.75 and rates["rt_u"]["abstain_taught"] == 0.5
    assert rates["original"]["abstain_taught"] == 0.0
    assert rates["se"]["aed"].value == pytest.approx(rates["oracle"]["aed"].value)
    assert rates["se"]["aed"].value < rates["rt_u"]["aed"].value
    md = kr.knowledge_markdown(rates)
    assert "SE" in md or "se" in md
    assert "All abstain" in md and md.count("\n") == 6
    with pytest.raises(KeyError, match="nosuch"):
        kr.knowledge_rates(_records(), ["nosuch"])


def test_relation_counts_split_each_relation_by_taught():
    recs = _records()   # P17: a c e g (taught, taught, untaught, untaught); P36: b d f h
    counts = kr.relation_counts(recs, ["se", "rt_u"])
    assert list(counts) == ["P17", "P36"]
    assert counts["P17"]["se"] == ((0, 2), (2, 2))     # se abstains on e, g only
    assert counts["P36"]["se"] == ((1, 2), (2, 2))     # d (a base error), f, h
    assert counts["P36"]["rt_u"] == ((2, 2), (1, 2))   # b, d; f (not h)
    md = kr.relation_markdown(counts).splitlines()
    assert md[0] == f"| relation | {kr.label('se')} | {kr.label('rt_u')} |"
    assert md[2] == "| P17 | 0/2 · 2/2 | 0/2 · 2/2 |" and len(md) == 4
    assert recs[1]["relation"] == "P36"


def test_examples_mix_taught_and_untaught_and_escape_cells():
    recs = _records()
    recs[0]["question"] = "A | pipe?"
    picked = kr.pick_examples(recs, 4, seed=1)
    assert sum(r["taught"] for r in picked) == 2 and len(picked) == 4
    assert kr.pick_examples(recs, 4, seed=1) == picked
    only_taught = [r for r in recs if r["taught"]]
    assert len(kr.pick_examples(only_taught, 3)) == 3
    md = kr.examples_markdown(recs, "se", k=8)
    body = md.splitlines()[2:]
    assert len(body) == 8
    assert "A \\| pipe?" in md and "(abstains)" in md and "(right)" in md
    assert all(line.startswith("| ") and line.endswith(" |") for line in body)


def test_table1_rows_are_setting_by_split_and_columns_methods():
    def rows(setting_shift):
        out = []
        for seed in (0, 1):
            for m, aed in (("original", 0.9), ("se_lexical", 0.4), ("rtuning_u", 0.5),
                           ("all_abstain", 0.707)):
                for split, d in (("test", 0.0), ("ood_demo_facts", 0.05)):
                    out.append({"method": m, "split": split, "seed": seed,
                                "aed": aed + d + setting_shift + 0.01 * seed})
        out.append({"method": "se_lexical", "split": "val", "seed": 0, "aed": 0.1})
        return out
    md = kr.table1({"Short-QA": rows(0.0), "Long-QA": rows(0.1)})
    lines = md.split("\n\n")[0].splitlines()
    assert lines[0].split(" | ")[2:] == ["Original model", "SE (lexical)", "R-Tuning-U",
                                         "All abstain |"]
    assert len(lines) == 2 + 4                       # 2 settings x (test, OOD); val left out
    assert lines[2].startswith("| Short-QA | in-distribution | 0.905 ± 0.007 | **0.405")
    assert lines[5].startswith("| Long-QA | ood_demo_facts |")
