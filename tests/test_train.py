"""End to end: tiny runs, exact resume after a crash, and 1 vs 4 devices."""

import json

import jax
import numpy as np
import pytest

from recattn_jax.training import loop, tasks
from recattn_jax.training.metric_writer import read_metrics
from tests.helpers import tiny_config


def test_smoke_run_writes_results_and_metrics(finished_run):
  workdir, results = finished_run
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["test"] == results["test"]
  assert saved["config"]["data"]["max_len"] == 12
  for protocol in ("seen_excluded", "all_items"):
    assert set(saved["test"][protocol]) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (1, 10)}
  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  assert [r["split"] for r in records].count("valid") == 4
  assert all(np.isfinite(r["loss"]) and r["steps_per_second"] > 0 for r in train)
  assert train[-1]["loss"] < train[0]["loss"]
  # The data is learnable: far better than a random ranking of 40 items (HR@10 = 0.25).
  assert results["test"]["all_items"]["HR@10"] > 0.5
  assert list((workdir / "tensorboard").iterdir())


def test_rerun_of_finished_run_does_not_train_again(finished_run, data_file):
  workdir, results = finished_run
  again = loop.train_and_evaluate(tiny_config(data_file), workdir)
  assert again["test"] == results["test"]
  assert again["steps_run"] == results["steps_run"]
  assert [r["split"] for r in read_metrics(workdir)].count("test") == 1


def test_interrupted_run_resumes_to_identical_results(finished_run, data_file, tmp_path, monkeypatch):
  _, uninterrupted = finished_run
  real_make_train_step = tasks.make_train_step

  def crashing_make_train_step(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)
    calls = []

    def step(state, batch):
      calls.append(1)
      if len(calls) == 13:  # mid-epoch, after at least one checkpoint
        raise KeyboardInterrupt("simulated crash")
      return step_fn(state, batch)
    return step

  monkeypatch.setattr(tasks, "make_train_step", crashing_make_train_step)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(tiny_config(data_file), tmp_path)
  assert not (tmp_path / "results.json").exists()
  monkeypatch.setattr(tasks, "make_train_step", real_make_train_step)
  resumed = loop.train_and_evaluate(tiny_config(data_file), tmp_path)
  assert resumed["test"] == uninterrupted["test"]
  assert resumed["best_step"] == uninterrupted["best_step"]
  losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
  steps = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
  assert steps == sorted(set(steps)), "resumed log must not repeat steps"
  assert len(losses) == uninterrupted["steps_run"]


def test_four_devices_give_the_one_device_loss_curve(data_file, tmp_path):
  assert jax.local_device_count() == 4
  curves = {}
  for devices in (1, 4):
    config = tiny_config(data_file, num_devices=devices, num_epochs=2)
    config.model.sasrec.dropout_rate = 0.0
    loop.train_and_evaluate(config, tmp_path / str(devices))
    curves[devices] = [r["loss"] for r in read_metrics(tmp_path / str(devices)) if r["split"] == "train"]
  assert len(curves[1]) > 5
  np.testing.assert_allclose(curves[4], curves[1], rtol=2e-5)
