"""Prompt formats: the one place a question becomes model input.

Sampling, labelling, training and evaluation all build prompts with `format_prompt` and
tokenise them with `encode_prompt`, so an SFT target is trained on exactly the prompt the
model was sampled with.

Two instruction styles (Farquhar et al. 2024):
    "short":    "Answer the following question as briefly as possible."
    "sentence": "Answer the following question in a single brief but complete sentence."

Instruct models (the tokenizer has a chat template) get one user turn holding the
instruction and the question, optional few-shot examples as earlier user/assistant turns,
and the assistant header (`add_generation_prompt=True`). Base models get plain text:

    Answer the following question as briefly as possible.
    Question: <example question>
    Answer: <example answer>

    Question: <question>
    Answer:

The sampler's default stop strings ("\\n" after answer text, "Question:", "Context:") end a
base model's answer where this format would continue.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

INSTRUCTIONS: dict[str, str] = {
    "short": "Answer the following question as briefly as possible.",
    "sentence": "Answer the following question in a single brief but complete sentence.",
}

FewShot = Sequence[tuple[str, str]]  # (question, answer) pairs


def instruction(style: str) -> str:
    """The instruction sentence of a prompt style; ValueError naming the known styles."""
    try:
        return INSTRUCTIONS[style]
    except KeyError:
        raise ValueError(
            f"unknown prompt style {style!r}; expected one of {sorted(INSTRUCTIONS)}") from None


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, question: str, *, style: str = "short",
                  chat: bool | None = None, few_shot: FewShot = ()) -> str:
    """The prompt text for `question`.

    Args:
      tokenizer: a Hugging Face tokenizer (only its chat template is used).
      question: the question, stripped of surrounding whitespace here.
      style: "short" or "sentence" (see INSTRUCTIONS).
      chat: use the chat template; None = whenever the tokenizer has one.
      few_shot: (question, answer) examples shown before the question.
    """
    head = instruction(style)
    question = question.strip()
    if chat is None:
        chat = has_chat_template(tokenizer)
    if chat:
        if not has_chat_template(tokenizer):
            raise ValueError("chat=True but the tokenizer has no chat template")
        messages: list[dict[str, str]] = []
        for i, (q, a) in enumerate(few_shot):
            user = f"{head}\nQuestion: {q.strip()}" if i == 0 else f"Question: {q.strip()}"
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": a.strip()}]
        user = f"Question: {question}" if few_shot else f"{head}\nQuestion: {question}"
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    shots = "".join(f"Question: {q.strip()}\nAnswer: {a.strip()}\n\n" for q, a in few_shot)
    return f"{head}\n{shots}Question: {question}\nAnswer:"


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt from `format_prompt`.

    Special-token markup in the text (a chat template's <|im_start|>, <|begin_of_text|>)
    is parsed, not escaped. The tokenizer's own prefix (e.g. a Llama BOS) is added only
    when the text does not already start with it, so a chat template that writes the BOS
    itself does not get a second one.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = _special_prefix(tokenizer)
    if prefix and ids[:len(prefix)] != prefix:
        ids = prefix + ids
    return ids


def _special_prefix(tokenizer: Any) -> list[int]:
    """Ids the tokenizer prepends to any text (e.g. [bos]); [] for most chat tokenizers."""
    with_special = list(tokenizer("x", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("x", add_special_tokens=False)["input_ids"])
    n = len(with_special) - len(without)
    if n > 0 and with_special[n:] == without:
        return with_special[:n]
    return []


# ----------------------------------------------------------------------------- judge prompts
# The LLM judges' prompts (entailment, correctness) are data: configs/judge_prompts.py.
# A judge prompt is rendered in two parts, so that the scorer can prefill the part shared by
# every item once (se_jax/generation/scoring.py): prefix = chat header + instruction + few-shot block,
# suffix = the item (question, answers) + the end of the turn / the label cue.

JUDGE_PROMPTS_FILE = Path(__file__).resolve().parents[2] / "configs" / "judge_prompts.py"
_SPLIT = "\ue000"  # a private-use character marks where the item goes in a chat rendering


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One judge template (see configs/judge_prompts.py) with the number of shots used.

    labels: ((label name, (words counted as it, ...)), ...) in the order scores are returned.
    """
    name: str
    kind: str
    instruction: str
    example: str
    query: str
    cue: str
    labels: tuple[tuple[str, tuple[str, ...]], ...]
    shots: tuple[dict[str, str], ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.labels)

    def shared_body(self) -> str:
        """Instruction + worked examples, ending in one newline ("" when there are none).

        The item that follows starts with a newline: splitting the text between two single
        newlines keeps byte-level BPE pieces the same as in the whole text."""
        parts = [self.instruction.strip()] if self.instruction.strip() else []
        parts += [self.example.format(**shot) for shot in self.shots]
        return "\n\n".join(parts) + "\n" if parts else ""

    def item_body(self, fields: dict[str, str]) -> str:
        body = self.query.format(**fields)
        return "\n" + body if self.shared_body() else body


