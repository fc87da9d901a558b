"""RecBole 1.2.1 SASRec half of `compare_recbole.py`; runs inside RecBole's own venv.

Two subcommands, each writing one JSON file:
  train  RecBole's own trainer with early stopping on ML-100K (leave-one-out,
         full ranking, full-softmax CE), timed per epoch;
  step   forward + backward + Adam step of RecBole's SASRec on the batches the
         driver saved, timed per step.

Kept free of recattn_jax imports: this interpreter is Python 3.11 with torch.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

# RecBole reloads its best checkpoint with a plain torch.load, which torch >= 2.6
# refuses for pickled configs unless this is set before torch is imported.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def recbole_config(args: argparse.Namespace, workdir: pathlib.Path):
  """SASRec at RecBole's defaults (2 layers, 64 wide, 2 heads, inner 256, dropout 0.5)."""
  from recbole.config import Config

  overrides = {
      "data_path": str(args.data_root),
      "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
      "MAX_ITEM_LIST_LENGTH": args.max_len,
      "loss_type": "CE",
      "train_neg_sample_args": None,
      "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO",
                    "mode": "full"},
      "metrics": ["Hit", "NDCG"],
      "topk": [10],
      "valid_metric": "NDCG@10",
      "metric_decimal_place": 6,  # RecBole rounds to 4 places by default; the target needs more
      "epochs": args.epochs,
      "stopping_step": args.stopping_step,
      "eval_step": 1,
      "train_batch_size": args.batch_size,
      "seed": args.seed,
      "use_gpu": False,
      "show_progress": False,
      "log_wandb": False,
      "checkpoint_dir": str(workdir / "saved"),
  }
  return Config(model="SASRec", dataset=args.dataset, config_dict=overrides)


def build(args: argparse.Namespace, workdir: pathlib.Path):
  from recbole.data import create_dataset
  from recbole.utils import get_model, init_logger, init_seed

  config = recbole_config(args, workdir)
  init_seed(config["seed"], config["reproducibility"])
  init_logger(config)
  dataset = create_dataset(config)
  return config, dataset, get_model(config["model"])


def best_epoch(epochs: list[dict]) -> dict:
  """The epoch whose checkpoint RecBole keeps: its early stopping updates on `>=`, so the last tie."""
  best = epochs[0]
  for epoch in epochs[1:]:
    if epoch["valid_ndcg@10"] >= best["valid_ndcg@10"]:
      best = epoch
  return best


def run_train(args: argparse.Namespace, workdir: pathlib.Path) -> dict:
  """RecBole's `Trainer.fit` unchanged; its epoch methods are wrapped only to read clocks."""
  from recbole.data import data_preparation
  from recbole.utils import get_trainer

  config, dataset, model_class = build(args, workdir)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  model = model_class(config, train_data._dataset).to(config["device"])
  trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

  epochs: list[dict] = []
  current: dict = {}
  train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

  def timed_train_epoch(*a, **kw):
    start = time.perf_counter()
    loss = train_epoch(*a, **kw)
    current.update(train_seconds=time.perf_counter() - start, train_loss=float(loss))
    return loss

  def timed_valid_epoch(*a, **kw):
    start = time.perf_counter()
    score, result = valid_epoch(*a, **kw)
    current.update(valid_seconds=time.perf_counter() - start,
                   valid={k: float(v) for k, v in result.items()})
    return score, result

  def after_epoch(epoch_idx: int, valid_score: float):
    # Fires after the evaluation and any best-checkpoint save of this epoch.
    epochs.append({"epoch": epoch_idx + 1, "cumulative_seconds": time.perf_counter() - fit_start,
                   "valid_ndcg@10": float(valid_score), **current})
    current.clear()
    print(f"[recbole_side] epoch {epoch_idx + 1}: valid NDCG@10={valid_score:.4f} "
          f"cumulative {epochs[-1]['cumulative_seconds']:.1f}s", flush=True)

  trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
  fit_start = time.perf_counter()
  best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                                       callback_fn=after_epoch)
  fit_seconds = time.perf_counter() - fit_start
  test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

  best = best_epoch(epochs)
  return {
      "epochs": epochs,
      "best_epoch": best["epoch"],
      "best_valid": {k: float(v) for k, v in best_valid.items()},
      "best_valid_ndcg@10": float(best_score),
      "seconds_to_best": best["cumulative_seconds"],
      "train_seconds_to_best": sum(e["train_seconds"] for e in epochs[:best["epoch"]]),
      "fit_seconds": fit_seconds,
      "test": {k: float(v) for k, v in test.items()},
      "train_samples_per_epoch": len(train_data._dataset),
      "num_items_with_padding": int(dataset.item_num),
  }


