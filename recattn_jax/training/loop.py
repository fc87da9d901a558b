"""`train_and_evaluate(config, workdir)`: the whole job, resumable from `workdir`."""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from recattn_jax.data.loading import load_split
from recattn_jax.data.pipeline import eval_batches, rows_per_pass, train_dataset
from recattn_jax.evaluation import metrics_from_ranks
from recattn_jax.models import build_model
from recattn_jax.training.checkpoint import Checkpoints, Progress
from recattn_jax.training.metric_writer import MetricWriter
from recattn_jax.training.steps import (init_state, make_mesh, make_optimizer, make_rank_step,
                                        make_train_step, shard_batch)

log = logging.getLogger(__name__)

PROTOCOLS = {True: "seen_excluded", False: "all_items"}


def evaluate(rank_step, params, eval_set, *, config: ml_collections.ConfigDict, mesh) -> dict:
  """Metrics of both protocols: {"seen_excluded": {...}, "all_items": {...}}."""
  ranks = {True: [], False: []}
  for batch in eval_batches(eval_set.histories, eval_set.targets, max_len=config.data.max_len,
                            batch_size=config.eval.batch_size, padding=config.data.padding):
    rows = int(batch["weight"].sum())
    excluded, everything = rank_step(params, shard_batch(batch, mesh))
    ranks[True].append(np.asarray(excluded)[:rows])
    ranks[False].append(np.asarray(everything)[:rows])
  return {PROTOCOLS[flag]: metrics_from_ranks(np.concatenate(r), tuple(config.eval.ks))
          for flag, r in ranks.items()}


def _write_json(path: pathlib.Path, payload: dict):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
  os.replace(tmp, path)


