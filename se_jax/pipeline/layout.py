"""Where every artifact of an experiment lives: the only code that names its directories.

    <workdir>/data/<split>.jsonl                   the drawn splits
    <workdir>/teach/                               teach step (knowledge-controlled data)
    <root>/sample/<split>/generations.jsonl        sample stage (+ hidden_states.npz: probes)
    <root>/entropy/<backend>/<split>/uncertainty.jsonl
    <root>/label/<method>[/tau_<t>]/sft.jsonl      label stage (shared by seeds, arms)
    <root>/train/<method>[+arm][/tau_<t>]/seed_<s>/  adapter/, checkpoints/, summary.json
    <root>/evaluate/<judge>/<model tag>/<split>/   outcomes.jsonl, metrics.json (+ the
                                                   original's hidden_states.npz: probes;
                                                   answers.jsonl: a separate LLM judge)
    <root>/evaluate/<judge>/verdicts.jsonl         a separate LLM judge's verdicts
    <root>/sep/questions/{se_subset,probe_only}.jsonl   the probe methods' train split parts
    <root>/probe/<backend>/                        probe stage: probes.npz, metrics, scores
    <root>/report/                                 report.md, results.csv, plots
    <workdir>/report/                              with several answer settings: Table 1

<root> is the workdir, or <workdir>/<setting> for each answer setting of a command that runs
several (config.experiment.settings, e.g. Short-QA and Long-QA).

The stand-alone stages (launch/sample.py, entropy.py, label.py, train.py, evaluate.py)
default to the same paths (split "train", backend = config.entropy.backend), so a stage
run by hand reads what the experiment, or the previous stage, wrote.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from se_jax.config.schema import RunConfig
from se_jax.io import stage_io
from se_jax.parallel.distributed import barrier, is_main_process
from se_jax.pipeline.plan import Run
from se_jax.pipeline.plan import uses_tau

DONE = "done.json"


def judge_key(eval_config: RunConfig) -> str:
    """A directory name for the configured judge: answers judged by another judge are
    evaluated again into their own directory, never mixed."""
    if eval_config.judge == "f1":
        return f"f1_{float(eval_config.f1_threshold):g}"
    if eval_config.judge == "llm":
        model = eval_config.judge_model or "generator"
        return "llm_" + "".join(c if c.isalnum() else "_" for c in model)[-60:]
    return str(eval_config.judge)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Directories below `root`; `judge` = judge_key(config.evaluation). `shared` holds
    what every answer setting of one command shares (the drawn data and the teach step):
    config.workdir, and `root` is <workdir>/<setting> when the command runs several
    settings (config.experiment.settings), else the workdir itself."""
    root: Path
    report_dir: Path
    judge: str
    shared: Path

    @classmethod
    def from_config(cls, config: RunConfig, setting: str = "") -> "Layout":
        shared = Path(config.workdir)
        root = shared / setting if setting else shared
        out = (Path(config.experiment.out_dir) if config.experiment.out_dir and not setting
               else root / "report")
        return cls(root, out, judge_key(config.evaluation), shared)

    @property
    def data(self) -> Path:
        return self.shared / "data"

    @property
    def teach(self) -> Path:
        return self.shared / "teach"

    def sample(self, split: str = "train") -> Path:
        return self.root / "sample" / split

    def entropy(self, backend: str, split: str = "train") -> Path:
        return self.root / "entropy" / backend / split

    def probe(self, backend: str) -> Path:
        return self.root / "probe" / backend

    @property
    def sep_questions(self) -> Path:
        return self.root / "sep" / "questions"

    def label(self, run: Run) -> Path:
        return self.root / "label" / run.label_tag

    def train(self, run: Run) -> Path:
        return self.root / "train" / run.tag

    def evaluate(self, tag: str, split: str) -> Path:
        return self.root / "evaluate" / self.judge / tag / split

    @property
    def verdicts(self) -> Path:
        return self.root / "evaluate" / self.judge / "verdicts.jsonl"


def standalone_run(config: RunConfig) -> Run:
    """The run a stand-alone label/train stage works on, named as the experiment names it:
    labels.method "se" with backend b is method "se_<b>"; tau where the method has one."""
    lc = config.labels
    method = (f"se_{lc.backend or config.entropy.backend}" if lc.method == "se"
              else lc.method)
    return Run(method, lc.tau if uses_tau(method) else None, config.seed)


def standalone_paths(config: RunConfig) -> dict[str, Path]:
    """Default inputs and outputs of the stand-alone stages: the experiment's paths of the
    train split (see module doc); each is overridden by its config field when set."""
    layout = Layout.from_config(config)
    run = standalone_run(config)
    backend = config.labels.backend or config.entropy.backend
    return {"sample": layout.sample(),
            "generations": layout.sample() / "generations.jsonl",
            "entropy": layout.entropy(config.entropy.backend),
            "uncertainty": layout.entropy(str(backend)) / "uncertainty.jsonl",
            "label": layout.label(run), "sft": layout.label(run) / "sft.jsonl",
            "train": layout.train(run)}


def sample_paths(config: RunConfig) -> tuple[Path, Path]:
    """(questions JSONL, output directory) of a stand-alone sample stage."""
    sc = config.sampling
    if not sc.input:
        raise ValueError("sample stage: set config.sampling.input (launch/sample.py "
                         "--questions) to a questions JSONL file")
    return Path(sc.input), Path(sc.out_dir or standalone_paths(config)["sample"])


def entropy_paths(config: RunConfig) -> tuple[Path, Path]:
    """(generations.jsonl, output directory) of a stand-alone entropy stage;
    `entropy.generations` may name the sample stage's directory."""
    ec, default = config.entropy, standalone_paths(config)
    gen = Path(ec.generations or default["sample"])
    if gen.is_dir():
        gen = gen / "generations.jsonl"
    return gen, Path(ec.out_dir or default["entropy"])


def label_paths(config: RunConfig) -> tuple[Path, Path, Path]:
    """(generations.jsonl, uncertainty.jsonl, output directory) of a stand-alone label stage."""
    lc, default = config.labels, standalone_paths(config)
    return (Path(lc.generations or default["generations"]),
            Path(lc.uncertainty or default["uncertainty"]), Path(lc.out_dir or default["label"]))


def train_paths(config: RunConfig) -> tuple[Path, Path]:
    """(sft.jsonl, output directory) of a stand-alone train stage."""
    tc, default = config.training, standalone_paths(config)
    return Path(tc.sft or default["sft"]), Path(tc.out_dir or default["train"])


def is_done(path: Path) -> bool:
    return (path / DONE).exists()


def mark_done(path: Path, summary: Mapping[str, Any] | None = None) -> None:
    """Mark a unit of work finished: `done.json` (its summary) written last, by the main
    process once every process has finished the unit."""
    barrier(f"done-{path}")
    if is_main_process():
        stage_io.atomic_write_text(path / DONE, json.dumps(dict(summary or {}), sort_keys=True,
                                                           default=str) + "\n")
    barrier(f"marked-{path}")
