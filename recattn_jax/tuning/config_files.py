"""Config files as values: load one by shipped name or path, and say how two configs differ."""

from __future__ import annotations

import importlib.util
import pathlib
import types
from typing import Any

import ml_collections

import recattn_jax.configs as configs
from recattn_jax.training.workdir import config_leaves


def config_module(source: str) -> types.ModuleType:
  """The module of a shipped config's name or of a config file's path (an `:argument` is dropped)."""
  name = configs.split_source(source)[0]
  path = pathlib.Path(name)
  if not path.exists():
    path = configs.path(name)
  spec = importlib.util.spec_from_file_location(f"_recattn_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: a config file must define get_config()")
  return module


def load_config(source: str) -> ml_collections.ConfigDict:
  """`get_config([argument])` of `name_or_path[:argument]` (a shipped config's name or a file's path)."""
  argument = configs.split_source(source)[1]
  module = config_module(source)
  return module.get_config() if argument is None else module.get_config(argument)


def changed_fields(base: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields of `config` whose values differ from `base`'s (or that `base` lacks)."""
  old = config_leaves(base)
  return {field: value for field, value in config_leaves(config).items()
          if field not in old or old[field] != value or type(old[field]) is not type(value)}
