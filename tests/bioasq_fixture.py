"""A small crafted file in BioASQ Task B's training format (not real data)."""
from __future__ import annotations

import json
from pathlib import Path

QUESTIONS = [
    {"id": "5a1", "type": "factoid", "body": "Which gene is mutated in crafted disease A?",
     "exact_answer": [["GENEA", "gene A"]], "ideal_answer": ["GENEA."], "documents": []},
    {"id": "5a2", "type": "factoid", "body": "Which enzyme does crafted drug B inhibit?",
     "exact_answer": ["enzyme B", "EnzB"]},
    {"id": "5a3", "type": "list", "body": "Which organs does crafted syndrome C affect?",
     "exact_answer": [["liver"], ["kidney", "renal"]]},
    {"id": "5a4", "type": "yesno", "body": "Is crafted protein D a kinase?",
     "exact_answer": "yes"},
    {"id": "5a5", "type": "summary", "body": "What is crafted condition E?",
     "ideal_answer": ["A made-up condition."]},   # no exact_answer: not kept
    {"id": "5a6", "type": "yesno", "body": "Does crafted virus F infect bats?",
     "exact_answer": "no"},
] + [{"id": f"5b{i}", "type": "factoid", "body": f"Which crafted marker {i} is elevated?",
      "exact_answer": [[f"marker {i}"]]} for i in range(10)]


def write_bioasq(root: Path, questions=QUESTIONS, name: str = "training_crafted.json") -> Path:
    """<root>/bioasq/<name>; returns the data root (the `data.source_dir`)."""
    folder = root / "bioasq"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"questions": questions}))
    return root
