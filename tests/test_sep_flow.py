"""The experiment's probe methods (se_jax/pipeline/sep_flow.py) on a stand-in job whose
sample and entropy steps write synthetic files in the stages' contracts: the SE subset and
the probe-only questions are sampled apart (the latter with num_samples=0), entropies run
on the subset only, the probe labels every training question, and the report's probe and
labelling-cost sections read the result."""
import dataclasses
import json

import numpy as np
import pytest

from se_jax.io import hidden_states as hs
from se_jax.io import stage_io
from se_jax.io.telemetry import Telemetry
from se_jax.pipeline import experiment, labelling_cost, sep_flow
from se_jax.pipeline.layout import Layout, is_done
from se_jax.pipeline.plan import Run
from tests.typed_configs import BASE

N_TRAIN, SUBSET, M, D = 150, 60, 4, 8
DIRECTION = np.random.default_rng(1).normal(size=D)


def _latent(qid: str) -> float:
    return float(np.random.default_rng(int(qid[1:])).normal())


@dataclasses.dataclass
class StandInJob:
    config: object
    layout: Layout
    questions: dict
    clock: Telemetry = dataclasses.field(default_factory=Telemetry)
    calls: list = dataclasses.field(default_factory=list)

    def sample(self, split, questions=None, num_samples=None):
        self.calls.append(("sample", split, num_samples))
        out = self.layout.sample(split)
        m = M if num_samples is None else num_samples
        recs = stage_io.read_jsonl(questions or self.questions[split])
        ids = [r["id"] for r in recs]
        rng = np.random.default_rng(len(ids))
        values = rng.normal(size=(len(ids), 1, 2, D)).astype(np.float32)
        values[:, 0, 1] += 3 * np.array([_latent(q) for q in ids])[:, None] * DIRECTION
        answer = lambda q: dict(text="paris" if _latent(q) < 0.3 else "rome",  # noqa: E731
                                token_ids=[1, 2])
        with self.clock.phase(f"sample {split}"):
            stage_io.write_jsonl(out / "generations.jsonl", [
                dict(id=q, question=r["question"], answers=["paris"], prompt="p",
                     most_likely=answer(q), samples=[answer(q)] * m)
                for q, r in zip(ids, recs)])
            hs.save(out / hs.FILE_NAME, hs.HiddenStates(tuple(ids), (0, 5), ("tbg",), values))
        return out / "generations.jsonl"

    def entropy(self, backend, split, generations):
        self.calls.append(("entropy", backend, split))
        out = self.layout.entropy(backend, split)
        with self.clock.phase(f"entropy {backend} {split}"):
            stage_io.write_jsonl(out / "uncertainty.jsonl", [
                dict(id=g["id"], backend=backend, equivalence=[[True] * M] * M,
                     discrete_semantic_entropy=float(np.log(M) * (_latent(g["id"]) > 0.3)))
                for g in stage_io.read_jsonl(generations)])
        return out / "uncertainty.jsonl"


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("sep_flow")
    train = root / "data" / "train.jsonl"
    stage_io.write_jsonl(train, [dict(id=f"q{i}", question=f"question {i}", answers=["paris"])
                                 for i in range(N_TRAIN)])
    config = BASE.replace(workdir=str(root), probes=dict(layers=(0, 5)),
                          labels=dict(sep=dict(train_size=SUBSET)),
                          evaluation=dict(bootstrap_samples=30))
    job = StandInJob(config, Layout.from_config(config), {"train": train})
    methods = ("sep_lexical", "sesub_lexical")
    inputs = sep_flow.prepare_sep(job, methods)
    return job, methods, inputs


def test_the_subset_alone_pays_for_samples_and_entropies(flow):
    job, _, inputs = flow
    assert ("sample", sep_flow.SUBSET, None) in job.calls
    assert ("sample", sep_flow.PROBE_ONLY, 0) in job.calls
    assert [c for c in job.calls if c[0] == "entropy"] == [
        ("entropy", "lexical", sep_flow.SUBSET)]
    assert len(stage_io.read_jsonl(inputs.subset_generations)) == SUBSET
    scores = stage_io.read_jsonl(inputs.train_scores["lexical"])
    assert len(scores) == N_TRAIN and is_done(job.layout.probe("lexical"))
    metrics = json.loads((job.layout.probe("lexical") / "metrics.json").read_text())
    assert metrics["chosen"] == dict(position="tbg", layer=5)


@pytest.mark.parametrize("method,labelled", [("sep_lexical", N_TRAIN),
                                             ("sesub_lexical", SUBSET)])
def test_the_label_step_of_each_probe_method(flow, method, labelled):
    job, _, inputs = flow
    sft = experiment.Job.label(job, Run(method, 0.5, 0), *inputs.label_inputs(method))
    examples = stage_io.read_jsonl(sft)
    assert len(examples) == labelled
    high = sum(_latent(e["id"]) > 0.3 for e in examples)
    abstain = sum(e["label"] == "abstain" for e in examples)
    assert abs(abstain - high) < 0.15 * labelled   # the probe follows the latent


def test_report_sections_state_the_probe_and_the_cost(flow):
    job, methods, _ = flow
    section = sep_flow.report_section(job.layout, methods)
    assert "TBG layer 5" in section and "| tbg | 5 |" in section
    rows = labelling_cost.measure(("se_lexical", *methods),
                                  labelling_cost.layout_files(job.layout),
                                  job.clock.snapshot())
    by = {r["method"]: r for r in rows}
    assert by["sep_lexical"]["labelled"] == N_TRAIN
    assert by["sep_lexical"]["se_questions"] == SUBSET
    # M + 1 rows for the subset, one row for the rest; M(M-1) judged pairs per SE question.
    assert by["sep_lexical"]["rows"] == SUBSET * (M + 1) + (N_TRAIN - SUBSET)
    assert by["sep_lexical"]["tokens"] == 2 * by["sep_lexical"]["rows"]
    assert by["sep_lexical"]["pairs"] == by["sesub_lexical"]["pairs"] == SUBSET * M * (M - 1)
    assert by["sep_lexical"]["seconds"] is not None
    assert by["se_lexical"]["seconds"] is None   # never ran: no phase, said as n/a
    assert "| sep_lexical | 150 | 60 |" in labelling_cost.table(rows)
