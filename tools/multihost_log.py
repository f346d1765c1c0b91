"""Who computed what in a multi-process run, read from its log (`launch/multihost.py`
prefixes each child's lines with `[p<i>]`): sample, entropy and evaluate shards, the
sweep's fine-tuning runs, Orbax checkpoint saves.

    python launch/multihost.py --num_processes=2 -- python launch/experiment.py ... > LOG
    python -m tools.multihost_log LOG      # per process: shards and runs; then any problem

A problem is a shard computed by several processes (or by none), a run trained by several,
a checkpoint directory saved by several, or a run's evaluation answered by another process
than its owner.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import sys
from pathlib import Path

_SHARDS = re.compile(r"\[p(\d+)\].*(sample|entropy): process \d+ computed shards "
                     r"\[([\d, ]*)\] of (\d+) in (\S+)")
_EVALUATE = re.compile(r"\[p(\d+)\].*evaluate (\S+): process \d+ answered (\d+) of (\d+) "
                       r"shards in (\S+)")
_RUNS = re.compile(r"\[p(\d+)\].*experiment: process \d+ of \d+ trains and evaluates runs "
                   r"\[(.*)\]")
_SAVES = re.compile(r"\[p(\d+)\].*checkpoint: saving step \d+ to (\S+)")


@dataclasses.dataclass
class Ownership:
    """shards: (stage, directory) -> [(process, shard ids)] with totals[(stage, directory)]
    shards; evaluated: (model tag, directory) -> {process: shards answered}; runs: run tag
    -> processes that trained it; saves: checkpoint directory -> processes that saved."""
    shards: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    totals: dict = dataclasses.field(default_factory=dict)
    evaluated: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))
    runs: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(set))
    saves: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(set))

    def problems(self) -> list[str]:
        out = []
        for key, parts in self.shards.items():
            ids = sorted(i for _, s in parts for i in s)
            if ids != list(range(self.totals[key])):
                out.append(f"{key}: shards computed {ids} of {self.totals[key]}")
        out += [f"run {t}: trained by processes {sorted(p)}" for t, p in self.runs.items()
                if len(p) > 1]
        out += [f"{d}: saved by processes {sorted(p)}" for d, p in self.saves.items()
                if len(p) > 1]
        for (tag, where), counts in self.evaluated.items():
            answering = {p for p, n in counts.items() if n}
            if tag in self.runs and not answering <= self.runs[tag]:
                out.append(f"{where}: answered by {sorted(answering)}, run owned by "
                           f"{sorted(self.runs[tag])}")
        return out

    def per_process(self) -> dict[int, dict[str, int]]:
        """process -> {"sample shards", "entropy shards", "evaluate shards", "runs"}."""
        out: dict = collections.defaultdict(collections.Counter)
        for (stage, _), parts in self.shards.items():
            for p, s in parts:
                out[p][f"{stage} shards"] += len(s)
        for counts in self.evaluated.values():
            for p, n in counts.items():
                out[p]["evaluate shards"] += n
        for processes in self.runs.values():
            for p in processes:
                out[p]["runs"] += 1
        return {p: dict(c) for p, c in sorted(out.items())}


def parse(log: str) -> Ownership:
    o = Ownership()
    for p, stage, shards, total, where in _SHARDS.findall(log):
        o.shards[(stage, where)].append((int(p), [int(s) for s in shards.split(",")
                                                  if s.strip()]))
        o.totals[(stage, where)] = int(total)
    for p, tag, answered, _, where in _EVALUATE.findall(log):
        o.evaluated[(tag, where)][int(p)] = int(answered)
    for p, tags in _RUNS.findall(log):
        for tag in re.findall(r"'([^']+)'", tags):
            o.runs[tag].add(int(p))
    for p, where in _SAVES.findall(log):
        o.saves[where].add(int(p))
    return o


def main(argv: list[str]) -> int:
    o = parse(Path(argv[1]).read_text(errors="replace"))
    for p, counts in o.per_process().items():
        print(f"process {p}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    problems = o.problems()
    print("\n".join(problems) or "each shard, run and checkpoint directory: one process")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
