"""The paper's whole grid (Tjandra et al. 2024, Sections 6-7) in one command: five training
sets (TriviaQA, BioASQ, NQ, SQuAD, and "Mult" = TriviaQA + BioASQ + NQ) x both answer
settings (Long-QA, Short-QA), SE (DeBERTa), SE (Llama), R-Tuning, R-Tuning-U and the
original model, 9 taus, 3 seeds, with the paper's selection protocol (taus at the first
seed, the picked tau and R-Tuning at the other two); then the grid report: Table 1,
per-training-set tables, the aggregated adaptation plot.

    python launch/sweep.py --config=configs/paper_grid.py --dry_run        # cost first
    python launch/sweep.py --config=configs/paper_grid.py --one_process    # run it all
    python launch/sweep.py --config=configs/paper_grid.py --print_only     # for a scheduler
    python launch/sweep.py --config=configs/paper_grid.py --report_only    # Table 1 now

Each training set is an experiment in <workdir>/<name>; the grid report goes to
<workdir>/report. Single datasets: the other three datasets are out-of-distribution (the
paper: "out-of-distribution datasets that exclude the training set"); Mult: SQuAD.
BioASQ is the Task B training JSON the user downloads into <data.source_dir>/bioasq/;
TriviaQA and SQuAD come from the TFDS catalog, NQ from the local NQ-open files.
"""
from __future__ import annotations

from configs import paper_llama3_8b

DATASETS = ("trivia_qa", "bioasq", "nq_open", "squad")
MULT = ("trivia_qa", "bioasq", "nq_open")


def get_config():
    config = paper_llama3_8b.get_config()
    config.workdir = "runs/paper_grid"
    ex = config.experiment
    ex.methods = ("se_deberta", "se_llm_judge", "rtuning", "rtuning_u")
    ex.arms = ()
    ex.slick_breakdown = False
    ex.settings = ("sentence", "short")      # Long-QA, Short-QA
    ex.protocol = "paper"
    config.labels.answer_source = "model"    # R-Tuning as the paper ran it
    return config


def training_sets(datasets=DATASETS, mult=MULT) -> list[tuple[str, tuple[str, ...], tuple]]:
    """(name, in-distribution datasets, out-of-distribution datasets) per training set."""
    out = [(d, (d,), tuple(o for o in datasets if o != d)) for d in datasets]
    rest = tuple(o for o in datasets if o not in mult)
    return out + [("mult", tuple(mult), rest)]


def get_sweep(config=None) -> list[dict]:
    root = config.workdir if config is not None else "runs/paper_grid"
    return [{"name": name, "workdir": f"{root}/{name}",
             "data.in_distribution": ind if len(ind) > 1 else ind[0],
             "data.out_of_distribution": ood}
            for name, ind, ood in training_sets()]
