"""Measure the teach recipe: write a teach set and probe questions, then score a taught model.

Step 1 (`--mode=prepare`): draw the demo pool (se_jax.data.facts) and write
    <out>/teach.jsonl   the teach SFT set (every K fact of every split, `--phrasings` each)
    <out>/probe.jsonl   the questions to score: the test + OOD splits (half taught, half not)
Step 2: train and sample with the stand-alone launchers, e.g.
    PYTHONPATH=. python launch/train.py --config=configs/demo.py --config.workdir=<out> \
        --config.training.sft=<out>/teach.jsonl --config.training.out_dir=<out>/train \
        --config.training.mode=lora --config.training.lora.rank=32 ...
    PYTHONPATH=. python launch/sample.py --config=configs/demo.py \
        --config.model.path=<out>/train/merged --questions=<out>/probe.jsonl --out=<out>/sample \
        --config.sampling.low_temperature=0 --config.sampling.num_samples=10
    PYTHONPATH=. python launch/entropy.py --config=configs/demo.py \
        --generations=<out>/sample --out=<out>/entropy
Step 3 (`--mode=score`): greedy recall on taught / untaught facts (alias judge), and how well
exact-string entropy and lexical SE predict the greedy answer's errors (AUROC, 90% bootstrap).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags

from se_jax.abstention import evaluation
from se_jax.io import stage_io
from se_jax.data import text
from se_jax.data import facts

_MODE = flags.DEFINE_enum("mode", "prepare", ["prepare", "score"], "what to do")
_OUT = flags.DEFINE_string("out", None, "working directory", required=True)
_N_KNOWN = flags.DEFINE_integer("n_known", 120, "in-distribution taught facts")
_N_UNKNOWN = flags.DEFINE_integer("n_unknown", 120, "in-distribution untaught facts")
_N_OOD = flags.DEFINE_integer("n_ood", 20, "OOD facts taught (and as many untaught)")
_PHRASINGS = flags.DEFINE_integer("phrasings", 1, "teach records per taught fact")
_STYLE = flags.DEFINE_enum("style", "short", ["short", "sentence"], "answer style")
_SEED = flags.DEFINE_integer("seed", 0, "draw seed")

RELATIONS = ("P36", "P17", "P19", "P26", "P40", "P495", "P131")
OOD_RELATIONS = ("P50", "P176", "P407")


def facts_config() -> facts.FactsConfig:
    return facts.FactsConfig(n_known=_N_KNOWN.value, n_unknown=_N_UNKNOWN.value,
                             relations=RELATIONS, ood_relations=OOD_RELATIONS,
                             n_ood_known=_N_OOD.value, n_ood_unknown=_N_OOD.value,
                             seed=_SEED.value, phrasings=_PHRASINGS.value, style=_STYLE.value)


def prepare(out: Path) -> None:
    cfg = facts_config()
    splits = facts.make_splits(facts.load_pool(), cfg)
    teach = facts.teach_set(splits, cfg)
    probe = splits["test"] + splits.get(facts.OOD_SPLIT, [])
    stage_io.write_jsonl(out / "teach.jsonl", teach)
    stage_io.write_jsonl(out / "probe.jsonl", probe)
    print(f"{out}/teach.jsonl: {len(teach)} records; {out}/probe.jsonl: {len(probe)} "
          f"questions ({sum(r['taught'] for r in probe)} taught)")


def score(out: Path) -> None:
    probe = {r["id"]: r for r in stage_io.read_jsonl(out / "probe.jsonl")}
    gens = stage_io.read_jsonl(out / "sample" / "generations.jsonl")
    unc_path = out / "entropy" / "uncertainty.jsonl"
    unc = {r["id"]: r for r in stage_io.read_jsonl(unc_path)} if unc_path.exists() else {}
    taught, correct, scores = [], [], {"exact_entropy": [], "discrete_semantic_entropy": []}
    for g in gens:
        taught.append(bool(probe[g["id"]]["taught"]))
        correct.append(text.alias_match(g["most_likely"]["text"], g["answers"]))
        for k in scores:
            scores[k].append(unc[g["id"]][k] if g["id"] in unc else np.nan)
    taught, correct = np.asarray(taught), np.asarray(correct)
    print(f"greedy correct: taught {correct[taught].sum()}/{taught.sum()} "
          f"({correct[taught].mean():.3f}), untaught {correct[~taught].sum()}/"
          f"{(~taught).sum()} ({correct[~taught].mean():.3f})")
    for k, v in scores.items():
        v = np.asarray(v)
        if np.isfinite(v).all():
            print(f"{k}: AUROC for errors {evaluation.bootstrap(evaluation.auroc, v, ~correct)}"
                  f"; for untaught {evaluation.bootstrap(evaluation.auroc, v, ~taught)}")
    if unc:
        clusters = [unc[g["id"]]["num_clusters"] for g in gens]
        print(f"mean clusters of M: taught {np.mean(np.asarray(clusters)[taught]):.2f}, "
              f"untaught {np.mean(np.asarray(clusters)[~taught]):.2f}")


def main(argv):
    del argv
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (prepare if _MODE.value == "prepare" else score)(out)


if __name__ == "__main__":
    app.run(main)
