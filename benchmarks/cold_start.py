"""Cold-start and zero-shot transfer: SASRec with id, content and text item vectors.

  .venv/bin/python benchmarks/cold_start.py                                   # ML-100K, cold items
  .venv/bin/python benchmarks/cold_start.py --dataset lastfm                  # Last.fm artist names
  .venv/bin/python benchmarks/cold_start.py --protocol transfer               # half the catalogue

Protocols (`--protocol`):
  * cold: a random `--cold-fraction` of the items is held out of training: their
    events are removed from the training sequences, but they stay in the
    catalogue with their content. Leave-one-out targets (second-to-last event
    validation, last event test; cold items removed from the histories) are
    reported separately for cold and warm targets, plus, for a larger cold
    sample, every event of a cold item whose user has an earlier warm event
    ("cold_all_events": histories there overlap the user's training events,
    which leaks the user's later taste, but never the item).
  * transfer: the catalogue is split in two random halves A and B. Training
    sees only the events on A items. Every user's last B event is the test
    target and the one before it the validation target (history: all the
    user's earlier events, A and B); only B items are ranked (A items are
    excluded like seen ones), so B is recommended zero-shot through content.

Variants (`--variants`; `VARIANTS`): id only; categorical content (ML-100K's
genres, year and title words); frozen text vectors (all-MiniLM-L6-v2 over the
item text: ML-100K "title (year). genres", Last.fm artist names); the same text
encoder fine-tuned with LoRA adapters as the item tower; id + text with id
dropout (DropoutNet). Every variant trains with the full softmax over the trained
items (`train.negatives="trained"`: items that arrive after training cannot
have been negatives). The LoRA tower needs a candidate loss instead,
`mixed_softmax` (`--positions` sampled positions' targets + `--num-negatives`
uniform negatives among the trained items, log-Q corrected), which on this CPU
affords ~2% of a batch's positions a step; so "text+lora" starts from the
"text" variant's selected parameters and trains only the adapters
(`--lora-rank`, in the last `--lora-layers` blocks; `train.trainable="_lora"`)
for `--finetune-epochs`. "text+lora_all" trains everything that way, and
"text_mixed" everything without adapters (the controls: what the noisy
few-position loss does to the recommender itself). Their epoch 0 (the
starting point) is a candidate of the validation selection.

Each variant is evaluated on validation after every epoch and the epoch with
the best overall validation NDCG@10 is the one reported on test. Standard
errors are over the examples of a set. The popularity row ranks by training
counts (transfer: by counts of B items in the evaluation histories, which the
models never see). Results go to `benchmarks/results/<protocol>_<dataset>.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from recattn_jax.config import SHARED_DATA, get_default_config, get_lastfm_config  # noqa: E402
from recattn_jax.data.loading import load_split, load_split_features, resolve_paths  # noqa: E402
from recattn_jax.data.pipeline import eval_batches, rows_per_pass, train_dataset  # noqa: E402
from recattn_jax.evaluation import target_ranks  # noqa: E402
from recattn_jax.models import SASRec, init_encoder  # noqa: E402
from recattn_jax.models.text_tower import insert_pretrained  # noqa: E402
from recattn_jax.parallel import make_mesh  # noqa: E402
from recattn_jax.text.bert import freeze  # noqa: E402
from recattn_jax.training import tasks  # noqa: E402
from recattn_jax.training.bundle import warm_start  # noqa: E402
from recattn_jax.training.losses import next_item_loss_fn  # noqa: E402
from recattn_jax.training.steps import (init_state, make_catalogue_step, make_optimizer,  # noqa: E402
                                        make_rank_step, make_train_step, next_item_loss,
                                        shard_batch)


@dataclasses.dataclass(frozen=True)
class Variant:
  representation: str
  content: str | None = None  # "categorical", "text", "categorical+text" or None
  id_dropout: float = 0.0
  lora: bool = False
  loss: str = "softmax"
  start_from: str | None = None  # continue from this variant's selected parameters
  trainable: str = ""  # train.trainable: a regex of the parameters that train ("": all)


VARIANTS = {
    "id": Variant("id"),
    "content": Variant("content", "categorical"),
    "both+id_dropout": Variant("both", "categorical", 0.5),
    "text": Variant("content", "text"),
    "content+text": Variant("content", "categorical+text"),
    "text_mixed": Variant("content", "text", loss="mixed_softmax", start_from="text"),
    "text+lora_all": Variant("content", "text", lora=True, loss="mixed_softmax", start_from="text"),
    "text+lora": Variant("content", "text", lora=True, loss="mixed_softmax", start_from="text",
                         trainable="_lora"),
    "id+text+id_dropout": Variant("both", "text", 0.5),
}
DATASETS = {"ml-100k": get_default_config, "lastfm": get_lastfm_config}
METRICS = ("HR@10", "NDCG@10")


@dataclasses.dataclass
class Protocol:
  train: list[np.ndarray]
  valid: dict[str, tuple[list[np.ndarray], np.ndarray]]
  test: dict[str, tuple[list[np.ndarray], np.ndarray]]
  stats: dict
  excluded: np.ndarray  # item ids never ranked (transfer: the training half)
  popularity: np.ndarray  # the popularity baseline's counts [N + 1]


def _kept(histories, targets, keep):
  """(history with only `keep` items, target) pairs whose history is not empty."""
  pairs = [(h[keep[h]], t) for h, t in zip(histories, targets)]
  pairs = [(h, t) for h, t in pairs if len(h)]
  return [h for h, _ in pairs], np.asarray([t for _, t in pairs], np.int32)


def _by_target(histories, targets, is_cold):
  return {"cold": ([h for h, c in zip(histories, is_cold) if c], targets[is_cold]),
          "warm": ([h for h, c in zip(histories, is_cold) if not c], targets[~is_cold])}


def cold_protocol(split, seed: int, cold_fraction: float, max_cold_events: int) -> Protocol:
  rng = np.random.default_rng(seed)
  n = split.num_items
  cold = np.zeros(n + 1, bool)
  cold[rng.choice(np.arange(1, n + 1), size=round(cold_fraction * n), replace=False)] = True
  train = [s[~cold[s]] for s in split.train]
  train = [s for s in train if len(s) >= 2]
  sets = {}
  for which in ("valid", "test"):
    eval_set = getattr(split, which)
    histories, targets = _kept(eval_set.histories, eval_set.targets, ~cold)
    sets[which] = _by_target(histories, targets, cold[targets])
  events = [(s[:i], s[i]) for s in split.sequences for i in range(1, len(s)) if cold[s[i]]]
  events = [events[i] for i in rng.permutation(len(events))[:max_cold_events]]
  sets["test"]["cold_all_events"] = _kept([h for h, _ in events], [t for _, t in events], ~cold)
  popularity = np.bincount(np.concatenate(train), minlength=n + 1)
  stats = {"items": n, "cold_items": int(cold.sum()), "train_sequences": len(train),
           "train_events": int(sum(map(len, train)))}
  return Protocol(train, sets["valid"], sets["test"], stats, np.zeros(0, np.int32), popularity)


def transfer_protocol(split, seed: int) -> Protocol:
  rng = np.random.default_rng(seed)
  n = split.num_items
  half_b = np.zeros(n + 1, bool)
  half_b[rng.choice(np.arange(1, n + 1), size=n // 2, replace=False)] = True
  train = [s[~half_b[s]] for s in split.sequences]
  train = [s for s in train if len(s) >= 2]
  sets = {"valid": ([], []), "test": ([], [])}
  popularity = np.zeros(n + 1, np.int64)
  for s in split.sequences:
    b_positions = np.flatnonzero(half_b[s])
    if len(b_positions) < 2 or b_positions[-2] == 0:
      continue
    for which, position in (("valid", b_positions[-2]), ("test", b_positions[-1])):
      sets[which][0].append(s[:position])
      sets[which][1].append(s[position])
    np.add.at(popularity, s[b_positions[:-2]], 1)
  a_items = np.flatnonzero(~half_b)[1:].astype(np.int32)
  stats = {"items": n, "half_b_items": int(half_b.sum()), "train_sequences": len(train),
           "train_events": int(sum(map(len, train))), "users": len(sets["test"][0])}
  as_sets = lambda which: {"half_b": (sets[which][0], np.asarray(sets[which][1], np.int32))}
  return Protocol(train, as_sets("valid"), as_sets("test"), stats, a_items, popularity)


def features_for(variant: Variant, data_config, split, train, text):
  """The variant's item features (None: id only), with the items trained under this protocol marked."""
  if variant.content is None:
    return None
  config = data_config.copy_and_resolve_references()
  if "text" in variant.content:
    config = tasks.with_text_embeddings(config, split, text)
  else:
    config.text_embeddings_path = ""
  if "categorical" not in variant.content:
    config.item_features_path = ""
  features = load_split_features(config, split).with_trained_items(train)
  if variant.lora:
    features = tasks.with_text_tokens(features, text, config)
  return features


