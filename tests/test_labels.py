"""Each labeller on hand-made example sets gives the labels its paper's rule gives."""
from __future__ import annotations

import json

import pytest

from se_jax.abstention import labels
from se_jax.data.text import ABSTENTION_PHRASE


def _answer(text: str) -> dict:
    # The generations contract's Answer; the labellers read only "text".
    return {"text": text, "token_ids": [], "token_logprobs": [], "sum_logprob": 0.0,
            "mean_logprob": 0.0}


def _gen(id_, question, golds, most_likely, samples):
    return {"id": id_, "question": question, "answers": golds, "prompt": question,
            "most_likely": _answer(most_likely), "samples": [_answer(s) for s in samples]}


def _unc(id_, dse, se, exact):
    return {"id": id_, "backend": "lexical", "checkpoint": "", "semantic_ids": [],
            "equivalence": [], "num_clusters": 1, "discrete_semantic_entropy": dse,
            "semantic_entropy": se, "naive_entropy": 0.0, "exact_entropy": exact}


GENS = [
    # Model right and consistent.
    _gen("q1", "Capital of France?", ["Paris"], "Paris", ["Paris", "Paris.", "paris", "Paris"]),
    # Model wrong but consistent (confidently wrong: SE keeps it, R-Tuning abstains).
    _gen("q2", "Capital of Australia?", ["Canberra"], "Sydney",
         ["Sydney", "Sydney", "Sydney", "Canberra"]),
    # Model right at T=0.1, samples scattered.
    _gen("q3", "Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"], "Shakespeare",
         ["Shakespeare", "Marlowe", "Bacon", "Jonson"]),
    # Model wrong and scattered.
    _gen("q4", "Who won the 1923 Nobel in physics?", ["Robert Millikan"], "Einstein",
         ["Bohr", "Einstein", "Planck", "Curie"]),
]
UNCS = [_unc("q1", 0.0, 0.05, 0.0), _unc("q2", 0.56, 0.6, 0.56),
        _unc("q3", 1.04, 0.9, 1.39), _unc("q4", 1.39, 1.3, 1.39)]


def _labels(examples):
    return {e.id: (e.label, e.target) for e in examples}


def test_se_keeps_the_models_own_answer_and_abstains_above_tau():
    got = _labels(labels.se_labels(labels.join_by_id(GENS, UNCS), tau=1.0))
    assert got == {"q1": ("answer", "Paris"),
                   "q2": ("answer", "Sydney"),   # own answer, not the gold "Canberra"
                   "q3": ("abstain", ABSTENTION_PHRASE),
                   "q4": ("abstain", ABSTENTION_PHRASE)}
    # tau is a strict threshold: entropy == tau answers.
    at_tau = _labels(labels.se_labels(labels.join_by_id(GENS, UNCS), tau=0.56))
    assert at_tau["q2"] == ("answer", "Sydney")
    # The weighted entropy is selectable and changes q3's label (0.9 <= 1.0).
    weighted = _labels(labels.se_labels(labels.join_by_id(GENS, UNCS), tau=1.0,
                                        entropy_field="semantic_entropy"))
    assert weighted["q3"] == ("answer", "Shakespeare")
    assert weighted["q4"][0] == "abstain"


def test_se_reason_records_entropy_tau_and_backend():
    ex = labels.se_labels(labels.join_by_id(GENS, UNCS), tau=1.0, phrase="No idea.")
    assert ex[3].target == "No idea."
    assert ex[3].reason == {"method": "se", "entropy_field": "discrete_semantic_entropy",
                            "entropy": 1.39, "tau": 1.0, "backend": "lexical"}
    json.dumps(ex[3].to_json())


def test_r_tuning_uses_gold_correctness():
    got = _labels(labels.r_tuning_labels(GENS))
    assert got == {"q1": ("answer", "Paris"),
                   "q2": ("abstain", ABSTENTION_PHRASE),
                   "q3": ("answer", "William Shakespeare"),   # gold label (R-Tuning)
                   "q4": ("abstain", ABSTENTION_PHRASE)}
    own = _labels(labels.r_tuning_labels(GENS, answer_source="model"))
    assert own["q3"] == ("answer", "Shakespeare")


def test_r_tuning_u_uses_exact_string_entropy():
    got = _labels(labels.r_tuning_u_labels(labels.join_by_id(GENS, UNCS), tau=1.0))
    assert [got[q][0] for q in ("q1", "q2", "q3", "q4")] == [
        "answer", "answer", "abstain", "abstain"]
    got = _labels(labels.r_tuning_u_labels(labels.join_by_id(GENS, UNCS), tau=0.5))
    assert got["q2"][0] == "abstain"


def test_idk_threshold_on_sample_accuracy():
    strict = labels.idk_labels(GENS)  # threshold 1.0: every sample must be right
    assert _labels(strict) == {"q1": ("answer", "Paris"),
                               "q2": ("abstain", ABSTENTION_PHRASE),
                               "q3": ("abstain", ABSTENTION_PHRASE),
                               "q4": ("abstain", ABSTENTION_PHRASE)}
    assert strict[2].reason["fraction"] == 0.25
    loose = _labels(labels.idk_labels(GENS, threshold=0.25, answer_source="model"))
    assert loose["q2"] == ("answer", "Canberra")      # the one correct sample
    assert loose["q3"] == ("answer", "Shakespeare")   # the correct most-likely answer
    assert loose["q4"][0] == "abstain"


