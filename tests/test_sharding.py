"""Meshes with a "model" axis: the item table split by rows, trained and ranked without gathering it.

1x4 and 2x2 run on conftest's 4 CPU devices; the 4x2 mesh runs in a
subprocess of its own with 8.
"""

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from recattn_jax.evaluation.ranking import target_ranks
from recattn_jax.evaluation.sharded import sharded_target_ranks, sharded_top_k_items
from recattn_jax.evaluation.topk import top_k_items
from recattn_jax.models.item_encoder import TABLE_ROW_MULTIPLE, table_rows
from recattn_jax.parallel import make_mesh, mesh_shape, shard_spec
from recattn_jax.training import tasks
from recattn_jax.training.steps import shard_batch
from tests.helpers import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mesh_shape_fills_the_minus_one_axis_and_names_bad_fields():
  assert mesh_shape({"data": -1, "model": 1}, 8) == (8, 1)
  assert mesh_shape({"data": 2, "model": -1}, 8) == (2, 4)
  assert mesh_shape(None, 4) == (4, 1)
  with pytest.raises(ValueError, match="train.mesh.model=3 does not divide the 8 devices"):
    mesh_shape({"data": -1, "model": 3}, 8)
  with pytest.raises(ValueError, match="needs 6 devices, but 8"):
    mesh_shape({"data": 2, "model": 3}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    mesh_shape({"batch": 2}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    mesh_shape({"data": -1, "model": -1}, 8)


def test_rules_shard_the_table_its_optimizer_state_and_bias_only():
  mesh = make_mesh({"data": 1, "model": 4})
  rows = table_rows(1000)
  assert rows % TABLE_ROW_MULTIPLE == 0 and rows >= 1001
  assert shard_spec("params/params/item_embed/embedding", (rows, 8), mesh) == P("model", None)
  assert shard_spec("opt_state/1/0/mu/params/item_embed/embedding", (rows, 8), mesh) == P("model", None)
  assert shard_spec("params/params/output_bias", (rows,), mesh) == P("model")
  assert shard_spec("params/params/block_0/qkv/kernel", (8, 24), mesh) == P()
  with pytest.raises(ValueError, match="item_embed/embedding .* divisible by 4"):
    shard_spec("params/params/item_embed/embedding", (1001, 8), mesh)


def _job(data_file, mesh_config, devices, output_dropout=0.0, **overrides):
  config = tiny_config(data_file, num_epochs=1, mesh=mesh_config, num_devices=devices, **overrides)
  config.model.sasrec.dropout_rate = 0.0
  config.model.sasrec.output_dropout = output_dropout
  mesh = make_mesh(config.train.mesh, devices)
  return config, mesh, tasks.build_job(config, mesh)


def _losses(job, mesh, steps=4):
  state = job.state
  train_step = job.make_train_step(state)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, shard_batch(next(job.data_iter), mesh))
    losses.append(float(metrics["loss"]))
  return state, losses


def check_mesh_trains_like_one_device(data_file, mesh_config, devices):
  """The table (and Adam's moments) split by rows, no all-gather of it, the 1-device loss trajectory."""
  _, mesh1, job1 = _job(data_file, {"data": 1, "model": 1}, 1)
  _, losses1 = _losses(job1, mesh1)
  _, mesh, job = _job(data_file, mesh_config, devices)
  table = job.state.params["params"]["item_embed"]["embedding"]
  rows, dim = table.shape
  shard_rows = rows // mesh.shape["model"]
  # Created already split: each device holds rows / model of the table and of Adam's moments.
  assert {shard.data.shape for shard in table.addressable_shards} == {(shard_rows, dim)}
  mu = job.state.opt_state[1][0].mu["params"]["item_embed"]["embedding"]
  assert mu.sharding.spec == P("model", None)

  train_step = job.make_train_step(job.state)
  batch = shard_batch(next(job.data_iter), mesh)
  hlo = train_step.lower(job.state, batch).compile().as_text()
  # The result shapes of every all-gather: one with more rows than a table shard gathers the table.
  results = [(line, match.group(1)) for line in hlo.splitlines()
             if (match := re.search(r"= (.*?) all-gather\(", line))]
  big = [line for line, shapes in results
         if any(int(rows_) > shard_rows for rows_ in re.findall(r"\[(\d+)", shapes))]
  assert not big, "an all-gather larger than one table shard:\n" + "\n".join(big)

  _, mesh, job = _job(data_file, mesh_config, devices)
  _, losses = _losses(job, mesh)
  np.testing.assert_allclose(losses, losses1, rtol=2e-5)


@pytest.mark.parametrize("mesh_config", [{"data": 1, "model": 4}, {"data": 2, "model": 2}])
def test_sharded_training_equals_one_device_and_never_gathers_the_table(data_file, mesh_config):
  check_mesh_trains_like_one_device(data_file, mesh_config, 4)


def test_output_dropout_on_a_split_table_trains_like_one_device(data_file):
  """The padded, split table draws the mask of the whole one: the same dropped elements, the same losses."""
  _, mesh1, job1 = _job(data_file, {"data": 1, "model": 1}, 1, output_dropout=0.3)
  _, losses1 = _losses(job1, mesh1)
  _, mesh, job = _job(data_file, {"data": 1, "model": 4}, 4, output_dropout=0.3)
  _, losses = _losses(job, mesh)
  np.testing.assert_allclose(losses, losses1, rtol=2e-5)
  _, mesh0, job0 = _job(data_file, {"data": 1, "model": 1}, 1)
  assert not np.allclose(_losses(job0, mesh0)[1], losses1, rtol=1e-3)


def test_a_4x2_mesh_on_8_devices(data_file):
  """conftest gives this process 4 devices; 8 need a process of their own."""
  code = ("import sys; from tests.test_sharding import check_mesh_trains_like_one_device as check; "
          "import pathlib; check(pathlib.Path(sys.argv[1]), {'data': 4, 'model': 2}, 8)")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": str(REPO)}
  done = subprocess.run([sys.executable, "-c", code, str(data_file)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]


def test_sharded_ranks_and_top_k_equal_the_whole_table():
  mesh = make_mesh({"data": 2, "model": 2})
  rng = np.random.default_rng(0)
  num_items, dim, batch = 300, 8, 8
  rows = table_rows(num_items)
  table = np.zeros((rows, dim), np.float32)
  table[:num_items + 1] = rng.normal(size=(num_items + 1, dim))
  table[5] = table[7]  # a tie across ids
  users = rng.normal(size=(batch, dim)).astype(np.float32)
  targets = rng.integers(1, num_items + 1, batch).astype(np.int32)
  exclude = rng.integers(0, num_items + 1, (batch, 16)).astype(np.int32)
  table_sharded = jax.device_put(table, NamedSharding(mesh, P("model", None)))
  split = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))

  for ties in ("pessimistic", "optimistic"):
    for excl in (exclude, None):
      want = target_ranks(users, table[:num_items + 1], targets, excl, item_chunk=64, ties=ties)
      got = jax.jit(lambda u, t, g, e: sharded_target_ranks(
          u, t, g, e, mesh=mesh, num_rows=num_items + 1, item_chunk=64, ties=ties))(
              split(users), table_sharded, split(targets), None if excl is None else split(excl))
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  want_scores, want_ids = top_k_items(users, table[:num_items + 1], 20, exclude, item_chunk=64)
  scores, ids = jax.jit(lambda u, t, e: sharded_top_k_items(
      u, t, 20, e, mesh=mesh, num_rows=num_items + 1, item_chunk=64))(
          split(users), table_sharded, split(exclude))
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
  np.testing.assert_allclose(np.asarray(scores), np.asarray(want_scores), rtol=1e-6)


def test_sharded_evaluation_equals_one_device(data_file):
  _, _, job1 = _job(data_file, {"data": 1, "model": 1}, 1)
  _, _, job = _job(data_file, {"data": 2, "model": 2}, 4)
  params = job1.state.params  # same values; restored into the sharded layout below
  sharded = jax.tree.map(lambda x, like: jax.device_put(x, like.sharding), params, job.state.params)
  # Ranks are counts: equal, not close (ties are broken alike on one table and on shards).
  assert job.evaluate(sharded, "valid") == job1.evaluate(params, "valid")
  assert job.report(sharded)["beyond_accuracy"] == job1.report(params)["beyond_accuracy"]
