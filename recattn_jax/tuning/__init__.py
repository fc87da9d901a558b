"""Hyperparameter search with Optuna: `python -m recattn_jax.tune` (docs/tuning.md).

Sits above training: every trial is a `train_and_evaluate` run selected on validation.
"""

from recattn_jax.tuning.config_files import changed_fields, config_module, load_config
from recattn_jax.tuning.space import Choice, Float, Int, default_space

__all__ = ["Choice", "Float", "Int", "changed_fields", "config_module", "default_space",
           "load_config", "run_study", "StudyResult"]


def __getattr__(name):
  # The study pulls in Optuna; a config file that only declares a space should not need it.
  if name in ("run_study", "StudyResult"):
    from recattn_jax.tuning import study
    return getattr(study, name)
  raise AttributeError(f"module 'recattn_jax.tuning' has no attribute {name!r}")