def test_judge_is_pluggable():
    calls = []

    def everything_wrong(prediction, golds, question):
        calls.append(question)
        return False

    got = labels.r_tuning_labels(GENS, judge=everything_wrong)
    assert all(e.label == "abstain" for e in got)
    assert calls == [g["question"] for g in GENS]


def test_slick_categories_follow_gekhman_table():
    cat = labels.slick_category
    assert cat([True] * 10, [False] * 160) == "HighlyKnown"
    assert cat([True] + [False] * 9, [False] * 160) == "MaybeKnown"
    assert cat([False] * 10, [True] + [False] * 159) == "WeaklyKnown"
    assert cat([False] * 10, [False] * 160) == "Unknown"


def _slick(id_, golds, greedy, sampled):
    return {"id": id_, "question": f"question {id_}", "answers": golds,
            "greedy": greedy, "sampled": sampled}


SLICK = [
    _slick("h", ["Rome"], ["Rome"] * 3, [["Rome", "Milan"]] * 3),
    _slick("m", ["Rome"], ["Rome", "Milan", "Milan"], [["Milan"]] * 3),
    _slick("w", ["Rome"], ["Milan"] * 3, [["Milan"], ["Rome"], ["Turin"]]),
    _slick("u", ["Rome"], ["Milan"] * 3, [["Milan", "Turin"]] * 3),
]


def test_slick_filter_drops_or_relabels_unknown():
    dropped = labels.slick_labels(SLICK)
    assert [e.id for e in dropped] == ["h", "m", "w"]
    assert [e.reason["category"] for e in dropped] == ["HighlyKnown", "MaybeKnown",
                                                       "WeaklyKnown"]
    assert all(e.target == "Rome" and e.label == "answer" for e in dropped)
    assert dropped[1].reason["p_correct_greedy"] == pytest.approx(1 / 3)
    relabelled = _labels(labels.slick_labels(SLICK, unknown="abstain"))
    assert relabelled["u"] == ("abstain", ABSTENTION_PHRASE)
    kept = labels.slick_labels(SLICK, unknown="keep")
    assert len(kept) == 4 and kept[3].reason["category"] == "Unknown"


def test_slick_exemplar_sets_are_deterministic():
    pool = [{"question": f"q{i}", "answers": [f"a{i}"]} for i in range(20)]
    sets = labels.slick_exemplar_sets(pool, num_sets=10, shots=4, seed=3)
    assert len(sets) == 10 and all(len(s) == 4 for s in sets)
    assert sets == labels.slick_exemplar_sets(pool, num_sets=10, shots=4, seed=3)
    prompt = labels.slick_prompt(sets[0], "Where?")
    assert prompt.endswith("Q: Where?\nA:") and prompt.count("Q: ") == 5


def test_errors_name_record_and_field():
    bad = dict(GENS[0])
    del bad["most_likely"]
    with pytest.raises(labels.LabelError, match="id='q1'.*'most_likely'"):
        labels.r_tuning_labels([bad])
    with pytest.raises(labels.LabelError, match="'q4' has no uncertainty record"):
        labels.join_by_id(GENS, UNCS[:3])
    unc = dict(UNCS[0])
    del unc["exact_entropy"]
    with pytest.raises(labels.LabelError, match="'exact_entropy'"):
        labels.r_tuning_u_labels(labels.join_by_id(GENS[:1], [unc]), tau=1.0)


def test_label_adherence_counts_abstentions_and_kept_answers():
    ex = labels.se_labels(labels.join_by_id(GENS, UNCS), tau=1.0)  # q1,q2 answer; q3,q4 abstain
    after = {"q1": "paris.", "q2": "I don't know the answer.", "q3": "I don't know",
             "q4": "Einstein"}
    got = labels.label_adherence(ex, after)
    assert got == {"num_abstain": 2, "num_answer": 2, "abstain_rate_on_abstain": 0.5,
                   "kept_rate_on_answer": 0.5, "abstain_rate_on_answer": 0.5}
    with pytest.raises(labels.LabelError, match="no model answer"):
        labels.label_adherence(ex, {"q1": "Paris"})


def test_balanced_tau_splits_ties_at_the_maximum():
    ents = [1.79, 1.79, 1.79, 1.79, 1.56, 0.0]
    tau = labels.balanced_tau(ents)
    assert tau == 1.56 and sum(e > tau for e in ents) == 4  # the nearest split to 3/3
    assert labels.balanced_tau([0.0, 0.5, 1.0, 1.5]) == 0.5


def test_label_stage_accepts_a_recorded_backend_fallback_only(tmp_path):
    from se_jax.pipeline.stages import label as label_stage
    records = [{"id": "1", "backend": "lexical", "fallback": "no NLI checkpoint"}]
    assert label_stage._check_backend(records, "deberta", tmp_path) == "no NLI checkpoint"
    with pytest.raises(labels.LabelError, match="backend"):
        label_stage._check_backend([{"id": "1", "backend": "lexical"}], "deberta", tmp_path)
