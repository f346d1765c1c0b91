"""A sweep: the real-data experiment on the embedded model (configs/nq_open_smollm.py) for
each in-distribution dataset (launch/sweep.py).

`get_config()` is the shared base; `get_sweep()` lists the experiments, each a dict of
dotted overrides (its own workdir). launch/sweep.py runs, per experiment: the shared
preparation once, then one job per (method, tau, seed) in parallel, then the report.

    python launch/sweep.py --config=configs/sweep.py --max_parallel=2
    python launch/sweep.py --config=configs/sweep.py --print_only   # commands for a scheduler
"""
from __future__ import annotations

from configs import nq_open_smollm


def get_config():
    config = nq_open_smollm.get_config()
    config.workdir = "runs/sweep"
    return config


def get_sweep() -> list[dict]:
    return [
        {"workdir": "runs/sweep/nq_open", "data.in_distribution": "nq_open",
         "data.out_of_distribution": ("entity_questions_ood",)},
        {"workdir": "runs/sweep/entity_questions", "data.in_distribution": "entity_questions",
         "data.out_of_distribution": ("entity_questions_ood", "nq_open")},
    ]
