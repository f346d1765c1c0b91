"""Readers of the local raw QA files that the TFDS builders turn into array_record datasets.

Each reader yields `(key, record)` with record = {"id", "question", "answers", "relation"}
(relation is "" where the dataset has none). Ids are stable: they name the source file and
the position in it, so the same file always gives the same ids whatever the build order.
Bad input raises ValueError naming the file, the line (or list index) and the field.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

from absl import logging

QaRecord = dict  # {"id": str, "question": str, "answers": list[str], "relation": str}

# SliCK (Gekhman et al. 2024) relation sets over EntityQuestions.
SLICK_IN_DISTRIBUTION = ("P131", "P136", "P17", "P19", "P26", "P264", "P36", "P40", "P495",
                         "P69", "P740", "P800")
SLICK_OUT_OF_DISTRIBUTION = ("P127", "P50", "P407", "P176", "P170", "P175", "P112")

_RELATION_FILE = re.compile(r"^(P\d+)\.(train|dev|test)\.json$")


def _record(source: str, where: str, raw: object, ident: str, relation: str = "") -> QaRecord:
    """Validate one raw {"question", "answers"|"answer"} item into a QaRecord."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}:{where}: expected a JSON object, got {type(raw).__name__}")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{source}:{where}: field 'question' is missing or empty")
    answers = raw.get("answers", raw.get("answer"))
    if isinstance(answers, str):
        answers = [answers]
    if (not isinstance(answers, list) or not answers
            or not all(isinstance(a, str) for a in answers)):
        raise ValueError(f"{source}:{where}: field 'answers' (or 'answer') must be a "
                         f"non-empty string or list of strings, got {answers!r}")
    return {"id": str(raw.get("id", ident)), "question": question.strip(),
            "answers": [a for a in answers], "relation": relation}


def read_qa_jsonl(path: str | os.PathLike, prefix: str) -> Iterator[tuple[str, QaRecord]]:
    """A JSONL file of {"question", "answers"} (or "answer"; optional "id") objects.

    Ids default to f"{prefix}-{line:06d}" (1-based line number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: QA JSONL file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            ident = f"{prefix}-{lineno:06d}"
            yield ident, _record(str(path), str(lineno), raw, ident)


def entity_question_files(root: str | os.PathLike, split: str) -> dict[str, Path]:
    """{relation: file} of EntityQuestions' `<root>/<split>/P*.<split>.json`."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: EntityQuestions split folder not found")
    files = {}
    for f in sorted(folder.iterdir()):
        m = _RELATION_FILE.match(f.name)
        if m and m.group(2) == split:
            files[m.group(1)] = f
    if not files:
        raise ValueError(f"{folder}: no P*.{split}.json relation files")
    return files


def read_entity_questions(root: str | os.PathLike, split: str,
                          relations: tuple[str, ...] | None = None
                          ) -> Iterator[tuple[str, QaRecord]]:
    """EntityQuestions' per-relation JSON lists; ids f"eq-{split}-{relation}-{index:06d}"."""
    files = entity_question_files(root, split)
    if relations is not None:
        # A partial copy of the dataset may lack some relations: use those present.
        present = sorted(set(relations) & set(files))
        if not present:
            raise ValueError(f"{Path(root) / split}: none of the relations {sorted(relations)} "
                             f"has a file (found {sorted(files)})")
        missing = sorted(set(relations) - set(files))
        if missing:
            logging.warning("%s: relations %s have no file; using %s",
                            Path(root) / split, missing, present)
        files = {r: files[r] for r in present}
    for relation, path in files.items():
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
        for index, raw in enumerate(items):
            ident = f"eq-{split}-{relation}-{index:06d}"
            yield ident, _record(str(path), f"[{index}]", raw, ident, relation)


BIOASQ_TYPES = ("factoid", "list", "yesno", "summary")


def _bioasq_aliases(answer: object, where: str) -> list[str]:
    """BioASQ's exact_answer as a flat alias list: yes/no a string; factoid a list of
    synonyms, possibly nested ([["a", "b"]]); list questions a list of items, each a list
    of synonyms (any synonym of any item counts as a correct answer)."""
    if isinstance(answer, str):
        return [answer.strip()] if answer.strip() else []
    if isinstance(answer, list):
        return [a for item in answer for a in _bioasq_aliases(item, where)]
    raise ValueError(f"{where}: 'exact_answer' holds {type(answer).__name__} {answer!r}, "
                     f"expected a string or (nested) lists of strings")


def read_bioasq(paths: list[Path]) -> Iterator[tuple[str, QaRecord]]:
    """BioASQ Task B training JSON files ({"questions": [{"id", "body", "type",
    "exact_answer", ...}]}, downloaded by the user): the questions with an `exact_answer`
    (summary questions have none), ids f"bioasq-{id}", relation = the question type.
    A question id in several files (BioASQ's training sets are cumulative) is read once when
    its body and answers agree, else ValueError naming both files."""
    seen: dict[str, tuple[str, QaRecord]] = {}
    for path in sorted(paths):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
        questions = data.get("questions") if isinstance(data, dict) else None
        if not isinstance(questions, list):
            raise ValueError(f"{path}: expected a BioASQ training file, a JSON object with a "
                             f"'questions' list")
        for index, q in enumerate(questions):
            where = f"{path}: question [{index}]"
            if not isinstance(q, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(q).__name__}")
            qid = q.get("id")
            if not isinstance(qid, str) or not qid.strip():
                raise ValueError(f"{where}: field 'id' is missing or not a string")
            where = f"{path}: question id={qid!r}"
            body, qtype = q.get("body"), q.get("type")
            if not isinstance(body, str) or not body.strip():
                raise ValueError(f"{where}: field 'body' is missing or empty")
            if qtype not in BIOASQ_TYPES:
                raise ValueError(f"{where}: field 'type' is {qtype!r}, expected one of "
                                 f"{list(BIOASQ_TYPES)}")
            if "exact_answer" not in q:
                continue
            answers = list(dict.fromkeys(_bioasq_aliases(q["exact_answer"], where)))
            if not answers:
                raise ValueError(f"{where}: 'exact_answer' holds no answer text")
            record = {"id": f"bioasq-{qid.strip()}", "question": body.strip(),
                      "answers": answers, "relation": qtype}
            if record["id"] in seen:
                first, old = seen[record["id"]]
                if old != record:
                    raise ValueError(f"{where}: differs from the same id in {first}")
                continue
            seen[record["id"]] = (str(path), record)
            yield record["id"], record


def source_fingerprint(paths: list[Path]) -> str:
    """A short hash of the files' paths, sizes and mtimes: a changed source gets a new build."""
    import hashlib
    h = hashlib.sha1()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:10]
