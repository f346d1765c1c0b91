"""Labellers: turn a model's answers (and their uncertainty) into an abstention SFT set.

Every labeller is a pure function over plain records (the `generations.jsonl` and
`uncertainty.jsonl` contracts, see docs/contracts.md) that returns `Example`s: the question,
the fine-tuning target, "answer" or "abstain", and a `reason` dict saying why. No JAX here.

Methods (one function each):
- `se_labels`: semantic entropy > tau -> abstain; else the model's own most-likely answer
  (never the gold answer: the method needs no labels).
- `r_tuning_labels` (Zhang et al. 2024): most-likely answer judged incorrect -> abstain,
  correct -> the gold answer (Zhang et al.) or, with answer_source="model", the model's
  standard response, as the paper ran it (Section 6) and the default of configs/base.py.
- `r_tuning_u_labels`: as `se_labels` with the exact-string entropy of the same samples.
- `idk_labels` (Cheng et al. 2024): fraction of the M samples judged correct >= threshold
  -> a correct answer, else abstain.
- `sep_labels` (semantic entropy probes, Kossen et al. 2024): a probe's score of the
  question's hidden state > threshold -> abstain; else the model's own answer, as SE. The
  probe (se_jax/abstention/probes.py) is fitted on the questions SE was computed on and
  labels any number more; no samples are needed (the record's `samples` may be empty).
- `slick_category` / `slick_labels` (Gekhman et al. 2024): HighlyKnown / MaybeKnown /
  WeaklyKnown / Unknown from greedy and sampled correctness over N few-shot exemplar sets;
  used as an analysis and as a filter (drop Unknown, or relabel it to abstain).

Correctness is a plug-in `Judge`: any callable `(prediction, golds, question) -> bool`.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from se_jax.data.text import ABSTENTION_PHRASE, alias_match, is_abstention, normalize_answer

Judge = Callable[[str, Sequence[str], str], bool]
Label = Literal["answer", "abstain"]
# Where a "correct answer" target comes from: the gold alias, or the model's own answer
# that the judge accepted.
AnswerSource = Literal["gold", "model"]

SLICK_CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def alias_judge(prediction: str, golds: Sequence[str], question: str = "") -> bool:
    """Default judge: a gold alias occurs in the prediction after SQuAD normalisation."""
    del question
    return alias_match(prediction, golds)


@dataclasses.dataclass(frozen=True)
class Example:
    """One SFT record (the `sft.jsonl` contract)."""
    id: str
    question: str
    target: str
    label: Label
    reason: Mapping[str, Any]

    def to_json(self) -> dict:
        return dict(id=self.id, question=self.question, target=self.target,
                    label=self.label, reason=dict(self.reason))


class LabelError(ValueError):
    """A record lacks a field a labeller needs (the message names record and field)."""


def _field(record: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in record:
        raise LabelError(f"{where}: record id={record.get('id')!r} has no field {name!r}")
    return record[name]


def _text(answer: Any, where: str, record_id: Any) -> str:
    """The text of an `Answer` dict (or a bare string, for hand-made sets)."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, Mapping) and isinstance(answer.get("text"), str):
        return answer["text"]
    raise LabelError(f"{where}: record id={record_id!r}: answer {answer!r} has no 'text'")


def _most_likely(record: Mapping[str, Any], where: str) -> str:
    return _text(_field(record, "most_likely", where), where, record.get("id"))


def _samples(record: Mapping[str, Any], where: str) -> list[str]:
    return [_text(s, where, record.get("id")) for s in _field(record, "samples", where)]


def _abstain(record: Mapping[str, Any], phrase: str, reason: dict) -> Example:
    return Example(str(record["id"]), record["question"], phrase, "abstain", reason)


def _answer(record: Mapping[str, Any], target: str, reason: dict) -> Example:
    return Example(str(record["id"]), record["question"], target, "answer", reason)


