"""The yardstick (benchmarks/yardstick.py): FLOPs per token, the decode roofline, the load rule
that ends every benchmark's output, and the products-alone ceiling's program."""
import pytest

from benchmarks import yardstick


def test_flops_per_token_forward_and_lora_training():
    assert yardstick.flops_per_token(135e6, "forward") == pytest.approx(270e6)
    # training = forward + backward through the frozen weights: twice the forward
    assert yardstick.flops_per_token(135e6, "lora_train") == pytest.approx(
        2 * yardstick.flops_per_token(135e6, "forward"))
    with pytest.raises(ValueError, match="kind='backward'"):
        yardstick.flops_per_token(1.0, "backward")


def test_issue_ceiling_for_lora_training():
    # issue 14: 4 x 135M FLOPs per token at 241 GFLOP/s is a ceiling of ~450 tokens/s
    ceiling = 241e9 / yardstick.flops_per_token(135e6, "lora_train")
    assert 440 < ceiling < 450


def test_decode_roofline():
    kv = yardstick.kv_bytes_per_row(layers=30, kv_heads=3, head_dim=64, context=100,
                                    itemsize=4)
    assert kv == 2 * 30 * 3 * 64 * 100 * 4
    weights = 540e6
    one = yardstick.decode_roofline(10.0, weights, kv, rows=1)
    assert one == pytest.approx(10e9 / (weights + kv))
    # more rows share the weight read: the ceiling grows, but less than linearly (KV per row)
    eight = yardstick.decode_roofline(10.0, weights, kv, rows=8)
    assert one * 1 < eight < one * 8
    assert yardstick.decode_roofline(20.0, weights, kv, rows=8) == pytest.approx(2 * eight)


def test_share_of_peak():
    assert yardstick.share(50.0, 200.0) == 0.25
    assert yardstick.share(50.0, 0.0) == 0.0
    assert yardstick.share_of_peak(120e9, 2.0, 100.0) == "60.0 GFLOP/s = 60% of peak"


@pytest.mark.parametrize("before, others, cores, loud", [
    (0.2, 0.1, 2, False),     # quiet
    (1.4, 0.02, 2, False),    # a lingering load average: nothing else ran during the run
    (0.2, 1.5, 2, True),      # others took 1.5 cores during it
    (0.9, 0.9, 2, False),     # 0.45 per core: under the limit
    (1.5, 2.5, 4, True),      # others took 2.5 of 4 cores
    (0.0, 1.9, 4, False),     # 0.475 per core
])
def test_load_verdict(before, others, cores, loud):
    line = yardstick.load_verdict(before, 3.0, others, cores)
    assert ("FIGURES UNRELIABLE" in line) == loud
    assert line.startswith("!!!") == loud and line.startswith("load ok") != loud
    assert f"{cores} cores" in line


def test_load_after_is_not_judged():
    # the after-run load average includes the benchmark's own threads
    assert "UNRELIABLE" not in yardstick.load_verdict(0.1, 10.0, 0.1, 2)


def test_load_watch_counts_only_others():
    watch = yardstick.LoadWatch.start()
    total = sum(i * i for i in range(200_000))  # our own CPU time is not "others"
    assert total > 0
    watch.stop()
    assert watch.others_cores >= 0.0
    assert "cores" in watch.verdict()


def test_llama_matmul_params_smollm2_135m():
    from types import SimpleNamespace
    smol = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                           vocab_size=49152)
    n = yardstick.llama_matmul_params(smol)
    assert 134e6 < n < 135e6   # SmolLM2-135M: 134.5M with the tied embedding counted once
    fewer = yardstick.llama_matmul_params(SimpleNamespace(**{**vars(smol),
                                                             "num_hidden_layers": 8}))
    assert n - fewer == 22 * (n - 576 * 49152) // 30


TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, intermediate_size=256, vocab_size=512)


def test_llama_matmul_shapes_are_the_params():
    from types import SimpleNamespace
    layer, head = yardstick.llama_matmul_shapes(SimpleNamespace(**TINY))
    assert layer == [(128, 128), (128, 64), (128, 64), (128, 128), (128, 256), (128, 256),
                     (256, 128)]
    assert head == (128, 512)
    assert yardstick.llama_matmul_params(SimpleNamespace(**TINY)) == (
        2 * sum(i * o for i, o in layer) + 128 * 512)


def _compiled_flops(fn, args) -> float:
    cost = fn.lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.mark.parametrize("kind", ["forward", "lora_train"])
def test_matmul_chain_does_the_flops_it_counts(kind):
    """The ceiling's program does the useful FLOPs the benchmarks count (XLA's own count),
    plus only the little elementwise work that joins the products."""
    import jax
    import numpy as np
    from types import SimpleNamespace
    config, rows = SimpleNamespace(**TINY), 16
    chain = yardstick.matmul_chain(config, rows, kind)
    useful = yardstick.flops_per_token(yardstick.llama_matmul_params(config), kind) * rows
    assert chain.flops == useful
    assert useful <= _compiled_flops(chain.fn, chain.args) <= 1.1 * useful
    out = jax.device_get(chain.fn(*chain.args))
    assert out.shape == ((rows, 512) if kind == "forward" else (rows, 128))
    assert np.isfinite(out).all() and np.abs(out).max() > 0
    assert chain.gflops(repeats=1) > 0


def test_matmul_chain_runs_in_bfloat16():
    import jax.numpy as jnp
    from types import SimpleNamespace
    chain = yardstick.matmul_chain(SimpleNamespace(**TINY), 8, "lora_train", "bfloat16")
    x, layers, head = chain.args
    assert x.dtype == head.dtype == jnp.bfloat16
    assert chain.fn(x, layers, head).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="kind"):
        yardstick.matmul_chain(SimpleNamespace(**TINY), 8, "backward")


def test_ceiling_line():
    line = yardstick.ceiling_line("decode", 80, 100.0, 125.0, {"ours": 80.0, "torch": 30.0})
    assert "80 rows" in line and "100.0 GFLOP/s = 80% of peak" in line
    assert line.endswith("ours 80%, torch 30%")


def test_timings_warm_up_then_time_each_call():
    calls = []
    times = yardstick.timings(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0.0 for t in times)
    assert yardstick.median_seconds(lambda: calls.append(1), 4) >= 0.0
    assert len(calls) == 10   # one untimed call, then four timed
