"""The throughput table: measured tokens/s per device kind, for turning an experiment's
token counts into device-hours before it runs.

    table = throughput.load()                        # se_jax/io/throughput.json
    rate = throughput.tokens_per_s(table, "NVIDIA H100 80GB HBM3", "decode",
                                   matmul_params=8.0e9)
    hours = throughput.device_hours(tokens=2e8, tokens_per_second=rate)

Written by `python -m benchmarks.accelerator_report --update_table` for the device kind it
runs on (one entry per kind, replaced whole); read here. Each phase ("prefill", "decode",
"train", "sample") holds tokens_per_s measured on the stated model (its matmul parameters),
dtype, batch and sequence length. `tokens_per_s(..., matmul_params=N)` rescales to a model
of N matmul parameters by N_measured / N (compute- and weight-bandwidth-bound phases both
scale ~1/N at a fixed batch; attention and padding are left out, so a planner gets an
estimate, not a promise).

The consumer to come is the experiment's `--dry_run` cost plan (se_jax/pipeline/cost.py,
kept unchanged for now while it is refactored).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("throughput.json")
VERSION = 1
PHASES = ("prefill", "decode", "train", "sample")


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The table at `path` (default TABLE); an empty one when the file is absent."""
    path = Path(path or TABLE)
    if not path.exists():
        return {"version": VERSION, "devices": {}}
    table = json.loads(path.read_text())
    if table.get("version") != VERSION:
        raise ValueError(f"{path}: throughput table version {table.get('version')!r}, "
                         f"this se_jax reads version {VERSION}")
    return table


def entry(table: dict[str, Any], device_kind: str) -> dict[str, Any]:
    """The entry of `device_kind` (KeyError naming the kinds there are)."""
    devices = table.get("devices", {})
    if device_kind not in devices:
        raise KeyError(f"no throughput measured for {device_kind!r}; measured: "
                       f"{sorted(devices)} (run benchmarks/accelerator_report.py "
                       f"--update_table on that device)")
    return devices[device_kind]


def tokens_per_s(table: dict[str, Any], device_kind: str, phase: str, *,
                 matmul_params: float | None = None) -> float:
    """Measured tokens/s of `phase` on `device_kind`, rescaled to a model of
    `matmul_params` matmul parameters when given (see the module doc)."""
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r} is not one of {PHASES}")
    e = entry(table, device_kind)
    rate = float(e[phase]["tokens_per_s"])
    if matmul_params:
        rate *= float(e["model"]["matmul_params"]) / float(matmul_params)
    return rate


def device_hours(tokens: float, tokens_per_second: float) -> float:
    """Hours one device takes for `tokens` at `tokens_per_second`."""
    return tokens / tokens_per_second / 3600.0 if tokens_per_second > 0 else float("inf")


def update(device_kind: str, new_entry: dict[str, Any],
           path: str | Path | None = None) -> dict[str, Any]:
    """Replace `device_kind`'s entry in the table at `path` (created when absent) and write
    it back, devices sorted; returns the table."""
    path = Path(path or TABLE)
    table = load(path)
    missing = [p for p in PHASES if p not in new_entry] + (
        [] if "model" in new_entry else ["model"])
    if missing:
        raise ValueError(f"throughput entry for {device_kind!r} lacks {missing}")
    table["devices"][device_kind] = new_entry
    table["devices"] = dict(sorted(table["devices"].items()))
    path.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    return table
