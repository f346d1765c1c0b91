"""se_jax: teach LLMs to abstain where their semantic entropy is high (JAX/Flax)."""

__version__ = "0.1.0"
