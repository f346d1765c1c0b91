"""Equivalence backends and the dedup + batched-pairs kernel."""
from __future__ import annotations

import collections
import itertools
import zlib

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from deberta_fixtures import random_nli, tiny_nli_dirs  # noqa: F401  (fixture)
from se_jax.semantic import entailment as E
from se_jax.data import facts as F
from se_jax.parallel.mesh import make_mesh
from se_jax.models.deberta_loading import load_nli
from se_jax.data.text import normalize_answer


def reference_equivalent(i1: int, i2: int, strict: bool) -> bool:
    """jlko/semantic_uncertainty are_equivalent on two implication labels (0/1/2)."""
    if strict:
        return i1 == 2 and i2 == 2
    implications = [i1, i2]
    return (0 not in implications) and ([1, 1] != implications)


@pytest.mark.parametrize("strict", [False, True])
def test_combine_directions_matches_reference(strict):
    for a, b in itertools.product(range(3), repeat=2):
        got = bool(E.combine_directions(np.int8(a), np.int8(b), strict))
        assert got == reference_equivalent(a, b, strict), (a, b)


def test_lexical_backend_drops_question_words():
    backend = E.LexicalBackend(threshold=0.5)
    q = "What is the capital city of France?"
    long = "The capital of France is surely Paris"
    labels = backend.implications([q] * 3, ["Paris", long, "Lyon"], ["paris.", "Paris", "Paris"])
    # Question words drop out: the second pair is {surely, paris} vs {paris}, F1 = 2/3.
    assert labels.tolist() == [E.ENTAILMENT, E.ENTAILMENT, E.NEUTRAL]
    assert E.LexicalBackend(threshold=0.7).implications(
        [q], [long], ["Paris"]).tolist() == [E.NEUTRAL]


def test_lexical_backend_sentence_answers_compare_their_facts():
    """Sentence answers in one template share its function words, not a fact: "was born in
    Lyon" must not match "was born in Paris" (question-word removal alone gives {in, lyon}
    vs {in, paris}, F1 = 1/2), and two phrasings of one fact must match."""
    backend = E.LexicalBackend(threshold=0.5)
    q = "Where was Ada Lovelace born?"
    paris = "Ada Lovelace was born in Paris."
    labels = backend.implications([q] * 3, [paris] * 3, [
        "Ada Lovelace was born in Lyon.", "Paris is where Ada Lovelace was born.", "Paris"])
    assert labels.tolist() == [E.NEUTRAL, E.ENTAILMENT, E.ENTAILMENT]


class HashBackend:
    """A deterministic, direction-sensitive fake backend that records what it was asked."""
    name, checkpoint = "hash", None

    def __init__(self):
        self.calls = []

    def label(self, q, a, b) -> int:
        return zlib.crc32(f"{q}|{a}|{b}".encode()) % 3

    def implications(self, questions, premises, hypotheses):
        self.calls.append(len(premises))
        return np.array([self.label(*t) for t in zip(questions, premises, hypotheses)], np.int8)


@pytest.mark.parametrize("strict", [False, True])
def test_kernel_equals_all_pairs_brute_force(strict):
    rng = np.random.default_rng(0)
    pool = ["Paris", "paris", "Lyon", "Paris, France", "I don't know the answer.", ""]
    questions = [f"question {i}?" for i in range(7)]
    answers = [[pool[k] for k in rng.integers(0, len(pool), size=10)] for _ in questions]
    backend = HashBackend()
    out = E.equivalence_matrices(backend, questions, answers, strict=strict)
    assert backend.calls == [out.pairs_labelled]          # one call for the whole batch
    # all ordered pairs of distinct strings, plus (a, a) for strings that repeat
    assert out.pairs_labelled == sum(len(set(a)) ** 2 - len(set(a))
                                     + sum(a.count(s) > 1 for s in set(a)) for a in answers)
    for q, ans, got in zip(questions, answers, out.equivalence):
        want = np.array([[i == j and ans.count(a) == 1  # a singleton is itself
                          or reference_equivalent(backend.label(q, a, b),
                                                  backend.label(q, b, a), strict)
                          for j, b in enumerate(ans)] for i, a in enumerate(ans)])
        np.testing.assert_array_equal(got, want)
    # the batch holds both kinds: singletons and repeated strings
    assert any(a.count(s) == 1 for a in answers for s in a)
    assert any(a.count(s) > 1 for a in answers for s in a)


@pytest.fixture(scope="module")
def tiny_v3(tiny_nli_dirs):  # noqa: F811
    path = tiny_nli_dirs["v3"]
    return load_nli(path), AutoModelForSequenceClassification.from_pretrained(path).eval()