def evaluate(rank_step, table, params, sets, excluded, mesh, max_len: int) -> dict:
  out = {}
  for name, (histories, targets) in sets.items():
    ranks = []
    for batch in eval_batches(histories, targets, max_len=max_len, batch_size=256):
      if len(excluded):
        batch["exclude"] = np.concatenate(
            [batch["exclude"], np.broadcast_to(excluded, (len(batch["exclude"]), len(excluded)))], 1)
      rows = int(batch["weight"].sum())
      ranks.append(np.asarray(rank_step(params, table, shard_batch(batch, mesh))[0])[:rows])
    out[name] = summarize(np.concatenate(ranks))
  return out


def paired(a: dict, b: dict) -> dict:
  """Per-example differences a - b of HR@10 and NDCG@10 on the same examples, with standard errors."""
  out = {}
  for metric, per_example in (("HR@10", lambda r: (r < 10).astype(float)),
                              ("NDCG@10", lambda r: np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0))):
    diff = per_example(np.asarray(a["ranks"])) - per_example(np.asarray(b["ranks"]))
    out[metric] = float(diff.mean())
    out[f"{metric}_se"] = float(diff.std(ddof=1) / math.sqrt(len(diff)))
  return out


def summarize(ranks: np.ndarray) -> dict:
  """HR@10 / NDCG@10 with their standard errors over the examples."""
  hit = ranks < 10
  ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
  se = lambda x: float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
  return {"HR@10": float(hit.mean()), "HR@10_se": se(hit.astype(float)),
          "NDCG@10": float(ndcg.mean()), "NDCG@10_se": se(ndcg), "mean_rank": float(ranks.mean()),
          "examples": len(ranks), "ranks": ranks.astype(int).tolist()}


