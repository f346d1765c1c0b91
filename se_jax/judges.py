"""Correctness judges: is a model's answer right, given the gold aliases and the question?

One interface: a judge is called as `judge(prediction, golds, question) -> bool` (the
`labels.Judge` signature), judges a batch with `judge.batch(predictions, goldss,
questions) -> list[bool]`, and has a `name` that is printed with every number it produced.

- `alias`: a gold alias occurs in the prediction after SQuAD normalisation.
- `f1`:    best SQuAD token F1 against any alias >= threshold (0.5, the reference's default).
- `llm`:   "does the proposed answer mean the same as the expected answer? yes/no", scored
           by the next-token log-probabilities of " yes" and " no" from a loaded decoder,
           all questions of a batch in one forward pass.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from se_jax import text


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


LLM_JUDGE_TEMPLATE = (
    "We are assessing the quality of answers to the following question: {question}\n"
    "The expected answer is: {gold}.\n"
    "The proposed answer is: {prediction}\n"
    "Within the context of the question, does the proposed answer mean the same as the "
    "expected answer? Respond only with yes or no.")


def llm_judge_prompt(prediction: str, golds: Sequence[str], question: str) -> str:
    """The judge's question (the reference's wording); several aliases joined by 'or'."""
    gold = " or ".join(g for g in golds if g) or "(none)"
    return LLM_JUDGE_TEMPLATE.format(question=question, gold=gold, prediction=prediction)


# next_token_logprobs(prompts [B], candidates [K]) -> float array [B, K]: log-probability of
# each candidate continuation's first token right after each (chat-formatted) prompt.
NextTokenScorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass
class LlmJudge:
    """Yes/no judge scored by a decoder's next-token log-probabilities.

    `scorer` runs the model (`decoder_next_token_scorer` below, or any other); this
    class only builds prompts, batches them, and compares log p(yes) with log p(no).
    """
    scorer: NextTokenScorer
    model_name: str = "generator"
    batch_size: int = 16
    yes: tuple[str, ...] = ("yes", "Yes")
    no: tuple[str, ...] = ("no", "No")

    @property
    def name(self) -> str:
        return f"llm({self.model_name})"

    def __call__(self, prediction, golds, question=""):
        return self.batch([prediction], [golds], [question])[0]

    def batch(self, predictions, goldss, questions) -> list[bool]:
        if not len(predictions) == len(goldss) == len(questions):
            raise ValueError(f"batch lengths differ: {len(predictions)} predictions, "
                             f"{len(goldss)} gold lists, {len(questions)} questions")
        prompts = [llm_judge_prompt(p, g, q) for p, g, q in zip(predictions, goldss, questions)]
        candidates = [*self.yes, *self.no]
        verdicts: list[bool] = []
        for start in range(0, len(prompts), self.batch_size):
            lp = np.asarray(self.scorer(prompts[start:start + self.batch_size], candidates))
            yes = np.logaddexp.reduce(lp[:, :len(self.yes)], axis=1)
            no = np.logaddexp.reduce(lp[:, len(self.yes):], axis=1)
            verdicts.extend(bool(v) for v in yes > no)
        return verdicts


def decoder_next_token_scorer(model: Any, tokenizer: Any, *,
                              buckets: Sequence[int] = (128, 256, 512, 1024),
                              batch_size: int = 16) -> NextTokenScorer:
    """A NextTokenScorer over a loaded `Llama`: prompts in the chat template (plain text
    plus "\nAnswer:" for base models), left-padded to a length bucket and a fixed batch,
    one jitted forward; log-softmax of the last position at the candidates' first tokens.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from se_jax.data import prompts as prompt_lib
    from se_jax.sampling import bucket_length, left_pad

    graphdef, state = nnx.split(model)
    chat = prompt_lib.has_chat_template(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @jax.jit
    def last_logprobs(state, tokens, positions):
        m = nnx.merge(graphdef, state)
        h, _ = m.hidden(tokens, positions)
        return jax.nn.log_softmax(m.logits(h[:, -1:])[:, 0], axis=-1)   # [B, V]

    def encode(prompt: str) -> list[int]:
        if chat:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                   tokenize=False, add_generation_prompt=True)
        else:
            prompt = prompt + "\nAnswer:"
        return prompt_lib.encode_prompt(tokenizer, prompt)

    def scorer(prompts: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        cand = [tokenizer(c if chat else " " + c, add_special_tokens=False)["input_ids"][0]
                for c in candidates]
        out = []
        for start in range(0, len(prompts), batch_size):
            ids = [encode(p) for p in prompts[start:start + batch_size]]
            length = bucket_length(max(map(len, ids)), buckets,
                                   cap=int(model.config.max_position_embeddings))
            tokens, positions = left_pad(ids, length, batch_size, pad_id)
            lp = np.asarray(last_logprobs(state, jnp.asarray(tokens), jnp.asarray(positions)))
            out.append(lp[:len(ids)][:, cand])
        return np.concatenate(out, 0)

    return scorer


def make_judge(eval_config: Any, model: Any = None, tokenizer: Any = None,
               model_name: str = "generator") -> Judge:
    """The judge `config.evaluation.judge` names; the LLM judge needs a loaded model."""
    name = eval_config.judge
    if name != "llm":
        return string_judge(name, float(eval_config.f1_threshold))
    if model is None or tokenizer is None:
        raise ValueError("the llm judge needs a loaded model and tokenizer")
    batch = int(eval_config.judge_batch_size)
    return LlmJudge(decoder_next_token_scorer(model, tokenizer, batch_size=batch),
                    model_name=model_name, batch_size=batch)


def string_judge(name: str, f1_threshold: float = 0.5) -> Judge:
    """The judges that need no model: 'alias' or 'f1'."""
    if name == "alias":
        return AliasJudge()
    if name == "f1":
        return F1Judge(f1_threshold)
    raise ValueError(f"unknown judge {name!r}; choose from {JUDGE_NAMES}")


JUDGE_NAMES = ("alias", "f1", "llm")
