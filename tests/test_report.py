"""Report: results.csv contract, the Table-1-style AED table, plots, SliCK breakdown."""
from __future__ import annotations

import numpy as np
import pytest

from se_jax.abstention import evaluation as E
from se_jax.pipeline import report
from se_jax.pipeline.stages import report as report_stage


def _row(method, split, seed, correct, incorrect, abstained, tau=""):
    flags_c = [True] * correct + [False] * (incorrect + abstained)
    flags_a = [False] * (correct + incorrect) + [True] * abstained
    m = E.abstention_metrics(flags_c, flags_a)
    return dict(method=method, tau=tau, split=split, seed=seed, judge="f1>=0.5", **m.as_dict())


@pytest.fixture
def rows():
    out = []
    for seed, delta in ((0, 0), (1, 2)):
        for split in ("test", "ood_x"):
            out.append(_row("original", split, seed, 30, 70, 0))
            out.append(_row("se_lexical", split, seed, 28 - delta, 30 + delta, 42, tau=1.0))
            out.append(_row("rtuning", split, seed, 25, 45, 30))
    return out


def test_results_csv_has_the_contract_columns(rows, tmp_path):
    path = report.write_results_csv(rows, tmp_path / "results.csv")
    back = report.read_results_csv(path)
    assert list(back[0]) == ["method", "tau", "split", "seed", "n", "correct", "incorrect",
                             "abstained", "accuracy", "engagement", "aed", "judge"]
    assert len(back) == len(rows)
    first = back[0]
    assert (first["method"], first["n"], first["correct"], first["aed"]) == (
        "original", "100", "30", f"{E.aed(30, 70, 100):.3f}")


def test_aed_table_means_stds_and_best(rows):
    table = report.aed_table(rows, ["test", "ood_x"])
    lines = table.splitlines()
    assert lines[0] == ("| method | tau | AED test | AED ood_x | accuracy test | "
                        "engagement test |")
    se = next(line for line in lines if line.startswith("| SE (lexical)"))
    aeds = [E.aed(28, 30, 100), E.aed(26, 32, 100)]
    mean, std = np.mean(aeds), np.std(aeds, ddof=1)
    assert f"{mean:.3f} ± {std:.3f}" in se and "| 1.0 |" in se
    best = min(mean, E.aed(25, 45, 100), E.aed(30, 70, 100))
    assert f"**{best:.3f}" in table                     # the best AED per column in bold
    assert lines[2].startswith("| Original model")      # the reference first


def test_write_report_makes_table_csv_and_plots(rows, tmp_path):
    sweep = [_row("se_lexical", "val", 0, 30 - k, 40 - 10 * k, 30 + 11 * k, tau=t)
             for k, t in enumerate((0.5, 1.0, 1.5))] + [_row("original", "val", 0, 31, 69, 0)]
    rng = np.random.default_rng(0)
    wrong = rng.random(80) < 0.5
    scores = wrong + rng.normal(0.6, 0.4, 80).clip(0)
    unc = {"discrete SE (lexical)": E.uncertainty_metrics(scores, wrong, num_samples=50)}
    paths = report.write_report(
        tmp_path, results=rows, sweep=sweep, splits=["test", "ood_x"], judge="f1>=0.5",
        uncertainty=unc, histograms={"discrete SE (lexical)": (scores, ~wrong)},
        taus=[0.5, 1.0, 1.5], breakdown=[dict(method="original", split="test",
                                              category="Unknown", n=3, accuracy=0.0,
                                              abstain_rate=0.0)],
        header="Model: tiny.")
    text = paths["report"].read_text()
    assert "Correctness judge: **f1>=0.5**" in text and "Model: tiny." in text
    assert "| SE (lexical) |" in text and "AUROC" in text and "| Unknown | 3 |" in text
    for key in ("adaptation", "aed", "entropy"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({paths[key].name})" in text


def test_slick_categories_and_breakdown():
    def gen(i, ml, samples):
        return {"id": i, "question": "q", "answers": ["Paris"],
                "most_likely": {"text": ml}, "samples": [{"text": s} for s in samples]}
    from se_jax.abstention import judges
    cats = report_stage.slick_categories(
        [gen("a", "Paris", ["Paris"] * 3), gen("b", "Rome", ["Rome", "Paris"]),
         gen("c", "Rome", ["Rome", "Lyon"])], judges.AliasJudge())
    # One zero-shot exemplar set: greedy right -> HighlyKnown; else samples decide.
    assert cats == {"a": "HighlyKnown", "b": "WeaklyKnown", "c": "Unknown"}
    outcomes = {("se_lexical", "test"): [
        {"id": "a", "correct": True, "abstained": False},
        {"id": "b", "correct": False, "abstained": True},
        {"id": "c", "correct": False, "abstained": True}]}
    rows = report_stage.slick_breakdown(outcomes, cats)
    got = {r["category"]: (r["n"], r["accuracy"], r["abstain_rate"]) for r in rows}
    assert got["HighlyKnown"] == (1, 1.0, 0.0)
    assert got["Unknown"][0] == 1 and got["Unknown"][2] == 1.0
    assert np.isnan(got["WeaklyKnown"][1])               # nothing answered
