"""Smoke run: load the configured model, answer three questions greedily, print timings.

    python launch/smoke.py                                  # embedded SmolLM2, configs/base.py
    python launch/smoke.py --config.model.path=/ckpt/Llama-3.1-8B-Instruct \\
        --config.model.param_dtype=bfloat16 --config.model.dtype=bfloat16 --config.mesh.tensor=8
    python launch/multihost.py --num_processes=2 -- python launch/smoke.py   # 2 CPU processes

Prompts use the tokenizer's chat template. Timings: load (checkpoint -> sharded weights),
compile, prefill (one batched forward over the prompts), decode tokens/s (batch x steps / s).
"""
from __future__ import annotations

from se_jax.parallel import stop_signal
stop_signal.install()   # first: SIGTERM from here on stops at a boundary, saved

import json
import time

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "config file")
_QUESTIONS = flags.DEFINE_multi_string(
    "question", ["What is the capital of France?", "Who wrote Romeo and Juliet?",
                 "What is the largest planet in the solar system?"], "questions to answer")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 32, "tokens generated per answer")
_OUTPUT = flags.DEFINE_string("output_json", "", "also write answers and timings here (process 0)")


def main(argv: list[str]) -> None:
    del argv
    from se_jax.parallel import distributed
    distributed.initialize()
    from se_jax.parallel.mesh import ShardingRules, make_mesh
    from se_jax.models.greedy import greedy_generate
    from se_jax.models.loading import load_llama, load_tokenizer

    from se_jax.config.schema import RunConfig
    config = RunConfig.from_configdict(_CONFIG.value)
    mesh = make_mesh(config.mesh)
    start = time.perf_counter()
    model = load_llama(config.model.path, mesh=mesh, rules=ShardingRules(),
                       dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    load_s = time.perf_counter() - start
    tokenizer = load_tokenizer(config.model.path)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                             add_generation_prompt=True,
                                             return_dict=True)["input_ids"] for q in _QUESTIONS.value]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    result = greedy_generate(model, prompts, _MAX_NEW.value, eos_ids=eos, mesh=mesh)
    answers = result.texts(tokenizer)

    if not distributed.is_main_process():
        return
    batch, steps = len(prompts), result.decode_steps
    prompt_tokens = sum(map(len, prompts))
    print(f"model {config.model.path}: {model.config.num_hidden_layers} layers, hidden "
          f"{model.config.hidden_size}, {config.model.dtype} compute on mesh {dict(mesh.shape)}")
    for q, a in zip(_QUESTIONS.value, answers):
        print(f"Q: {q}\nA: {a.strip()}\n")
    timings = dict(
        load_s=round(load_s, 3), compile_s=round(result.compile_s, 3),
        prefill_s=round(result.prefill_s, 4),
        prefill_tokens_per_s=round(prompt_tokens / result.prefill_s, 1),
        decode_tokens_per_s=round(batch * steps / result.decode_s, 1) if steps else None)
    print("timings: " + " ".join(f"{k}={v}" for k, v in timings.items()))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(dict(questions=_QUESTIONS.value, answers=answers,
                           token_ids=[t[:n].tolist() for t, n in zip(result.tokens, result.lengths)],
                           timings=timings), f, indent=2)
    logging.info("smoke run done")


if __name__ == "__main__":
    from se_jax.pipeline import cli
    cli.run(main)