def load_judge_prompt(name: str, num_shots: int | None = None,
                      path: str | Path | None = None) -> JudgePrompt:
    """Template `name` of the judge-prompt file, with its first `num_shots` examples
    (None or -1 = all). ValueError naming the file and the field when something is off."""
    import importlib.util
    path = Path(path or JUDGE_PROMPTS_FILE)
    spec = importlib.util.spec_from_file_location("_judge_prompts", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"judge prompt file {path} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    templates = getattr(module, "TEMPLATES", None)
    if not isinstance(templates, dict) or name not in templates:
        raise ValueError(f"{path}: no template {name!r} in TEMPLATES; have "
                         f"{sorted(templates or {})}")
    t = templates[name]
    missing = {"kind", "instruction", "example", "query", "cue", "labels", "shots"} - set(t)
    if missing:
        raise ValueError(f"{path}: TEMPLATES[{name!r}] lacks {sorted(missing)}")
    shots = tuple(dict(s) for s in t["shots"])
    n = len(shots) if num_shots is None or int(num_shots) < 0 else int(num_shots)
    if not 0 <= n <= len(shots):
        raise ValueError(f"{path}: TEMPLATES[{name!r}] has {len(shots)} shots; "
                         f"{n} asked (judge_shots)")
    if n and not t["example"]:
        raise ValueError(f"{path}: TEMPLATES[{name!r}] has shots but no 'example'")
    labels = tuple((str(k), tuple(v)) for k, v in t["labels"].items())
    for i, s in enumerate(shots[:n]):
        if s.get("label") not in dict(labels):
            raise ValueError(f"{path}: TEMPLATES[{name!r}].shots[{i}].label={s.get('label')!r}"
                             f" is not one of {[k for k, _ in labels]}")
    return JudgePrompt(name, str(t["kind"]), str(t["instruction"]), str(t["example"]),
                       str(t["query"]), str(t["cue"]), labels, shots[:n])


def render_judge_prompt(tokenizer: Any, prompt: JudgePrompt,
                        items: Sequence[dict[str, str]], *, chat: bool | None = None
                        ) -> tuple[str, list[str]]:
    """(shared prefix text, one suffix text per item): prefix + suffix is the item's prompt.

    Chat models get one user turn (instruction, examples, item) and the assistant header;
    the label is the assistant's first word. Plain models get the text and the cue.
    """
    if chat is None:
        chat = has_chat_template(tokenizer)
    shared = prompt.shared_body()
    bodies = [prompt.item_body(fields) for fields in items]
    if not chat:
        return shared, [f"{b}\n{prompt.cue}" for b in bodies]
    whole = tokenizer.apply_chat_template([{"role": "user", "content": shared + _SPLIT}],
                                          tokenize=False, add_generation_prompt=True)
    head, sep, tail = whole.partition(_SPLIT)
    if not sep:
        raise ValueError(f"judge prompt {prompt.name!r}: the chat template dropped the item "
                         f"marker; cannot split the shared prefix")
    return head, [b + tail for b in bodies]
