"""Where an answer ends: EOS and stop strings, in the decode loop and on the host.

Rule (one rule, two enforcers): an answer ends at the first end-of-sequence token, or at the
first occurrence of a stop string that starts after the answer's first non-whitespace
character. So a newline *before* any answer text (e.g. "Answer:\\n Paris") does not end it,
a newline after text does. The stop text and everything after it is cut, and so are the
tokens that only hold it (a token holding answer text and the stop, like ".\\n", is kept).

- In the jitted loop (`StopTables`): per-vocabulary boolean tables let each row finish as
  soon as one token contains a whole stop string (or is EOS), so the loop can exit early.
  Stop strings split over several tokens ("Question" + ":") are not seen there; the loop
  then runs on a little longer, which changes nothing because
- on the host (`cut_answer`) the generated tokens are decoded and cut exactly. The loop only
  ever stops at or after the host's cut, so the answer never depends on when it stopped.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import numpy as np

DEFAULT_STOP_STRINGS: tuple[str, ...] = ("\n", "Question:", "Context:")
# End-of-turn tokens of common chat templates; whichever exist in a vocabulary end answers.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>",
                "<end_of_turn>")


def eos_ids(tokenizer: Any, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Token ids that end an answer: the tokenizer's EOS, known end-of-turn tokens, `extra`."""
    ids = set(int(i) for i in extra)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    ids.update(_end_of_turn_ids(tokenizer))
    return tuple(sorted(ids))


@functools.lru_cache(maxsize=8)
def _end_of_turn_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the known end-of-turn tokens in the vocabulary (get_vocab builds a dict of the
    whole vocabulary, 40 ms for 49k tokens: once per tokenizer, not once per batch)."""
    vocab = tokenizer.get_vocab()
    return tuple(vocab[t] for t in _END_OF_TURN if t in vocab)


@dataclasses.dataclass(frozen=True)
class StopTables:
    """bool[V] tables over the vocabulary used by the decode loop.

    eos: the token ends the answer.
    has_text: the token's text has a non-whitespace character (the answer has started).
    stop_if_started: the token's text contains a whole stop string.
    stop_always: ... a stop string after the token's own first non-whitespace character.
    """
    eos: np.ndarray
    has_text: np.ndarray
    stop_if_started: np.ndarray
    stop_always: np.ndarray


@functools.lru_cache(maxsize=8)
def stop_tables(tokenizer: Any, stop_strings: tuple[str, ...], eos: tuple[int, ...],
                vocab_size: int) -> StopTables:
    """Tables for a tokenizer padded to the model's `vocab_size` (extra ids never stop)."""
    pieces = decode_each_token(tokenizer)
    shape = (max(vocab_size, len(pieces)),)
    tables = {name: np.zeros(shape, bool)
              for name in ("eos", "has_text", "stop_if_started", "stop_always")}
    tables["eos"][list(eos)] = True
    for i, piece in enumerate(pieces):
        start = _text_start(piece)
        tables["has_text"][i] = start < len(piece)
        if any(s and s in piece for s in stop_strings):
            tables["stop_if_started"][i] = True
            tables["stop_always"][i] = any(piece.find(s, start) >= 0 for s in stop_strings if s)
    return StopTables(**{k: v[:vocab_size] for k, v in tables.items()})


def decode_each_token(tokenizer: Any) -> list[str]:
    """The text of every token id alone, as `tokenizer.decode([i], skip_special_tokens=True)`
    gives it. A fast tokenizer that cleans up no spaces is asked in one Rust call, not
    through transformers' per-call Python."""
    ids = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode_batch(ids, skip_special_tokens=True)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def _text_start(text: str) -> int:
    """Index of the first non-whitespace character (len(text) if none)."""
    stripped = text.lstrip()
    return len(text) - len(stripped)


def cut_text(text: str, stop_strings: Sequence[str]) -> int:
    """Character index where the answer in `text` ends (before the earliest stop string
    found after the first non-whitespace character), trailing whitespace excluded."""
    start = _text_start(text)
    cut = len(text)
    for s in stop_strings:
        if s:
            at = text.find(s, start)
            if at >= 0:
                cut = min(cut, at)
    return len(text[:cut].rstrip())


def cut_answer(tokenizer: Any, generated: Sequence[int], logprobs: Sequence[float],
               stop_strings: Sequence[str],
               eos: Sequence[int]) -> tuple[str, list[int], list[float]]:
    """The answer in a row of generated tokens: (text, token ids, their log-probs).

    generated: the tokens the loop produced, up to and including the one that stopped it.
    Tokens are kept up to the shortest prefix whose text covers the answer. An empty answer
    (EOS or a stop string first) keeps its first token, so that its likelihood is that of
    answering nothing rather than a meaningless log-prob of 0.
    """
    eos = set(eos)
    n = next((i for i, t in enumerate(generated) if t in eos), len(generated))
    ids = list(generated[:n])
    text = tokenizer.decode(ids, skip_special_tokens=True)
    end = cut_text(text, stop_strings)
    answer = text[:end].strip()
    keep = 0
    if answer:
        target = text[:end]
        keep = next(k for k in range(1, n + 1)
                    if tokenizer.decode(ids[:k], skip_special_tokens=True).startswith(target))
    if keep == 0:
        keep_ids, keep_lp = list(generated[:1]), list(logprobs[:1])
    else:
        keep_ids, keep_lp = ids[:keep], list(logprobs[:keep])
    return answer, [int(t) for t in keep_ids], [float(x) for x in keep_lp]
