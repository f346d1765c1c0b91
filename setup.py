"""se_jax: fine-tuning LLMs to abstain with semantic entropy, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="se_jax",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of 'Fine-Tuning Large Language Models to "
        "Appropriately Abstain with Semantic Entropy' (Tjandra et al. 2024)."
    ),
    python_requires=">=3.10",
    # `configs` is a package so that config files can import configs.base.
    packages=find_packages(include=["se_jax", "se_jax.*", "configs"]),
    package_data={"se_jax.data": ["demo_facts/*.jsonl", "demo_facts/*.md", "demo_facts/LICENSE"],
                  "se_jax.io": ["throughput.json"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "transformers>=5.23,<6",
        "jinja2>=3.1",      # chat templates (transformers does not require it; torch did)
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8",  # TFDS's array_record file format, read without TensorFlow
        "numpy>=2.0",
        "absl-py>=2.1",
        "ml-collections>=1.1",
        "gguf>=0.19",
        "safetensors>=0.8",
        "matplotlib>=3.9",  # report plots
    ],
    extras_require={
        # PyTorch comparisons (parity tests, benchmarks). Install torch==2.13.0 first on
        # CPU-only machines so that pip does not pull a CUDA build.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.*", "peft>=0.21", "accelerate>=1.0"],
    },
)
