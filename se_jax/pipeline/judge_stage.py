"""A judge that does not fit one host (a 70B judge beside an 8B generator) in a stage of its
own: the generator is released (its arrays deleted), the judge is loaded in its compute
dtype onto one mesh over every device of every process (`pod_mesh`: weights split over
`fsdp` x `tensor`), used, and deleted before the generator is loaded again (SharedBase
loads it on its next use).

    with judge_phase(config, release=job.release_generator) as judge:
        ...   # judge.batch(predictions, goldss, questions): every process, the same items

When: `evaluation.judge=llm` with a `judge_model` that is not the generator
(`plan.separate_judge`).
The experiment then evaluates in two steps (se_jax/pipeline/experiment.py, `Job.settle`):
models answer with the judge absent (answers.jsonl; sweep runs spread over processes),
then one judge phase per step of the experiment (the original model; the sweep on
validation; the picked runs on test with the report's judgements), every process
together on the same items, process 0 writing outcomes, metrics and the verdicts
(`Layout.verdicts`, se_jax.abstention.judges.RecordedJudge) that later readers look up.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import jax
from jax.sharding import Mesh

from se_jax.abstention import judges
from se_jax.config.schema import RunConfig
from se_jax.io.telemetry import Telemetry
from se_jax.models.loading import judge_dtypes, load_llama, load_tokenizer
from se_jax.parallel.mesh import make_mesh
from se_jax.pipeline.resident import free


def recorded(config: RunConfig, path: Path, model: judges.Judge | None = None
             ) -> judges.RecordedJudge:
    """The separate judge's verdicts saved at `path`; items without one are judged by
    `model` (inside `judge_phase`) or are an error (outside it)."""
    return judges.RecordedJudge.load(path, judges.llm_judge_name(config.evaluation.judge_model),
                                     inner=model)


def pod_mesh() -> Mesh:
    """Every device of every process: `fsdp` over the processes (hosts), `tensor` over
    each one's devices. A judge only scores prompts (prefill, one step), so gathering the
    fsdp-split weights once per forward is acceptable."""
    return make_mesh({"data": 1, "fsdp": jax.process_count(),
                      "tensor": jax.local_device_count()}, devices=jax.devices())


@contextlib.contextmanager
def judge_phase(config: RunConfig, release: Callable[[], None]) -> Iterator[judges.Judge]:
    """The LLM judge `config.evaluation.judge_model` alone on the pod-wide mesh: `release()`
    first frees the generator (and whatever holds its arrays), the judge's arrays are
    deleted on exit. Collective on several processes: all enter and judge the same items."""
    ev = config.evaluation
    if ev.judge != "llm" or not ev.judge_model:
        raise ValueError("judge_phase needs evaluation.judge=llm and evaluation.judge_model")
    release()
    model = load_llama(ev.judge_model, mesh=pod_mesh(), **judge_dtypes(config.model.dtype),
                       scan_layers=config.model.scan_layers)
    Telemetry.install().count_load()
    try:
        yield judges.make_judge(ev, model, load_tokenizer(ev.judge_model),
                                model_name=ev.judge_model)
    finally:
        free(model)