def format_table(results: dict, ks) -> str:
  lines = [f"{'test metric':<26}" + "".join(f"{'@' + str(k):>9}" for k in ks)]
  for protocol in PROTOCOLS.values():
    for name in ("HR", "NDCG", "MRR"):
      row = results["test"][protocol]
      lines.append(f"{name + ' (' + protocol + ')':<26}" + "".join(f"{row[f'{name}@{k}']:>9.4f}" for k in ks))
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains until early stopping or `train.num_epochs`, then reports test metrics of the best model.

  Rerunning with the same `workdir` resumes from the latest checkpoint; a run
  that had finished only recomputes and rewrites the results.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  split = load_split(config.data)
  log.info("data: %s", json.dumps(split.stats, default=str))

  mesh = make_mesh(config.train.num_devices)
  for field in ("train.batch_size", "eval.batch_size"):
    section, key = field.split(".")
    if config[section][key] % mesh.size:
      raise ValueError(f"{field}={config[section][key]} must be divisible by the {mesh.size} devices")

  max_len = config.data.max_len
  model = build_model(config.model, num_items=split.num_items, max_len=max_len)
  rows = rows_per_pass(split.train, max_len=max_len, seed=config.seed, pack=config.data.pack,
                       all_windows=config.data.all_windows)
  steps_per_epoch = math.ceil(rows / config.train.batch_size)
  total_steps = config.train.num_epochs * steps_per_epoch
  optimizer = make_optimizer(config.train, total_steps)
  state = init_state(model, optimizer, seed=config.seed, max_len=max_len, mesh=mesh)
  data_iter = iter(train_dataset(split.train, max_len=max_len, batch_size=config.train.batch_size,
                                 seed=config.seed, padding=config.data.padding,
                                 pack=config.data.pack, all_windows=config.data.all_windows,
                                 prefetch=config.data.prefetch))

  checkpoints = Checkpoints(workdir)
  progress = Progress()
  restored = checkpoints.restore_latest(state, data_iter)
  if restored is not None:
    state, progress = restored
    log.info("resuming from step %d (finished=%s)", int(state.step), progress.finished)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2), encoding="utf-8")

  writer = MetricWriter(workdir, resume_step=int(state.step))
  rank_step = make_rank_step(model, mesh, item_chunk=config.eval.item_chunk, ties=config.eval.ties)
  try:
    state = _train(state, progress, config=config, split=split, model=model, optimizer=optimizer,
                   mesh=mesh, data_iter=data_iter, checkpoints=checkpoints, writer=writer,
                   rank_step=rank_step, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    results = _final_results(state, progress, config=config, split=split, rank_step=rank_step, mesh=mesh,
                             checkpoints=checkpoints, steps_per_epoch=steps_per_epoch)
    writer.write(int(state.step), "test", results["test"][results["primary_protocol"]],
                 protocol=results["primary_protocol"])
  finally:
    data_iter.close()
    writer.close()
    checkpoints.close()
  _write_json(workdir / "results.json", results)
  return results


def _train(state, progress: Progress, *, config, split, model, optimizer, mesh, data_iter,
           checkpoints: Checkpoints, writer: MetricWriter, rank_step, steps_per_epoch: int,
           total_steps: int):
  """Steps until early stopping or `total_steps`; evaluates and checkpoints every `eval_every` steps."""
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch))
  train_step = make_train_step(model, optimizer, mesh, state)
  primary = PROTOCOLS[config.eval.exclude_seen]
  step = int(state.step)
  bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0,
             disable=progress.finished or not config.train.progress_bar)
  window_start, window_steps, window_events = time.perf_counter(), 0, 0.0
  segment_start = time.perf_counter()

  while not progress.finished and step < total_steps:
    state, metrics = train_step(state, shard_batch(next(data_iter), mesh))
    step += 1
    window_steps += 1
    window_events += metrics["events"]  # stays on device: no sync per step
    bar.update(1)
    if step % config.train.log_every_steps == 0 or step % eval_every == 0:
      metrics = jax.device_get(metrics)
      elapsed = time.perf_counter() - window_start
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
      writer.write(step, "train", {"loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                   "steps_per_second": window_steps / elapsed,
                                   "events_per_second": float(window_events) / elapsed},
                   epoch=step / steps_per_epoch)
      window_start, window_steps, window_events = time.perf_counter(), 0, 0.0

    if step % eval_every == 0 or step == total_steps:
      valid = evaluate(rank_step, state.params, split.valid, config=config, mesh=mesh)
      score = valid[primary][config.train.early_stopping_metric]
      now = time.perf_counter()
      progress.train_seconds += now - segment_start
      segment_start = now
      writer.write(step, "valid", valid[primary], epoch=step / steps_per_epoch, protocol=primary,
                   train_seconds=progress.train_seconds)
      if score > progress.best_metric:
        progress.best_metric, progress.best_step = score, step
        progress.evals_without_improvement = 0
        checkpoints.save_best(step, state.params)
      else:
        progress.evals_without_improvement += 1
      progress.finished = (progress.evals_without_improvement >= config.train.patience
                           or step >= total_steps)
      log.info("step %d epoch %.1f: valid %s=%.4f (best %.4f at step %d)%s", step, step / steps_per_epoch,
               config.train.early_stopping_metric, score, progress.best_metric, progress.best_step,
               " - stopping" if progress.finished else "")
      checkpoints.save_latest(step, state, data_iter, progress)
  bar.close()
  checkpoints.wait()
  return state


def _final_results(state, progress: Progress, *, config, split, rank_step, mesh,
                   checkpoints: Checkpoints, steps_per_epoch: int) -> dict:
  """Test and validation metrics of the best checkpoint, with what is needed to reproduce them."""
  best_params = checkpoints.restore_best(state.params)
  return {
      "test": evaluate(rank_step, best_params, split.test, config=config, mesh=mesh),
      "valid": evaluate(rank_step, best_params, split.valid, config=config, mesh=mesh),
      "primary_protocol": PROTOCOLS[config.eval.exclude_seen],
      "best_step": progress.best_step,
      "best_epoch": progress.best_step / steps_per_epoch,
      "steps_run": int(state.step),
      "train_seconds": progress.train_seconds,
      "num_devices": mesh.size,
      "data": split.stats,
      "config": json.loads(config.to_json_best_effort()),
  }
