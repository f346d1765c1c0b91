"""Telemetry's phase clock: nested phases are charged once, so the phases add up to the
wall time they cover (the report's "Where the time went" table)."""
from __future__ import annotations

from se_jax.io import telemetry
from se_jax.pipeline.report import phase_table


class FakeClock:
    """perf_counter that advances only when told."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_are_charged_once(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(telemetry.time, "perf_counter", clock)
    t = telemetry.Telemetry()
    with t.phase("sample train"):
        clock.now += 2.0
        with t.phase("load base model"):
            clock.now += 5.0
        with t.phase("teach"):
            clock.now += 30.0
            with t.phase("inner"):
                clock.now += 1.0
        clock.now += 3.0
    with t.phase("sample val"):
        clock.now += 4.0
    got = dict(t.phases)
    assert got == {"load base model": 5.0, "inner": 1.0, "teach": 30.0,
                   "sample train": 5.0, "sample val": 4.0}
    assert sum(got.values()) == clock.now   # every second once
    table = phase_table({**t.snapshot(), "phases": t.phases})
    assert "| **all phases** | **45.0** |" in table


def test_a_failing_phase_still_records_and_unwinds(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(telemetry.time, "perf_counter", clock)
    t = telemetry.Telemetry()
    try:
        with t.phase("outer"):
            clock.now += 1.0
            with t.phase("broken"):
                clock.now += 2.0
                raise RuntimeError("boom")
    except RuntimeError:
        pass
    with t.phase("after"):
        clock.now += 3.0
    assert dict(t.phases) == {"broken": 2.0, "outer": 1.0, "after": 3.0}
