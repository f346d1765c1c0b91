"""The teach step of a knowledge-controlled experiment: fine-tune the base model on the
taught facts (K) once, before anything is sampled, and fold the adapter into the resident
base, which every later stage then uses as "the model".

    <workdir>/teach/teach.jsonl     every phrasing of every taught fact, in every answer
                                    setting's style (records carry their "prompt_style")
    <workdir>/teach/train/          the train stage's directory: adapter/, checkpoints/,
                                    summary.json (the saved result: an adapter, not weights)

Resumable like any stage: a finished teach run is not trained again; its adapter is read
back from the last checkpoint and folded in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from absl import logging

from se_jax import lora, stage_io
from se_jax.data import facts
from se_jax.distributed import barrier, is_main_process
from se_jax.resident import Resident
from se_jax.stages import train


def answer_styles(config: Any) -> tuple[str, ...]:
    """The prompt styles the experiment samples with (its answer settings)."""
    return tuple(config.experiment.settings) or (str(config.prompt.style),)


def teach_records(config: Any, splits: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """The teach SFT set: facts.teach_set for every answer style, tagged with it."""
    out = []
    for style in answer_styles(config):
        cfg = facts.FactsConfig.from_config(config.facts, style)
        out += [{**r, "id": f"{r['id']}~{style}", "prompt_style": style}
                for r in facts.teach_set(splits, cfg)]
    return out


def teach_run_config(config: Any, out_dir: Path) -> Any:
    """config.training with the teach section's fields, reading teach.jsonl."""
    cfg = config.copy_and_resolve_references()
    cfg.training.update(config.teach.training)
    cfg.training.sft = str(out_dir / "teach.jsonl")
    cfg.training.out_dir = str(out_dir / "train")
    cfg.training.export_merged = False
    return cfg


def run_teach(config: Any, base: Resident, splits: Mapping[str, Sequence[Mapping]],
              out_dir: Path) -> Resident:
    """The taught base: `base` with the teach adapter folded into its weights (`base`
    itself is not modified)."""
    cfg = teach_run_config(config, out_dir)
    records = teach_records(config, splits)
    if is_main_process() and not (out_dir / "teach.jsonl").exists():
        stage_io.write_jsonl(out_dir / "teach.jsonl", records)
    barrier(f"teach-set-{out_dir}")
    logging.info("teach: %d records (%d taught facts x %d phrasings x styles %s)",
                 len(records), len({r["fact_id"] for r in records}),
                 int(config.facts.phrasings), list(answer_styles(config)))
    trained = train.run_train(cfg, resident=base)
    model = trained.model or base.restored_run_model(cfg.training, int(cfg.seed),
                                                     Path(cfg.training.out_dir) / "checkpoints")
    lora.merge_lora(model)   # the run's own copy of the targeted kernels; base untouched
    model.eval()
    return dataclasses.replace(base, model=model)
