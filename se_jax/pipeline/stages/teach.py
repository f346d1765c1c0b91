"""The teach step of a knowledge-controlled experiment: fine-tune the base model on the
taught facts (K) once, before anything is sampled; the taught model is the experiment's
base model from then on.

    <workdir>/teach/teach.jsonl      every phrasing of every taught fact, in every answer
                                     setting's style (records carry their "prompt_style")
    <workdir>/teach/train/           the train stage's directory: summary.json and
                                     merged/ (the taught model, HF safetensors + tokenizer);
                                     its Orbax checkpoints are removed once merged/ is written

Resumable: until summary.json says finished, a rerun resumes the teach run from its last
checkpoint; afterwards the experiment loads merged/ as its base (`taught_model_dir`).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from absl import logging

from se_jax.config.schema import RunConfig
from se_jax.tuning import lora
from se_jax.io import stage_io
from se_jax.data import facts
from se_jax.parallel.distributed import barrier, is_main_process
from se_jax.pipeline.resident import Resident
from se_jax.pipeline.stages import train


def answer_styles(config: RunConfig) -> tuple[str, ...]:
    """The prompt styles the experiment samples with (its answer settings)."""
    return config.experiment.settings or (config.prompt.style,)


def teach_records(config: RunConfig, splits: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """The teach SFT set: facts.teach_set for every answer style, tagged with it."""
    out = []
    for style in answer_styles(config):
        cfg = facts.FactsConfig.from_config(config.facts, style)
        out += [{**r, "id": f"{r['id']}~{style}", "prompt_style": style}
                for r in facts.teach_set(splits, cfg)]
    return out


def teach_run_config(config: RunConfig) -> RunConfig:
    """config.training with the teach section's fields, exporting the merged model."""
    return config.replace(training={**config.teach.training, "export_adapter": False,
                                    "export_merged": True})


def taught_model_dir(out_dir: Path) -> Path:
    return out_dir / "train" / "merged"


def run_teach(config: RunConfig, base: Resident, splits: Mapping[str, Sequence[Mapping]],
              out_dir: Path) -> Resident:
    """The taught base (`base` itself is not modified)."""
    cfg = teach_run_config(config)
    records = teach_records(config, splits)
    if is_main_process() and not (out_dir / "teach.jsonl").exists():
        stage_io.write_jsonl(out_dir / "teach.jsonl", records)
    barrier(f"teach-set-{out_dir}")
    logging.info("teach: %d records (%d taught facts, %d phrasings, styles %s), mode %s",
                 len(records), len({r["fact_id"] for r in records}),
                 config.facts.phrasings, list(answer_styles(config)), cfg.training.mode)
    trained = train.run_train(cfg, out_dir / "teach.jsonl", out_dir / "train", resident=base)
    if trained.model is None:   # finished by an earlier process: its export is the result
        return Resident.load(dataclasses.replace(
            cfg.model, path=str(taught_model_dir(out_dir)), adapter=""), base.mesh)
    model = trained.model
    lora.merge_lora(model)   # LoRA mode: the run's own copy of the kernels; base untouched
    model.eval()
    if is_main_process():   # merged/ holds the result; the optimizer state is not needed
        shutil.rmtree(trained.out_dir / train.CHECKPOINTS, ignore_errors=True)
    return Resident(base.path, model, base.tokenizer, base.mesh)