def test_deberta_backend_sharded_matches_pytorch_one_pair_at_a_time(tiny_v3):
    nli, torch_model = tiny_v3
    mesh = make_mesh({"data": -1})
    assert mesh.shape["data"] == 8
    q, answers = random_nli.HAMLET_Q, random_nli.HAMLET_ANSWERS
    pairs = [(a, b) for a in answers for b in answers]
    lengths = sorted(len(nli.tokenizer(f"{q} {a}", f"{q} {b}")["input_ids"]) for a, b in pairs)
    # batch_size 12 -> 16 (a multiple of 8 shards); two buckets -> several batch shapes.
    backend = E.DebertaBackend(nli, mesh, batch_size=12,
                               buckets=(lengths[len(lengths) // 2], lengths[-1]))
    assert backend.batch_size == 16
    ids, _ = backend.encode([q] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs])
    assert len({length for _, length in backend.batches(ids)}) == 2
    got = backend.implications([q] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs])
    names = [n.lower() for n in nli.labels]
    want = []
    for a, b in pairs:  # the reference: one unpadded pair per call, argmax
        enc = nli.tokenizer(f"{q} {a}", f"{q} {b}", return_tensors="pt")
        with torch.no_grad():
            k = int(torch_model(**enc).logits.argmax(-1))
        want.append(E.LABELS.index(names[k]))
    assert got.tolist() == want
    assert len(set(want)) >= 2, "random model should produce more than one label"


def test_deberta_backend_rejects_unknown_label_names(tiny_v3):
    nli, _ = tiny_v3
    import dataclasses
    bad = dataclasses.replace(nli, config=dataclasses.replace(
        nli.config, id2label=("LABEL_0", "LABEL_1", "LABEL_2")))
    with pytest.raises(ValueError, match="id2label"):
        E.DebertaBackend(bad, make_mesh({"data": 1}, jax.devices()[:1]))


def test_llm_judge_backend_maps_prompt_label_order_to_labels():
    seen = {}

    def scores(items):
        seen["items"] = list(items)
        # prompt label order here: entailment, neutral, contradiction
        return np.array([[-2.0, -1.0, 0.0], [-3.0, -1.0, -2.0], [-0.5, -2.0, -3.0]])

    to_canonical = E._canonical_index(("entailment", "neutral", "contradiction"), "test")
    backend = E.LlmJudgeBackend(scores, to_canonical, checkpoint="tiny",
                                prompt_name="entailment_fewshot", num_shots=5)
    got = backend.implications(["Capital of France?"] * 3, ["Paris", "Lyon", "Paris"],
                               ["Lyon", "Paris", "paris"])
    assert got.tolist() == [E.CONTRADICTION, E.NEUTRAL, E.ENTAILMENT]
    assert seen["items"][1] == dict(question="Capital of France?", a="Lyon", b="Paris")
    assert backend.record_fields == dict(judge_prompt="entailment_fewshot", judge_shots=5)


def test_llm_judge_backend_with_a_loaded_decoder(tmp_path):
    """Batched, shared-prefix labels == each pair's full prompt scored alone."""
    from tiny_models import make_tiny_llama_dir
    from se_jax.generation import scoring
    from se_jax.data import prompts as prompt_lib
    from se_jax.models.loading import load_llama, load_tokenizer
    path = make_tiny_llama_dir(tmp_path, variant="llama")
    model, tokenizer = load_llama(path), load_tokenizer(path)
    backend = E.make_llm_judge(model, tokenizer, str(path), prompt="entailment_fewshot",
                               num_shots=1, batch_size=4)
    qs, a, b = ["q?"] * 5, ["x", "y", "z", "x y", "zz"], ["y", "x", "x", "z", "x"]
    got = backend.implications(qs, a, b)
    assert backend.num_shots == 1
    prompt = prompt_lib.load_judge_prompt("entailment_fewshot", 1)
    alone = scoring.PromptScorer(scoring.NextTokenScorer(model, batch_size=1), tokenizer,
                                 prompt, shared=False)
    want = [E.LABELS.index(prompt.label_names[int(np.argmax(alone([dict(question=q, a=x, b=y)])
                                                            [0]))])
            for q, x, y in zip(qs, a, b)]
    assert got.tolist() == want
    with pytest.raises(ValueError, match="'correctness' prompt"):
        E.make_llm_judge(model, tokenizer, str(path), prompt="correctness_reference",
                         num_shots=None)


def test_deberta_without_checkpoint_refuses():
    """Never a stand-in (issue 37): the default deberta backend without nli_path stops."""
    from configs.base import entropy_config
    from se_jax.config.schema import EntropyConfig
    from se_jax.config.validation import ConfigError
    cfg = EntropyConfig(**entropy_config().to_dict())
    assert cfg.backend == "deberta" and not cfg.nli_path
    with pytest.raises(ConfigError, match="needs entropy.nli_path"):
        E.make_backend(cfg, make_mesh({"data": 1}, jax.devices()[:1]))


def test_config_buckets_are_the_backend_default():
    from configs.base import entropy_config
    assert tuple(entropy_config().buckets) == E.DEFAULT_BUCKETS


# ----------------------------------------------------------------------------- rounds

def reference_loop_calls(m_answers: list[str], equivalent, rule: str) -> tuple[list[int], int]:
    """The reference's greedy loop (jlko get_semantic_ids; "unassigned": a cluster compares
    only unassigned answers): ids and the ordered pairs it sends (2 per comparison)."""
    ids, next_id, calls = [-1] * len(m_answers), 0, 0
    for i in range(len(m_answers)):
        if ids[i] == -1:
            ids[i] = next_id
            for j in range(i + 1, len(m_answers)):
                if rule == "unassigned" and ids[j] != -1:
                    continue
                calls += 2
                if equivalent(i, j):
                    ids[j] = next_id
            next_id += 1
    return ids, calls


@pytest.mark.parametrize("rule", ["reference", "unassigned"])
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_rounds_give_the_full_matrix_ids_with_fewer_pairs(rule, strict, seed):
    """Random classifier outputs (non-transitive) and random answer repetition, 40 questions
    of varying M: rounds == full-matrix ids, pairs <= the reference loop's, every read pair
    known, unread pairs marked."""
    from se_jax.semantic import clustering
    rng = np.random.default_rng(seed)
    pool = [f"answer {k}" for k in range(rng.integers(2, 12))]
    questions = [f"question {i}?" for i in range(40)]
    answers = [[pool[k] for k in rng.integers(0, len(pool), size=rng.integers(1, 11))]
               for _ in questions]
    full = E.equivalence_matrices(HashBackend(), questions, answers, strict=strict)
    backend = HashBackend()
    rounds = E.equivalence_in_rounds(backend, questions, answers, strict=strict, rule=rule)
    assert len(backend.calls) <= max(map(len, answers))       # at most one call per round
    m = max(map(len, answers))
    valid = np.arange(m)[None] < np.array([len(a) for a in answers])[:, None]
    ids_full = np.asarray(clustering.semantic_ids(E._padded_batch(full.equivalence, m),
                                                  valid, rule=rule))
    ids_rounds = np.asarray(clustering.semantic_ids(E._padded_batch(rounds.equivalence, m),
                                                    valid, rule=rule))
    np.testing.assert_array_equal(ids_rounds, ids_full)
    ref_calls = 0
    for q, (ans, eq_full, eq_r, known) in enumerate(zip(answers, full.equivalence,
                                                        rounds.equivalence, rounds.known)):
        ids, calls = reference_loop_calls(ans, lambda i, j: eq_full[i, j], rule)
        ref_calls += calls
        assert ids == ids_full[q, :len(ans)].tolist()
        np.testing.assert_array_equal(eq_r[known], eq_full[known])   # known pairs are right
        assert not eq_r[~known].any()
    assert rounds.pairs_labelled <= ref_calls
    assert rounds.pairs_labelled <= full.pairs_labelled


def test_rounds_stop_reading_once_everything_is_placed():
    """All answers equivalent: only answer 0 opens; one round, M - 1 comparisons at most."""
    class AllEntail(HashBackend):
        def label(self, q, a, b):
            return E.ENTAILMENT
    backend = AllEntail()
    answers = [[f"a{k}" for k in range(10)]] * 3
    out = E.equivalence_in_rounds(backend, ["q1", "q2", "q3"], answers, strict=True)
    assert backend.calls == [3 * 18] and out.pairs_labelled == 54
    assert out.known[0][0].all() and not out.known[0][1, 2:].any()


def test_lexical_backend_on_every_long_qa_template_pair():
    """Every pair of sentence forms (and the bare answer) of the shipped facts: two forms of
    one fact match, forms with another answer of the relation do not (a few multi-word
    answers sharing a word may)."""
    backend = E.LexicalBackend(threshold=0.5)
    by_relation = collections.defaultdict(list)
    for record in F.load_pool():
        by_relation[record["relation"]].append(record)
    same, other, questions = [], [], []
    for records in by_relation.values():
        forms = (*F.SENTENCE_TEMPLATES[records[0]["relation"]], "{a}")
        for rec, nxt in zip(records[:20], records[1:21]):
            a, b, s = rec["answers"][0], nxt["answers"][0], rec["subject"]
            if normalize_answer(a) == normalize_answer(b):
                continue
            for t1, t2 in itertools.product(forms, repeat=2):
                questions.append(rec["question"])
                same.append((t1.format(s=s, a=a), t2.format(s=s, a=a)))
                other.append((t1.format(s=s, a=a), t2.format(s=s, a=b)))
    assert len(same) > 1000
    matched_same = backend.implications(questions, *zip(*same)) == E.ENTAILMENT
    matched_other = backend.implications(questions, *zip(*other)) == E.ENTAILMENT
    assert matched_same.mean() >= 0.97, matched_same.mean()
    assert matched_other.mean() <= 0.05, matched_other.mean()
