"""Dataset names -> QA records, through TFDS.

A dataset is named in the config as `<name>` or `<name>:<split>`:

| name | where it comes from | default split |
|---|---|---|
| `nq_open` | local NQ-open JSONL files (project builder `nq_open_jsonl`) | `dev` |
| `entity_questions` | local EntityQuestions folders (builder `entity_questions`) | `train_in_distribution` |
| `entity_questions_ood` | the same builder, SliCK's out-of-distribution relations | `test_out_of_distribution` |
| `bioasq` | local BioASQ Task B training JSON files the user downloads (builder `bioasq_json`) | `train` |
| `trivia_qa` | TFDS catalog `trivia_qa/rc.nocontext` | `validation` |
| `natural_questions_open` | TFDS catalog `natural_questions_open` | `validation` |
| `squad` | TFDS catalog `squad/v2.0`, answerable questions only, closed-book | `validation` |
| `jsonl:<path>` | any JSONL of {"question", "answers"} (builder `qa_jsonl`) | `full` |

Local builders are prepared into `data_dir` on first use (array_record). Catalog datasets
are read with `tfds.data_source` when prepared there (array_record), or downloaded and
prepared when `download` is set (needs internet). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from se_jax.data import builders

QaRecord = dict  # {"id", "question", "answers": [str], "relation", "dataset"}


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _texts(xs: Any) -> list[str]:
    return [_text(x) for x in list(xs)]


def _from_local(rec: Mapping[str, Any]) -> QaRecord | None:
    return {"id": _text(rec["id"]), "question": _text(rec["question"]),
            "answers": _texts(rec["answers"]), "relation": _text(rec["relation"])}


def _from_trivia_qa(rec: Mapping[str, Any]) -> QaRecord | None:
    answer = rec["answer"]
    aliases = [_text(answer["value"])] + _texts(answer["aliases"])
    return {"id": f"trivia_qa-{_text(rec['question_id'])}", "question": _text(rec["question"]),
            "answers": list(dict.fromkeys(a for a in aliases if a)), "relation": ""}


def _from_nq_open(rec: Mapping[str, Any]) -> QaRecord | None:
    question = _text(rec["question"])
    digest = hashlib.sha1(question.encode()).hexdigest()[:12]
    return {"id": f"natural_questions_open-{digest}", "question": question,
            "answers": _texts(rec["answer"]), "relation": ""}


def _from_squad(rec: Mapping[str, Any]) -> QaRecord | None:
    if bool(rec["is_impossible"]):
        return None  # unanswerable SQuAD 2.0 questions are not closed-book QA
    answers = list(dict.fromkeys(_texts(rec["answers"]["text"])))
    return {"id": f"squad-{_text(rec['id'])}", "question": _text(rec["question"]),
            "answers": answers, "relation": ""}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one named dataset is read."""
    builder: str                 # local builder name or TFDS catalog name (with config)
    default_split: str
    convert: Callable[[Mapping[str, Any]], QaRecord | None]
    source: str | None = None    # local: sub-folder of the data source dir; None = catalog
    catalog_splits: tuple[str, ...] = ()  # catalog datasets: splits TFDS defines


DATASETS: dict[str, DatasetSpec] = {
    "nq_open": DatasetSpec("nq_open_jsonl", "dev", _from_local, source="nq_open"),
    "entity_questions": DatasetSpec("entity_questions", "train_in_distribution", _from_local,
                                    source="entity_questions"),
    "entity_questions_ood": DatasetSpec("entity_questions", "test_out_of_distribution",
                                        _from_local, source="entity_questions"),
    "bioasq": DatasetSpec("bioasq_json", "train", _from_local, source="bioasq"),
    "trivia_qa": DatasetSpec("trivia_qa/rc.nocontext", "validation", _from_trivia_qa,
                             catalog_splits=("train", "validation", "test")),
    "natural_questions_open": DatasetSpec("natural_questions_open", "validation",
                                          _from_nq_open, catalog_splits=("train", "validation")),
    "squad": DatasetSpec("squad/v2.0", "validation", _from_squad,
                         catalog_splits=("train", "validation")),
}
JSONL_PREFIX = "jsonl:"


class DatasetError(ValueError):
    """A dataset name, split or content the config asks for does not exist."""


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """A parsed dataset name: `spec` read at `split` (`path` for jsonl:)."""
    name: str
    spec: DatasetSpec
    split: str
    path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.split}"


def parse_name(text: str) -> DatasetRef:
    """'nq_open', 'entity_questions:dev_in_distribution' or 'jsonl:/path/q.jsonl'."""
    if text.startswith(JSONL_PREFIX):
        path = text[len(JSONL_PREFIX):]
        if not path:
            raise DatasetError(f"dataset {text!r}: give a file, e.g. jsonl:/data/q.jsonl")
        spec = DatasetSpec("qa_jsonl", "full", _from_local, source="")
        return DatasetRef(f"jsonl_{Path(path).stem}", spec, "full", path)
    name, _, split = text.partition(":")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} "
                           f"or {JSONL_PREFIX}<file>")
    spec = DATASETS[name]
    return DatasetRef(name, spec, split or spec.default_split)


