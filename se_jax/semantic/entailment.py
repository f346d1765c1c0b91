"""Semantic equivalence of sampled answers: backends behind one interface, and the kernel
that turns M answers per question into an M x M equivalence matrix.

A backend labels ordered pairs (answer a -> answer b, given the question) with one of
CONTRADICTION / NEUTRAL / ENTAILMENT, many pairs per call:
- `deberta` (the paper's): a DeBERTa NLI classifier on "{question} {a}" -> "{question} {b}",
  argmax over the classes named in the checkpoint's id2label; one jitted forward per padded,
  length-bucketed batch, pairs sharded over the mesh's batch axes.
- `llm_judge` (SE (Llama)): a loaded decoder (any size, sharded like the generator) asked
  whether answer a semantically entails answer b, with a prompt from
  configs/judge_prompts.py (default: 5 question-dependent examples; the reference's
  zero-shot wording is `entailment_reference`); the label is the argmax of the three label
  words' next-token log-probabilities (se_jax.generation.scoring: the instruction and examples are
  prefilled once, pairs are batched against that cache).
- `lexical`: SQuAD token F1 of the answers' content words (text.content_tokens: without
  the question's words and function words); ENTAILMENT when >= threshold, else NEUTRAL
  (F1 is symmetric, so "both ways" holds by construction).
  Chosen by name only (entropy.backend=lexical, method se_lexical); never a stand-in.

Equivalence of a and b combines both directions as jlko/semantic_uncertainty does:
strict = both ENTAILMENT; non-strict = no CONTRADICTION and not both NEUTRAL.

The kernel (`equivalence_matrices`) first drops exact duplicate strings per question (short
answers repeat a lot), labels all ordered pairs of the distinct strings of every question
in one backend call, and scatters back to M x M. The pair (a, a) is labelled only for a
string that occurs more than once (a random or odd model need not entail a string from
itself, and the reference compares duplicates, so they inherit that verdict); a string that
occurs once is equivalent to itself.

`equivalence_in_rounds` labels only the pairs the greedy clustering reads (round r: the
pairs (r, j > r) of every question whose answer r opens a cluster), one backend call per
round over all questions: the same semantic ids with at most the reference loop's pairs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from se_jax.config.schema import EntropyConfig
from se_jax.config.validation import ConfigError
from se_jax.semantic import clustering
from se_jax.generation import scoring
from se_jax.parallel import mesh as mesh_lib
from se_jax.generation.scoring import bucket_for  # noqa: F401  (the deberta buckets use it too)
from se_jax.data.text import content_tokens, tokens_f1
from se_jax.models.deberta_loading import load_nli

CONTRADICTION, NEUTRAL, ENTAILMENT = 0, 1, 2
LABELS = ("contradiction", "neutral", "entailment")  # index = the constants above
BACKENDS = ("deberta", "llm_judge", "lexical")
# Padded pair lengths of the deberta backend: steps of 8 where answer pairs usually fall
# (token slots are the cost: on the bench workload 90% of computed slots are real tokens,
# against 85% with steps of 16; each extra shape is one more compilation), coarse beyond.
DEFAULT_BUCKETS = tuple(range(16, 129, 8)) + (160, 192, 256, 384, 512)


class Backend(Protocol):
    """Labels ordered pairs; `name` and `checkpoint` are written into every output record."""
    name: str
    checkpoint: str | None

    def implications(self, questions: Sequence[str], premises: Sequence[str],
                     hypotheses: Sequence[str]) -> np.ndarray:
        """int8[P]: LABELS index of premises[p] -> hypotheses[p] given questions[p]."""
        ...


def combine_directions(forward: np.ndarray, backward: np.ndarray, strict: bool) -> np.ndarray:
    """Equivalence from the two directions' labels (elementwise, any shape)."""
    if strict:
        return (forward == ENTAILMENT) & (backward == ENTAILMENT)
    return ((forward != CONTRADICTION) & (backward != CONTRADICTION)
            & ~((forward == NEUTRAL) & (backward == NEUTRAL)))


