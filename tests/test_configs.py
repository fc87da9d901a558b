"""Every shipped config loads, keeps the default schema, and names its run command."""

import importlib.util
import pathlib

import pytest

from recattn_jax.config import get_default_config

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


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
  assert f"--config configs/{path.name}" in module.__doc__
