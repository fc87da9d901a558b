"""One small end-to-end run per task and encoder through `train_and_evaluate`; each must beat its baseline."""

import json

import pytest

from recattn_jax.training.loop import train_and_evaluate
from recattn_jax.training.metric_writer import read_metrics
from tests.helpers import tiny_config, write_ratings_file, write_sequence_file


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
  return write_sequence_file(tmp_path_factory.mktemp("data") / "seqs.txt")


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
  return write_ratings_file(tmp_path_factory.mktemp("ratings") / "u.data")


@pytest.mark.parametrize("model, overrides", [
    ("bert4rec", dict(mask_prob=0.3, last_item_prob=0.2)),
    ("hstu", {}),
    ("sasrec", dict(loss="bce")),
    ("sasrec", dict(loss="sampled_softmax", loss_fields={"negative_sampler": "in_batch"})),
])
def test_ranking_encoders_and_losses_beat_popularity(sequences, tmp_path, model, overrides):
  config = tiny_config(sequences, **{"num_epochs": 8, **overrides})
  config.model.name = model
  results = train_and_evaluate(config, tmp_path)
  ours = results["test"]["seen_excluded"]["NDCG@10"]
  popular = results["popularity_baseline"]["seen_excluded"]["NDCG@10"]
  assert ours > popular + 0.05, (ours, popular)
  beyond = results["beyond_accuracy"]
  assert 0 < beyond["coverage@10"] <= 1 and 0 <= beyond["gini@10"] <= 1
  assert json.loads((tmp_path / "results.json").read_text())["task"] == "ranking"


def _pointwise_config(path, task):
  config = tiny_config(path, num_epochs=6, learning_rate=1e-2, batch_size=64,
                       early_stopping_metric="AUC" if task == "ctr" else "RMSE")
  config.task = task
  config.data.format = "movielens"
  config.model.name = "din"
  config.model.din.dropout_rate = 0.0
  config.eval.batch_size = 64
  return config


def test_click_task_beats_item_click_rate(ratings, tmp_path):
  results = train_and_evaluate(_pointwise_config(ratings, "ctr"), tmp_path)
  ours, baseline = results["test"]["ctr"], results["item_mean_baseline"]["ctr"]
  assert ours["AUC"] > baseline["AUC"] + 0.1, (ours, baseline)
  assert set(ours) >= {"AUC", "GAUC", "LogLoss"}
  assert [r["split"] for r in read_metrics(tmp_path)].count("valid") == 6


def test_rating_task_beats_item_mean_and_stops_on_lowest_rmse(ratings, tmp_path):
  results = train_and_evaluate(_pointwise_config(ratings, "rating"), tmp_path)
  ours, baseline = results["test"]["rating"], results["item_mean_baseline"]["rating"]
  assert ours["RMSE"] < 0.9 * baseline["RMSE"], (ours, baseline)
  valid = [r for r in read_metrics(tmp_path) if r["split"] == "valid"]
  best = min(valid, key=lambda r: r["RMSE"])
  assert results["best_step"] == best["step"]


def test_unknown_task_is_named(sequences, tmp_path):
  config = tiny_config(sequences)
  config.task = "clicks"
  with pytest.raises(ValueError, match="task='clicks' is not a known task"):
    train_and_evaluate(config, tmp_path)


def test_config_mistakes_fail_before_training(sequences, ratings, tmp_path):
  config = _pointwise_config(ratings, "ctr")
  config.train.early_stopping_metric = "NDCG@10"
  with pytest.raises(ValueError, match="early_stopping_metric='NDCG@10' is not a metric of task='ctr'"):
    train_and_evaluate(config, tmp_path)
  config = tiny_config(sequences, loss="bce", negatives="trained")
  with pytest.raises(ValueError, match="train.negatives='trained' needs a loss registered with "
                                       "item_mask=True"):
    train_and_evaluate(config, tmp_path)
  config = _pointwise_config(ratings, "rating")
  config.data.split = "time"
  with pytest.raises(ValueError, match="data.split is not supported by task='rating'"):
    train_and_evaluate(config, tmp_path)
