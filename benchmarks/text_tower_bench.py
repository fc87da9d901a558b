"""Step time and parameter counts of training a LoRA text tower with the recommender, side by side.

  .venv/bin/python benchmarks/text_tower_bench.py [--steps 6]

ML-100K, SASRec (64 wide, 2 blocks, rows of 50 events, batch 128 rows), item
vectors from the items' text ("title (year). genres", 24 tokens) through
all-MiniLM-L6-v2. Settings timed in one process, one after the other:
  * frozen text, full softmax over the catalogue at every position (no tower);
  * frozen text, `mixed_softmax` over P sampled positions + K negatives;
  * the LoRA tower (rank 8, query and value) in every block / the last 2
    blocks, same loss: the tower runs on the step's P + K candidates;
and the catalogue refresh (the tower over all 1,682 items) an evaluation does.
Each train step is timed after one compiling step; the median is reported.
Writes benchmarks/results/text_tower_bench.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from recattn_jax.config import get_default_config  # noqa: E402
from recattn_jax.data.loading import load_split, load_split_features, resolve_paths  # noqa: E402
from recattn_jax.data.pipeline import train_dataset  # noqa: E402
from recattn_jax.models import SASRec, init_encoder  # noqa: E402
from recattn_jax.models.text_tower import frozen_text_weights, insert_pretrained  # noqa: E402
from recattn_jax.parallel import make_mesh  # noqa: E402
from recattn_jax.text.bert import freeze  # noqa: E402
from recattn_jax.training import tasks  # noqa: E402
from recattn_jax.training.losses import next_item_loss_fn  # noqa: E402
from recattn_jax.training.steps import (init_state, make_catalogue_step, make_optimizer,  # noqa: E402
                                        make_train_step, next_item_loss, shard_batch)


def time_setting(name, *, lora_layers, loss, features, text, split, args):
  mesh = make_mesh(num_devices=1)
  lora = {} if lora_layers is None else {"item_text_lora_rank": 8, "item_text_lora_layers": lora_layers}
  model = SASRec(num_items=split.num_items, max_len=50, embed_dim=64, num_layers=2, num_heads=1,
                 ff_dim=256, dropout_rate=0.2, item_features=features,
                 item_representation="content", **lora)
  optimizer = make_optimizer(get_default_config().train, 1000)
  if lora:
    optimizer = freeze(optimizer, frozen_text_weights)
  state = init_state(functools.partial(init_encoder, model, max_len=50), optimizer, seed=0, mesh=mesh)
  out = {"setting": name}
  if lora:
    state = state.replace(params=insert_pretrained(state.params, text.model.params))
    out["parameters"] = tasks.text_tower_sizes(state.params)
  kwargs = {"positions": args.positions, "num_negatives": args.negatives} if loss == "mixed_softmax" else {}
  step = make_train_step(next_item_loss(model, next_item_loss_fn(loss, **kwargs)), optimizer, mesh,
                         state)
  batches = iter(train_dataset(split.train, max_len=50, batch_size=128, seed=0, pack=True,
                               all_windows=True))
  times = []
  for i in range(args.steps + 1):
    batch = shard_batch(next(batches), mesh)
    start = time.perf_counter()
    state, metrics = step(state, batch)
    float(metrics["loss"])
    if i:
      times.append(time.perf_counter() - start)
  batches.close()
  out["step_seconds_median"] = float(np.median(times))
  catalogue = make_catalogue_step(model, mesh)
  jax.block_until_ready(catalogue(state.params))
  start = time.perf_counter()
  jax.block_until_ready(catalogue(state.params))
  out["catalogue_seconds"] = time.perf_counter() - start
  print(f"{name:<40} step {out['step_seconds_median']:7.3f} s   catalogue {out['catalogue_seconds']:6.2f} s"
        + (f"   trainable {out['parameters']['trainable_params']:,} (adapters "
           f"{out['parameters']['adapter_params']:,}), frozen {out['parameters']['pretrained_params']:,}"
           if lora else ""), flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--positions", type=int, default=128)
  parser.add_argument("--negatives", type=int, default=128)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                           / "text_tower_bench.json"))
  args = parser.parse_args()
  config = get_default_config()
  config.data.update(item_text_path="ml-100k.item", text_model="minilm", text_max_length=24)
  data_config = resolve_paths(config.data)
  split = load_split(data_config)
  text = tasks.item_text(data_config, split)
  data_config = tasks.with_text_embeddings(data_config, split, text)
  features = load_split_features(data_config, split)
  tokens = tasks.with_text_tokens(features, text, data_config)
  pk = f"P={args.positions} + K={args.negatives}"
  rows = [
      time_setting("frozen text, full softmax", lora_layers=None, loss="softmax",
                   features=features, text=text, split=split, args=args),
      time_setting(f"frozen text, mixed_softmax {pk}", lora_layers=None, loss="mixed_softmax",
                   features=features, text=text, split=split, args=args),
      time_setting(f"LoRA tower, 6 of 6 blocks, {pk}", lora_layers=0, loss="mixed_softmax",
                   features=tokens, text=text, split=split, args=args),
      time_setting(f"LoRA tower, last 2 blocks, {pk}", lora_layers=2, loss="mixed_softmax",
                   features=tokens, text=text, split=split, args=args),
  ]
  pathlib.Path(args.out).write_text(json.dumps(
      {"command": " ".join(["benchmarks/text_tower_bench.py", *sys.argv[1:]]), "args": vars(args),
       "backend": jax.default_backend(), "rows": rows}, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
