"""Cold-start items on ML-100K: SASRec with id, content and id+content item vectors.

A random 10% of the items is held out of training: their events are removed
from the training sequences, but they stay in the catalogue and keep their
content (title words, release year, genres from `ml-100k.item`). Every model
ranks the whole catalogue for each test user (leave-one-out: the last event is
the target; the user's earlier events, cold ones removed, are the history and
are excluded from the ranking). Metrics are reported separately for test
targets that are cold (held out) and warm items, plus, for a larger cold
sample, every event of a cold item whose user has an earlier warm event
("cold, all events": histories there overlap the user's training events, which
leaks the user's later taste, but never the item).

  .venv/bin/python benchmarks/cold_start.py [--epochs 10] [--negatives trained|all]

Training is the library's `steps.make_train_step` (full-softmax CE). By
default the held-out items are left out of the training softmax
(`--negatives trained`, the library's `train.negatives="trained"`): items that
arrive after training cannot have been negatives; with `--negatives all` every
step pushes them down, for every representation. The catalogue table is drawn
in training mode, so the "both+id_dropout" variant (`model.item_id_dropout`)
drops id rows on the output side, where ranking happens.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from recattn_jax.config import SHARED_DATA, get_default_config  # noqa: E402
from recattn_jax.data import build_sequences, leave_one_out, read_interactions  # noqa: E402
from recattn_jax.data.features import from_recbole_item  # noqa: E402
from recattn_jax.data.pipeline import eval_batches, rows_per_pass, train_dataset  # noqa: E402
from recattn_jax.evaluation import metrics_from_ranks  # noqa: E402
from recattn_jax.models import SASRec, init_encoder  # noqa: E402
from recattn_jax.parallel import make_mesh  # noqa: E402
from recattn_jax.training.steps import (init_state, make_catalogue_step, make_optimizer,  # noqa: E402
                                        make_rank_step, make_train_step, next_item_loss,
                                        shard_batch)

# Variant name -> (item representation, id dropout).
VARIANTS = {"id": ("id", 0.0), "content": ("content", 0.0), "both": ("both", 0.0),
            "both+id_dropout": ("both", 0.5)}


def cold_split(seed: int, cold_fraction: float, max_cold_events: int):
  """Leave-one-out split of ML-100K with `cold_fraction` of the items removed from training."""
  data = build_sequences(read_interactions(SHARED_DATA / "ml-100k"))
  split = leave_one_out(data)
  rng = np.random.default_rng(seed)
  cold = np.zeros(data.num_items + 1, bool)
  cold[rng.choice(np.arange(1, data.num_items + 1), size=round(cold_fraction * data.num_items),
                  replace=False)] = True
  train = [s[~cold[s]] for s in split.train]
  train = [s for s in train if len(s) >= 2]

  def eval_set(histories, targets):
    kept = [(h[~cold[h]], t) for h, t in zip(histories, targets)]
    kept = [(h, t) for h, t in kept if len(h)]
    return [h for h, _ in kept], np.asarray([t for _, t in kept], np.int32)

  histories, targets = eval_set(split.test.histories, split.test.targets)
  is_cold = cold[targets]
  sets = {"cold": ([h for h, c in zip(histories, is_cold) if c], targets[is_cold]),
          "warm": ([h for h, c in zip(histories, is_cold) if not c], targets[~is_cold])}
  # Every event of a cold item that follows at least one warm event of its user.
  events = [(s[:i], s[i]) for s in data.sequences for i in range(1, len(s)) if cold[s[i]]]
  events = [events[i] for i in rng.permutation(len(events))[:max_cold_events]]
  sets["cold_all_events"] = eval_set([h for h, _ in events], [t for _, t in events])
  stats = {"items": data.num_items, "cold_items": int(cold.sum()),
           "train_sequences": len(train), "train_events": int(sum(map(len, train))),
           **{f"{name}_examples": len(t) for name, (_, t) in sets.items()}}
  return data, train, sets, stats


def run(variant: str, *, data, train, sets, features, args) -> dict:
  representation, id_dropout = VARIANTS[variant]
  config = get_default_config()
  config.train.num_epochs = args.epochs
  config.train.batch_size = args.batch_size
  config.train.learning_rate = args.lr
  mesh = make_mesh(num_devices=1)
  model = SASRec(num_items=data.num_items, max_len=args.max_len, embed_dim=args.dim, num_layers=2,
                 num_heads=1, ff_dim=4 * args.dim, dropout_rate=args.dropout,
                 item_features=features, item_representation=representation,
                 item_id_dropout=id_dropout)
  rows = rows_per_pass(train, max_len=args.max_len, seed=args.seed, pack=True, all_windows=True)
  steps_per_epoch = math.ceil(rows / args.batch_size)
  total = args.epochs * steps_per_epoch
  optimizer = make_optimizer(config.train, total)
  state = init_state(functools.partial(init_encoder, model, max_len=args.max_len), optimizer,
                     seed=args.seed, mesh=mesh)
  item_mask = features.trained if args.negatives == "trained" else None
  train_step = make_train_step(next_item_loss(model, item_mask=item_mask), optimizer, mesh, state)
  batches = iter(train_dataset(train, max_len=args.max_len, batch_size=args.batch_size,
                               seed=args.seed, pack=True, all_windows=True, prefetch=2))
  start = time.time()
  for step in range(total):
    state, metrics = train_step(state, shard_batch(next(batches), mesh))
    if (step + 1) % steps_per_epoch == 0:
      print(f"  {variant}: epoch {(step + 1) // steps_per_epoch}/{args.epochs} "
            f"loss {float(metrics['loss']):.3f} ({time.time() - start:.0f}s)", flush=True)
  batches.close()
  train_seconds = time.time() - start
  rank_step = make_rank_step(model, mesh, item_chunk=4096, ties="pessimistic")
  table = make_catalogue_step(model, mesh)(state.params)
  out = {"train_seconds": train_seconds, "steps": total}
  for name, (histories, targets) in sets.items():
    ranks = []
    for batch in eval_batches(histories, targets, max_len=args.max_len, batch_size=256):
      n = int(batch["weight"].sum())
      ranks.append(np.asarray(rank_step(state.params, table, shard_batch(batch, mesh))[0])[:n])
    ranks = np.concatenate(ranks)
    out[name] = {**metrics_from_ranks(ranks, (10,)), "mean_rank": float(ranks.mean()),
                 "examples": len(targets)}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--max-len", type=int, default=50)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--dropout", type=float, default=0.2)
  parser.add_argument("--cold-fraction", type=float, default=0.1)
  parser.add_argument("--max-cold-events", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--negatives", choices=("trained", "all"), default="trained",
                      help="softmax over trained items only (held-out items arrive after "
                      "training), or over the whole catalogue")
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "cold_start.json"))
  args = parser.parse_args()
  if not (SHARED_DATA / "ml-100k").is_dir():
    sys.exit(f"{SHARED_DATA / 'ml-100k'} is absent")

  data, train, sets, stats = cold_split(args.seed, args.cold_fraction, args.max_cold_events)
  features = from_recbole_item(SHARED_DATA / "ml-100k" / "ml-100k.item", data.item_ids)
  features = features.with_trained_items(train)
  print("data:", json.dumps(stats))
  results = {}
  for variant in args.variants:
    results[variant] = run(variant, data=data, train=train, sets=sets, features=features, args=args)
  header = f"{'model':<16}" + "".join(f"{name:>24}" for name in sets)
  print("\nHR@10 / NDCG@10 (full ranking, seen items excluded; chance HR@10 ~ 0.006)")
  print(header)
  for variant, result in results.items():
    print(f"{variant:<16}" + "".join(
        f"{result[name]['HR@10']:>15.4f} / {result[name]['NDCG@10']:.4f}" for name in sets))
  payload = {"command": " ".join(["benchmarks/cold_start.py", *sys.argv[1:]]),
             "args": vars(args), "data": stats, "features": features.stats,
             "backend": jax.default_backend(), "results": results}
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(payload, indent=2, default=str) + "\n")
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
