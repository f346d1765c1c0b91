"""What labelling the training set cost each method, measured: generated tokens, answer
rows, equivalence judgements (NLI or LLM-judge pairs) and seconds, for the report.

Counts come from the stages' outputs (generations.jsonl holds every answer's token ids,
uncertainty.jsonl the M x M equivalence matrix with None for pairs never judged); seconds
from this invocation's telemetry phases (se_jax/io/telemetry.py), named as the experiment
names them ("sample <split>", "entropy <backend> <split>", "probe <backend>"), or, for a unit
done by an earlier invocation, from the seconds its done.json recorded; a unit without
either (done before units recorded them) says n/a rather than guess.

Which units each method's labels need:
- se_<b>:    sample train (1 + M rows), entropy <b> train
- rtuning, rtuning_u, idk: sample train (R-Tuning reads the low-temperature answer, Idk and
  R-Tuning-U the M samples; no equivalence judgements)
- sep_<b>:   sample train_se_subset (1 + M), sample train_probe_only (1 row), entropy <b>
             train_se_subset, probe <b>
- sesub_<b>: sample train_se_subset, entropy <b> train_se_subset
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from se_jax.io import stage_io
from se_jax.pipeline.layout import DONE, Layout
from se_jax.pipeline.plan import se_backend, sep_backend

# (kind, name): ("sample", split) | ("entropy", f"{backend} {split}") | ("probe", backend)
Unit = tuple[str, str]


def units(method: str) -> list[Unit]:
    """The units of work a method's training labels need (module doc)."""
    b = se_backend(method)
    if b:
        return [("sample", "train"), ("entropy", f"{b} train")]
    b = sep_backend(method)
    if b and method.startswith("sep_"):
        return [("sample", "train_se_subset"), ("sample", "train_probe_only"),
                ("entropy", f"{b} train_se_subset"), ("probe", b)]
    if b:
        return [("sample", "train_se_subset"), ("entropy", f"{b} train_se_subset")]
    return [("sample", "train")]


@dataclasses.dataclass(frozen=True)
class UnitCost:
    questions: int = 0
    rows: int = 0            # answers generated (1 + M per question, or 1)
    tokens: int = 0          # generated answer tokens
    pairs: int = 0           # equivalence judgements read (off-diagonal, judged)
    seconds: float | None = None


def generation_cost(path: Path) -> UnitCost:
    """Questions, answer rows and generated tokens of a generations.jsonl."""
    q = rows = tokens = 0
    for r in stage_io.read_jsonl(path):
        answers = [r["most_likely"], *r.get("samples", [])]
        q, rows = q + 1, rows + len(answers)
        tokens += sum(len(a.get("token_ids", ())) for a in answers)
    return UnitCost(questions=q, rows=rows, tokens=tokens)


def entropy_cost(path: Path) -> UnitCost:
    """Questions and judged off-diagonal pairs of an uncertainty.jsonl (the backend may
    have made fewer calls: identical answers are judged once)."""
    q = pairs = 0
    for r in stage_io.read_jsonl(path):
        matrix = r.get("equivalence") or []
        q += 1
        pairs += sum(v is not None for i, row in enumerate(matrix)
                     for j, v in enumerate(row) if i != j)
    return UnitCost(questions=q, pairs=pairs)


def layout_files(layout: Layout) -> Callable[[Unit], Path | None]:
    """`measure`'s `files` for an experiment's layout."""
    def files(unit: Unit) -> Path | None:
        kind, name = unit
        if kind == "sample":
            return layout.sample(name) / "generations.jsonl"
        if kind == "entropy":
            backend, split = name.split(" ")
            return layout.entropy(backend, split) / "uncertainty.jsonl"
        if kind == "probe":
            return layout.probe(name) / "metrics.json"
        return None
    return files


def recorded_seconds(unit_dir: Path) -> float | None:
    """The seconds a finished unit recorded in its done.json (None: not recorded)."""
    try:
        return float(json.loads((unit_dir / DONE).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def seconds_by_phase(telemetry: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, seconds in telemetry.get("phases", []):
        out[name] = out.get(name, 0.0) + float(seconds)
    return out


def measure(methods: Sequence[str], files: Callable[[Unit], Path | None],
            telemetry: Mapping[str, Any]) -> list[dict]:
    """One row per method: labelled questions, SE questions, rows, tokens, pairs, seconds
    (None when a unit ran before this invocation). `files(unit)`: the unit's output file
    (generations.jsonl, uncertainty.jsonl, a probe's metrics.json; None if there is none)."""
    phases = seconds_by_phase(telemetry)
    cache: dict[Unit, UnitCost] = {}

    def cost(unit: Unit) -> UnitCost:
        if unit not in cache:
            path = files(unit)
            found = path is not None and path.is_file()
            counted = {"sample": generation_cost, "entropy": entropy_cost}.get(unit[0])
            base = counted(path) if found and counted else UnitCost()
            seconds = phases.get(" ".join(unit))
            if seconds is None and found:   # done by an earlier invocation: its record
                seconds = recorded_seconds(path.parent)
            cache[unit] = dataclasses.replace(base, seconds=seconds)
        return cache[unit]

    rows = []
    for m in methods:
        parts = [cost(u) for u in units(m)]
        samples = [p for u, p in zip(units(m), parts) if u[0] == "sample"]
        entropies = [p for u, p in zip(units(m), parts) if u[0] == "entropy"]
        seconds = [p.seconds for p in parts]
        rows.append(dict(
            method=m, labelled=sum(p.questions for p in samples),
            se_questions=sum(p.questions for p in entropies),
            rows=sum(p.rows for p in samples), tokens=sum(p.tokens for p in samples),
            pairs=sum(p.pairs for p in entropies),
            seconds=None if any(s is None for s in seconds) else round(sum(seconds), 1)))
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's markdown section."""
    lines = ["## Labelling cost of the training set (measured)\n",
             "Per method, what its training labels took in this run: questions labelled, "
             "questions whose semantic entropy was computed, answers generated (rows) and "
             "their tokens, equivalence judgements read (NLI or LLM-judge pairs; identical "
             "answers are judged once, so the backend may have made fewer calls), and the "
             "seconds those steps took (each step records them when it finishes; n/a: a "
             "step done before steps recorded them).\n",
             "| method | questions labelled | SE questions | answers generated | tokens "
             "| equivalence pairs | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = "n/a" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['method']} | {r['labelled']} | {r['se_questions']} | {r['rows']} "
                     f"| {r['tokens']} | {r['pairs']} | {s} |")
    return "\n".join(lines) + "\n"