def join_by_id(generations: Sequence[Mapping[str, Any]],
               uncertainties: Sequence[Mapping[str, Any]]) -> list[tuple[dict, dict]]:
    """Pair each generation with its uncertainty record, in generation order.

    Raises LabelError naming the first id present in one file and not the other.
    """
    by_id = {}
    for i, u in enumerate(uncertainties):
        uid = _field(u, "id", f"uncertainty record {i}")
        if uid in by_id:
            raise LabelError(f"uncertainty record {i}: duplicate id {uid!r}")
        by_id[uid] = u
    pairs = []
    for i, g in enumerate(generations):
        gid = _field(g, "id", f"generation record {i}")
        if gid not in by_id:
            raise LabelError(f"generation record {i}: id {gid!r} has no uncertainty record")
        pairs.append((g, by_id.pop(gid)))
    if by_id:
        raise LabelError(f"uncertainty ids without a generation: {sorted(by_id)[:5]}")
    return pairs


def _threshold_labels(pairs: Iterable[tuple[Mapping, Mapping]], *, method: str,
                      entropy_field: str, tau: float, phrase: str) -> list[Example]:
    """Shared by SE and R-Tuning-U: entropy > tau -> abstain, else the most-likely answer."""
    out = []
    for g, u in pairs:
        where = f"{method} labeller"
        entropy = float(_field(u, entropy_field, where))
        reason = dict(method=method, entropy_field=entropy_field, entropy=entropy, tau=tau)
        if "backend" in u:
            reason["backend"] = u["backend"]
        if entropy > tau:
            out.append(_abstain(g, phrase, reason))
        else:
            out.append(_answer(g, _most_likely(g, where), reason))
    return out


def se_labels(pairs: Iterable[tuple[Mapping, Mapping]], *, tau: float,
              entropy_field: str = "discrete_semantic_entropy",
              phrase: str = ABSTENTION_PHRASE) -> list[Example]:
    """Semantic-entropy labels: SE > tau -> `phrase`; SE <= tau -> the model's own T=0.1
    answer. `pairs` from `join_by_id`; `entropy_field` "discrete_semantic_entropy" (default)
    or "semantic_entropy" (the probability-weighted one)."""
    return _threshold_labels(pairs, method="se", entropy_field=entropy_field, tau=tau,
                             phrase=phrase)


def r_tuning_u_labels(pairs: Iterable[tuple[Mapping, Mapping]], *, tau: float,
                      phrase: str = ABSTENTION_PHRASE) -> list[Example]:
    """R-Tuning-U labels: the exact-string entropy of the same samples, same tau rule."""
    return _threshold_labels(pairs, method="rtuning_u", entropy_field="exact_entropy",
                             tau=tau, phrase=phrase)


def sep_labels(records: Iterable[Mapping[str, Any]], scores: Mapping[str, float], *,
               threshold: float, phrase: str = ABSTENTION_PHRASE) -> list[Example]:
    """Probe labels: scores[id] > `threshold` -> `phrase`; else the record's most-likely
    (T=0.1) answer. `records`: generations records (or the probe stage's scores records);
    `scores`: id -> the probe's probability of high semantic entropy. LabelError naming a
    record without a score."""
    out = []
    for r in records:
        where = "sep labeller"
        rid = str(_field(r, "id", where))
        if rid not in scores:
            raise LabelError(f"{where}: record id={rid!r} has no probe score")
        score = float(scores[rid])
        reason = dict(method="sep", score=score, threshold=threshold)
        if score > threshold:
            out.append(_abstain(r, phrase, reason))
        else:
            out.append(_answer(r, _most_likely(r, where), reason))
    return out


def _correct_target(record: Mapping[str, Any], correct_model_answers: Sequence[str],
                    source: AnswerSource, where: str) -> str:
    golds = _field(record, "answers", where)
    if source == "model" and correct_model_answers:
        return correct_model_answers[0]
    if not golds:
        raise LabelError(f"{where}: record id={record.get('id')!r} has an empty 'answers'")
    return golds[0]


