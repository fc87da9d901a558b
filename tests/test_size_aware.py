"""Size-aware defaults: the rule, the `sasrec_auto:<data>` / `hstu_auto:<data>` configs, and their refusal of other data."""

import logging
import math

import numpy as np
import pytest

from recattn_jax.config import (ConfigError, check_config, get_default_config, get_size_aware_config,
                                size_aware_fields, size_aware_values)
from recattn_jax.data.profile import DataProfile
from recattn_jax.models import ENCODERS
from recattn_jax.training import loop
from recattn_jax.training.workdir import config_fingerprint
from recattn_jax.tuning.config_files import load_config


def _profile(users, items, mean_length, seed=0):
  lengths = np.maximum(2, np.random.default_rng(seed).geometric(1 / mean_length, users))
  return DataProfile(items=items, history_lengths=lengths)


@pytest.mark.parametrize("users,items,mean_length", [
    (900, 1700, 100), (20_000, 12_000, 7), (1_900, 17_000, 48), (500_000, 90_000, 30), (300, 20, 3)])
def test_the_rule_follows_length_sparsity_and_size(users, items, mean_length):
  data = _profile(users, items, mean_length)
  values = size_aware_values(data)
  max_len = values["data.max_len"]
  covered = (data.history_lengths <= max_len).mean()
  shorter = [n for n in (50, 100, 200) if n < max_len]
  assert covered >= 0.9 or max_len == 200
  assert not shorter or (data.history_lengths <= shorter[-1]).mean() < 0.9  # the shortest that covers
  sparse = data.events_per_item < 30
  assert values["train.weight_decay"] == (0.0 if sparse else 0.1)
  assert values["model.*.dropout_rate"] == (0.5 if sparse else 0.2)
  users_per_row = max(1.0, max_len / data.mean_history(max_len))
  rows = values["train.batch_size"]
  assert rows & (rows - 1) == 0 and 16 <= rows <= 256
  if 16 < rows < 256:  # the power of two nearest to 64 users per step
    assert abs(math.log2(rows * users_per_row / 64)) <= 0.5 + 1e-9
  steps_per_epoch = math.ceil(data.users / (rows * users_per_row))
  epochs = values["train.num_epochs"]
  assert 10 <= epochs <= 80
  assert epochs == 10 or epochs * steps_per_epoch <= 40_000  # at most 40k steps, at least 10 epochs
  assert epochs == 80 or (epochs + 1) * steps_per_epoch > 40_000


def test_a_million_users_train_fewer_epochs_than_a_thousand():
  small = size_aware_values(_profile(1_000, 2_000, 20))
  large = size_aware_values(_profile(1_000_000, 200_000, 20))
  assert small["train.num_epochs"] == 80 and 10 <= large["train.num_epochs"] < 80


def test_the_auto_config_is_sized_from_its_file_trains_and_refuses_other_data(data_file, tmp_path, caplog):
  config = load_config(f"sasrec_auto:{data_file}")
  assert config.data.path == str(data_file) and config.data.size_aware_for == f"{data_file} (auto)"
  check_config(config)
  # The generated data: 96 users, 40 items, 4-15 events each (sparse, short).
  assert config.data.max_len == 50 and config.train.weight_decay == 0.0
  assert {config.model[name].dropout_rate for name in ENCODERS.names()} == {0.5}
  for name in ENCODERS.names():
    config.model[name].update(embed_dim=16, num_layers=1)
  config.train.update(num_epochs=1, progress_bar=False)
  with caplog.at_level(logging.INFO, logger="recattn_jax"):
    results = loop.train_and_evaluate(config, tmp_path / "run")
  assert results["data"]["users"] == 96
  assert f"sized for {data_file} (auto): {{'data.max_len': 50, 'model.sasrec.dropout_rate': 0.5" in caplog.text

  config.data.path = str(tmp_path / "other.txt")
  with pytest.raises(ConfigError, match="data.size_aware_for=.*measured on other data"):
    check_config(config)
  with pytest.raises(ValueError, match="name the data: --config sasrec_auto:"):
    load_config("sasrec_auto")


def test_on_ml100k_the_rule_gives_the_default_job(shared_data, monkeypatch):
  monkeypatch.setenv("RECATTN_DATA_DIR", str(shared_data))
  sized = config_fingerprint(get_size_aware_config("ml-100k"))
  assert sized == config_fingerprint(get_default_config())


def test_hstu_auto_is_sized_as_sasrec_auto_and_drops_time_buckets_only_without_a_clock(
    data_file, tmp_path):
  hstu, sasrec = load_config(f"hstu_auto:{data_file}"), load_config(f"sasrec_auto:{data_file}")
  assert hstu.model.name == "hstu"
  assert size_aware_fields(hstu) == {field.replace("sasrec", "hstu"): value
                                     for field, value in size_aware_fields(sasrec).items()}
  assert hstu.model.hstu.num_time_buckets == 0  # a sequence file's timestamps are positions
  for_each_line = [line.split() for line in data_file.read_text().splitlines()]
  ratings = tmp_path / "u.data"  # MovieLens' tab-separated user, item, rating, seconds
  ratings.write_text("".join(f"{user}\t{item}\t4\t{1_000_000 + 60 * k}\n"
                             for user, *items in for_each_line for k, item in enumerate(items)))
  assert load_config(f"hstu_auto:{ratings}").model.hstu.num_time_buckets == get_default_config().model.hstu.num_time_buckets > 0

  hstu.model.hstu.update(embed_dim=16, num_layers=1)
  hstu.train.update(num_epochs=1, progress_bar=False)
  results = loop.train_and_evaluate(hstu, tmp_path / "run")
  assert results["data"]["users"] == 96 and results["test"]["seen_excluded"]["NDCG@10"] > 0
  with pytest.raises(ValueError, match="name the data: --config hstu_auto:"):
    load_config("hstu_auto")
