"""Runs that cannot lie: diverging models, damaged checkpoints and torn metric files.

Each test damages a copy of one finished tiny run and checks that the damage is
named and either survived (falling back to an intact checkpoint, with the same
final metrics) or refused without touching what the run had saved.
"""

import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recattn_jax.parallel import make_mesh
from recattn_jax.training import checkpoint, loop, steps, tasks
from recattn_jax.training.metric_writer import read_metrics
from tests.helpers import tiny_config


def _step_dirs(workdir: pathlib.Path, kind: str) -> list[pathlib.Path]:
  root = workdir / "checkpoints" / kind
  return sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def _damage(file: pathlib.Path, how: str):
  data = file.read_bytes()
  if how == "flip":  # same size, other bytes
    middle = len(data) // 2
    file.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                     + data[middle + 64:])
  elif how == "truncate":
    file.write_bytes(data[:len(data) // 3])
  elif how == "delete":
    file.unlink()
  else:
    raise ValueError(how)


# ----------------------------------------------------------------------------
# Non-finite losses.


def test_skipped_update_leaves_params_and_optimizer_state_untouched():
  optimizer = optax.adamw(1e-2)
  params = {"w": jnp.ones((3,))}
  state = steps.TrainState.create(params, optimizer, jax.random.PRNGKey(0))
  good, metrics = steps.apply_gradients(state, {"w": jnp.full((3,), 0.5)}, {"loss": jnp.float32(1.0)},
                                        optimizer)
  assert int(good.nonfinite_steps) == 0 and int(good.first_nonfinite_step) == -1
  assert not np.allclose(good.params["w"], 1.0)
  for grads, loss in (({"w": jnp.array([0.5, jnp.nan, 0.5])}, 1.0),
                      ({"w": jnp.full((3,), 0.5)}, jnp.inf)):
    bad, metrics = steps.apply_gradients(good, grads, {"loss": jnp.float32(loss)}, optimizer)
    assert int(bad.step) == 2 and int(bad.nonfinite_steps) == 1 and int(bad.first_nonfinite_step) == 2
    np.testing.assert_array_equal(bad.params["w"], good.params["w"])
    jax.tree.map(np.testing.assert_array_equal, bad.opt_state, good.opt_state)
    assert int(metrics["nonfinite_steps"]) == 1


def test_diverging_model_stops_naming_the_step(data_file, tmp_path):
  config = tiny_config(data_file, learning_rate=1e8, grad_clip=0.0)
  with pytest.raises(loop.NonFiniteError, match=r"not finite at step (\d+)") as raised:
    loop.train_and_evaluate(config, tmp_path)
  step = int(raised.value.args[0].split("at step ")[1].split()[0])
  train = {r["step"]: r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"}
  assert not np.isfinite(train[step]) and all(np.isfinite(train[s]) for s in train if s < step)
  assert [r for r in read_metrics(tmp_path) if r["split"] == "nonfinite"][0]["first_nonfinite_step"] == step
  assert not (tmp_path / "results.json").exists()


def test_skip_policy_skips_and_counts_non_finite_steps(data_file, tmp_path, monkeypatch):
  real = tasks.next_item_loss_fn

  def sometimes_nan(*args, **kwargs):
    loss_fn = real(*args, **kwargs)

    def wrapped(hidden, table, targets, key, item_mask=None):
      loss, metrics = loss_fn(hidden, table, targets, key, item_mask)
      loss = jnp.where(jnp.sum(targets) % 3 == 0, jnp.nan, loss)  # about a third of the batches
      return loss, {**metrics, "loss": loss}
    return wrapped

  monkeypatch.setattr(tasks, "next_item_loss_fn", sometimes_nan)
  results = loop.train_and_evaluate(tiny_config(data_file, nan_policy="skip"), tmp_path)
  losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
  skipped = sum(not np.isfinite(loss) for loss in losses)
  assert 0 < skipped < len(losses) == results["steps_run"]
  assert results["nonfinite_steps"] == skipped
  assert results["test"]["all_items"]["HR@10"] > 0.3  # it still learned from the finite steps


def test_nan_model_ranks_every_target_last(data_file):
  config = tiny_config(data_file)
  job = tasks.build_job(config, make_mesh(num_devices=1))
  nan_params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), job.state.params)
  for protocol, metrics in job.evaluate(nan_params, "test").items():
    assert metrics["HR@1"] == 0.0 and metrics["HR@10"] == 0.0, protocol
  beyond = job.report(nan_params)["beyond_accuracy"]
  assert beyond["HR@10"] == 0.0


# ----------------------------------------------------------------------------
# Damaged checkpoints.


def test_checkpoints_keep_two_and_carry_checksums(finished_run):
  workdir, _ = finished_run
  for kind in ("latest", "best"):
    dirs = _step_dirs(workdir, kind)
    assert 1 <= len(dirs) <= 2
    assert all(checkpoint.verify(d) is None for d in dirs)
  assert len(_step_dirs(workdir, "latest")) == 2


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "manifest"])
def test_damaged_latest_falls_back_to_the_previous_one(run_copy, caplog, how):
  workdir, uninterrupted = run_copy
  newest = _step_dirs(workdir, "latest")[-1]
  target = newest / checkpoint.MANIFEST if how == "manifest" else _largest_array_file(newest)
  _damage(target, "delete" if how == "manifest" else how)
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    resumed = loop.train_and_evaluate(tiny_config(pathlib.Path(uninterrupted["data"]["source"])),
                                      workdir)
  assert str(newest) in caplog.text and "damaged" in caplog.text
  assert resumed["test"] == uninterrupted["test"]  # retrained the lost steps, exactly
  assert resumed["best_step"] == uninterrupted["best_step"]
  assert (workdir / "checkpoints" / "damaged" / f"latest-{newest.name}").is_dir()  # kept, not deleted


