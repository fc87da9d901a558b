"""The shipped configs, selectable by name: `python -m recattn_jax.train --config sasrec_ml100k`.

Each module's `get_config()` returns an `ml_collections.ConfigDict`; its
docstring holds the run command. `path(name)` finds one, `names()` lists them.
"""

import pathlib

FOLDER = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  return sorted(p.stem for p in FOLDER.glob("*.py") if not p.name.startswith("_"))


def path(name: str) -> pathlib.Path:
  """The file of shipped config `name` (with or without ".py")."""
  stem = name[:-3] if name.endswith(".py") else name
  if stem not in names():
    raise ValueError(f"no shipped config {name!r}; shipped: {names()}")
  return FOLDER / f"{stem}.py"


def split_source(source: str) -> tuple[str, str | None]:
  """`name_or_path[:argument]` as (name_or_path, argument or None), as ml_collections reads it."""
  name, colon, argument = source.partition(":")
  return name, (argument if colon else None)


def source_label(source: str) -> str:
  """How records name `source`: a shipped config by its name, another file by its absolute path."""
  name, argument = split_source(source)
  path = pathlib.Path(name)
  label = path.stem if path.parent == FOLDER else str(path.absolute())
  return label + (f":{argument}" if argument is not None else "")


def run_name(source: str) -> str:
  """A folder name for runs of `source`: the config's file name, plus its argument's name."""
  name, argument = split_source(source)
  stem = pathlib.Path(name).stem
  return f"{stem}_{pathlib.Path(argument).stem}" if argument else stem


def resolve_config_names(argv: list[str]) -> list[str]:
  """`--config NAME` (a shipped config) becomes `--config <its path>`; paths pass unchanged."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == "--config" and i + 1 < len(out):
      index, value, prefix = i + 1, out[i + 1], ""
    elif arg.startswith("--config="):
      index, value, prefix = i, arg[len("--config="):], "--config="
    else:
      continue
    name, argument = split_source(value)
    if not pathlib.Path(name).exists() and name.removesuffix(".py") in names():
      out[index] = prefix + str(path(name)) + ("" if argument is None else f":{argument}")
  return out
