"""A tiny end-to-end config: every stage in seconds (tests/test_experiment_e2e.py).

The model is a tiny random Llama directory and the data tiny local files, both written by
the test, which overrides `model.path`, `workdir` and `data.source_dir`:

    python launch/experiment.py --config=configs/tiny.py --config.model.path=/tmp/tiny \\
        --config.workdir=/tmp/run --config.data.source_dir=/tmp/tiny_data
"""
from __future__ import annotations

from configs import base


def get_config():
    config = base.get_config()
    config.workdir = "runs/tiny"
    config.model.max_seq_len = 160

    d = config.data
    d.in_distribution = "nq_open"
    d.out_of_distribution = ("entity_questions_ood",)
    d.train_size, d.val_size, d.test_size, d.ood_size = 8, 4, 4, 4

    # A random model never stops early: few short samples keep every decode loop small.
    config.sampling.num_samples = 4
    config.sampling.max_new_tokens = 8

    config.evaluation.judge = "f1"
    config.evaluation.max_new_tokens = 4
    config.evaluation.batch_size = 4
    config.evaluation.bootstrap_samples = 50

    ex = config.experiment
    ex.methods = ("se_lexical", "rtuning", "rtuning_u", "idk")
    ex.taus = (1.0,)
    ex.seeds = (0,)
    ex.arms = ("attention_only",)
    ex.slick_breakdown = True

    t = config.training
    t.lora.rank, t.lora.alpha = 2, 4.0
    t.batch_size, t.epochs, t.learning_rate = 8, 1, 1e-3   # 8: divisible by 8 test devices
    t.save_every, t.keep, t.async_checkpoint = 1000, 1, False
    return config
