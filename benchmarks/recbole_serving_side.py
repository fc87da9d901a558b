"""RecBole 1.2.1 SASRec half of `serving_bench.py`; runs inside RecBole's own venv.

For each max length L: writes a synthetic atomic dataset (`synth.inter`) with
`--num-items` items and users of L + 3 events each (so every test input fills
the L window, like the driver's requests), builds RecBole's Config, Dataset,
dataloaders and an untrained SASRec of the driver's sizes (64 wide, 2 layers,
2 heads, inner 256), then times per call of
`recbole.utils.case_study.full_sort_topk(uids, model, test_data, k)` (what
RecBole offers for serving: user lookup in the test split, `full_sort_predict`,
padding masked, `torch.topk`), in eval mode under no_grad:
  * batch 1: latency percentiles over `--latency-calls` calls, a user each;
  * batch `--batch-size`: users per second over `--batch-calls` calls;
  * the model alone at batch 1 (`full_sort_predict` + `torch.topk` on a
    pre-built interaction), a diagnostic of RecBole's per-call overhead.
Writes one JSON file. Kept free of recattn_jax imports: this interpreter is
Python 3.11 with torch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

PREFIX = "[recbole_serving_side]"


def progress(message: str) -> None:
  print(f"{PREFIX} {message}", flush=True)


def percentiles(seconds: list[float]) -> dict:
  ms = np.asarray(seconds) * 1e3
  return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
          "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
          "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def write_dataset(folder: pathlib.Path, *, num_items: int, num_users: int, events_per_user: int,
                  seed: int) -> pathlib.Path:
  """`folder/synth.inter`: Zipf-ish items, every one of the `num_items` at least once."""
  rng = np.random.default_rng(seed)
  total = num_users * events_per_user
  if total < num_items:
    raise ValueError(f"{total} events cannot hold all {num_items} items")
  weights = 1.0 / np.arange(1, num_items + 1)
  cdf = np.cumsum(weights) / weights.sum()
  items = np.searchsorted(cdf, rng.random(total)) + 1
  items[rng.choice(total, num_items, replace=False)] = rng.permutation(num_items) + 1
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "synth.inter"
  with open(path, "w", encoding="utf-8") as f:
    f.write("user_id:token\titem_id:token\ttimestamp:float\n")
    for u in range(num_users):
      for t in range(events_per_user):
        f.write(f"u{u}\t{items[u * events_per_user + t]}\t{t + 1}\n")
  return path


def build(args: argparse.Namespace, max_len: int, workdir: pathlib.Path):
  from recbole.config import Config
  from recbole.data import create_dataset, data_preparation
  from recbole.utils import get_model, init_seed

  data_root = workdir / f"L{max_len}"
  write_dataset(data_root / "synth", num_items=args.num_items, num_users=args.num_users,
                events_per_user=max_len + 3, seed=max_len)
  overrides = {
      "data_path": str(data_root),
      "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
      "MAX_ITEM_LIST_LENGTH": max_len,
      "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
      "loss_type": "CE",
      "train_neg_sample_args": None,
      "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO",
                    "mode": "full"},
      "eval_batch_size": 4096,
      "seed": 2020,
      "use_gpu": False,
      "show_progress": False,
      "log_wandb": False,
      "checkpoint_dir": str(workdir / "saved"),
  }
  config = Config(model="SASRec", dataset="synth", config_dict=overrides)
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, _, test_data = data_preparation(config, dataset)
  model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
  model.eval()
  return config, dataset, model, test_data


def measure(args: argparse.Namespace, max_len: int, workdir: pathlib.Path) -> dict:
  from recbole.utils.case_study import full_sort_topk

  start = time.perf_counter()
  config, dataset, model, test_data = build(args, max_len, workdir)
  setup = time.perf_counter() - start
  if dataset.item_num != args.num_items + 1:
    raise ValueError(f"RecBole has {dataset.item_num} item rows, expected {args.num_items + 1}")
  uid_field = test_data.dataset.uid_field
  uids = np.unique(test_data.dataset.inter_feat[uid_field].numpy())
  if len(uids) < args.batch_size:
    raise ValueError(f"{len(uids)} test users, fewer than a batch of {args.batch_size}")
  lengths = test_data.dataset.inter_feat[model.ITEM_SEQ_LEN].numpy()
  progress(f"L={max_len}: dataset and model built in {setup:.1f}s ({len(dataset)} events, "
           f"{len(uids)} test users, input lengths {lengths.min()}..{lengths.max()})")

  def call(users):
    scores, ids = full_sort_topk(users, model, test_data, k=args.k, device=config["device"])
    return ids.numpy()

  with torch.no_grad():
    for i in range(args.warmup):
      call(uids[i % len(uids)][None])
    seconds = []
    for i in range(args.latency_calls):
      users = uids[i % len(uids)][None]
      begin = time.perf_counter()
      ids = call(users)
      seconds.append(time.perf_counter() - begin)
    assert ids.shape == (1, args.k), ids.shape
    batch1 = percentiles(seconds)

    batches = [np.roll(uids, -i * args.batch_size)[:args.batch_size] for i in range(4)]
    for i in range(max(2, args.warmup // 5)):
      call(batches[i % len(batches)])
    batch_seconds = []
    for i in range(args.batch_calls):
      begin = time.perf_counter()
      ids = call(batches[i % len(batches)])
      batch_seconds.append(time.perf_counter() - begin)
    assert ids.shape == (args.batch_size, args.k), ids.shape
    median = statistics.median(batch_seconds)

    # The model alone: the interaction full_sort_topk would look up, built once.
    inter = test_data.dataset[np.flatnonzero(test_data.dataset.inter_feat[uid_field].numpy()
                                             == uids[0])]
    model_seconds = []
    for i in range(args.warmup + min(args.latency_calls, 200)):
      begin = time.perf_counter()
      scores = model.full_sort_predict(inter)
      scores[:, 0] = -np.inf
      torch.topk(scores, args.k).indices.numpy()
      if i >= args.warmup:
        model_seconds.append(time.perf_counter() - begin)

  row = {"max_len": max_len, "setup_seconds": setup, "test_users": int(len(uids)),
         "events": int(len(dataset)), "num_items_with_padding": int(dataset.item_num),
         "batch1": batch1,
         "batch": {"batch_size": args.batch_size, "calls": args.batch_calls, "median_seconds": median,
                   "users_per_second": args.batch_size / median, "call_seconds": batch_seconds},
         "model_only_batch1": percentiles(model_seconds)}
  progress(f"L={max_len}: batch 1 p50 {batch1['p50_ms']:.2f} ms, p99 {batch1['p99_ms']:.2f} ms "
           f"(model alone {row['model_only_batch1']['p50_ms']:.2f} ms); batch {args.batch_size}: "
           f"{row['batch']['users_per_second']:.0f} users/s")
  return row


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", type=pathlib.Path, required=True,
                      help="scratch folder: the dataset, RecBole's logs")
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--num-items", type=int, default=3706)
  parser.add_argument("--num-users", type=int, default=300)
  parser.add_argument("--max-lens", type=int, nargs="+", default=[50, 200])
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--latency-calls", type=int, default=1000)
  parser.add_argument("--batch-calls", type=int, default=30)
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  torch.set_num_threads(args.threads)
  args.workdir.mkdir(parents=True, exist_ok=True)
  # RecBole writes ./log and ./log_tensorboard relative to the working directory.
  os.chdir(args.workdir)
  result = {"lengths": {}, "k": args.k, "num_items": args.num_items}
  for max_len in args.max_lens:
    result["lengths"][str(max_len)] = measure(args, max_len, args.workdir)
  import recbole
  result.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                python=sys.version.split()[0], recbole_version=recbole.__version__,
                omp_wait_policy_env=os.environ.get("OMP_WAIT_POLICY", "default"))
  args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
  main(sys.argv[1:])