def test_every_latest_damaged_fails_with_a_recovery_hint(run_copy):
  workdir, results = run_copy
  before = (workdir / "results.json").read_bytes()
  for step_dir in _step_dirs(workdir, "latest"):
    _damage(_largest_array_file(step_dir), "flip")
  with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint.*new --workdir"):
    loop.train_and_evaluate(tiny_config(pathlib.Path(results["data"]["source"])), workdir)
  assert (workdir / "results.json").read_bytes() == before


@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "step"])
def test_damaged_best_never_rewrites_results(run_copy, how):
  workdir, results = run_copy
  before = (workdir / "results.json").read_bytes()
  for best in _step_dirs(workdir, "best"):
    if how == "step":
      shutil.rmtree(best)
    else:
      _damage(_largest_array_file(best), how)
  with pytest.raises(checkpoint.CheckpointError, match="best checkpoint") as e:
    loop.train_and_evaluate(tiny_config(pathlib.Path(results["data"]["source"])), workdir)
  assert str(workdir / "checkpoints" / "best") in str(e.value)
  assert (workdir / "results.json").read_bytes() == before


def test_damaged_newest_best_is_rebuilt_from_an_older_intact_pair(run_copy, caplog):
  workdir, results = run_copy
  latest = _step_dirs(workdir, "latest")
  older_best = json.loads((latest[0] / "progress" / "metadata").read_text())["best_step"]
  assert older_best != results["best_step"], "precondition: the older latest points at an older best"
  best = workdir / "checkpoints" / "best" / str(results["best_step"])
  _damage(_largest_array_file(best), "flip")
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    again = loop.train_and_evaluate(tiny_config(pathlib.Path(results["data"]["source"])), workdir)
  assert str(best) in caplog.text
  assert again["test"] == results["test"] and again["best_step"] == results["best_step"]


# ----------------------------------------------------------------------------
# metrics.jsonl.


def test_torn_last_metrics_line_is_repaired_on_resume(run_copy, caplog):
  workdir, results = run_copy
  with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 17, "split": "tra')  # a crash mid-write
  with caplog.at_level(logging.WARNING):
    assert len(read_metrics(workdir)) > 0
  assert "torn last line" in caplog.text
  again = loop.train_and_evaluate(tiny_config(pathlib.Path(results["data"]["source"])), workdir)
  assert again["test"] == results["test"]
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert all(json.loads(line) for line in lines)


def test_damaged_metrics_line_is_named(run_copy):
  workdir, results = run_copy
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  lines[2] = lines[2][:10]
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r"metrics\.jsonl:3: not a JSON record"):
    loop.train_and_evaluate(tiny_config(pathlib.Path(results["data"]["source"])), workdir)