# ----------------------------------------------------------------------------- lexical

@dataclasses.dataclass(frozen=True)
class LexicalBackend:
    threshold: float = 0.5
    name: str = "lexical"
    checkpoint: str | None = None

    def implications(self, questions, premises, hypotheses) -> np.ndarray:
        out = np.empty(len(premises), np.int8)
        for i, (q, a, b) in enumerate(zip(questions, premises, hypotheses)):
            f1 = tokens_f1(content_tokens(a, q), content_tokens(b, q))
            out[i] = ENTAILMENT if f1 >= self.threshold else NEUTRAL
        return out


# ----------------------------------------------------------------------------- deberta

def _canonical_index(id2label: Sequence[str], source: str) -> np.ndarray:
    """int8[num_labels]: model class index -> LABELS index, from the checkpoint's names."""
    names = [str(n).lower() for n in id2label]
    if sorted(names) != sorted(LABELS):
        raise ValueError(f"{source}: labels {list(id2label)} are not the three NLI classes "
                         f"{LABELS}; fix config.json's id2label (or the prompt's labels)")
    return np.array([LABELS.index(n) for n in names], np.int8)


def pad_pairs(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None,
              rows: int, length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """Right-pad encoded pairs to int32[rows, length] (ids, attention mask, token types);
    rows past len(ids) are padding whose first token is left valid (finite softmax)."""
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    type_ids = np.zeros((rows, length), np.int32)
    for i, seq in enumerate(ids):
        tokens[i, :len(seq)] = seq
        mask[i, :len(seq)] = 1
        if types is not None:
            type_ids[i, :len(seq)] = types[i]
    mask[len(ids):, 0] = 1
    return tokens, mask, type_ids


class DebertaBackend:
    """NLI classifier backend. Pairs are sorted by length, cut into batches of `batch_size`
    within a length bucket, padded, and classified by one jitted forward per batch; the
    batch axis is sharded over the mesh's batch axes (parameters replicated)."""
    name = "deberta"

    def __init__(self, nli: Any, mesh: Mesh, *, batch_size: int = 64,
                 buckets: Sequence[int] = DEFAULT_BUCKETS,
                 condition_on_question: bool = True,
                 rules: mesh_lib.ShardingRules = mesh_lib.ShardingRules()):
        self.nli, self.tokenizer, self.checkpoint = nli, nli.tokenizer, nli.path
        self.buckets = tuple(buckets)
        self.condition_on_question = condition_on_question
        self.shards = shards = mesh_lib.batch_shards(mesh, rules)
        self.batch_size = -(-batch_size // shards) * shards  # divisible by the batch shards
        self.to_canonical = jnp.asarray(_canonical_index(nli.labels, nli.path))
        self.pad_id = self.tokenizer.pad_token_id or 0
        graphdef, state = nnx.split(nli.model)
        self.state = jax.device_put(state, mesh_lib.replicated(mesh))
        rows = mesh_lib.logical_sharding(mesh, rules, ("batch", None))
        out = mesh_lib.logical_sharding(mesh, rules, ("batch",))

        def classify(state, tokens, mask, type_ids):
            logits = nnx.merge(graphdef, state)(tokens, mask, type_ids)
            return self.to_canonical[jnp.argmax(logits, axis=-1)]

        self._classify = jax.jit(
            classify, in_shardings=(mesh_lib.replicated(mesh), rows, rows, rows),
            out_shardings=out)

    def texts(self, question: str, answer: str) -> str:
        """The reference conditions each answer on its question: f"{question} {answer}"."""
        return f"{question} {answer}" if self.condition_on_question else answer

    def encode(self, questions, premises, hypotheses) -> tuple[list, list | None]:
        a = [self.texts(q, p) for q, p in zip(questions, premises)]
        b = [self.texts(q, h) for q, h in zip(questions, hypotheses)]
        enc = self.tokenizer(a, b)
        return enc["input_ids"], enc.get("token_type_ids")

    def batches(self, ids: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, int]]:
        """(pair indices, padded length) per batch: sorted by length, one bucket per batch."""
        return scoring.length_batches([len(s) for s in ids], self.batch_size,
                                      lambda n: bucket_for(n, self.buckets))

    def rows(self, n: int) -> int:
        """Padded rows for a batch of n pairs (`scoring.padded_rows`)."""
        return scoring.padded_rows(n, self.shards, self.batch_size)

    def implications(self, questions, premises, hypotheses) -> np.ndarray:
        if not len(premises):
            return np.zeros(0, np.int8)
        ids, types = self.encode(questions, premises, hypotheses)
        results = []
        for chunk, length in self.batches(ids):  # dispatch all batches, then fetch (async)
            tokens, mask, type_ids = pad_pairs(
                [ids[i] for i in chunk], None if types is None else [types[i] for i in chunk],
                self.rows(len(chunk)), length, self.pad_id)
            results.append((chunk, self._classify(self.state, tokens, mask, type_ids)))
        labels = np.empty(len(ids), np.int8)
        for chunk, out in results:
            labels[chunk] = np.asarray(out)[:len(chunk)]
        return labels


# ----------------------------------------------------------------------------- llm judge

@dataclasses.dataclass
class LlmJudgeBackend:
    """SE (Llama): a decoder judges "does answer a semantically entail answer b?" by the
    next-token log-probabilities of the three label words after a judge prompt.

    `scores(items) -> float[N, 3]` (se_jax.generation.scoring.PromptScorer over an "entailment" prompt
    of configs/judge_prompts.py: its instruction and examples prefilled once, pairs batched
    and sharded) gives one score per label in the prompt's label order; `to_canonical`
    maps that order to LABELS. The label is the argmax.
    """
    scores: Any
    to_canonical: np.ndarray
    checkpoint: str | None = None
    prompt_name: str = "?"
    num_shots: int = 0
    name: str = "llm_judge"

    @property
    def record_fields(self) -> dict[str, Any]:
        """Written into every output record: which prompt, how many examples."""
        return dict(judge_prompt=self.prompt_name, judge_shots=self.num_shots)

    def implications(self, questions, premises, hypotheses) -> np.ndarray:
        items = [dict(question=q, a=a, b=b) for q, a, b in zip(questions, premises, hypotheses)]
        if not items:
            return np.zeros(0, np.int8)
        logprobs = np.asarray(self.scores(items))                         # [P, 3]
        return self.to_canonical[np.argmax(logprobs, axis=-1)]


def make_llm_judge(model: Any, tokenizer: Any, checkpoint: str, *,
                   prompt: str = "entailment_fewshot", num_shots: int | None = 5,
                   batch_size: int = 16, mesh: Mesh | None = None,
                   rules: mesh_lib.ShardingRules | None = None) -> LlmJudgeBackend:
    """The llm_judge backend over a loaded decoder (sharded as loaded on `mesh`)."""
    scorer = scoring.make_prompt_scorer(model, tokenizer, prompt, num_shots, "entailment",
                                batch_size=batch_size, mesh=mesh, rules=rules)
    to_canonical = _canonical_index(scorer.prompt.label_names, f"judge prompt {prompt!r}")
    return LlmJudgeBackend(scorer, to_canonical, checkpoint=checkpoint, prompt_name=prompt,
                           num_shots=len(scorer.prompt.shots))


# ----------------------------------------------------------------------------- the kernel

@dataclasses.dataclass
class EquivalenceBatch:
    """equivalence[q]: bool[M_q, M_q]; known[q]: bool[M_q, M_q], False where the pair was
    never labelled (its equivalence entry is then False, and null in the output);
    pairs_labelled: ordered pairs sent to the backend."""
    equivalence: list[np.ndarray]
    known: list[np.ndarray]
    pairs_labelled: int


PAIRS = ("rounds", "full")


def unique_strings(answers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct strings in first-seen order and int[M] index of each answer among them."""
    index: dict[str, int] = {}
    inverse = np.array([index.setdefault(a, len(index)) for a in answers], np.int64)
    return list(index), inverse


def labelled_pairs(uniques: Sequence[tuple[list[str], np.ndarray]]
                   ) -> list[tuple[int, int, int]]:
    """(question k, premise i, hypothesis j) over each question's distinct strings
    (`unique_strings` output): every ordered pair, and (i, i) only for a repeated string."""
    where = []
    for k, (u, inverse) in enumerate(uniques):
        repeated = np.bincount(inverse, minlength=len(u)) > 1
        where += [(k, i, j) for i in range(len(u)) for j in range(len(u))
                  if i != j or repeated[i]]
    return where


class _PairTables:
    """Directional labels of each question's distinct strings, filled as they are needed.

    tables[k][a, b]: LABELS index of distinct string a -> b, -1 while unknown. A string that
    occurs once is equivalent to itself without asking (see `equivalence_matrices`)."""

    def __init__(self, backend: Backend, questions: Sequence[str],
                 answers: Sequence[Sequence[str]], strict: bool):
        self.backend, self.questions, self.strict = backend, questions, strict
        self.uniques = [unique_strings(a) for a in answers]
        self.tables = []
        for u, inverse in self.uniques:
            t = np.full((len(u), len(u)), -1, np.int8)
            single = np.bincount(inverse, minlength=len(u)) == 1
            t[single, single] = ENTAILMENT
            self.tables.append(t)
        self.pairs_labelled = 0

    def label(self, where: Sequence[tuple[int, int, int]]) -> None:
        """Label the (question, string a, string b) pairs not known yet, in one call."""
        todo = list(dict.fromkeys(w for w in where if self.tables[w[0]][w[1], w[2]] < 0))
        if not todo:
            return
        u = self.uniques
        labels = self.backend.implications([self.questions[k] for k, _, _ in todo],
                                           [u[k][0][i] for k, i, _ in todo],
                                           [u[k][0][j] for k, _, j in todo])
        for (k, i, j), label in zip(todo, labels):
            self.tables[k][i, j] = label
        self.pairs_labelled += len(todo)

    def matrices(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per question, over its M answers: (equivalence bool[M, M], known bool[M, M])."""
        eqs, knowns = [], []
        for t, (_, inverse) in zip(self.tables, self.uniques):
            known = (t >= 0) & (t.T >= 0)
            eq = combine_directions(t, t.T, self.strict) & known
            eqs.append(eq[np.ix_(inverse, inverse)])
            knowns.append(known[np.ix_(inverse, inverse)])
        return eqs, knowns


def equivalence_matrices(backend: Backend, questions: Sequence[str],
                         answers: Sequence[Sequence[str]], *, strict: bool) -> EquivalenceBatch:
    """M x M equivalence matrices for a batch of questions, from one backend call over the
    ordered pairs of each question's distinct answers.

    An answer is equivalent to itself, so the pair (a, a) goes to the backend only for a
    string that occurs more than once: the reference compares such duplicates, and the
    model's verdict on them decides, exactly as there. Singletons skip it (M of M^2 pairs).
    """
    tables = _PairTables(backend, questions, answers, strict)
    tables.label(labelled_pairs(tables.uniques))
    eqs, knowns = tables.matrices()
    return EquivalenceBatch(eqs, knowns, tables.pairs_labelled)


def _padded_batch(matrices: Sequence[np.ndarray], m: int) -> np.ndarray:
    out = np.zeros((len(matrices), m, m), bool)
    for q, e in enumerate(matrices):
        out[q, :len(e), :len(e)] = e
    return out


def equivalence_in_rounds(backend: Backend, questions: Sequence[str],
                          answers: Sequence[Sequence[str]], *, strict: bool,
                          rule: str = "reference") -> EquivalenceBatch:
    """Only the pairs the greedy clustering rule reads, all questions together.

    Round r: every question whose answer r opens a cluster (given the pairs known so far)
    needs its pairs (r, j > r) (rule "unassigned": only the j still without an id); those
    not known yet are labelled, both directions, in one backend call. The rule itself is
    `clustering.semantic_ids` on the known pairs (unknown = not equivalent): after rounds
    0..r-1 its visits of answers 0..r-1 read only known pairs, so in its result answer r
    opened iff its id exceeds every earlier answer's, and answer j > r was unassigned at
    that visit iff its id exceeds them too (ids only grow with the visit that gave them).
    Semantic ids on the returned matrix equal those on the full matrix; the pairs labelled
    are at most the reference loop's 2 per comparison (fewer with repeated strings).
    """
    tables = _PairTables(backend, questions, answers, strict)
    sizes = [len(a) for a in answers]
    m = max(sizes, default=0)
    valid = np.arange(m)[None, :] < np.asarray(sizes)[:, None]             # [Q, M]
    for r in range(m):
        ids = np.asarray(clustering.semantic_ids(
            _padded_batch(tables.matrices()[0], m), valid, rule=rule))
        before = ids[:, :r].max(axis=1, initial=-1)                          # [Q]
        opens = valid[:, r] & (ids[:, r] > before)
        reads = opens[:, None] & valid & (np.arange(m) > r)[None, :]
        if rule == "unassigned":
            reads &= ids > before[:, None]
        where = []
        for k, j in zip(*np.nonzero(reads)):
            a, b = tables.uniques[k][1][r], tables.uniques[k][1][j]
            where += [(int(k), int(a), int(b)), (int(k), int(b), int(a))]
        tables.label(where)
    eqs, knowns = tables.matrices()
    return EquivalenceBatch(eqs, knowns, tables.pairs_labelled)


def equivalences(backend: Backend, questions: Sequence[str], answers: Sequence[Sequence[str]],
                 *, strict: bool, pairs: str = "full", rule: str = "reference"
                 ) -> EquivalenceBatch:
    """`equivalence_in_rounds` (pairs="rounds") or `equivalence_matrices` ("full")."""
    if pairs not in PAIRS:
        raise ValueError(f"entropy.pairs={pairs!r}; choose from {PAIRS}")
    if pairs == "rounds":
        return equivalence_in_rounds(backend, questions, answers, strict=strict, rule=rule)
    return equivalence_matrices(backend, questions, answers, strict=strict)


def missing_nli_path(what: str) -> str:
    """The one line a DeBERTa backend without a checkpoint stops with."""
    return (f"{what} needs entropy.nli_path (an HF DeBERTa NLI directory, e.g. "
            f"microsoft/deberta-v2-xlarge-mnli); set it, or choose the lexical backend "
            f"(se_lexical) by name")


def check_runnable(entropy_config: EntropyConfig) -> None:
    """ConfigError (one line) when the configured backend cannot run as named."""
    if entropy_config.backend == "deberta" and not entropy_config.nli_path:
        raise ConfigError(missing_nli_path("entropy.backend=deberta"))


def make_backend(entropy_config: EntropyConfig, mesh: Mesh, *, decoder: Any = None,
                 decoder_tokenizer: Any = None, decoder_path: str | None = None
                 ) -> Backend:
    """The configured backend. None is ever replaced by another: one that cannot run as
    named raises ConfigError naming what is missing, before any work."""
    name = entropy_config.backend
    if name not in BACKENDS:
        raise ValueError(f"entropy.backend={name!r}; choose from {BACKENDS}")
    if name == "lexical":
        return LexicalBackend(entropy_config.lexical_threshold)
    check_runnable(entropy_config)
    if name == "deberta":
        nli = load_nli(entropy_config.nli_path, dtype=entropy_config.nli_dtype)
        return DebertaBackend(nli, mesh, batch_size=entropy_config.batch_size,
                              buckets=entropy_config.buckets,
                              condition_on_question=entropy_config.condition_on_question)
    if decoder is None or decoder_tokenizer is None:
        raise ValueError("entropy.backend=llm_judge needs a loaded decoder and its tokenizer")
    return make_llm_judge(decoder, decoder_tokenizer, decoder_path or "?",
                          prompt=entropy_config.judge_prompt,
                          num_shots=entropy_config.judge_shots,
                          batch_size=entropy_config.llm_batch_size, mesh=mesh)
