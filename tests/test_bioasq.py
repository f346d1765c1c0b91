"""The BioASQ builder on a crafted Task B training file: questions with an exact_answer,
nested synonym lists flattened, yes/no strings; a bad file stops with one line naming the
file and the question."""
from __future__ import annotations

import json

import pytest

from bioasq_fixture import QUESTIONS, write_bioasq
from se_jax.data import catalog


def _load(root, tfds_dir):
    where = catalog.DataLocations(tfds_dir=tfds_dir, source_dir=root)
    return catalog.load_records(catalog.parse_name("bioasq"), where)


def test_bioasq_records(tmp_path):
    root = write_bioasq(tmp_path / "data")
    records = {r["id"]: r for r in _load(root, tmp_path / "tfds")}
    assert len(records) == len(QUESTIONS) - 1 and "bioasq-5a5" not in records   # summary
    assert records["bioasq-5a1"]["answers"] == ["GENEA", "gene A"]
    assert records["bioasq-5a2"]["answers"] == ["enzyme B", "EnzB"]
    assert records["bioasq-5a3"]["answers"] == ["liver", "kidney", "renal"]
    assert records["bioasq-5a4"]["answers"] == ["yes"]
    assert records["bioasq-5a4"]["question"] == "Is crafted protein D a kinase?"
    assert records["bioasq-5a4"]["relation"] == "yesno"
    assert {r["dataset"] for r in records.values()} == {"bioasq"}
    # A second, cumulative training file repeating questions reads them once.
    write_bioasq(tmp_path / "data", QUESTIONS[:3], name="training_older.json")
    assert len(_load(root, tmp_path / "tfds2")) == len(QUESTIONS) - 1


@pytest.mark.parametrize("question,message", [
    ({"id": "x1", "type": "factoid", "body": "Q?", "exact_answer": [[{"a": 1}]]},
     "question id='x1': 'exact_answer' holds dict"),
    ({"id": "x2", "type": "factoid", "body": "", "exact_answer": ["a"]},
     "question id='x2': field 'body'"),
    ({"id": "x3", "type": "essay", "body": "Q?", "exact_answer": ["a"]},
     "question id='x3': field 'type' is 'essay'"),
    ({"type": "factoid", "body": "Q?", "exact_answer": ["a"]},
     r"question \[16\]: field 'id'"),
    ({"id": "x5", "type": "factoid", "body": "Q?", "exact_answer": [[""]]},
     "question id='x5': 'exact_answer' holds no answer"),
])
def test_bad_bioasq_file_names_file_and_question(tmp_path, question, message):
    root = write_bioasq(tmp_path / "data", QUESTIONS + [question])
    with pytest.raises(ValueError, match=message) as info:
        _load(root, tmp_path / "tfds")
    text = str(info.value)
    assert "training_crafted.json" in text and "\n" not in text


def test_not_a_bioasq_file(tmp_path):
    folder = tmp_path / "data" / "bioasq"
    folder.mkdir(parents=True)
    (folder / "other.json").write_text(json.dumps([{"question": "q", "answers": ["a"]}]))
    with pytest.raises(ValueError, match="other.json: expected a BioASQ training file"):
        _load(tmp_path / "data", tmp_path / "tfds")
