"""Search spaces: config fields mapped to the values a tuner may give them.

A config file declares its space next to its config:

    from recattn_jax.tuning import Choice, Float, Int

    def get_search_space(config):
      return {
          "train.learning_rate": Float(1e-4, 1e-2, log=True),
          "model.sasrec.num_layers": Int(1, 4),
          "train.batch_size": Choice([32, 64, 128]),
          # A named choice sets several fields at once; its values may be distributions
          # themselves, sampled only when that option is chosen.
          "loss": Choice({"softmax": {"train.loss.name": "softmax"},
                          "sampled": {"train.loss.name": "sampled_softmax",
                                      "train.loss.sampled_softmax.num_negatives": Int(64, 2048, log=True)}}),
      }

Keys are config fields (`a.b.c`), except a named choice's, which is only its
parameter's name. `default_space(config)` is what `tune` uses for a config
file without `get_search_space`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Union

import ml_collections


@dataclasses.dataclass(frozen=True)
class Float:
  low: float
  high: float
  log: bool = False

  def suggest(self, trial, name: str) -> float:
    return trial.suggest_float(name, self.low, self.high, log=self.log)

  def contains(self, value) -> bool:
    return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Int:
  low: int
  high: int
  log: bool = False
  step: int = 1

  def suggest(self, trial, name: str) -> int:
    return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

  def contains(self, value) -> bool:
    return (isinstance(value, int) and self.low <= value <= self.high
            and (value - self.low) % self.step == 0)


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `options`: a list of values, or a dict of named options, each a dict of field -> value."""

  options: Union[tuple, dict]

  def __post_init__(self):
    if isinstance(self.options, dict):
      if not self.options or not all(isinstance(v, dict) for v in self.options.values()):
        raise ValueError(f"Choice({self.options!r}): named options must each be a dict of field -> value")
    else:
      object.__setattr__(self, "options", tuple(self.options))
      if not self.options:
        raise ValueError("Choice([]) has no option")

  @property
  def named(self) -> bool:
    return isinstance(self.options, dict)

  def suggest(self, trial, name: str):
    return trial.suggest_categorical(name, list(self.options))

  def contains(self, value) -> bool:
    return value in self.options


Distribution = Union[Float, Int, Choice]
Space = dict[str, Any]  # field (or a named choice's name) -> Distribution or fixed value


def sample(space: Space, trial) -> dict[str, Any]:
  """The config fields and values `trial` (an optuna.Trial) draws from `space`."""
  fields = {}
  for name, spec in space.items():
    if isinstance(spec, Choice) and spec.named:
      fields.update(sample(spec.options[spec.suggest(trial, name)], trial))
    elif isinstance(spec, (Float, Int, Choice)):
      fields[name] = spec.suggest(trial, name)
    else:
      fields[name] = spec
  return fields


def fields_of(space: Space) -> set[str]:
  """Every config field the space may set."""
  found = set()
  for name, spec in space.items():
    if isinstance(spec, Choice) and spec.named:
      for option in spec.options.values():
        found |= fields_of(option)
    else:
      found.add(name)
  return found


def _get(config: ml_collections.ConfigDict, field: str):
  node = config
  for key in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise KeyError(field)
    node = node[key]
  return node


def check_space(space: Space, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming each field of `space` that `config` lacks."""
  missing = sorted(f for f in fields_of(space) if not _has(config, f))
  if missing:
    raise ValueError(f"search space: no such config field(s) {missing}")


def _has(config, field: str) -> bool:
  try:
    _get(config, field)
    return True
  except KeyError:
    return False


def apply(config: ml_collections.ConfigDict, fields: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `fields` (as `sample` returns them) set."""
  config = copy.deepcopy(config)
  for field, value in fields.items():
    parent, _, key = field.rpartition(".")
    node = _get(config, parent) if parent else config
    if key not in node:
      raise KeyError(f"search space: no such config field {field!r}")
    if isinstance(node[key], float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)  # Choice([0, 0.1]) for a float field
    node[key] = value
  return config


def baseline_params(space: Space, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The trial parameters that reproduce `config` itself, where the space can express its values."""
  params = {}
  for name, spec in space.items():
    if isinstance(spec, Choice) and spec.named:
      for option, fields in spec.options.items():
        fixed = {f: v for f, v in fields.items() if not isinstance(v, (Float, Int, Choice))}
        if all(_has(config, f) and _get(config, f) == v for f, v in fixed.items()):
          params[name] = option
          params.update(baseline_params(fields, config))
          break
    elif isinstance(spec, (Float, Int, Choice)) and _has(config, name) and spec.contains(_get(config, name)):
      params[name] = _get(config, name)
  return params


def describe(space: Space) -> str:
  """A canonical text of the space (a study's identity)."""
  def encode(spec):
    if dataclasses.is_dataclass(spec):
      return {type(spec).__name__: {k: encode(v) for k, v in dataclasses.asdict(spec).items()}
              if not (isinstance(spec, Choice) and spec.named)
              else {"named": {k: {f: encode(v) for f, v in o.items()} for k, o in spec.options.items()}}}
    if isinstance(spec, (list, tuple)):
      return [encode(v) for v in spec]
    return spec
  return json.dumps({k: encode(v) for k, v in space.items()}, sort_keys=True, default=str)


def default_space(config: ml_collections.ConfigDict, *, max_lens=(50, 100, 200),
                  max_dropout: float = 0.6) -> Space:
  """What is usually worth tuning for the config's model: optimiser, regularisation, size, loss.

  `max_lens` of one value leaves `data.max_len` alone (e.g. data cut to 50 events per user).
  """
  model = f"model.{config.model.name}"
  space: Space = {
      "train.learning_rate": Float(1e-4, 1e-2, log=True),
      "train.weight_decay": Choice([0.0, 0.01, 0.1]),
      "train.batch_size": Choice([16, 32, 64, 128]),
  }
  if len(max_lens) > 1:
    space["data.max_len"] = Choice(list(max_lens))
  for field, spec in (("dropout_rate", Float(0.0, max_dropout)), ("embed_dim", Choice([32, 64, 128])),
                      ("num_layers", Int(1, 4)), ("num_heads", Choice([1, 2, 4]))):
    if field in config.model[config.model.name]:
      space[f"{model}.{field}"] = spec
  if config.task == "ranking" and config.train.loss.name in ("softmax", "sampled_softmax"):
    space["loss"] = Choice({
        "softmax": {"train.loss.name": "softmax"},
        "sampled_softmax": {"train.loss.name": "sampled_softmax",
                            "train.loss.sampled_softmax.num_negatives": Int(64, 2048, log=True)}})
  return space
