"""recattn_jax: attention-based recommender models in JAX/Flax.

`recattn_jax.Recommender.load(bundle)` serves a trained run (see docs/serving.md).
"""

import importlib

__version__ = "0.1.0"

# Loaded on first use, so that importing a submodule does not pull in the serving stack.
_LAZY = {"Recommender": "recattn_jax.serving", "BundleError": "recattn_jax.serving",
         "UnknownIdError": "recattn_jax.serving"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'recattn_jax' has no attribute {name!r}")
