"""recattn_jax: attention-based recommender models in JAX/Flax."""

__version__ = "0.1.0"
