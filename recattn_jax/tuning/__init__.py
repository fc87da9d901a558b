"""Hyperparameter search with Optuna: `python -m recattn_jax.tune` (docs/tuning.md).

Sits above training: every trial is a `train_and_evaluate` run selected on
validation (`tuning.study.run_study`). This package's own names need no Optuna,
so config files can declare their search spaces without it installed.
"""

from recattn_jax.tuning.config_files import changed_fields, config_module, load_config
from recattn_jax.tuning.space import Choice, Float, Int, default_space

__all__ = ["Choice", "Float", "Int", "changed_fields", "config_module", "default_space", "load_config"]
