"""On the embedded SmolLM2-135M: a short LoRA run on an SE-labelled set moves the model.

The real stages run end to end (sample -> entropy (lexical) -> label (SE) -> train -> greedy
answers of the trained model, in memory) on 16 NQ-open questions; after training the model must say the
abstention phrase on most abstain-labelled training questions and keep its own answer on most
answer-labelled ones. The few-hundred-question version is `launch/finetune_smollm.py`.

Slow (about 6 min on a 2-core CPU, most of it compiling and training the 30-layer model),
so it runs with `pytest --runslow`; tests/test_demo_knowledge.py checks the same direction
through the whole driver on a tiny model in every run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "finetune_smollm.py"


def _finetune_module():
    spec = importlib.util.spec_from_file_location("finetune_smollm", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_lora_on_se_labels_teaches_smollm_when_to_abstain(shared_data, embedded_gguf, tmp_path):
    # Every example fits 96 tokens: one batch shape, so one train-step compilation.
    result = _finetune_module().finetune_and_measure(
        tmp_path, num_questions=16, num_samples=4, epochs=10, learning_rate=3e-3,
        batch_size=8, pad_multiple=96, shared_data=str(shared_data))
    before, after = result["before"], result["after"]
    print(result)
    assert after["num_abstain"] >= 5 and after["num_answer"] >= 5  # a real two-sided set
    assert result["train_last_loss"] < 0.5 * result["train_first_loss"]
    # Before (the T=0.1 answers the labels came from) the model never says the phrase;
    # after training it does where labelled to ...
    assert before["abstain_rate_on_abstain"] < 0.2
    assert after["abstain_rate_on_abstain"] > 0.5
    # ... and keeps its own answer where labelled to answer.
    assert after["kept_rate_on_answer"] > 0.5
