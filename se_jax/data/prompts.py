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


def prompt_kwargs(prompt_config: Any) -> dict[str, Any]:
    """`format_prompt` keyword arguments from `config.prompt` (style, chat, few_shot).

    chat: "auto" (the chat template when the tokenizer has one), "chat" or "plain".
    """
    chat = {"auto": None, "chat": True, "plain": False}
    mode = prompt_config.get("chat", "auto")
    if mode not in chat:
        raise ValueError(f"config.prompt.chat={mode!r}; expected one of {sorted(chat)}")
    shots = tuple((str(q), str(a)) for q, a in prompt_config.get("few_shot", ()))
    return dict(style=prompt_config.get("style", "short"), chat=chat[mode], few_shot=shots)
