"""Answer text utilities shared by every stage: SQuAD normalisation, token F1, abstention.

Pure string functions; no JAX. The lexical equivalence backend, the exact-string entropy,
the correctness judges and the labellers all use these, so they agree on what "the same
answer" means.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

ABSTENTION_PHRASE = "I don't know the answer."

# Normalised forms (see normalize_answer) that count as abstaining. Matched as a prefix of
# the normalised answer, so "I don't know the answer, sorry" is an abstention too.
DEFAULT_ABSTENTION_VARIANTS: tuple[str, ...] = (
    "i dont know",
    "i do not know",
    "i dont have enough information",
    "i am not sure",
    "im not sure",
    "i cannot answer",
    "i cant answer",
    "unknown",
)

_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d"}
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, fold spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# Closed-class English words (articles, auxiliaries, pronouns, prepositions, conjunctions,
# wh-words). They carry no answer of their own: "X was born in Paris" and "X was born in
# Lyon" share "was born in", not a fact.
FUNCTION_WORDS: frozenset[str] = frozenset("""
    a an the and or but nor so of in on at to for from by with as into onto upon about
    over under between within without than is are was were be been being am has have had
    do does did will would shall should can could may might must he she it they them their
    theirs its his her hers him we us you your yours i me my mine our ours this that these
    those there here where when who whom whose which what why how""".split())


def answer_tokens(text: str, drop: Iterable[str] = ()) -> list[str]:
    """Normalised whitespace tokens of `text`, without the tokens in `drop`."""
    dropped = set(drop)
    return [t for t in normalize_answer(text).split() if t not in dropped]


def content_tokens(answer: str, question: str) -> list[str]:
    """The tokens of an answer that say something the question does not: normalised, without
    the question's words and FUNCTION_WORDS. When that leaves nothing ("Where is it?" ->
    "in it"), fewer words are dropped, so that an answer is never empty only for having
    been phrased in the question's words."""
    asked = set(answer_tokens(question))
    for drop in (asked | FUNCTION_WORDS, asked, ()):
        tokens = answer_tokens(answer, drop)
        if tokens:
            return tokens
    return []


def token_f1(prediction: str, reference: str, drop: Iterable[str] = ()) -> float:
    """SQuAD token-level F1 between two answers (0.0 when either is empty)."""
    drop = tuple(drop)
    return tokens_f1(answer_tokens(prediction, drop), answer_tokens(reference, drop))


def tokens_f1(pred: Sequence[str], ref: Sequence[str]) -> float:
    """SQuAD F1 of two token lists (0.0 when either is empty)."""
    common = collections.Counter(pred) & collections.Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def alias_match(prediction: str, golds: Sequence[str]) -> bool:
    """True when a normalised gold alias equals, or occurs as a whole-word span in, the
    normalised prediction ("Paris, France" matches "Paris")."""
    pred = f" {normalize_answer(prediction)} "
    for gold in golds:
        g = normalize_answer(gold)
        if g and f" {g} " in pred:
            return True
    return False


def max_token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best SQuAD token F1 of `prediction` against any gold alias."""
    return max((token_f1(prediction, g) for g in golds), default=0.0)


def is_abstention(text: str, variants: Sequence[str] = DEFAULT_ABSTENTION_VARIANTS,
                  phrase: str = ABSTENTION_PHRASE) -> bool:
    """Whether an answer abstains: the configured phrase or one of its normalised variants."""
    norm = normalize_answer(text)
    if not norm:
        return False
    candidates = (normalize_answer(phrase), *variants)
    return any(norm.startswith(v) for v in candidates if v)
