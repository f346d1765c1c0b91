"""Where a job's time goes: wall seconds per phase, XLA compilations per program, model loads.

    clock = Telemetry.install()          # once per process; counts from here on
    with clock.phase("sample train"):
        ...
    clock.compilations()                 # {"jit(step)": (count, seconds), ...}
    clock.count_load()                   # a model was loaded from storage

Compilations are read from JAX's own monitoring events (the backend-compile duration, fired
once per XLA compilation and never on a cache hit), so they count what really compiled,
including programs compiled inside libraries. A persistent-cache hit is not a compilation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class PhaseTime:
    """The seconds a phase was charged (set when it ends; nested phases excluded)."""
    seconds: float | None = None


@dataclasses.dataclass
class Telemetry:
    """Counters of one process; `install` registers the one instance with JAX."""
    phases: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    compiles: dict[str, list] = dataclasses.field(default_factory=dict)  # name -> [n, s]
    cache_hits: int = 0
    loads: int = 0
    # Seconds of the phases nested in each open phase (innermost last).
    _nested: list[float] = dataclasses.field(default_factory=list, repr=False)

    _instance = None  # class attribute: the installed one

    @classmethod
    def install(cls) -> "Telemetry":
        """The process's telemetry, created and registered with JAX on first use."""
        if cls._instance is None:
            from jax import monitoring
            cls._instance = cls()
            monitoring.register_event_duration_secs_listener(cls._instance._on_duration)
            monitoring.register_event_listener(cls._instance._on_event)
        return cls._instance

    def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
        if event == _BACKEND_COMPILE:
            entry = self.compiles.setdefault(str(kwargs.get("fun_name", "?")), [0, 0.0])
            entry[0] += 1
            entry[1] += float(seconds)

    def _on_event(self, event: str, **kwargs) -> None:
        if event == _CACHE_HIT:
            self.cache_hits += 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator["PhaseTime"]:
        """Time a named phase (phases may repeat; the report lists each occurrence); yields
        a `PhaseTime` whose `seconds` are set on exit.

        A phase entered inside another (the base model loaded, or the teach step run, on
        the first sample) is charged to itself only: the outer one records its own seconds
        less its nested phases', so every second counts once and the phases add up to the
        wall time they cover."""
        timed = PhaseTime()
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield timed
        finally:
            seconds = time.perf_counter() - start
            nested = self._nested.pop()
            if self._nested:
                self._nested[-1] += seconds
            timed.seconds = seconds - nested
            self.phases.append((name, timed.seconds))

    def count_load(self) -> None:
        self.loads += 1

    def compile_count(self, name: str) -> int:
        """Compilations of programs named `name` (e.g. "jit(step)") so far."""
        return self.compiles.get(name, [0, 0.0])[0]

    def snapshot(self, since: dict | None = None) -> dict:
        """A JSON-able copy (for report.md); with `since` (an earlier snapshot), only what
        happened after it: one invocation's counts in a process that ran others before."""
        since = since or {"phases": [], "compilations": {}, "persistent_cache_hits": 0,
                          "model_loads": 0}
        before = since["compilations"]
        compiles = {k: [v[0] - before.get(k, [0, 0.0])[0],
                        round(v[1] - before.get(k, [0, 0.0])[1], 3)]
                    for k, v in sorted(self.compiles.items())}
        return {"phases": [[n, round(s, 3)] for n, s in self.phases[len(since["phases"]):]],
                "compilations": {k: v for k, v in compiles.items() if v[0] > 0},
                "persistent_cache_hits": self.cache_hits - since["persistent_cache_hits"],
                "model_loads": self.loads - since["model_loads"]}
