"""Semantic entropy probes: the best split, the logistic fit, the metrics, the sep labeller
and their config fields (se_jax/abstention/probes.py, labels.py, schema)."""
import numpy as np
import pytest

from se_jax.abstention import evaluation as E
from se_jax.abstention import labels as L
from se_jax.abstention import probes as P
from se_jax.config.validation import ConfigError
from tests.typed_configs import BASE


def _brute_force_split(values):
    """Every threshold between adjacent sorted distinct values; the first with least SSE."""
    distinct = np.unique(values)
    cands = (distinct[:-1] + distinct[1:]) / 2
    sses = [P.split_sse(values, t) for t in cands]
    return cands[int(np.argmin(sses))], min(sses)


@pytest.mark.parametrize("seed", range(8))
def test_best_split_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    # Entropy-like values: discrete SE of M=5 has few distinct values (ties), plus continuous.
    values = (rng.integers(0, 6, n) * np.log(5) / 5 if seed % 2
              else rng.gamma(1.0, 0.7, n))
    if np.unique(values).size < 2:
        values[0] += 1.0
    got = P.best_split(values)
    want, want_sse = _brute_force_split(values)
    assert got == pytest.approx(want)
    assert P.split_sse(values, got) == pytest.approx(want_sse)


def test_best_split_two_clusters_and_degenerate():
    assert P.best_split([0.0, 0.1, 0.05, 2.0, 2.1]) == pytest.approx((0.1 + 2.0) / 2)
    assert P.best_split([0.7, 0.7]) == 0.7   # no split: every question low
    with pytest.raises(ValueError):
        P.best_split([])


def _planted(n, d, seed, signal):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 50.0, d)   # layers differ in scale
    direction = rng.normal(size=d)
    logit = signal * ((x / x.std(0)) @ direction) / np.sqrt(d)
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return x, y


def test_probe_recovers_a_planted_linear_signal():
    x, y = _planted(600, 32, seed=0, signal=12.0)
    probe = P.fit_probe(x[:400], y[:400], l2=1.0)
    assert E.auroc(probe.scores(x[400:]), y[400:]) > 0.95


@pytest.mark.parametrize("seed", range(3))
def test_probe_on_noise_stays_near_chance(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(800, 16)), rng.random(800) < 0.5
    probe = P.fit_probe(x[:400], y[:400], l2=1.0)
    # 400 held-out questions: AUROC's standard error under the null is ~0.029.
    assert abs(E.auroc(probe.scores(x[400:]), y[400:]) - 0.5) < 0.12


def test_probe_matches_the_penalised_optimum():
    """Newton reaches the optimum: the gradient of the objective vanishes."""
    x, y = _planted(120, 6, seed=1, signal=4.0)
    probe = P.fit_probe(x, y, l2=0.5)
    z = (x - probe.mean) / probe.scale
    p = probe.scores(x)
    grad_w = z.T @ (p - y) + 0.5 * probe.weights
    assert np.abs(grad_w).max() < 1e-6 and abs(np.sum(p - y)) < 1e-5
    again = P.Probe.from_arrays(probe.arrays("sep_"), "sep_")
    np.testing.assert_allclose(again.scores(x), p)


def test_probe_refuses_bad_inputs():
    with pytest.raises(ValueError, match="l2"):
        P.fit_probe(np.zeros((4, 2)), [0, 1, 0, 1], l2=0.0)
    with pytest.raises(ValueError, match="do not match"):
        P.fit_probe(np.zeros((4, 2)), [0, 1, 0])


def test_spearman_and_bootstrap_with_continuous_targets():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    assert E.spearman(x, x ** 3) == pytest.approx(1.0)
    assert E.spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(E.spearman(x, np.ones(5)))
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    iv = E.bootstrap(E.spearman, a, a + rng.normal(size=200) * 0.5, num_samples=200)
    assert 0.7 < iv.low <= iv.value <= iv.high < 1.0


def test_split_indices_and_rate_matched_threshold():
    train, val = P.split_indices(10, 0.2, seed=0)
    assert len(val) == 2 and sorted(np.concatenate([train, val]).tolist()) == list(range(10))
    scores = [0.1, 0.9, 0.5, 0.7, 0.3]
    for rate, abstain in [(0.0, 0), (0.4, 2), (1.0, 5), (0.5, 2)]:
        t = P.rate_matched_threshold(scores, rate)
        assert sum(s > t for s in scores) == abstain


def _record(i, answer="Paris"):
    return dict(id=f"q{i}", question=f"question {i}", answers=["Paris"],
                most_likely=dict(text=answer), samples=[])


def test_sep_labels_follow_the_threshold():
    records = [_record(i) for i in range(4)]
    scores = {"q0": 0.1, "q1": 0.8, "q2": 0.5, "q3": 0.95}
    out = L.sep_labels(records, scores, threshold=0.5)
    assert [e.label for e in out] == ["answer", "abstain", "answer", "abstain"]
    assert out[1].target == "I don't know the answer." and out[0].target == "Paris"
    assert out[1].reason == dict(method="sep", score=0.8, threshold=0.5)
    with pytest.raises(L.LabelError, match="q9"):
        L.sep_labels([_record(9)], scores, threshold=0.5)


@pytest.mark.parametrize("field,value,words", [
    ("probes.l2", 0.0, "probes.l2"), ("probes.val_fraction", 1.0, "probes.val_fraction"),
    ("probes.max_iter", 0, "probes.max_iter"), ("labels.sep.train_size", 2,
                                                "labels.sep.train_size")])
def test_config_errors_name_the_field(field, value, words):
    section, *rest = field.split(".")
    change = {rest[0]: value} if len(rest) == 1 else {rest[0]: {rest[1]: value}}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        BASE.replace(**{section: change})
