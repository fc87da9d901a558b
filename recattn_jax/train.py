"""Command line: `python -m recattn_jax.train [--config NAME | PATH.py] [--workdir DIR]`.

`--config` takes a shipped config by name (`recattn_jax/configs/`, e.g.
`hstu_ml100k`) or a path to your own config file. Any config field can be overridden, e.g. `--config.train.num_epochs=50`.
Rerunning with the same workdir resumes from its latest checkpoint; a workdir
holding a run of another config or other data is refused unless `--force_resume`.
SIGTERM (a preemption notice) saves the latest state and exits with 0, Ctrl-C
with 130; the same command resumes.

Several hosts: start the same command on each with `--coordinator_address
HOST:PORT --num_processes N --process_id I` (or $RECATTN_COORDINATOR_ADDRESS,
$RECATTN_NUM_PROCESSES, $RECATTN_PROCESS_ID); on a multi-host Cloud TPU slice
nothing is needed (docs/scaling.md).
"""

import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

from recattn_jax import configs
from recattn_jax.config import ConfigError
from recattn_jax.parallel import initialize_distributed, is_primary
from recattn_jax.training.checkpoint import CheckpointError
from recattn_jax.training.loop import NonFiniteError, TrainingInterrupted, format_table, train_and_evaluate
from recattn_jax.training.workdir import RunMismatchError, WorkdirLockedError

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(configs.path("sasrec_ml100k")),
    f"A shipped config's name ({', '.join(configs.names())}) or a config file's path.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here "
                               "(default: runs/<config file name>).")
_FORCE_RESUME = flags.DEFINE_bool("force_resume", False, "Resume a workdir whose run had another "
                                  "config or data; results.json records the differences.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, to train "
                                   "on several processes (jax.distributed)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes taking part")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1")
# Failures whose message says all there is to say: printed without a traceback.
_REPORTED = (ConfigError, CheckpointError, NonFiniteError, RunMismatchError, WorkdirLockedError)


def main(argv):
  del argv
  # Orbax and friends log every checkpoint step at INFO; keep this library's INFO only.
  logging.getLogger("absl").setLevel(logging.WARNING)
  initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # One voice per run: the other processes report only warnings.
  logging.getLogger("recattn_jax").setLevel(logging.INFO if is_primary() else logging.WARNING)
  workdir = _WORKDIR.value or str(pathlib.Path("runs") / configs.run_name(flags.FLAGS["config"].config_filename))
  logging.info("workdir: %s", workdir)
  try:
    results = train_and_evaluate(_CONFIG.value, workdir, force_resume=_FORCE_RESUME.value)
  except TrainingInterrupted as e:
    print(f"\ninterrupted by {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except _REPORTED as e:
    print(f"\nerror ({type(e).__name__}): {e}", file=sys.stderr)
    sys.exit(1)
  if not is_primary():
    return
  ranking = results["task"] == "ranking"
  print(f"\nBest validation at epoch {results['best_epoch']:.0f}; test metrics " + (
      f"({results['data'].get('test_users', '?')} users, full ranking):" if ranking
      else f"({results['data'].get('test_examples', '?')} examples):"))
  print(format_table(results, _CONFIG.value.eval.ks if ranking else None))
  for name in ("popularity_baseline", "item_mean_baseline"):
    if name in results:
      print(f"\n{name.replace('_', ' ')}:")
      print(format_table({"test": results[name]}, _CONFIG.value.eval.ks if ranking else None))
  print(f"\nresults: {pathlib.Path(workdir) / 'results.json'}, metrics: {pathlib.Path(workdir) / 'metrics.jsonl'}")


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_config_names(sys.argv))
