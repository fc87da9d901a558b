"""Training throughput and time-to-quality: padded vs packed rows, reference vs best attention.

  .venv/bin/python benchmarks/train_bench.py --datasets ml-100k --epochs 30

Each variant trains the same config from the same seed for up to `--epochs`
epochs (evaluating every epoch) and reports, from its `metrics.jsonl`:
  * events/s: training target events per second, the median over logging
    windows after the first (which holds compilation);
  * seconds to reach `--target` validation NDCG@10 (seen items excluded),
    counting training and evaluation wall time, or "-" when not reached;
  * the best validation NDCG@10.
Prints a table with each variant's speed-up over the padded reference run and
writes benchmarks/results/train_<backend>.json.

Packed rows hold several users, so at the same number of rows per batch a
packed epoch has fewer optimizer steps. By default packed variants therefore
use `batch_size * packed rows / padded rows` rows per batch: the same number
of steps per epoch and the same users per step on average, so time-to-quality
compares like with like (`--same-rows` keeps the padded batch size instead).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile

import jax

from recattn_jax.config import SHARED_DATA, get_default_config
from recattn_jax.data.loading import load_split
from recattn_jax.data.pipeline import rows_per_pass
from recattn_jax.training.loop import train_and_evaluate
from recattn_jax.training.metric_writer import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
DATASETS = {
    "ml-100k": dict(path=SHARED_DATA / "ml-100k", format="recbole", max_len=200,
                    batch_size=32, dropout=0.5, target=0.09),
    "amazon-sports": dict(path=SHARED_DATA / "amazon-sports" / "Sports_and_Outdoors.txt",
                          format="sequence", max_len=50, batch_size=64, dropout=0.5, target=0.01),
}
VARIANTS = {  # name -> (pack, attention implementation, compute dtype)
    "padded/reference": (False, "reference", "float32"),
    "padded/auto": (False, "auto", "float32"),
    "packed/reference": (True, "reference", "float32"),
    "packed/auto": (True, "auto", "float32"),
    "packed/auto/bf16": (True, "auto", "bfloat16"),
}


def matched_packed_batch(config, batch_size: int) -> int:
  """Rows per packed batch giving as many optimizer steps per epoch as padded rows of `batch_size`."""
  train = load_split(config.data).train
  kwargs = dict(max_len=config.data.max_len, seed=config.seed)
  ratio = rows_per_pass(train, pack=True, **kwargs) / rows_per_pass(train, pack=False, **kwargs)
  return max(1, round(batch_size * ratio))


def run_variant(dataset: str, pack: bool, impl: str, dtype: str, *, epochs: int,
                workdir: pathlib.Path, same_rows: bool) -> tuple[list[dict], int]:
  spec = DATASETS[dataset]
  config = get_default_config()
  config.data.name = dataset
  config.data.path = str(spec["path"])
  config.data.format = spec["format"]
  config.data.max_len = spec["max_len"]
  config.data.pack = pack
  config.model.sasrec.update(attention_impl=impl, dtype=dtype, dropout_rate=spec["dropout"])
  config.train.batch_size = spec["batch_size"]
  if pack and not same_rows:
    config.train.batch_size = matched_packed_batch(config, spec["batch_size"])
  config.train.num_epochs = epochs
  config.train.eval_every_epochs = 1
  config.train.patience = epochs  # run every epoch: the same work for each variant
  config.train.log_every_steps = 5
  config.train.progress_bar = False
  train_and_evaluate(config, workdir)
  return read_metrics(workdir), config.train.batch_size


def summarise(records: list[dict], target: float, batch_size: int) -> dict:
  train = [r for r in records if r["split"] == "train"]
  valid = [r for r in records if r["split"] == "valid"]
  reached = [r["train_seconds"] for r in valid if r["NDCG@10"] >= target]
  return {
      "events_per_second": statistics.median(r["events_per_second"] for r in train[1:] or train),
      "target_valid_ndcg10": target,
      "seconds_to_target": reached[0] if reached else None,
      "best_valid_ndcg10": max(r["NDCG@10"] for r in valid),
      "total_seconds": valid[-1]["train_seconds"],
      "batch_rows": batch_size,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--datasets", nargs="+", default=["ml-100k"], choices=sorted(DATASETS))
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--target", type=float, default=None,
                      help="validation NDCG@10 to reach (default: per dataset, ml-100k .09, amazon-sports .01)")
  parser.add_argument("--same-rows", action="store_true",
                      help="packed variants use the padded batch size in rows (fewer steps per epoch)")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  results = {"backend": backend, "device": str(jax.devices()[0].device_kind), "epochs": args.epochs,
             "runs": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for dataset in args.datasets:
      if not DATASETS[dataset]["path"].exists():
        print(f"skipping {dataset}: {DATASETS[dataset]['path']} is absent", file=sys.stderr)
        continue
      for name in args.variants:
        records, batch_rows = run_variant(dataset, *VARIANTS[name], epochs=args.epochs,
                                          workdir=pathlib.Path(tmp) / dataset / name.replace("/", "_"),
                                          same_rows=args.same_rows)
        target = args.target or DATASETS[dataset]["target"]
        results["runs"][f"{dataset} {name}"] = summarise(records, target, batch_rows)
        print(f"{dataset} {name}: {results['runs'][f'{dataset} {name}']}", flush=True)

  print(f"\nbackend {backend} ({results['device']}), {args.epochs} epochs")
  header = f"{'dataset / variant':<34}{'rows':>6}{'events/s':>11}{'speed-up':>10}{'s to target':>20}{'best NDCG@10':>14}"
  print(header)
  for key, row in results["runs"].items():
    baseline = results["runs"].get(f"{key.split()[0]} padded/reference")
    speedup = row["events_per_second"] / baseline["events_per_second"] if baseline else float("nan")
    to_target = (f"{row['seconds_to_target']:.0f}" if row["seconds_to_target"] is not None else "-")
    to_target += f" (>= {row['target_valid_ndcg10']})"
    print(f"{key:<34}{row['batch_rows']:>6}{row['events_per_second']:>11.0f}{speedup:>9.2f}x{to_target:>20}"
          f"{row['best_valid_ndcg10']:>14.4f}")
  out = args.out or REPO / "benchmarks" / "results" / f"train_{backend}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
