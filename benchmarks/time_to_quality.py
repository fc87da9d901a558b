"""Time-to-quality tricks, each switched on alone against the default job, measured on validation.

  .venv/bin/python benchmarks/time_to_quality.py --epochs 30
  .venv/bin/python benchmarks/time_to_quality.py --variants base batch128+sqrt --epochs 30

Every variant is the default ML-100K job (SASRec+, full softmax, batch 32
packed rows, max_len 200) with a few fields changed, trained from the same
seed for up to `--epochs` epochs with the default early stopping, evaluated
every 2 epochs. Reported from each run's metrics.jsonl: the best validation
NDCG@10 (seen items excluded) and its epoch, the training seconds to reach
95% of the base variant's best (training wall time, evaluations excluded),
and the total. Test metrics are not looked at. Writes
benchmarks/results/time_to_quality_cpu.json. Run it on idle cores: the
variants run one after another, so their times are comparable.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import jax

from recattn_jax.config import get_default_config
from recattn_jax.training.loop import train_and_evaluate
from recattn_jax.training.metric_writer import read_metrics
from recattn_jax.tuning import changed_fields
from recattn_jax.tuning.space import apply

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> fields changed from the default job
    "base": {},
    "warmup+cosine": {"train.warmup_steps": 100, "train.schedule": "cosine"},
    "batch128": {"train.batch_size": 128},
    "batch128+sqrt": {"train.batch_size": 128, "train.lr_batch_scaling": "sqrt"},
    "batch128+linear": {"train.batch_size": 128, "train.lr_batch_scaling": "linear"},
    "max_len50": {"data.max_len": 50},
    "max_len50+all_windows": {"data.max_len": 50, "data.all_windows": True},
    "sampled_softmax256": {"train.loss.name": "sampled_softmax"},
    "hstu2": {"model.name": "hstu"},
    "hstu4": {"model.name": "hstu", "model.hstu.num_layers": 4},
}


def variant_config(fields: dict, epochs: int):
  config = apply(get_default_config(), fields)
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
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--out", type=pathlib.Path,
                      default=REPO / "benchmarks" / "results" / "time_to_quality_cpu.json")
  args = parser.parse_args(argv)
  variants = ["base"] + [v for v in args.variants if v != "base"]  # the target comes from base
  results = {"backend": jax.default_backend(), "epochs": args.epochs, "runs": {}}
  target = None
  with tempfile.TemporaryDirectory() as tmp:
    for name in variants:
      config = variant_config(VARIANTS[name], args.epochs)
      train_and_evaluate(config, pathlib.Path(tmp) / name, evaluate_test=False)
      row = summarise(read_metrics(pathlib.Path(tmp) / name), target)
      if name == "base":
        target = 0.95 * row["best_valid_ndcg10"]
        row = summarise(read_metrics(pathlib.Path(tmp) / name), target)
      row["fields"] = changed_fields(variant_config({}, args.epochs), config)
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
