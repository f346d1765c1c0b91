import json

import pytest

from se_jax.io import stage_io


def test_sharded_jsonl_resume_and_finalize(tmp_path):
    out = stage_io.ShardedJsonl(tmp_path, "gen", num_shards=3)
    assert out.pending() == [0, 1, 2]
    out.write_shard(0, [{"id": "a", "x": 1.5}])
    out.write_shard(2, [{"id": "c"}])
    # a stray temp file from a killed writer is not a finished shard
    (out.parts_dir / ".000001.jsonl.abc.tmp").write_text('{"id": "b"')
    assert out.pending() == [1]
    out.write_shard(1, [{"id": "b"}])
    path = out.finalize()
    assert [r["id"] for r in stage_io.read_jsonl(path)] == ["a", "b", "c"]
    assert out.pending() == []


def test_write_config_refuses_a_different_config(tmp_path):
    stage_io.write_config(tmp_path, {"a": 1, "b": {"c": 2}, "log": 1})
    stage_io.write_config(tmp_path, {"a": 1, "b": {"c": 2}, "log": 1})  # same: fine
    stage_io.write_config(tmp_path, {"a": 1, "b": {"c": 2}, "log": 5}, ignore=["log"])
    with pytest.raises(ValueError, match="b.c"):
        stage_io.write_config(tmp_path, {"a": 1, "b": {"c": 3}, "log": 5})
    assert json.loads((tmp_path / "config.json").read_text())["b"]["c"] == 2


def test_read_jsonl_names_the_bad_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"id": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        stage_io.read_jsonl(p)


def test_write_config_compares_only_the_sections_it_depends_on(tmp_path):
    stage_io.write_config(tmp_path, {"sampling": {"t": 1.0}, "training": {"lr": 1}},
                          depends_on=["sampling"])
    stage_io.write_config(tmp_path, {"sampling": {"t": 1.0}, "training": {"lr": 2}},
                          depends_on=["sampling"])
    with pytest.raises(ValueError, match="sampling.t"):
        stage_io.write_config(tmp_path, {"sampling": {"t": 0.5}, "training": {"lr": 2}},
                              depends_on=["sampling"])


def test_stages_resume_across_neutral_keys_and_refuse_upstream_changes(tmp_path):
    """The label stage's outputs depend on the sample and entropy settings (and its own),
    not on batching knobs, output paths or training options."""
    from configs.base import get_config
    from se_jax.pipeline.stages import DEPENDS_ON, NEUTRAL_KEYS

    def write(c):
        stage_io.write_config(tmp_path, c, ignore=NEUTRAL_KEYS, depends_on=DEPENDS_ON["label"])

    c = get_config()
    write(c)
    c.entropy.buckets = (64, 128)
    c.entropy.batch_size = 7
    c.training.learning_rate = 1.0
    c.training.out_dir = "/elsewhere"
    write(c)
    for key, value in [("entropy.strict", True), ("labels.tau", 0.123),
                       ("sampling.temperature", 0.5)]:
        changed = c.copy_and_resolve_references()
        section, field = key.split(".")
        changed[section][field] = value
        with pytest.raises(ValueError, match=key):
            write(changed)
    assert all(DEPENDS_ON["sample"] == DEPENDS_ON[s][:len(DEPENDS_ON["sample"])]
               for s in DEPENDS_ON)
