"""Several processes training as one, checkpoints moved between meshes, gradient accumulation."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from recattn_jax.parallel import make_mesh
from recattn_jax.training import loop, tasks
from recattn_jax.training.checkpoint import Checkpoints, CheckpointFormatError, MANIFEST, Progress
from recattn_jax.models import build_encoder
from recattn_jax.training.steps import accumulated_gradients, next_item_loss, shard_batch
from tests.helpers import tiny_config, write_ratings_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_to_the_metrics_of_one(data_file, tmp_path):
  """2 processes x 2 devices, the same global batch as 1 process x 4 devices.

  Mesh 2x2: each process holds one data-parallel group, and the item table is
  split over its two devices.
  """
  mesh = {"data": 2, "model": 2}
  port, workdir = _free_port(), tmp_path / "multi"
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  workers = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", str(port), str(i), "2",
                               str(data_file), str(workdir), json.dumps(mesh)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
  try:
    outputs = [w.communicate(timeout=600) for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  multi = json.loads((workdir / "results.json").read_text())
  assert multi["num_devices"] == 4

  single = loop.train_and_evaluate(tiny_config(data_file, mesh=mesh), tmp_path / "single")
  assert multi["best_step"] == single["best_step"] and multi["steps_run"] == single["steps_run"]
  for protocol, metrics in single["test"].items():
    assert multi["test"][protocol] == pytest.approx(metrics, abs=1e-6), protocol
  # Only process 0 wrote: one line per record, no second writer's files.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in records if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps))
  saved = sorted((workdir / "checkpoints" / "latest").iterdir())[-1] / "data_iter"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in saved.iterdir()}


def _job(data_file, mesh_config, devices):
  config = tiny_config(data_file, mesh=mesh_config, num_devices=devices)
  config.model.sasrec.dropout_rate = 0.0
  mesh = make_mesh(config.train.mesh, devices)
  return mesh, tasks.build_job(config, mesh)


def _next_loss(job, mesh, state, batch):
  return float(job.make_train_step(state)(state, shard_batch(batch, mesh))[1]["loss"])


def test_a_checkpoint_saved_on_one_mesh_restores_onto_others(data_file, tmp_path):
  mesh, job = _job(data_file, {"data": 1, "model": 4}, 4)
  state = job.state
  train_step = job.make_train_step(state)
  for _ in range(3):
    state, _ = train_step(state, shard_batch(next(job.data_iter), mesh))
  checkpoints = Checkpoints(tmp_path)
  checkpoints.save_latest(3, state, job.data_iter, Progress())
  checkpoints.close()
  batch = next(job.data_iter)
  want = _next_loss(job, mesh, state, batch)

  for mesh_config, devices in (({"data": 2, "model": 2}, 4), ({"data": 1, "model": 1}, 1)):
    other_mesh, other = _job(data_file, mesh_config, devices)
    restored, _ = Checkpoints(tmp_path).restore_latest(other.state, other.data_iter)
    table = restored.params["params"]["item_embed"]["embedding"]
    assert table.sharding.mesh.shape == other_mesh.shape
    assert next(other.data_iter)["inputs"].tolist() == batch["inputs"].tolist()  # same input position
    assert _next_loss(other, other_mesh, restored, batch) == pytest.approx(want, rel=1e-5)


def test_a_checkpoint_of_an_older_format_is_refused_not_moved(data_file, tmp_path):
  mesh, job = _job(data_file, {"data": -1, "model": 1}, 1)
  checkpoints = Checkpoints(tmp_path)
  checkpoints.save_latest(1, job.state, job.data_iter, Progress())
  checkpoints.close()
  manifest = tmp_path / "checkpoints" / "latest" / "1" / MANIFEST
  record = json.loads(manifest.read_text())
  del record["format_version"]  # what version 1 wrote
  manifest.write_text(json.dumps(record))
  with pytest.raises(CheckpointFormatError, match="checkpoint format 1.*reads format 2"):
    Checkpoints(tmp_path).restore_latest(job.state, job.data_iter)
  assert manifest.exists()  # intact, so left in place


def _pointwise_config(ratings, accum):
  config = tiny_config(ratings, batch_size=64, early_stopping_metric="AUC", grad_accum_steps=accum)
  config.task, config.data.format, config.model.name = "ctr", "movielens", "din"
  config.eval.batch_size = 64
  return config


@pytest.mark.parametrize("task", ["ranking", "ctr"])
def test_gradient_accumulation_steps_like_the_large_batch(data_file, task, tmp_path):
  ratings = write_ratings_file(tmp_path / "u.data")
  steps = []
  for accum in (1, 4):
    config = (tiny_config(data_file, grad_accum_steps=accum) if task == "ranking"
              else _pointwise_config(ratings, accum))
    for section in config.model.values():
      if hasattr(section, "dropout_rate"):
        section.dropout_rate = 0.0
    mesh = make_mesh(config.train.mesh)
    job = tasks.build_job(config, mesh)
    _, metrics = job.make_train_step(job.state)(job.state, shard_batch(next(job.data_iter), mesh))
    steps.append(jax.device_get(metrics))
  large, accumulated = steps
  for key in ("loss", "grad_norm", "events" if task == "ranking" else "examples"):
    assert float(accumulated[key]) == pytest.approx(float(large[key]), rel=1e-5), key


def test_accumulated_gradients_equal_the_large_batch_gradient(data_file):
  config = tiny_config(data_file)
  config.model.sasrec.dropout_rate = 0.0
  mesh = make_mesh(config.train.mesh)
  job = tasks.build_job(config, mesh)
  model = build_encoder(config.model, num_items=len(job.bundle_data.item_ids) - 1,
                        max_len=config.data.max_len)
  batch_loss = next_item_loss(model)
  batch = shard_batch(next(job.data_iter), mesh)
  rng = jax.random.PRNGKey(0)
  want, want_metrics = jax.jit(jax.grad(lambda p: batch_loss(p, batch, rng), has_aux=True))(
      job.state.params)
  got, metrics = jax.jit(lambda p: accumulated_gradients(batch_loss, p, batch, rng, 4, mesh))(
      job.state.params)
  assert float(metrics["loss"]) == pytest.approx(float(want_metrics["loss"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)


def test_batches_that_do_not_divide_are_named(data_file, tmp_path):
  with pytest.raises(ValueError, match="train.batch_size=16 must be divisible by train.grad_accum_steps=3"):
    loop.train_and_evaluate(tiny_config(data_file, grad_accum_steps=3), tmp_path / "a")
  with pytest.raises(ValueError, match="train.batch_size / train.grad_accum_steps=2 must be divisible by the 4"):
    loop.train_and_evaluate(tiny_config(data_file, grad_accum_steps=8), tmp_path / "b")


def test_distributed_settings_are_checked_before_anything_starts(monkeypatch):
  from recattn_jax.parallel import initialize_distributed  # noqa: PLC0415

  for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
    monkeypatch.delenv("RECATTN_" + name, raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  assert initialize_distributed() is False  # nothing configured: one process, nothing started
  with pytest.raises(ValueError, match="needs the number of processes"):
    initialize_distributed("127.0.0.1:1234")
  with pytest.raises(ValueError, match="process_id=2 must lie in 0..1"):
    initialize_distributed("127.0.0.1:1234", 2, 2)
  with pytest.raises(ValueError, match="no coordinator address"):
    initialize_distributed(None, 2, 1)
  monkeypatch.setenv("RECATTN_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  monkeypatch.setenv("RECATTN_NUM_PROCESSES", "2")
  monkeypatch.setenv("RECATTN_PROCESS_ID", "5")
  with pytest.raises(ValueError, match="process_id=5"):  # read from the environment
    initialize_distributed()