def run_step(args: argparse.Namespace, workdir: pathlib.Path) -> dict:
  """What one iteration of RecBole's `_train_epoch` does, on pre-built identical batches."""
  from recbole.data.interaction import Interaction

  config, dataset, model_class = build(args, workdir)
  model = model_class(config, dataset)
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"],
                               weight_decay=config["weight_decay"])
  data = np.load(args.batches)
  items, lengths, targets = data["items"], data["lengths"], data["targets"]
  if int(items.max()) >= dataset.item_num:
    raise ValueError(f"batch item ids reach {items.max()} but RecBole has {dataset.item_num} rows")
  batches = [Interaction({model.ITEM_SEQ: torch.from_numpy(items[i].astype(np.int64)),
                          model.ITEM_SEQ_LEN: torch.from_numpy(lengths[i].astype(np.int64)),
                          model.POS_ITEM_ID: torch.from_numpy(targets[i].astype(np.int64))})
             for i in range(len(items))]

  seconds, cpu_seconds, losses = [], [], []
  for batch in batches:
    start, cpu_start = time.perf_counter(), time.process_time()
    optimizer.zero_grad()
    loss = model.calculate_loss(batch)
    losses.append(loss.item())
    loss.backward()
    optimizer.step()
    seconds.append(time.perf_counter() - start)
    cpu_seconds.append(time.process_time() - cpu_start)
  timed = seconds[args.warmup:]
  batch_size = items.shape[1]
  median = statistics.median(timed)
  return {
      "batch_size": batch_size,
      "max_len": items.shape[2],
      "num_items_with_padding": int(dataset.item_num),
      "warmup_steps": args.warmup,
      "timed_steps": len(timed),
      "step_seconds": timed,
      "median_step_seconds": median,
      "events_per_second": batch_size / median,
      # CPU time of all threads, a diagnostic: well above the wall time means spinning threads.
      "median_step_cpu_seconds": statistics.median(cpu_seconds[args.warmup:]),
      "first_loss": losses[0],
      "last_loss": losses[-1],
  }


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("mode", choices=("train", "step"))
  parser.add_argument("--data-root", type=pathlib.Path, required=True,
                      help="folder holding <dataset>/<dataset>.inter")
  parser.add_argument("--dataset", default="ml-100k")
  parser.add_argument("--workdir", type=pathlib.Path, required=True,
                      help="scratch folder: RecBole's logs, tensorboard and checkpoints")
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--max-len", type=int, default=50)
  parser.add_argument("--seed", type=int, default=2020)
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--stopping-step", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=2048, help="train: RecBole's train_batch_size")
  parser.add_argument("--batches", type=pathlib.Path, help="step: the driver's .npz of batches")
  parser.add_argument("--warmup", type=int, default=5)
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  torch.set_num_threads(args.threads)
  args.workdir.mkdir(parents=True, exist_ok=True)
  # RecBole writes ./log and ./log_tensorboard relative to the working directory.
  os.chdir(args.workdir)
  result = run_train(args, args.workdir) if args.mode == "train" else run_step(args, args.workdir)
  result.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                python=sys.version.split()[0])
  import recbole
  result["recbole_version"] = recbole.__version__
  args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
  main(sys.argv[1:])
