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

`RecordedJudge` holds verdicts by item: a judge stage (se_jax/pipeline/judge_stage.py) fills
it from the model once, every later reader (outcomes, the report) looks them up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from se_jax.data import text
from se_jax.config.schema import EvaluationConfig
from se_jax.config.validation import JUDGE_NAMES
from se_jax.generation import scoring
from se_jax.io import stage_io


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


def llm_judge_name(model_name: str) -> str:
    return f"llm({model_name})"


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
        return llm_judge_name(self.model_name)

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


def verdict_key(prediction: str, golds: Sequence[str], question: str) -> str:
    """What a verdict depends on, hashed: the same item has the same key in every process."""
    item = json.dumps([prediction, list(golds), question], ensure_ascii=False)
    return hashlib.sha256(item.encode()).hexdigest()[:32]


@dataclasses.dataclass
class RecordedJudge:
    """Verdicts by item (`verdict_key`). Items without one are judged by `inner` (once each,
    in one batch) and recorded; without `inner` they are an error, since the judge stage
    should have judged them. Deterministic across processes: every process that asks for
    the same items gets the same verdicts and makes the same `inner` calls (collective)."""
    name: str
    verdicts: dict[str, bool] = dataclasses.field(default_factory=dict)
    inner: Judge | None = None

    def __call__(self, prediction, golds, question=""):
        return self.batch([prediction], [golds], [question])[0]

    def batch(self, predictions, goldss, questions) -> list[bool]:
        keys = [verdict_key(p, g, q) for p, g, q in zip(predictions, goldss, questions)]
        missing = {k: i for i, k in enumerate(keys) if k not in self.verdicts}
        if missing:
            first = predictions[next(iter(missing.values()))]
            if self.inner is None:
                raise LookupError(f"judge {self.name}: {len(missing)} answers were not "
                                  f"judged in its judge stage (first: {first!r})")
            idx = list(missing.values())
            got = self.inner.batch([predictions[i] for i in idx], [goldss[i] for i in idx],
                                   [questions[i] for i in idx])
            self.verdicts.update(zip(missing, (bool(v) for v in got)))
        return [self.verdicts[k] for k in keys]

    def save(self, path: str | Path) -> None:
        """One JSON line per verdict, sorted by key (written by one process)."""
        stage_io.write_jsonl(path, ({"key": k, "correct": v}
                                    for k, v in sorted(self.verdicts.items())))

    @classmethod
    def load(cls, path: str | Path, name: str, inner: Judge | None = None) -> "RecordedJudge":
        """The verdicts saved at `path` (none when it does not exist)."""
        path = Path(path)
        verdicts = {}
        if path.exists():
            for n, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    row = json.loads(line)
                    verdicts[row["key"]] = bool(row["correct"])
                except (ValueError, KeyError) as e:
                    raise ValueError(f"{path}:{n}: not a verdict line ({e})") from None
        return cls(name, verdicts, inner)


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
