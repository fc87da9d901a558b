"""Every shipped config loads by name, keeps the default schema, passes the checks, and names its run command."""

import importlib.util
import inspect
import pathlib

import pytest

from recattn_jax import configs
from recattn_jax.config import check_config, get_default_config

CONFIGS = [configs.path(name) for name in configs.names()]


def _flat_keys(config, prefix=""):
  keys = set()
  for key, value in config.items():
    name = f"{prefix}{key}"
    keys |= _flat_keys(value, name + ".") if hasattr(value, "items") else {name}
  return keys


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_default_schema(path, data_file):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  needs_data = "data" in inspect.signature(module.get_config).parameters  # `--config NAME:<data>`
  config = module.get_config(str(data_file)) if needs_data else module.get_config()
  assert _flat_keys(config) == _flat_keys(get_default_config())
  check_config(config)
  assert f"--config {path.stem}" in module.__doc__


def test_shipped_configs_are_found_by_name():
  assert "sasrec_ml100k" in configs.names() and len(configs.names()) == len(CONFIGS) >= 13
  assert configs.path("hstu_ml100k") == configs.path("hstu_ml100k.py")
  with pytest.raises(ValueError, match="no shipped config 'sasrec_ml1m'"):
    configs.path("sasrec_ml1m")
  # Records (studies, seeds) name a shipped config as the user would type it, not by this checkout's path.
  assert configs.source_label(f"{configs.path('sasrec_auto')}:amazon-toys") == "sasrec_auto:amazon-toys"
  assert configs.source_label("my/config.py") == str(pathlib.Path("my/config.py").absolute())


def test_learning_rate_scales_with_the_batch_as_configured():
  from recattn_jax.config import ConfigError
  from recattn_jax.training.steps import learning_rate_schedule

  config = get_default_config()
  config.train.update(learning_rate=1e-3, lr_reference_batch=32, batch_size=128)
  expected = {"none": 1e-3, "linear": 4e-3, "sqrt": 2e-3}
  for rule, peak in expected.items():
    config.train.lr_batch_scaling = rule
    assert float(learning_rate_schedule(config.train, 100)(50)) == pytest.approx(peak)
  config.train.lr_batch_scaling = "cubic"
  with pytest.raises(ConfigError, match="lr_batch_scaling='cubic' must be one of"):
    check_config(config)


def test_lora_fields_are_checked_under_their_model_names():
  from recattn_jax.config import ConfigError
  config = get_default_config()
  config.model.sasrec.item_text_lora_rank = -1
  config.model.sasrec.item_text_lora_targets = ("query", "gate")
  with pytest.raises(ConfigError) as error:
    check_config(config)
  assert "model.sasrec.item_text_lora_rank=-1 must be an integer >= 0" in str(error.value)
  assert "model.sasrec.item_text_lora_targets=('query', 'gate'): ['gate'] must be among" in str(error.value)
