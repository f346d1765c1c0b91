"""Decoding: the one-prefill sampler, its per-step maths, stop rules, and prompt scoring."""
