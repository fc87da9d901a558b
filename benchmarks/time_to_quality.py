"""Time-to-quality tricks, each switched on alone against the default job, measured on validation.

  .venv/bin/python benchmarks/time_to_quality.py --epochs 30
  .venv/bin/python benchmarks/time_to_quality.py --variants base batch4x+sqrt --epochs 30
  .venv/bin/python benchmarks/time_to_quality.py --config sasrec_auto:amazon-toys --epochs 12 \
      --variants base sampled_softmax256

Every variant is the base config (`--config`, default: the default ML-100K job,
SASRec+, full softmax, batch 32 packed rows, max_len 200) with a few fields
changed, trained from the same seed for up to `--epochs` epochs with the
config's early stopping and evaluation interval. Reported from each run's metrics.jsonl: the best validation
NDCG@10 (seen items excluded) and its epoch, the training seconds to reach
95% of the base variant's best (training wall time, evaluations excluded),
and the total. Test metrics are not looked at. Writes
benchmarks/results/time_to_quality_cpu.json (another config:
time_to_quality_<config>.json). Run it on idle cores: the
variants run one after another, so their times are comparable.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax

from recattn_jax import configs
from recattn_jax.training.loop import train_and_evaluate
from recattn_jax.training.metric_writer import read_metrics
from recattn_jax.tuning import changed_fields, load_config
from recattn_jax.tuning.space import apply

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "sasrec_ml100k"


def _larger_batch(scaling: str):
  """4x the base config's rows; the learning rate scaled from the base batch by `scaling`."""
  return lambda c: {"train.batch_size": 4 * c.train.batch_size, "train.lr_batch_scaling": scaling,
                    "train.lr_reference_batch": c.train.batch_size}


VARIANTS = {  # name -> fields changed from the base config (or a function of it giving them)
    "base": {},
    "warmup+cosine": {"train.warmup_steps": 100, "train.schedule": "cosine"},
    "batch4x": _larger_batch("none"),
    "batch4x+sqrt": _larger_batch("sqrt"),
    "batch4x+linear": _larger_batch("linear"),
    "max_len50": {"data.max_len": 50},
    "max_len50+all_windows": {"data.max_len": 50, "data.all_windows": True},
    "sampled_softmax256": {"train.loss.name": "sampled_softmax"},
    "hstu2": {"model.name": "hstu"},
    "hstu4": {"model.name": "hstu", "model.hstu.num_layers": 4},
}


def variant_config(source: str, name: str, epochs: int):
  config = load_config(source)
  fields = VARIANTS[name]
  config = apply(config, fields(config) if callable(fields) else fields)
  config.train.num_epochs = epochs
  config.train.progress_bar = False
  return config


def summarise(records: list[dict], target: float | None) -> dict:
  valid = [r for r in records if r["split"] == "valid"]
  best = max(valid, key=lambda r: r["NDCG@10"])
  reached = [r for r in valid if target is not None and r["NDCG@10"] >= target]
  return {"best_valid_ndcg10": best["NDCG@10"], "best_valid_hr10": best["HR@10"],
          "best_epoch": best["epoch"], "epochs_run": valid[-1]["epoch"],
          "seconds_to_target": reached[0]["train_seconds"] if reached else None,
          "seconds_to_best": best["train_seconds"], "total_seconds": valid[-1]["train_seconds"]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help="the base config: a shipped config's name (with its argument) or a file's path")
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--out", type=pathlib.Path)
  args = parser.parse_args(argv)
  if args.out is None:
    stem = "cpu" if args.config == DEFAULT_CONFIG else configs.run_name(args.config)
    args.out = REPO / "benchmarks" / "results" / f"time_to_quality_{stem}.json"
  variants = ["base"] + [v for v in args.variants if v != "base"]  # the target comes from base
  results = {"backend": jax.default_backend(), "config": args.config, "epochs": args.epochs, "runs": {}}
  target = None
  with tempfile.TemporaryDirectory() as tmp:
    for name in variants:
      config = variant_config(args.config, name, args.epochs)
      train_and_evaluate(config, pathlib.Path(tmp) / name, evaluate_test=False)
      row = summarise(read_metrics(pathlib.Path(tmp) / name), target)
      if name == "base":
        target = 0.95 * row["best_valid_ndcg10"]
        row = summarise(read_metrics(pathlib.Path(tmp) / name), target)
      row["fields"] = changed_fields(variant_config(args.config, "base", args.epochs), config)
      results["runs"][name] = row
      results["target_valid_ndcg10"] = target
      print(json.dumps({name: row}), flush=True)
      args.out.parent.mkdir(parents=True, exist_ok=True)
      args.out.write_text(json.dumps(results, indent=2))
  print(f"\n{'variant':<24}{'best valid NDCG@10':>20}{'at epoch':>10}{'s to 95% of base':>18}{'s total':>10}")
  for name, row in results["runs"].items():
    to_target = f"{row['seconds_to_target']:.0f}" if row["seconds_to_target"] is not None else "-"
    print(f"{name:<24}{row['best_valid_ndcg10']:>20.4f}{row['best_epoch']:>10.0f}{to_target:>18}"
          f"{row['total_seconds']:>10.0f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
