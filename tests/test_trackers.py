"""Experiment trackers: every backend receives what metrics.jsonl holds; bad names are config errors."""

import importlib.util
import json

import pytest

from recattn_jax.config import ConfigError, check_config
from recattn_jax.training import loop
from recattn_jax.training.metric_writer import read_metrics
from recattn_jax.training.trackers import IDS_FILE
from tests.helpers import tiny_config


def test_every_tracker_receives_the_runs_metrics(data_file, tmp_path, monkeypatch):
  from mlflow.tracking import MlflowClient

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
  config = tiny_config(data_file, num_epochs=2)
  config.train.trackers = ("tensorboard", "wandb", "mlflow")
  config.train.tracking.experiment = "tracker-test"
  config.train.tracking.group = "study-a"
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir)
  valid = [r["NDCG@10"] for r in read_metrics(workdir) if r["split"] == "valid"]
  assert len(valid) == 2

  ids = json.loads((workdir / IDS_FILE).read_text())
  client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
  run = client.get_run(ids["mlflow"])
  assert run.info.run_name == "run" and run.data.tags["group"] == "study-a"
  assert run.data.params["train.learning_rate"] == str(config.train.learning_rate)
  assert [m.value for m in client.get_metric_history(run.info.run_id, "valid/NDCG_at_10")] == valid
  assert run.info.status == "FINISHED"

  offline_runs = list((workdir / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
  assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))
  assert list((workdir / "tensorboard").iterdir())

  # A rerun of the finished run continues the same tracker runs instead of starting new ones.
  loop.train_and_evaluate(config, workdir)
  assert json.loads((workdir / IDS_FILE).read_text()) == ids
  experiment = client.get_experiment_by_name("tracker-test")
  assert len(client.search_runs([experiment.experiment_id])) == 1


def test_unknown_or_missing_tracker_is_a_config_error(data_file, monkeypatch):
  config = tiny_config(data_file)
  config.train.trackers = ("tensorboard", "neptune")
  with pytest.raises(ConfigError, match="'neptune' is not a known tracker; known: .*mlflow"):
    check_config(config)
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
  config.train.trackers = ("wandb",)
  with pytest.raises(ConfigError, match="pip install wandb"):
    check_config(config)


def test_trackers_do_not_change_the_run_identity(run_copy, data_file):
  workdir, results = run_copy
  config = tiny_config(data_file)
  config.train.trackers = ()
  config.train.tracking.run_name = "renamed"
  again = loop.train_and_evaluate(config, workdir)  # the same run: no RunMismatchError
  assert again["test"] == results["test"]
