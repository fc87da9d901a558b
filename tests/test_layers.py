"""Imports flow one way: registry <- data <- attention <- text <- models <- evaluation <- parallel <- training <- tuning <- serving <- CLI.

Read from the source (every import statement, at any depth), so an upward or
function-level import that dodges a cycle is caught without running anything.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "recattn_jax"
LAYERS = ("registry", "data", "attention", "text", "models", "evaluation", "parallel", "training",
          "tuning", "serving", "cli")
# Modules outside a layer folder, by the layer they belong to.
TOP_LEVEL = {"registry": "registry", "config": "training", "train": "cli", "explain": "serving",
             "recommend": "cli", "export": "cli", "serve": "cli", "embed": "cli",
             "tune": "cli", "plot": "cli", "plots": "tuning",
             # The shipped config files declare search spaces; tuning loads configs by name.
             "configs": "tuning", "": "cli"}


def layer_of(module: str) -> int:
  parts = module.split(".")[1:]  # without "recattn_jax"
  head = parts[0] if parts else ""
  return LAYERS.index(head if head in LAYERS else TOP_LEVEL[head])


def modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    yield name, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(tree: ast.AST):
  """(module imported, line, at module level) for every recattn_jax import."""
  # Module level: the body, and the body of a module-level try (optional extras).
  top = {id(node) for node in tree.body}
  top |= {id(inner) for node in tree.body if isinstance(node, ast.Try) for inner in node.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recattn_jax"):
      yield node.module, node.lineno, id(node) in top
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("recattn_jax"):
          yield alias.name, node.lineno, id(node) in top


def test_no_module_imports_from_a_layer_above_it():
  upward, nested = [], []
  for name, tree in modules():
    for target, line, at_top in imported(tree):
      if layer_of(target) > layer_of(name):
        upward.append(f"{name}:{line} imports {target}")
      if not at_top:
        nested.append(f"{name}:{line} imports {target} inside a function")
  assert not upward, "imports from a higher layer:\n" + "\n".join(upward)
  assert not nested, "function-level imports (a cycle dodged?):\n" + "\n".join(nested)


def test_the_check_sees_every_module():
  names = dict(modules())
  assert {"recattn_jax.models.scoring", "recattn_jax.evaluation.topk", "recattn_jax.training.loop",
          "recattn_jax.train", "recattn_jax.data.loading"} <= set(names)
  assert all(layer_of(name) >= 0 for name in names)
