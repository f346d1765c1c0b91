"""Correctness judges: is a model's answer right, given the gold aliases and the question?

One interface: a judge is called as `judge(prediction, golds, question) -> bool` (the
`labels.Judge` signature), judges a batch with `judge.batch(predictions, goldss,
questions) -> list[bool]`, and has a `name` that is printed with every number it produced.

- `alias`: a gold alias occurs in the prediction after SQuAD normalisation.
- `f1`:    best SQuAD token F1 against any alias >= threshold (0.5, the reference's default).
- `llm`:   "does the proposed answer mean the same as the expected answer? yes/no", scored
           by the next-token log-probabilities of yes and no from a loaded decoder through
           se_jax.generation.scoring (the prompt from configs/judge_prompts.py, its instruction and
           examples prefilled once, items batched and sharded).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from se_jax.data import text
from se_jax.config.schema import EvaluationConfig
from se_jax.config.validation import JUDGE_NAMES
from se_jax.generation import scoring


class Judge(Protocol):
    name: str

    def __call__(self, prediction: str, golds: Sequence[str], question: str = "") -> bool: ...

    def batch(self, predictions: Sequence[str], goldss: Sequence[Sequence[str]],
              questions: Sequence[str]) -> list[bool]: ...


class _PerItemJudge:
    """Judges whose verdict is a pure string function: batch = map."""
    name = "?"

    def batch(self, predictions, goldss, questions) -> list[bool]:
        if not len(predictions) == len(goldss) == len(questions):
            raise ValueError(f"batch lengths differ: {len(predictions)} predictions, "
                             f"{len(goldss)} gold lists, {len(questions)} questions")
        return [self(p, g, q) for p, g, q in zip(predictions, goldss, questions)]


class AliasJudge(_PerItemJudge):
    name = "alias"

    def __call__(self, prediction, golds, question=""):
        return text.alias_match(prediction, golds)


@dataclasses.dataclass(frozen=True)
class F1Judge(_PerItemJudge):
    threshold: float = 0.5

    @property
    def name(self) -> str:
        return f"f1>={self.threshold:g}"

    def __call__(self, prediction, golds, question=""):
        return text.max_token_f1(prediction, golds) >= self.threshold


def llm_judge_fields(prediction: str, golds: Sequence[str], question: str) -> dict[str, str]:
    """The correctness prompt's fields; several gold aliases are joined by 'or'."""
    gold = " or ".join(g for g in golds if g) or "(none)"
    return dict(question=question, gold=gold, prediction=prediction)


# label_scores(items [N] of prompt fields) -> float array [N, 2]: log p("yes"), log p("no")
# (se_jax.generation.scoring.PromptScorer over a "correctness" judge prompt, or any other).
LabelScorer = Callable[[Sequence[dict]], np.ndarray]


@dataclasses.dataclass
class LlmJudge:
    """Yes/no judge scored by a decoder's next-token log-probabilities.

    `scores` runs the model (`se_jax.generation.scoring.PromptScorer`); this class only builds the
    prompt fields, batches them, and compares log p(yes) with log p(no).
    """
    scores: LabelScorer
    model_name: str = "generator"
    batch_size: int = 256           # items per scorer call (the scorer batches forwards)

    @property
    def name(self) -> str:
        return f"llm({self.model_name})"

    def __call__(self, prediction, golds, question=""):
        return self.batch([prediction], [golds], [question])[0]

    def batch(self, predictions, goldss, questions) -> list[bool]:
        if not len(predictions) == len(goldss) == len(questions):
            raise ValueError(f"batch lengths differ: {len(predictions)} predictions, "
                             f"{len(goldss)} gold lists, {len(questions)} questions")
        items = [llm_judge_fields(p, g, q) for p, g, q in zip(predictions, goldss, questions)]
        verdicts: list[bool] = []
        for start in range(0, len(items), self.batch_size):
            lp = np.asarray(self.scores(items[start:start + self.batch_size]))  # [n, 2]
            verdicts.extend(bool(v) for v in lp[:, 0] > lp[:, 1])
        return verdicts


def make_judge(eval_config: EvaluationConfig, model: Any = None, tokenizer: Any = None,
               model_name: str = "generator", mesh: Any = None) -> Judge:
    """The judge `config.evaluation.judge` names; the LLM judge needs a loaded model.

    The LLM judge's prompt is `evaluation.judge_prompt` (default the reference's zero-shot
    yes/no question) with `evaluation.judge_shots` examples. Items are sharded over the
    batch axes of `mesh`, by default the mesh the model was loaded on."""
    name = eval_config.judge
    if name != "llm":
        return string_judge(name, eval_config.f1_threshold)
    if model is None or tokenizer is None:
        raise ValueError("the llm judge needs a loaded model and tokenizer")
    scorer = scoring.make_prompt_scorer(
        model, tokenizer, eval_config.judge_prompt, eval_config.judge_shots, "correctness",
        batch_size=eval_config.judge_batch_size, mesh=mesh)
    if scorer.prompt.label_names != ("yes", "no"):
        raise ValueError(f"judge prompt {scorer.prompt.name!r}: labels must be yes, no (in "
                         f"that order), got {scorer.prompt.label_names}")
    return LlmJudge(scorer, model_name=model_name)


def string_judge(name: str, f1_threshold: float = 0.5) -> Judge:
    """The judges that need no model: 'alias' or 'f1'."""
    if name == "alias":
        return AliasJudge()
    if name == "f1":
        return F1Judge(f1_threshold)
    raise ValueError(f"unknown judge {name!r}; choose from {JUDGE_NAMES}")
