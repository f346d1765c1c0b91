"""Flax NNX models: the Llama-family decoder and the DeBERTa NLI encoder, and their loaders."""
