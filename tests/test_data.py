"""TFDS data layer: project builders (array_record, no TensorFlow), dataset names, the
paper's fixed-seed splits, and clear errors for bad names, splits and empty data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from configs import base
from se_jax.data import catalog, splits, sources


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory) -> Path:
    """A tiny copy of the shared data layout: nq_open/ and entity_questions/ folders."""
    root = tmp_path_factory.mktemp("sources")
    _write_jsonl(root / "nq_open" / "NQ-open.dev.jsonl",
                 [{"question": f"nq question {i}?", "answer": [f"ans{i}", f"alt{i}"]}
                  for i in range(40)])
    _write_jsonl(root / "nq_open" / "NQ-open.efficientqa.dev.1.1.jsonl",
                 [{"question": f"eqa question {i}?", "answer": [f"e{i}"]} for i in range(7)])
    for split, n in (("train", 6), ("test", 3)):
        for rel in ("P17", "P36", "P50", "P106"):     # P17/P36 in-dist, P50 OOD, P106 neither
            items = [{"question": f"{rel} {split} q{i}?", "answers": [f"{rel}-{i}"]}
                     for i in range(n)]
            path = root / "entity_questions" / split / f"{rel}.{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(items))
    return root


def _data_config(sources_dir: Path, **overrides) -> ml_collections.ConfigDict:
    cfg = base.data_config()
    cfg.source_dir = str(sources_dir)
    cfg.update(overrides)
    return cfg


def _where(tmp: Path, sources_dir: Path) -> catalog.DataLocations:
    return catalog.DataLocations(tfds_dir=tmp / "tfds", source_dir=sources_dir)


def test_nq_open_builder_splits_and_stable_ids(tiny_sources, tmp_path):
    where = _where(tmp_path, tiny_sources)
    ref = catalog.parse_name("nq_open")
    assert set(catalog.available_splits(ref, where)) == {"dev", "efficientqa_dev"}
    recs = catalog.load_records(ref, where)
    assert len(recs) == 40 and [r["id"] for r in recs] == sorted(r["id"] for r in recs)
    first = next(r for r in recs if r["id"] == "nq_open-dev-000001")
    assert first == {"id": "nq_open-dev-000001", "question": "nq question 0?",
                     "answers": ["ans0", "alt0"], "relation": "", "dataset": "nq_open"}
    # The files on disk are TFDS array_record shards with dataset_info.json.
    built = list((tmp_path / "tfds" / "nq_open_jsonl").glob("*/1.0.0/*.array_record*"))
    assert len(built) == 2
    eqa = catalog.load_records(catalog.parse_name("nq_open:efficientqa_dev"), where)
    assert len(eqa) == 7


def test_entity_questions_relation_splits(tiny_sources, tmp_path):
    where = _where(tmp_path, tiny_sources)
    ind = catalog.load_records(catalog.parse_name("entity_questions"), where)
    assert {r["relation"] for r in ind} == {"P17", "P36"} and len(ind) == 12
    ood = catalog.load_records(catalog.parse_name("entity_questions_ood"), where)
    assert {r["relation"] for r in ood} == {"P50"} and len(ood) == 3
    everything = catalog.load_records(catalog.parse_name("entity_questions:test"), where)
    assert {r["relation"] for r in everything} == {"P17", "P36", "P50", "P106"}
    assert ood[0]["id"].startswith("eq-test-P50-")
    assert set(sources.SLICK_IN_DISTRIBUTION).isdisjoint(sources.SLICK_OUT_OF_DISTRIBUTION)


def test_qa_jsonl_builder_accepts_answer_string(tmp_path):
    path = _write_jsonl(tmp_path / "my_qs.jsonl", [
        {"question": "Q1?", "answer": "A1"},
        {"question": "Q2?", "answers": ["A2", "B2"], "id": "custom-2"}])
    recs = catalog.load_records(catalog.parse_name(f"jsonl:{path}"),
                                _where(tmp_path, tmp_path))
    assert [(r["id"], r["answers"]) for r in recs] == [("custom-2", ["A2", "B2"]),
                                                       ("my_qs-000001", ["A1"])]


def test_paper_splits_are_fixed_seed_disjoint_and_resumable(tiny_sources, tmp_path):
    cfg = _data_config(tiny_sources, in_distribution="nq_open",
                       out_of_distribution=("entity_questions_ood", "nq_open:efficientqa_dev"),
                       train_size=20, val_size=10, test_size=5, ood_size=3)
    paths = splits.prepare_splits(cfg, tmp_path, tmp_path / "a")
    assert list(paths) == ["train", "val", "test", "ood_entity_questions_ood", "ood_nq_open"]
    read = {k: [json.loads(line) for line in open(p)] for k, p in paths.items()}
    assert [len(read[k]) for k in paths] == [20, 10, 5, 3, 3]
    ids = [r["id"] for k in ("train", "val", "test") for r in read[k]]
    assert len(set(ids)) == 35
    assert {r["dataset"] for r in read["ood_entity_questions_ood"]} == {"entity_questions_ood"}
    # Same config -> same draw; another seed -> another draw.
    again = splits.prepare_splits(cfg, tmp_path, tmp_path / "b")
    assert Path(again["val"]).read_text() == Path(paths["val"]).read_text()
    other = _data_config(tiny_sources, **{**cfg.to_dict(), "seed": 1})
    moved = splits.prepare_splits(other, tmp_path, tmp_path / "c")
    assert Path(moved["val"]).read_text() != Path(paths["val"]).read_text()
    # A different config into the same directory is refused, naming the field.
    with pytest.raises(ValueError, match="seed"):
        splits.prepare_splits(other, tmp_path, tmp_path / "a")


def test_bad_names_splits_and_empty_data_fail_clearly(tiny_sources, tmp_path):
    where = _where(tmp_path, tiny_sources)
    with pytest.raises(catalog.DatasetError, match="unknown dataset 'nq_closed'.*nq_open"):
        catalog.parse_name("nq_closed")
    with pytest.raises(catalog.DatasetError, match="no split 'train'.*efficientqa_dev"):
        catalog.check(catalog.parse_name("nq_open:train"), where)
    with pytest.raises(catalog.DatasetError, match="no split 'dev'.*train"):
        catalog.check(catalog.parse_name("trivia_qa:dev"), where)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(catalog.DatasetError, match="empty"):
        catalog.load_records(catalog.parse_name(f"jsonl:{empty}"), where)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok?", "answer": "a"},
                                                {"question": "", "answer": "b"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'question'"):
        catalog.load_records(catalog.parse_name(f"jsonl:{bad}"), where)
    with pytest.raises(catalog.DatasetError, match="not found"):
        catalog.load_records(catalog.parse_name(f"jsonl:{tmp_path / 'nope.jsonl'}"), where)
    too_big = _data_config(tiny_sources, train_size=30, val_size=10, test_size=5)
    with pytest.raises(catalog.DatasetError, match="has 40 usable questions.*asks for 45"):
        splits.prepare_splits(too_big, tmp_path, tmp_path / "big")
    # Unprepared catalog dataset, no download: a message that says how to prepare it.
    with pytest.raises(catalog.DatasetError, match="not prepared.*array_record"):
        catalog.load_records(catalog.parse_name("trivia_qa"), where)


def test_data_source_reads_without_tensorflow(tiny_sources, tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from se_jax.data import catalog\n"
        f"w = catalog.DataLocations(tfds_dir=Path({str(tmp_path / 'tfds')!r}), "
        f"source_dir=Path({str(tiny_sources)!r}))\n"
        "n = len(catalog.load_records(catalog.parse_name('entity_questions_ood'), w))\n"
        "print(n, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["3", "False"]


def test_shared_data_builds(shared_data, tmp_path):
    where = _where(tmp_path, shared_data)
    nq = catalog.load_records(catalog.parse_name("nq_open"), where)
    lines = (shared_data / "nq_open" / "NQ-open.dev.jsonl").read_text().splitlines()
    assert len(nq) == len([x for x in lines if x.strip()]) == 3610
    ood = catalog.load_records(catalog.parse_name("entity_questions_ood"), where)
    expected = sum(len(json.loads((shared_data / "entity_questions" / "test" /
                                   f"{r}.test.json").read_text()))
                   for r in sources.SLICK_OUT_OF_DISTRIBUTION)
    assert len(ood) == expected
    assert {r["relation"] for r in ood} == set(sources.SLICK_OUT_OF_DISTRIBUTION)
    cfg = _data_config(shared_data)      # the paper's sizes: 2,000 / 500 / 500, 500 OOD
    paths = splits.prepare_splits(cfg, tmp_path, tmp_path / "splits")
    assert {k: sum(1 for _ in open(p)) for k, p in paths.items()} == {
        "train": 2000, "val": 500, "test": 500, "ood_entity_questions_ood": 500}
