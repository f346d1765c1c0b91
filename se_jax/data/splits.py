"""The paper's splits: a fixed-seed draw per dataset, written once per run as JSONL.

In-distribution dataset: a seeded permutation of its (id-sorted) pool; the first
`train_size` questions train, the next `val_size` are the in-distribution validation set
(tau is chosen on it), the next `test_size` the in-distribution test set. Each
out-of-distribution dataset: the first `ood_size` of its own permutation, without any
question already drawn. With the paper's sizes, 2,000 + 500 = 2,500 per dataset.

Several in-distribution datasets (the paper's "Mult", `data.in_distribution=("trivia_qa",
"bioasq", "nq_open")`): each is drawn exactly as it is alone (its own permutation of its own
pool, `train_size` / `val_size` / `test_size` each), and train, val and test are the unions
in the order the config lists them; so Mult's train set is the union of the single-dataset
experiments' train sets, as in the paper ("combining the training splits").

`prepare_splits` writes `<out_dir>/<split>.jsonl` ({"id", "question", "answers",
"relation", "dataset"}), the input format of the sample stage, and config.json; a rerun with
the same config reuses them.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from se_jax.config import schema
from se_jax.config.schema import DataConfig
from se_jax.io import stage_io
from se_jax.data import catalog
from se_jax.data import facts

IN_DISTRIBUTION_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """What to draw: names already parsed and checked."""
    in_distribution: tuple[catalog.DatasetRef, ...]
    out_of_distribution: tuple[catalog.DatasetRef, ...]
    per_dataset: dict[str, int]  # train/val/test per in-distribution dataset; ood per OOD one
    seed: int

    @property
    def sizes(self) -> dict[str, int]:
        """Split sizes: train/val/test over all in-distribution datasets; ood per dataset."""
        k = len(self.in_distribution)
        return {name: n * (k if name != "ood" else 1) for name, n in self.per_dataset.items()}

    @property
    def in_distribution_label(self) -> str:
        labels = [r.label for r in self.in_distribution]
        return labels[0] if len(labels) == 1 else f"Mult ({' + '.join(labels)})"


def ood_split_name(ref: catalog.DatasetRef) -> str:
    """'ood_entity_questions_ood' style names; safe as file names and CSV values."""
    return "ood_" + re.sub(r"[^A-Za-z0-9_]+", "_", ref.name).strip("_")


def locations(data_config: DataConfig, workdir: str | Path) -> catalog.DataLocations:
    tfds_dir = Path(data_config.tfds_dir) if data_config.tfds_dir else Path(workdir) / "tfds"
    source_dir = (Path(data_config.source_dir) if data_config.source_dir
                  else catalog.default_source_dir())
    return catalog.DataLocations(tfds_dir=tfds_dir, source_dir=source_dir,
                                 download=data_config.download)


def plan(data_config: DataConfig, workdir: str | Path) -> SplitPlan:
    """Parse and check every dataset name and split; raise DatasetError before any compute.

    Reads only the source files' names: builds no TFDS data and writes nothing (dry runs).
    """
    where = locations(data_config, workdir)
    ind = tuple(catalog.parse_name(n)
                for n in schema.dataset_names(data_config.in_distribution))
    ood = tuple(catalog.parse_name(n) for n in data_config.out_of_distribution)
    for ref in (*ind, *ood):
        catalog.check(ref, where, build=False)
    names = [ood_split_name(r) for r in ood]
    if len(set(names)) != len(names):
        raise catalog.DatasetError(f"out_of_distribution lists a dataset twice: {names}")
    sizes = dict(train=data_config.train_size, val=data_config.val_size,
                 test=data_config.test_size, ood=data_config.ood_size)
    bad = {k: v for k, v in sizes.items() if v < 0}
    if bad or sizes["train"] == 0:
        raise catalog.DatasetError(f"split sizes must be >= 0 and train_size > 0: {sizes}")
    return SplitPlan(ind, ood, sizes, data_config.seed)


def draw(records: Sequence[dict], n: int, seed: int, label: str,
         exclude: set[str] = frozenset()) -> list[dict]:
    """The first n of a seeded permutation of `records` (sorted by id), skipping `exclude`."""
    pool = [r for r in records if r["id"] not in exclude]
    if n > len(pool):
        raise catalog.DatasetError(
            f"dataset {label} has {len(pool)} usable questions, the config asks for {n}; "
            f"lower the split sizes in config.data")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def draw_splits(p: SplitPlan, where: catalog.DataLocations) -> dict[str, list[dict]]:
    """{"train", "val", "test", "ood_<name>"...: records}; deterministic in (config, data)."""
    s = p.per_dataset
    n_ind = s["train"] + s["val"] + s["test"]
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    used: set[str] = set()
    for ref in p.in_distribution:   # each drawn as it is alone; the splits are the unions
        drawn = draw(catalog.load_records(ref, where), n_ind, p.seed, ref.label)
        out["train"] += drawn[:s["train"]]
        out["val"] += drawn[s["train"]:s["train"] + s["val"]]
        out["test"] += drawn[s["train"] + s["val"]:]
        clash = used & {r["id"] for r in drawn}
        if clash:
            raise catalog.DatasetError(f"in_distribution datasets share question id "
                                       f"{sorted(clash)[0]!r} ({ref.label})")
        used |= {r["id"] for r in drawn}
    for ref in p.out_of_distribution:
        records = catalog.load_records(ref, where)
        out[ood_split_name(ref)] = draw(records, s["ood"], p.seed, ref.label, exclude=used)
    return out


def split_names(p: SplitPlan) -> list[str]:
    return [*IN_DISTRIBUTION_SPLITS, *(ood_split_name(r) for r in p.out_of_distribution)]


def prepare_splits(data_config: DataConfig, workdir: str | Path, out_dir: str | Path
                   ) -> dict[str, Path]:
    """Draw (once) and write every split; {split: path of its JSONL}."""
    p = plan(data_config, workdir)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in split_names(p)}
    stage_io.write_config(out_dir, data_config, ignore=("tfds_dir", "download"))
    if all(path.exists() for path in paths.values()):
        return paths
    for name, records in draw_splits(p, locations(data_config, workdir)).items():
        stage_io.write_jsonl(paths[name], records)
    return paths


def prepare_fact_splits(facts_config: schema.FactsConfig, out_dir: str | Path) -> dict[str, Path]:
    """The knowledge-controlled splits (data.source = "facts", se_jax/data/facts.py): drawn
    once from the fact pool and written like `prepare_splits`; every record carries
    "taught". The draw does not depend on the answer style."""
    out_dir = Path(out_dir)
    cfg = facts.FactsConfig.from_config(facts_config, "short")
    names = [*IN_DISTRIBUTION_SPLITS] + ([facts.OOD_SPLIT] if cfg.n_ood_known
                                         + cfg.n_ood_unknown else [])
    paths = {name: out_dir / f"{name}.jsonl" for name in names}
    stage_io.write_config(out_dir, {"source": "facts",
                                    "facts": stage_io.config_to_dict(facts_config)})
    if not all(path.exists() for path in paths.values()):
        drawn = facts.make_splits(facts.load_pool(facts_config.pool or None), cfg)
        for name, records in drawn.items():
            stage_io.write_jsonl(paths[name], records)
    return paths


def fact_split_sizes(facts_config: schema.FactsConfig) -> dict[str, int]:
    """{"train", "val", "test", "ood"} sizes of the fact draw (for plans; reads nothing)."""
    cfg = facts.FactsConfig.from_config(facts_config, "short")
    known, unknown = (facts.cut(list(range(n)), cfg.fractions)
                      for n in (cfg.n_known, cfg.n_unknown))
    sizes = [len(k) + len(u) for k, u in zip(known, unknown)]
    return dict(zip(IN_DISTRIBUTION_SPLITS, sizes),
                ood=cfg.n_ood_known + cfg.n_ood_unknown)
