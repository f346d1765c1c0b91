"""Typed config sections for tests: configs/base.py's defaults with a test's fields replaced
(nested sections take dicts: `training(lora=dict(rank=2))`)."""
from __future__ import annotations

from configs import base
from se_jax.config.schema import EvaluationConfig, RunConfig, TrainingConfig

BASE = RunConfig.from_configdict(base.get_config())


def training(**fields) -> TrainingConfig:
    return BASE.replace(training=fields).training


def evaluation(**fields) -> EvaluationConfig:
    return BASE.replace(evaluation=fields).evaluation
