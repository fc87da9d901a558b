"""Command line: `python -m recattn_jax.tune --config NAME|PATH --budget 60m --workdir W`.

Searches the space the config file declares (`get_search_space(config)`, else
`tuning.default_space`) with Optuna's TPE sampler, pruning trials whose
validation curve falls below the median of finished trials (`--pruner`).
Every trial is a normal training run in W/trials/, selected on validation
only. At the end: the table of trials (W/trials.txt, .csv), the best config as
a runnable file (W/best_config.py) and its test metrics, computed once
(W/best_results.json). Rerunning the same command continues the study.

`--budget` is this invocation's wall clock (e.g. 90s, 45m, 2h, 1h30m); the
trial running when it ends is saved and resumes on the next invocation.
`--trials` caps the study's finished trials (all invocations together).
Config fields are overridden as for training, e.g. `--config.train.num_epochs=20`.
"""

import logging
import pathlib
import sys

import optuna
from absl import app, flags
from ml_collections import config_flags

from recattn_jax import configs
from recattn_jax.config import ConfigError
from recattn_jax.training.loop import TrainingInterrupted
from recattn_jax.training.workdir import RunMismatchError, WorkdirLockedError
from recattn_jax.tuning import config_module, default_space
from recattn_jax.tuning.study import PRUNERS, StudyError, format_table, parse_duration, run_study

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(configs.path("sasrec_ml100k")),
    f"A shipped config's name ({', '.join(configs.names())}) or a config file's path.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study and its trials (default: studies/<config name>).")
_BUDGET = flags.DEFINE_string("budget", None, "Wall clock for this invocation, e.g. 90s, 45m, 2h, 1h30m.")
_TRIALS = flags.DEFINE_integer("trials", None, "Stop when the study has this many finished trials.")
_SEED = flags.DEFINE_integer("seed", 0, "The sampler's seed: the same seed gives the same study.")
_PRUNER = flags.DEFINE_enum("pruner", "median", PRUNERS, "Stops trials whose validation curve is poor.")
_STARTUP = flags.DEFINE_integer("startup_trials", 5, "Random trials before TPE models the results.")
_BASELINE = flags.DEFINE_bool("baseline", True, "Make the first trial the config's own values.")


def main(argv):
  del argv
  for noisy in ("absl", "jax", "recattn_jax"):  # one line per trial is the progress report
    logging.getLogger(noisy).setLevel(logging.WARNING)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  logging.getLogger("recattn_jax.tuning").setLevel(logging.INFO)
  source = flags.FLAGS["config"].config_filename
  config_source = configs.source_label(source)
  config = _CONFIG.value
  module = config_module(source)
  space = module.get_search_space(config) if hasattr(module, "get_search_space") else default_space(config)
  workdir = _WORKDIR.value or str(pathlib.Path("studies") / configs.run_name(source))
  try:
    budget = parse_duration(_BUDGET.value) if _BUDGET.value else None
    result = run_study(config, space, workdir, config_source=config_source, budget_seconds=budget,
                       max_trials=_TRIALS.value, seed=_SEED.value, pruner=_PRUNER.value,
                       startup_trials=_STARTUP.value, baseline=_BASELINE.value)
  except TrainingInterrupted as e:
    print(f"\ninterrupted by {e.signal_name}; the same command continues the study", file=sys.stderr)
    sys.exit(e.exit_code)
  except (ConfigError, RunMismatchError, WorkdirLockedError, StudyError, ValueError) as e:
    print(f"\nerror ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(1)
  print(f"\n{format_table(result.table)}\n")
  if result.best_number is None:
    print(f"no trial completed yet; the same command continues the study in {workdir}")
    return
  metric = config.train.early_stopping_metric
  print(f"best: trial {result.best_number}, validation {metric} {result.best_value:.4f}")
  test = result.test[result.primary_protocol]
  shown = [name for name in test if name.endswith("@10") or name == metric] or sorted(test)
  print(f"its test metrics ({result.primary_protocol}; computed once, after the search): "
        + ", ".join(f"{name} {test[name]:.4f}" for name in shown))
  print(f"best config: {pathlib.Path(workdir) / 'best_config.py'}; all trials: "
        f"{pathlib.Path(workdir) / 'trials.csv'}; test: {pathlib.Path(workdir) / 'best_results.json'}")


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_config_names(sys.argv))
