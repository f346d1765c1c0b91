"""The train stage: sft.jsonl -> Orbax checkpoints + PEFT adapter in `out_dir`.

    out_dir/config.json        the config it ran with (a rerun with another config is refused)
    out_dir/checkpoints/<step> Orbax: trainable params + optimizer state (+ teacher), the last K
    out_dir/adapter/           PEFT adapter (LoRA mode): adapter_config.json + safetensors
    out_dir/merged/            only with training.export_merged: full HF checkpoint
    out_dir/summary.json       steps, losses, where it resumed from; written last

Resumable: a killed run restarted with the same flags continues from the newest checkpoint
and reaches the same final weights (se_jax/tuning/training.py). A finished run (summary.json says
so) is never trained or exported again: its record stays as it is.

Two runs with the same `input_fingerprint` (SFT records, seed, model, prompt and training
config) train the same adapter; a sweep trains the first and gives the other its outputs
(`adopt_outputs`; summary.json then says "same_as").

The base model is loaded here unless the caller passes its resident one
(se_jax/pipeline/resident.py), as the experiment's sweep does for every run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from absl import logging
from flax import nnx

from se_jax.config.schema import RunConfig
from se_jax.parallel import distributed
from se_jax.tuning import export
from se_jax.io import stage_io
from se_jax.tuning import training
from se_jax.parallel import mesh as mesh_lib
from se_jax.parallel.mesh import make_mesh
from se_jax.pipeline.resident import Resident
from se_jax.tuning.sft_data import tokenize_example
from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS, claimed

SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"   # the Orbax state under out_dir
OUTPUT_DIRS = (CHECKPOINTS, "adapter", "merged")
# What training reads besides the SFT records (labels.* only choose the records, and the
# records are compared themselves).
INPUT_SECTIONS = ("seed", "model", "prompt", "training")
RECORD_FIELDS = ("id", "question", "target", "prompt_style")   # what tokenize_example reads


def read_sft(path: Path) -> list[dict]:
    """The SFT records; ValueError naming file, line and field of a malformed one."""
    if not path.is_file():
        raise FileNotFoundError(f"train stage: SFT file {path} does not exist")
    records = stage_io.read_jsonl(path)
    for i, r in enumerate(records, 1):
        for field in ("id", "question", "target"):
            if not isinstance(r.get(field), (str, int)) or r.get(field) == "":
                raise ValueError(f"{path}:{i}: record id={r.get('id')!r} has no usable "
                                 f"{field!r} field")
    if not records:
        raise ValueError(f"{path}: no SFT records")
    return records


def read_summary(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else None


def input_fingerprint(config: RunConfig, sft: str | Path) -> str:
    """sha256 of everything a run's training reads: its SFT records' fields in file order
    and the config sections `INPUT_SECTIONS` less output paths and logging knobs
    (NEUTRAL_KEYS). Equal fingerprints train the same adapter (e.g. SE and R-Tuning-U labels
    that coincide at one tau)."""
    records = [[r.get(k) for k in RECORD_FIELDS] for r in read_sft(Path(sft))]
    settings = stage_io.config_subset(config, INPUT_SECTIONS, NEUTRAL_KEYS)
    text = json.dumps([records, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def adopt_outputs(twin_dir: Path, out_dir: Path) -> None:
    """Give `out_dir` the outputs of the finished run in `twin_dir`, whose input fingerprint
    is the same: its checkpoints, adapter (and merged weights) as hard links where the
    filesystem allows, then summary.json with "same_as" (last, so a crash leaves the run
    unfinished). Process 0 writes."""
    if not distributed.is_main_process():
        return
    summary = read_summary(twin_dir)
    if not (summary and summary.get("finished")):
        raise ValueError(f"train stage: {twin_dir} has not finished; nothing to adopt")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_DIRS:
        src, dst, tmp = twin_dir / name, out_dir / name, out_dir / f".{name}.tmp"
        if src.is_dir() and not dst.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp, copy_function=stage_io.link_or_copy)
            os.replace(tmp, dst)
    summary = {**summary, "same_as": str(twin_dir)}
    stage_io.atomic_write_text(out_dir / SUMMARY_FILE,
                               json.dumps(summary, indent=2, sort_keys=True) + "\n")


@dataclasses.dataclass
class Trained:
    """A train stage's result: where it wrote, its summary, and the trained model when this
    call trained it (None when the run had finished before: `Resident.restored_run_model`)."""
    out_dir: Path
    summary: dict
    model: nnx.Module | None

    def run_model(self, config: RunConfig, resident: Resident) -> nnx.Module:
        """The run's model: the one trained by this call, or, when the run had finished
        before, rebuilt on `resident` from its last checkpoint."""
        if self.model is not None:
            return self.model
        return resident.restored_run_model(config.training, config.seed,
                                           self.out_dir / CHECKPOINTS)


@claimed
def run_train(config: RunConfig, sft: str | Path, out_dir: str | Path,
              resident: Resident | None = None) -> Trained:
    """Train on the SFT set into `out_dir` and export the adapter (see module doc)."""
    tc = config.training
    sft_path, out_dir = Path(sft), Path(out_dir)
    if distributed.is_main_process():
        stage_io.write_config(out_dir, config, ignore=NEUTRAL_KEYS,
                              depends_on=DEPENDS_ON["train"])
    distributed.barrier(f"train-config-{out_dir}")
    done = read_summary(out_dir)
    if done is not None and done.get("finished"):
        logging.info("train: %s finished before (%d steps); nothing to do", out_dir,
                     done["steps"])
        return Trained(out_dir, done, None)
    records = read_sft(sft_path)
    if resident is None:
        resident = Resident.load(config.model, make_mesh(config.mesh),
                                 adapter=config.model.adapter)
    tokenizer, mesh = resident.tokenizer, resident.mesh
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer of {config.model.path} has no eos token to end targets")
    # The prompt exactly as the sampler built it (config.prompt).
    kwargs = config.prompt.format_kwargs()
    seqs = [tokenize_example(tokenizer, r, eos_id=eos, prompt_kwargs=kwargs) for r in records]
    model = resident.run_model(tc, config.seed)
    result = training.train(model, seqs, tc, workdir=str(out_dir / CHECKPOINTS), mesh=mesh,
                            seed=config.seed, pad_id=tokenizer.pad_token_id or 0)
    total = training.steps_per_epoch(len(seqs), tc.batch_size) * tc.epochs
    summary = dict(steps=result.steps, total_steps=total, resumed_from=result.resumed_from,
                   examples=len(seqs), finished=result.steps == total,
                   last_loss=result.history[-1]["loss"] if result.history else None,
                   first_loss=result.history[0]["loss"] if result.history else None)
    # Written once: by process 0 when each process holds the whole model (a per-process
    # mesh); with a mesh over every process, all take part in gathering the weights.
    if result.steps == total and (distributed.is_main_process()
                                  or not mesh_lib.process_local(mesh)):
        if tc.mode == "lora" and tc.export_adapter:
            export.export_peft_adapter(model, training.lora_spec(tc), str(out_dir / "adapter"),
                                       base_model=str(config.model.path))
        if tc.export_merged:
            # Folds the adapters into a copy: `model` stays the run's LoRA model.
            export.export_merged(nnx.clone(model), str(out_dir / "merged"),
                                 tokenizer=tokenizer)
    if distributed.is_main_process():
        stage_io.atomic_write_text(out_dir / SUMMARY_FILE,
                                   json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logging.info("train: %s", json.dumps(summary, sort_keys=True))
    return Trained(out_dir, summary, model)