def r_tuning_labels(generations: Iterable[Mapping[str, Any]], *, judge: Judge = alias_judge,
                    phrase: str = ABSTENTION_PHRASE,
                    answer_source: AnswerSource = "gold") -> list[Example]:
    """R-Tuning labels: the most-likely answer judged against the gold aliases.

    Incorrect -> `phrase`. Correct -> the gold answer (as R-Tuning keeps the ground-truth
    label in its "certain" set), or the model's own correct answer with answer_source="model".
    """
    out = []
    for g in generations:
        where = "r_tuning labeller"
        most_likely = _most_likely(g, where)
        correct = bool(judge(most_likely, _field(g, "answers", where), g["question"]))
        reason = dict(method="rtuning", most_likely=most_likely, correct=correct)
        if correct:
            out.append(_answer(g, _correct_target(g, [most_likely], answer_source, where),
                               reason))
        else:
            out.append(_abstain(g, phrase, reason))
    return out


def idk_labels(generations: Iterable[Mapping[str, Any]], *, judge: Judge = alias_judge,
               threshold: float = 1.0, phrase: str = ABSTENTION_PHRASE,
               answer_source: AnswerSource = "gold") -> list[Example]:
    """Idk labels: fraction of the M samples judged correct >= `threshold` -> a correct
    answer (gold, or with answer_source="model" the most-likely answer if correct, else the
    first correct sample); otherwise `phrase`."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"idk threshold must be in [0, 1], got {threshold}")
    out = []
    for g in generations:
        where = "idk labeller"
        samples = _samples(g, where)
        if not samples:
            raise LabelError(f"{where}: record id={g.get('id')!r} has no 'samples'")
        golds = _field(g, "answers", where)
        verdicts = [bool(judge(s, golds, g["question"])) for s in samples]
        fraction = sum(verdicts) / len(verdicts)
        reason = dict(method="idk", num_correct=sum(verdicts), num_samples=len(verdicts),
                      fraction=fraction, threshold=threshold)
        if fraction >= threshold:
            most_likely = _most_likely(g, where) if "most_likely" in g else None
            candidates = ([most_likely] if most_likely is not None
                          and judge(most_likely, golds, g["question"]) else [])
            candidates += [s for s, ok in zip(samples, verdicts) if ok]
            out.append(_answer(g, _correct_target(g, candidates, answer_source, where),
                               reason))
        else:
            out.append(_abstain(g, phrase, reason))
    return out


# ---------------------------------------------------------------------------- SliCK


def slick_category(greedy_correct: Sequence[bool], sampled_correct: Sequence[bool]) -> str:
    """Gekhman et al. 2024, Table 1: P_correct at T=0 over the N exemplar sets (greedy) and
    at T>0 over all sampled answers.

    HighlyKnown: greedy always right. MaybeKnown: greedy sometimes right. WeaklyKnown: greedy
    never right, a sample sometimes right. Unknown: never right.
    """
    if not greedy_correct:
        raise ValueError("slick_category needs at least one greedy answer")
    p_greedy = sum(greedy_correct) / len(greedy_correct)
    if p_greedy == 1.0:
        return "HighlyKnown"
    if p_greedy > 0.0:
        return "MaybeKnown"
    return "WeaklyKnown" if any(sampled_correct) else "Unknown"


def slick_exemplar_sets(pool: Sequence[Mapping[str, Any]], *, num_sets: int = 10,
                        shots: int = 4, seed: int = 0) -> list[list[Mapping[str, Any]]]:
    """N few-shot exemplar sets of `shots` (question, answers) records drawn from `pool`,
    a deterministic function of `seed` (so every question sees the same N sets)."""
    if len(pool) < shots:
        raise ValueError(f"exemplar pool has {len(pool)} records, fewer than {shots} shots")
    rng = random.Random(seed)
    return [rng.sample(list(pool), shots) for _ in range(num_sets)]


def slick_prompt(exemplars: Sequence[Mapping[str, Any]], question: str) -> str:
    """The few-shot prompt text: "Q: ...\\nA: ..." per exemplar, then the question."""
    shots = "".join(f"Q: {e['question']}\nA: {e['answers'][0]}\n\n" for e in exemplars)
    return f"{shots}Q: {question}\nA:"


def slick_labels(records: Iterable[Mapping[str, Any]], *, judge: Judge = alias_judge,
                 unknown: Literal["drop", "abstain", "keep"] = "drop",
                 phrase: str = ABSTENTION_PHRASE) -> list[Example]:
    """SliCK categories as a filter over a gold-answer SFT set.

    Each record: {"id", "question", "answers", "greedy": [N texts, one per exemplar set],
    "sampled": [[texts] * N]}. Targets are the gold answer (as in Gekhman et al.);
    Unknown questions are dropped, relabelled to `phrase`, or kept. The category is in
    every example's reason, so the same call serves the analysis.
    """
    if unknown not in ("drop", "abstain", "keep"):
        raise ValueError(f"slick unknown must be drop|abstain|keep, got {unknown!r}")
    out = []
    for r in records:
        where = "slick labeller"
        golds = _field(r, "answers", where)
        greedy = [_text(a, where, r.get("id")) for a in _field(r, "greedy", where)]
        sampled = [_text(a, where, r.get("id"))
                   for group in _field(r, "sampled", where) for a in group]
        greedy_ok = [bool(judge(a, golds, r["question"])) for a in greedy]
        sampled_ok = [bool(judge(a, golds, r["question"])) for a in sampled]
        category = slick_category(greedy_ok, sampled_ok)
        reason = dict(method="slick", category=category,
                      p_correct_greedy=sum(greedy_ok) / len(greedy_ok),
                      p_correct_sampled=(sum(sampled_ok) / len(sampled_ok)
                                         if sampled_ok else 0.0))
        if category == "Unknown" and unknown == "drop":
            continue
        if category == "Unknown" and unknown == "abstain":
            out.append(_abstain(r, phrase, reason))
        else:
            out.append(_answer(r, _correct_target(r, [], "gold", where), reason))
    return out


def balanced_tau(entropies: Sequence[float]) -> float:
    """The threshold, among the observed entropy values, whose "entropy > tau -> abstain"
    split is closest to half/half (ties at the maximum entropy are common with few samples,
    which a plain median would put all on the answer side)."""
    if not entropies:
        raise ValueError("balanced_tau needs at least one entropy")
    values = sorted(set(float(e) for e in entropies))
    half = len(entropies) / 2
    return min(values, key=lambda t: (abs(sum(e > t for e in entropies) - half), t))


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """{"answer": n, "abstain": m} (for logs and the stage summary)."""
    counts = {"answer": 0, "abstain": 0}
    for e in examples:
        counts[e.label] += 1
    return counts


def label_adherence(examples: Iterable[Example], answers: Mapping[str, str], *,
                    phrase: str = ABSTENTION_PHRASE) -> dict[str, float]:
    """How well a model's answers (id -> text) follow an SFT set's labels.

    abstain_rate_on_abstain: abstain-labelled questions the model now abstains on;
    kept_rate_on_answer: answer-labelled questions whose answer equals the target after
    SQuAD normalisation (the model keeps its own answer); abstain_rate_on_answer: answer-
    labelled questions it abstains on (over-abstention). Abstention = `text.is_abstention`.
    """
    abstain = [e for e in examples if e.label == "abstain"]
    answer = [e for e in examples if e.label == "answer"]
    missing = [e.id for e in (*abstain, *answer) if e.id not in answers]
    if missing:
        raise LabelError(f"no model answer for ids {missing[:5]}")

    def rate(items, ok) -> float:
        return sum(bool(ok(e)) for e in items) / len(items) if items else float("nan")

    said = lambda e: is_abstention(answers[e.id], phrase=phrase)  # noqa: E731
    return dict(
        num_abstain=len(abstain), num_answer=len(answer),
        abstain_rate_on_abstain=rate(abstain, said),
        kept_rate_on_answer=rate(answer, lambda e: normalize_answer(answers[e.id])
                                 == normalize_answer(e.target)),
        abstain_rate_on_answer=rate(answer, said))
