"""Seed-to-seed spread of one config: the same run under several seeds, side by side.

  .venv/bin/python benchmarks/seeds.py --config sasrec_auto:amazon-toys --seeds 0,1,2 \
      --workdir runs/seeds_sasrec_auto_toys --out benchmarks/results/seeds_sasrec_auto_toys.json

Each seed is a normal `train_and_evaluate` run in `<workdir>/seed_<n>` (an
interrupted one resumes). Finished seeds are recorded in `--out` with the
config they ran; a seed already there is not run again, so the file carries a
spread across sessions or machines (commit it, rerun the command for the missing
seeds). `--out` holding another config is refused, naming the fields. `--budget`
(e.g. 40m) stops the running seed with its state saved; the same command
resumes it. Config fields are overridden as for training (`--config.x=...`,
after `--config`). Prints each seed and the mean and sample standard deviation
of the validation and test metrics at @10.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from recattn_jax import configs
from recattn_jax.training.loop import DeadlineReached, train_and_evaluate
from recattn_jax.training.workdir import config_fingerprint
from recattn_jax.tuning.study import parse_duration

_CONFIG = config_flags.DEFINE_config_file("config", None, "A shipped config's name or a config file's path.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds to run (config.seed).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Runs go to <workdir>/seed_<n> (default runs/seeds_<config>).")
_OUT = flags.DEFINE_string("out", None, "The JSON record of finished seeds (default <workdir>/seeds.json).")
_BUDGET = flags.DEFINE_string("budget", None, "Wall clock for this invocation, e.g. 40m.")


def _identity(config) -> dict:
  """What must match for two runs to be seeds of the same config (as JSON holds it)."""
  fields = {k: v for k, v in config_fingerprint(config).items() if k != "seed"}
  return json.loads(json.dumps(fields, default=str))


def load_record(path: pathlib.Path, source: str, identity: dict) -> dict:
  if not path.exists():
    return {"config_source": source, "config": identity, "seeds": {}}
  record = json.loads(path.read_text(encoding="utf-8"))
  recorded = record["config"]
  differ = sorted(k for k in recorded.keys() | identity.keys() if recorded.get(k) != identity.get(k))
  if differ:
    shown = ", ".join(f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} here" for k in differ[:8])
    raise ValueError(f"{path} records seeds of another config ({len(differ)} fields differ: "
                     f"{shown}); give another --out")
  return record


def seed_row(results: dict, minutes: float) -> dict:
  primary = results["primary_protocol"]
  return {"valid": results["valid"][primary], "test": results["test"][primary], "protocol": primary,
          "best_epoch": results["best_epoch"], "train_seconds": results["train_seconds"],
          "wall_minutes": minutes}


def summary(record: dict, metric: str) -> list[str]:
  """One line per seed, then mean and sample std of each column over the seeds."""
  columns = [("valid", metric), ("test", "HR@10"), ("test", "NDCG@10")]
  names = [f"{split} {name}" for split, name in columns]
  lines = ["seed  best epoch  " + "  ".join(f"{n:>14}" for n in names) + "  train s"]
  values = {n: [] for n in names}
  for seed, row in sorted(record["seeds"].items(), key=lambda item: int(item[0])):
    cells = []
    for (split, name), column in zip(columns, names):
      values[column].append(row[split][name])
      cells.append(f"{row[split][name]:>14.4f}")
    lines.append(f"{seed:>4}  {row['best_epoch']:>10.0f}  " + "  ".join(cells) + f"  {row['train_seconds']:7.0f}")
  if len(record["seeds"]) > 1:
    lines.append("mean              " + "  ".join(f"{statistics.mean(values[n]):>14.4f}" for n in names))
    lines.append("std               " + "  ".join(f"{statistics.stdev(values[n]):>14.4f}" for n in names))
  return lines


def run_seeds(config, seeds, workdir: pathlib.Path, out: pathlib.Path, *, source: str,
              deadline: float | None = None) -> dict:
  """Runs the seeds not yet in `out`; returns the record (also written to `out` after each seed)."""
  config = config.copy_and_resolve_references()
  record = load_record(out, source, _identity(config))
  for seed in seeds:
    if str(seed) in record["seeds"]:
      continue
    config.seed = seed
    started = time.time()
    try:
      results = train_and_evaluate(config, workdir / f"seed_{seed}", deadline=deadline)
    except DeadlineReached:
      print(f"budget spent during seed {seed}; its state is saved in {workdir / f'seed_{seed}'}, "
            "and the same command resumes it", file=sys.stderr)
      break
    record["seeds"][str(seed)] = seed_row(results, (time.time() - started) / 60)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(out)
  return record


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; give the seeds as --seeds=0,1,2", file=sys.stderr)
    sys.exit(1)
  source = flags.FLAGS["config"].config_filename
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value or f"runs/seeds_{configs.run_name(source)}")
  out = pathlib.Path(_OUT.value) if _OUT.value else workdir / "seeds.json"
  try:
    if not all(seed.strip().isdigit() for seed in _SEEDS.value):
      raise ValueError(f"--seeds={','.join(_SEEDS.value)}: expected non-negative integers, e.g. --seeds=0,1,2")
    seeds = [int(seed) for seed in _SEEDS.value]
    deadline = time.time() + parse_duration(_BUDGET.value) if _BUDGET.value else None
    record = run_seeds(config, seeds, workdir, out, source=configs.source_label(source),
                       deadline=deadline)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print("\n".join(summary(record, config.train.early_stopping_metric)))
  print(f"record: {out}")


if __name__ == "__main__":
  app.run(main, argv=configs.resolve_config_names(sys.argv))
