"""Every shipped config loads by name, keeps the default schema, passes the checks, and names its run command."""

import importlib.util

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
def test_config_loads_with_default_schema(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert _flat_keys(config) == _flat_keys(get_default_config())
  check_config(config)
  assert f"--config {path.stem}" in module.__doc__


def test_shipped_configs_are_found_by_name():
  assert "sasrec_ml100k" in configs.names() and len(configs.names()) == len(CONFIGS) >= 13
  assert configs.path("hstu_ml100k") == configs.path("hstu_ml100k.py")
  with pytest.raises(ValueError, match="no shipped config 'sasrec_ml1m'"):
    configs.path("sasrec_ml1m")
