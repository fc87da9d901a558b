"""Name -> implementation tables: what a config's `name` fields are looked up in.

Each kind of component (encoders, pointwise models, item encoders, heads,
matchers, losses, tasks) has one `Registry`, filled by `@REGISTRY.register(name)`
next to the implementations. A user registers their own from their own code
the same way, without editing the library:

    from recattn_jax.models import ENCODERS, SequenceEncoder

    @ENCODERS.register("my_encoder", objective="causal")
    class MyEncoder(SequenceEncoder):
      ...
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Entries by name; `register` adds one, `get` finds one or names the known ones."""

  def __init__(self, kind: str, field: str):
    self.kind = kind  # e.g. "encoder", for messages
    self.field = field  # the config field that names an entry, e.g. "model.name"
    self._entries: dict[str, T] = {}
    self._specs: dict[str, dict] = {}

  def register(self, name: str, **spec: Any) -> Callable:
    """Decorator: `@REGISTRY.register("name", ...)` registers the decorated object.

    Keyword arguments are kept with it (see `spec`); registering a taken name
    is an error, so two components never silently shadow each other.
    """
    def add(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
      self._entries[name] = obj
      self._specs[name] = spec
      return obj
    return add

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(f"{self.field}={name!r} is not a known {self.kind}; known: {sorted(self._entries)}")
    return self._entries[name]

  def spec(self, name: str) -> dict:
    """The keyword arguments `name` was registered with."""
    self.get(name)
    return self._specs[name]

  def unregister(self, name: str) -> None:
    """Removes an entry (for tests that register their own)."""
    self._entries.pop(name, None)
    self._specs.pop(name, None)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))

  def names(self) -> list[str]:
    return sorted(self._entries)


def keyword_defaults(obj: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
  """The configurable keyword arguments of a Flax module (its fields) or a function, with defaults.

  Fields without a default and those in `exclude` (what the data decides, such
  as the catalogue size) are left out.
  """
  if dataclasses.is_dataclass(obj):
    fields = {f.name: f.default for f in dataclasses.fields(obj)
              if f.init and f.default is not dataclasses.MISSING}
  else:
    fields = {name: p.default for name, p in inspect.signature(obj).parameters.items()
              if p.default is not inspect.Parameter.empty
              and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
  return {k: v for k, v in fields.items() if k not in exclude and k not in ("parent", "name")}


def check_keywords(given: dict, allowed: dict, where: str) -> None:
  """A misspelt or foreign key is an error naming it and the allowed ones."""
  unknown = sorted(set(given) - set(allowed))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