def overall(metrics: dict, metric: str = "NDCG@10") -> float:
  total = sum(m["examples"] for m in metrics.values())
  return sum(m[metric] * m["examples"] for m in metrics.values()) / max(total, 1)


def popularity_ranks(protocol: Protocol, sets) -> dict:
  table = jnp.asarray(protocol.popularity, jnp.float32)[:, None].at[0].set(0.0)
  out = {}
  for name, (histories, targets) in sets.items():
    ranks = []
    for batch in eval_batches(histories, targets, max_len=1, batch_size=256):
      exclude = batch["exclude"]
      if len(protocol.excluded):
        exclude = np.concatenate([exclude, np.broadcast_to(protocol.excluded,
                                                           (len(exclude), len(protocol.excluded)))], 1)
      rows = int(batch["weight"].sum())
      users = jnp.ones((len(batch["targets"]), 1), jnp.float32)
      ranks.append(np.asarray(target_ranks(users, table, batch["targets"], exclude,
                                           item_chunk=4096, ties="pessimistic"))[:rows])
    out[name] = summarize(np.concatenate(ranks))
  return out


def run(name: str, protocol: Protocol, features, text, args, start=None) -> tuple[dict, dict]:
  """(results, the selected parameters) of one variant; `start`: parameters to continue from."""
  variant = VARIANTS[name]
  epochs = args.finetune_epochs if start is not None else args.epochs
  config = get_default_config()
  config.train.update(num_epochs=epochs, batch_size=args.batch_size,
                      learning_rate=args.finetune_lr if start is not None else args.lr)
  mesh = make_mesh(num_devices=1)
  lora = ({"item_text_lora_rank": args.lora_rank, "item_text_lora_layers": args.lora_layers}
          if variant.lora else {})
  model = SASRec(num_items=len(protocol.popularity) - 1, max_len=args.max_len, embed_dim=args.dim,
                 num_layers=2, num_heads=1, ff_dim=4 * args.dim, dropout_rate=args.dropout,
                 item_features=features, item_representation=variant.representation,
                 item_id_dropout=variant.id_dropout, **lora)
  rows = rows_per_pass(protocol.train, max_len=args.max_len, seed=args.seed, pack=True,
                       all_windows=True)
  steps_per_epoch = math.ceil(rows / args.batch_size)
  optimizer = make_optimizer(config.train, epochs * steps_per_epoch)
  if variant.lora or variant.trainable:
    optimizer = freeze(optimizer, functools.partial(tasks.frozen_parameters,
                                                    trainable=variant.trainable))
  state = init_state(functools.partial(init_encoder, model, max_len=args.max_len), optimizer,
                     seed=args.seed, mesh=mesh)
  out = {"steps_per_epoch": steps_per_epoch}
  if variant.lora:
    state = state.replace(params=insert_pretrained(state.params, text.model.params))
    out["parameters"] = tasks.text_tower_sizes(state.params, variant.trainable)
  if start is not None:
    state = state.replace(params=warm_start(state.params, start)[0])
  trained = np.zeros(len(protocol.popularity), bool)
  trained[np.concatenate(protocol.train)] = True
  loss_fn = next_item_loss_fn(variant.loss, **({"positions": args.positions,
                                                "num_negatives": args.num_negatives}
                                               if variant.loss == "mixed_softmax" else {}))
  train_step = make_train_step(next_item_loss(model, loss_fn, jnp.asarray(trained)), optimizer,
                               mesh, state)
  catalogue_step = make_catalogue_step(model, mesh)
  rank_step = make_rank_step(model, mesh, item_chunk=4096, ties="pessimistic")
  batches = iter(train_dataset(protocol.train, max_len=args.max_len, batch_size=args.batch_size,
                               seed=args.seed, pack=True, all_windows=True, prefetch=2))
  best, best_params, history, step_seconds, eval_seconds = -1.0, None, [], [], 0.0
  for epoch in range(0 if start is not None else 1, epochs + 1):
    for _ in range(steps_per_epoch if epoch else 0):
      start = time.perf_counter()
      state, metrics = train_step(state, shard_batch(next(batches), mesh))
      loss = float(metrics["loss"])
      step_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    valid = evaluate(rank_step, catalogue_step(state.params), state.params, protocol.valid,
                     protocol.excluded, mesh, args.max_len)
    eval_seconds += time.perf_counter() - start
    score = overall(valid)
    history.append({"epoch": epoch, "loss": loss if epoch else None, "valid_NDCG@10": score})
    print(f"  {name}: epoch {epoch}/{epochs} loss {loss if epoch else float('nan'):.3f} valid NDCG@10 {score:.4f} "
          f"({sum(step_seconds):.0f}s)", flush=True)
    if score > best:
      best, best_params, out["best_epoch"] = score, jax.tree.map(np.asarray, state.params), epoch
  batches.close()
  out["valid"] = next(h for h in history if h["epoch"] == out["best_epoch"])
  out["test"] = evaluate(rank_step, catalogue_step(best_params), best_params, protocol.test,
                         protocol.excluded, mesh, args.max_len)
  # The first step compiles; the median of the others is the step time.
  out.update(train_seconds=sum(step_seconds), eval_seconds=eval_seconds,
             step_seconds_median=float(np.median(step_seconds[1:] or step_seconds)), history=history)
  return out, best_params


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", choices=sorted(DATASETS), default="ml-100k")
  parser.add_argument("--protocol", choices=("cold", "transfer"), default="cold")
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--max-len", type=int, default=50)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--dropout", type=float, default=0.2)
  parser.add_argument("--cold-fraction", type=float, default=0.1)
  parser.add_argument("--max-cold-events", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--text-model", default="minilm", help="data.text_model: 'minilm' or a folder")
  parser.add_argument("--text-max-length", type=int, default=24, help="tokens per item text "
                      "(ML-100K: 99%% of the texts fit in 24)")
  parser.add_argument("--lora-rank", type=int, default=8)
  parser.add_argument("--lora-layers", type=int, default=2, help="adapters in the last that many "
                      "blocks (0: all); the backward pass stops below them")
  parser.add_argument("--finetune-epochs", type=int, default=4,
                      help="epochs of the variants that continue from another")
  parser.add_argument("--finetune-lr", type=float, default=1e-3)
  parser.add_argument("--positions", type=int, default=128, help="mixed_softmax positions per step")
  parser.add_argument("--num-negatives", type=int, default=128, help="mixed_softmax uniform negatives")
  parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                      default=["id", "content", "text", "content+text", "text+lora",
                               "id+text+id_dropout"])
  parser.add_argument("--out", default=None)
  parser.add_argument("--merge", action="store_true",
                      help="keep the variants already in --out that this run does not repeat")
  args = parser.parse_args()
  out = pathlib.Path(args.out or pathlib.Path(__file__).parent / "results"
                     / f"{args.protocol}_{args.dataset}.json")

  config = DATASETS[args.dataset]()
  data_config = config.data
  if args.dataset == "ml-100k":
    data_config.item_features_path = str(SHARED_DATA / "ml-100k" / "ml-100k.item")
  data_config.update(text_model=args.text_model, text_max_length=args.text_max_length)
  data_config = resolve_paths(data_config)
  if not pathlib.Path(data_config.path).exists():
    sys.exit(f"{data_config.path} is absent")
  split = load_split(data_config)
  protocol = (cold_protocol(split, args.seed, args.cold_fraction, args.max_cold_events)
              if args.protocol == "cold" else transfer_protocol(split, args.seed))
  stats = {**protocol.stats, **{f"{w}_{name}_examples": len(t) for w in ("valid", "test")
                                for name, (_, t) in getattr(protocol, w).items()}}
  print("data:", json.dumps(stats))
  text = tasks.item_text(data_config, split)
  variants = [v for v in args.variants
              if "categorical" not in (VARIANTS[v].content or "") or data_config.item_features_path]
  results = {"popularity": {"test": popularity_ranks(protocol, protocol.test)}}
  commands = [" ".join(["benchmarks/cold_start.py", *sys.argv[1:]])]
  if args.merge and out.exists():
    previous = json.loads(out.read_text())
    results = {**previous["results"], **results}
    commands = previous.get("commands", [previous.get("command")]) + commands
  selected = {}
  for name in variants:
    variant = VARIANTS[name]
    if variant.start_from and variant.start_from not in selected:
      sys.exit(f"variant {name!r} continues from {variant.start_from!r}: list that one first")
    features = features_for(variant, data_config, split, protocol.train, text)
    results[name], selected[name] = run(name, protocol, features, text, args,
                                        selected.get(variant.start_from))
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"commands": commands, "args": vars(args), "data": stats,
               "backend": jax.default_backend(), "results": results}
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
  sets = list(protocol.test)
  print(f"\ntest HR@10 / NDCG@10 (+- standard error), epoch chosen on validation NDCG@10")
  print(f"{'model':<20}" + "".join(f"{name:>34}" for name in sets))
  for name, result in results.items():
    cells = "".join(f"{r['HR@10']:>10.4f}+-{r['HR@10_se']:.4f} / "
                    f"{r['NDCG@10']:.4f}+-{r['NDCG@10_se']:.4f}"
                    for r in (result["test"][s] for s in sets))
    print(f"{name:<20}{cells}")
  if "text" in results and "content" in results:
    print("\ntext - content, paired over the same test examples (+- standard error):")
    for name in sets:
      diff = paired(results["text"]["test"][name], results["content"]["test"][name])
      print(f"  {name:<18} HR@10 {diff['HR@10']:+.4f}+-{diff['HR@10_se']:.4f}   "
            f"NDCG@10 {diff['NDCG@10']:+.4f}+-{diff['NDCG@10_se']:.4f}")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
