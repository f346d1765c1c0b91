"""Flax NNX models: the Llama-family decoder and the DeBERTa NLI encoder, and their loaders.

    llama.py            LlamaConfig, Llama (HF attribute names), KVCache, the attention mask rule
    layer_scan.py       the layers as one lax.scan over their stacked states (one compiled body)
    loading.py          load_llama / load_tokenizer (embedded, HF dir, .gguf, hub id) onto a mesh;
                        to_hf_state_dict / save_hf_checkpoint (export)
    hf_names.py         the one HF-name <-> parameter-path map (+ GGUF names), used both ways
    hf_checkpoint.py    HF directory reader/writer (config.json, safetensors, sharded index)
    gguf_checkpoint.py  GGUF reader: config from metadata, dequantisation, q/k un-permutation
    gguf_header.py      the GGUF header (metadata, tensor directory) parsed with struct
    safetensors_io.py   memory-mapped .safetensors reading (bf16 via ml_dtypes) and writing
    greedy.py           reference greedy decoding (smoke run, tests); the sampler is se_jax/generation/sampling.py
    deberta.py          NLI encoder
"""
