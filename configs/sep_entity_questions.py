"""Semantic entropy probes at scale on real data: EntityQuestions from ../shared/data with
the embedded SmolLM2-135M-Instruct. Semantic entropy is computed on the first
`labels.sep.train_size` training questions only (N/10); a probe on the hidden states the
sampler keeps labels all N (`sep_lexical`), beside SE labels of the N/10 alone
(`sesub_lexical`: what the same SE budget buys without a probe), in one experiment, so
both are tuned and evaluated on the same validation, test and OOD questions.

    python launch/experiment.py --config=configs/sep_entity_questions.py
    python launch/experiment.py --config=configs/sep_entity_questions.py --dry_run

The N - N/10 probe-only questions are sampled with the low-temperature answer alone (one
row, not 1 + M): report.md's "Labelling cost" table gives each method's generated tokens,
equivalence pairs and seconds. Scale N with --config.data.train_size and the SE subset
with --config.labels.sep.train_size.
"""
from __future__ import annotations

from configs import nq_open_smollm


def get_config():
    config = nq_open_smollm.get_config()
    config.workdir = "runs/sep_entity_questions"
    d = config.data
    d.in_distribution = "entity_questions"
    d.out_of_distribution = ("entity_questions_ood",)
    d.train_size, d.val_size, d.test_size, d.ood_size = 2000, 100, 200, 200
    config.labels.sep.train_size = 200
    # SmolLM2-135M has 30 decoder layers (576 features): every fifth one's output, at the
    # last prompt token (TBG) and the greedy answer's second-to-last token (SLT).
    config.probes.layers = (5, 10, 15, 20, 25, 30)
    config.experiment.methods = ("sep_lexical", "sesub_lexical")
    return config