def default_source_dir() -> Path:
    """$SE_JAX_SHARED_DATA, else ../shared/data beside the repository checkout."""
    env = os.environ.get("SE_JAX_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class DataLocations:
    """Where local sources are read and where TFDS writes/reads prepared datasets."""
    tfds_dir: Path
    source_dir: Path
    download: bool = False


def _local_builder(ref: DatasetRef, where: DataLocations):
    source = Path(ref.path) if ref.path is not None else where.source_dir / ref.spec.source
    # EntityQuestions: build only the folder (train/dev/test) the split is drawn from.
    folder = ref.split.split("_", 1)[0]
    folders = ((folder,) if ref.spec.builder == "entity_questions"
               and folder in ("train", "dev", "test") else ())
    try:
        return builders.local_builder(ref.spec.builder, source, where.tfds_dir, folders)
    except (FileNotFoundError, builders.EmptySourceError) as e:
        raise DatasetError(f"dataset {ref.label}: {e}") from None


def available_splits(ref: DatasetRef, where: DataLocations) -> tuple[str, ...]:
    if ref.spec.source is None:
        return ref.spec.catalog_splits
    return tuple(_local_builder(ref, where).info.splits.keys())


def planned_splits(ref: DatasetRef, where: DataLocations) -> tuple[str, ...]:
    """`ref`'s splits from its source files alone: no TFDS build, nothing written."""
    if ref.spec.source is None:
        return ref.spec.catalog_splits
    source = Path(ref.path) if ref.path is not None else where.source_dir / ref.spec.source
    folder = ref.split.split("_", 1)[0]
    folders = ((folder,) if ref.spec.builder == "entity_questions"
               and folder in ("train", "dev", "test") else ())
    try:
        return builders.planned_splits(ref.spec.builder, source, folders)
    except (FileNotFoundError, ValueError) as e:
        raise DatasetError(f"dataset {ref.label}: {e}") from None


def check(ref: DatasetRef, where: DataLocations, build: bool = True) -> None:
    """Raise DatasetError unless `ref`'s split exists. `build`: prepare local builders
    (cheap, but writes under tfds_dir); False: read the split names off the source files."""
    splits = available_splits(ref, where) if build else planned_splits(ref, where)
    if ref.split not in splits:
        raise DatasetError(f"dataset {ref.name!r} has no split {ref.split!r}; "
                           f"splits: {sorted(splits)}")


def _catalog_source(ref: DatasetRef, where: DataLocations):
    import tensorflow_datasets as tfds
    how = (f"prepare it there in array_record format (`tfds build {ref.spec.builder} "
           f"--file_format=array_record --data_dir={where.tfds_dir}`) or set "
           f"--config.data.download=True on a machine with internet")
    if not where.download:
        builder = tfds.builder(ref.spec.builder, data_dir=str(where.tfds_dir))
        if not builder.is_prepared():
            raise DatasetError(f"dataset {ref.label}: TFDS catalog dataset "
                               f"{ref.spec.builder!r} is not prepared under {where.tfds_dir}; "
                               f"{how}")
    try:
        return tfds.data_source(ref.spec.builder, split=ref.split, data_dir=str(where.tfds_dir),
                                download=where.download)
    except Exception as e:  # noqa: BLE001 - TFDS raises many types; the fix is the same
        raise DatasetError(f"dataset {ref.label}: TFDS could not read {ref.spec.builder!r} "
                           f"from {where.tfds_dir} ({type(e).__name__}: {e}); {how}") from None


def load_records(ref: DatasetRef, where: DataLocations) -> list[QaRecord]:
    """All records of `ref`'s split, each with "dataset" set to `ref.name`, sorted by id.

    Sorting by the stable id makes every later draw independent of file and shard order.
    """
    if ref.spec.source is None:
        source = _catalog_source(ref, where)
    else:
        check(ref, where)
        source = _local_builder(ref, where).as_data_source(split=ref.split)
    raw = source.__getitems__(list(range(len(source)))) if len(source) else []
    records = []
    for r in raw:
        rec = ref.spec.convert(r)
        if rec is not None:
            records.append({**rec, "dataset": ref.name})
    if not records:
        raise DatasetError(f"dataset {ref.label} is empty")
    records.sort(key=lambda r: r["id"])
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i, j in zip(ids, ids[1:]) if i == j)
        raise DatasetError(f"dataset {ref.label}: question id {dup!r} occurs more than once")
    return records
