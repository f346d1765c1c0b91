"""The stand-alone stages as their launchers run them (launch/sample.py, ...): the config
typed at the edge (a test's ConfigDict is converted here), the paths from its path fields,
else the experiment layout's defaults."""
from __future__ import annotations

from se_jax.config.schema import RunConfig
from se_jax.pipeline import layout
from se_jax.pipeline.stages import entropy as entropy_stage
from se_jax.pipeline.stages import label as label_stage
from se_jax.pipeline.stages import sample as sample_stage
from se_jax.pipeline.stages import train as train_stage


def sample(config, resident=None):
    config = RunConfig.from_configdict(config)
    return sample_stage.run_sample(config, *layout.sample_paths(config), resident=resident)


def entropy(config):
    config = RunConfig.from_configdict(config)
    return entropy_stage.run_entropy(config, *layout.entropy_paths(config))


def label(config):
    config = RunConfig.from_configdict(config)
    return label_stage.run_label(config, *layout.label_paths(config))


def train(config, resident=None):
    config = RunConfig.from_configdict(config)
    return train_stage.run_train(config, *layout.train_paths(config), resident=resident)
