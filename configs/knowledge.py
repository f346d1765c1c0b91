"""Config sections of the knowledge-controlled demo (issue 11), to fold into configs/base.py
(defaults) and configs/demo.py (the main job).

    config.facts = knowledge.facts_config()   # which facts are taught (K) and which not (U)
    config.teach = knowledge.teach_config()   # the teach step: SFT of K before the experiment

`se_jax.data.facts.FactsConfig.from_config(config.facts, config.prompt.style)` turns the first
into the typed draw; the teach section has the shape of `config.training` (the train stage's
keys), so the teach step can run the train stage on a copy of the config with
`training` replaced by it and `training.sft` pointing at the teach set.

Sizes: with the defaults below the experiment's splits are train 30 K + 30 U, val 15 + 15,
test 15 + 15, OOD 20 + 20; 80 facts are taught (60 in-distribution, 20 OOD).
Teach recipe: see WORKSPACE-notes / the issue-11 report for the measured steps and seconds.
"""
from __future__ import annotations

import ml_collections

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def facts_config() -> ml_collections.ConfigDict:
    """The fact pool and its draw (se_jax/data/facts.py)."""
    return ml_collections.ConfigDict(dict(
        pool="",  # "" = the shipped pool (se_jax/data/demo_facts); or a pool JSONL / an
                  # EntityQuestions folder (e.g. ../shared/data/entity_questions, train split)
        relations=("P36", "P17", "P19", "P26", "P40", "P495", "P131"),  # SliCK in-dist.
        ood_relations=("P50", "P176", "P407"),                         # SliCK OOD
        n_known=60, n_unknown=60,          # in-distribution taught / untaught, all splits
        n_ood_known=20, n_ood_unknown=20,  # OOD split: taught / untaught
        fractions=(0.5, 0.25, 0.25),       # train / val / test share of K and of U
        seed=0,                            # the draw (--config.facts.seed=1: another draw)
        phrasings=3,   # teach records per taught fact: question paraphrases, and for
                       # Long-QA (prompt.style="sentence") different answer sentences
    ))


def teach_config() -> ml_collections.ConfigDict:
    """The teach step: fine-tune the base model on the K facts (train-stage keys)."""
    return ml_collections.ConfigDict(dict(
        mode="lora",
        lora=dict(rank=32, alpha=64.0, dropout=0.0,  # dropout > 0 doubles CPU step time
                  target_modules=ALL_PROJECTIONS),
        learning_rate=3e-3, batch_size=16, epochs=3,
        grad_accum_steps=1,
        warmup_ratio=0.03, end_lr_ratio=0.0,
        weight_decay=0.0, max_grad_norm=1.0,
        adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8,
        loss_on="target",
        distill=dict(enabled=False, weight=1.0, tau=0.5, teacher_epoch=0),
        pad_multiple=16,       # teach sequences are 51-65 tokens: 64 or 80, little padding
        bucket_batches=8,
        loss_chunk_tokens=1024,
        save_every=1000, keep=1, async_checkpoint=True,
        max_steps=-1,
        log_every_seconds=30.0, log_every_steps=50,
        export_adapter=False,
        export_merged=True,    # the experiment's base model
        sft="",                # "" = <workdir>/teach/teach.jsonl
        out_dir="",            # "" = <workdir>/teach
    ))
