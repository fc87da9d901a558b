"""The model bundle: everything a trained run needs to recommend, without the raw data.

A bundle is a folder:

  bundle.json     format and version, the config, the run's results summary, the
                  data statistics, and the size and SHA256 of every other file
  params.msgpack  the best checkpoint's parameters (flax msgpack)
  vocab.json      {"items": original id of internal item j (j = 0 is "<pad>"),
                   "users": original id of user index u}
  arrays.npz      item popularity in training, every user's known history (and
                  timestamps), and the item features / user profiles the model reads

Training writes one to `<workdir>/bundle` at the end of a run
(`python -m recattn_jax.export` rewrites it); `read_bundle` checks the format
version and every file's checksum before anything is used. A bundle is
written into a temporary sibling folder and moved into place, so a crash
leaves the previous bundle intact.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from recattn_jax.data.features import ItemFeatures
from recattn_jax.data.social import UserProfiles
from recattn_jax.models.item_encoder import table_rows
from recattn_jax.training.checkpoint import sha256_file

FORMAT = "recattn_jax.bundle"
# 2: per-item parameters padded to whole shards (models.item_encoder.table_rows).
# Version 1 bundles are read and migrated (`_migrate_v1`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "bundle.json"
_FILES = ("params.msgpack", "vocab.json", "arrays.npz")


class BundleError(ValueError):
  """A bundle is missing, damaged, of another format version, or not a bundle at all."""


@dataclasses.dataclass
class BundleData:
  """What a task hands to the bundle besides the config and parameters."""

  item_ids: np.ndarray  # str [N + 1], item_ids[0] = "<pad>"
  user_ids: np.ndarray  # str [U]
  popularity: np.ndarray  # int64 [N + 1] training events per item
  histories: list[np.ndarray]  # per user index, int32 internal item ids, oldest first
  history_timestamps: list[np.ndarray] | None = None  # float64 seconds, aligned
  history_ratings: list[np.ndarray] | None = None  # float32, for models that read ratings
  item_features: ItemFeatures | None = None
  user_profiles: UserProfiles | None = None
  stats: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Bundle:
  path: pathlib.Path
  manifest: dict  # bundle.json
  params: Any  # nested dict of numpy arrays
  data: BundleData

  @property
  def config(self):
    return ml_collections.ConfigDict(self.manifest["config"])


def _ragged(prefix: str, rows: list[np.ndarray], dtype) -> dict[str, np.ndarray]:
  lengths = np.asarray([len(r) for r in rows], np.int64)
  flat = np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype)
  return {f"{prefix}/values": flat, f"{prefix}/offsets": np.concatenate([[0], np.cumsum(lengths)])}


def _unragged(arrays, prefix: str) -> list[np.ndarray] | None:
  if f"{prefix}/values" not in arrays.files:
    return None
  values, offsets = arrays[f"{prefix}/values"], arrays[f"{prefix}/offsets"]
  return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


_OPTIONAL_FEATURES = ("text_embeddings", "text_mask", "trained", "text_tokens")


def _arrays(data: BundleData) -> tuple[dict[str, np.ndarray], dict]:
  """(npz arrays, the json side of features and profiles)."""
  arrays = {"popularity": np.asarray(data.popularity, np.int64),
            **_ragged("histories", data.histories, np.int32)}
  if data.history_timestamps is not None:
    arrays.update(_ragged("history_timestamps", data.history_timestamps, np.float64))
  if data.history_ratings is not None:
    arrays.update(_ragged("history_ratings", data.history_ratings, np.float32))
  meta = {}
  features = data.item_features
  if features is not None:
    for field, values in features.categorical.items():
      arrays[f"features/categorical/{field}"] = values
    for field, values in features.tokens.items():
      arrays[f"features/tokens/{field}"] = values
    for name in _OPTIONAL_FEATURES:
      if getattr(features, name) is not None:
        arrays[f"features/{name}"] = getattr(features, name)
    meta["item_features"] = {"vocab_sizes": features.vocab_sizes, "stats": features.stats,
                             "text_encoder": features.text_encoder}
  if data.user_profiles is not None:
    arrays["profiles/items"] = data.user_profiles.items
    arrays["profiles/weights"] = data.user_profiles.weights
    meta["user_profiles"] = {"stats": data.user_profiles.stats}
  return arrays, meta


def _features(arrays, meta: dict, item_ids: np.ndarray) -> ItemFeatures | None:
  if "item_features" not in meta:
    return None
  def fields(kind):
    prefix = f"features/{kind}/"
    return {key[len(prefix):]: arrays[key] for key in arrays.files if key.startswith(prefix)}
  optional = {name: arrays[f"features/{name}"] for name in _OPTIONAL_FEATURES
              if f"features/{name}" in arrays.files}
  return ItemFeatures(categorical=fields("categorical"), tokens=fields("tokens"),
                      vocab_sizes=meta["item_features"]["vocab_sizes"], item_ids=item_ids,
                      stats=meta["item_features"]["stats"],
                      text_encoder=meta["item_features"].get("text_encoder"), **optional)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def write_bundle(path: str | pathlib.Path, *, config, params: Any, data: BundleData,
                 run: dict | None = None) -> pathlib.Path:
  """Writes the bundle folder `path` (replacing a previous bundle there) and returns it.

  `run` is a summary of the training run (best step, test metrics, ...) kept
  in bundle.json for the record. A folder at `path` that is not a bundle is
  never replaced.
  """
  path = pathlib.Path(path)
  if path.exists() and not (path / MANIFEST).exists():
    raise BundleError(f"{path} exists and is not a bundle (no {MANIFEST}); refusing to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    host_params = jax.device_get(params)
    (staging / "params.msgpack").write_bytes(
        flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host_params)))
    (staging / "vocab.json").write_text(json.dumps(
        {"items": [str(i) for i in data.item_ids], "users": [str(u) for u in data.user_ids]}),
        encoding="utf-8")
    arrays, meta = _arrays(data)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (staging / "arrays.npz").write_bytes(buffer.getvalue())
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(config.to_json_best_effort()), "run": run or {},
        "data_stats": data.stats, **meta,
        "files": {name: {"bytes": (staging / name).stat().st_size,
                         "sha256": sha256_file(staging / name)} for name in _FILES},
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default),
                                    encoding="utf-8")
    old = None
    if path.exists():
      old = path.with_name(f".{path.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return path


def read_manifest(path: str | pathlib.Path) -> dict:
  """bundle.json after checking the format, the version and every file's size and SHA256."""
  path = pathlib.Path(path)
  manifest_path = path / MANIFEST
  if not manifest_path.exists():
    raise BundleError(f"{path} is not a model bundle: {MANIFEST} is missing (train a run, or "
                      "`python -m recattn_jax.export --workdir W --out B` to write one)")
  try:
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BundleError(f"{manifest_path} is damaged ({e}); export the bundle again") from e
  if manifest.get("format") != FORMAT:
    raise BundleError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}")
  version = manifest.get("format_version")
  if version not in READABLE_VERSIONS:
    raise BundleError(f"{manifest_path}: bundle format version {version} but this recattn_jax "
                      f"reads versions {list(READABLE_VERSIONS)}; export the run again with this version "
                      "(`python -m recattn_jax.export --workdir W --out B`) or use the library "
                      "version that wrote it")
  for name, expected in manifest.get("files", {}).items():
    file = path / name
    if not file.exists():
      raise BundleError(f"{file} is missing from the bundle")
    size = file.stat().st_size
    if size != expected["bytes"]:
      raise BundleError(f"{file} is {size} bytes but the bundle records {expected['bytes']} "
                        "(truncated or replaced); export the bundle again")
    if sha256_file(file) != expected["sha256"]:
      raise BundleError(f"{file} does not match its SHA256 in {MANIFEST} (damaged); export the "
                        "bundle again")
  missing = [name for name in _FILES if name not in manifest.get("files", {})]
  if missing:
    raise BundleError(f"{manifest_path} records no checksum for {missing}")
  return manifest


def _migrate_v1(params: Any, num_items: int) -> Any:
  """Pads version 1's per-item parameters (num_items + 1 rows) with zero rows to `table_rows`."""
  rows = table_rows(num_items)

  def pad(path, value):
    names = [getattr(key, "key", None) for key in path]
    per_item = names[-2:] == ["item_embed", "embedding"] or names[-1:] == ["output_bias"]
    if per_item and np.shape(value)[0] == num_items + 1:
      return np.pad(value, [(0, rows - num_items - 1)] + [(0, 0)] * (np.ndim(value) - 1))
    return value

  return jax.tree_util.tree_map_with_path(pad, params)


def read_bundle(path: str | pathlib.Path) -> Bundle:
  """The verified bundle at `path` (`BundleError` naming the file at fault otherwise)."""
  path = pathlib.Path(path)
  manifest = read_manifest(path)
  try:
    params = flax.serialization.msgpack_restore((path / "params.msgpack").read_bytes())
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    arrays = np.load(path / "arrays.npz", allow_pickle=False)
  except Exception as e:  # checksums matched, so the writer was at fault: still name the file
    raise BundleError(f"{path}: a bundle file could not be read ({type(e).__name__}: {e})") from e
  item_ids = np.asarray(vocab["items"], dtype=object)
  if manifest["format_version"] == 1:
    params = _migrate_v1(params, num_items=len(item_ids) - 1)
  profiles = None
  if "user_profiles" in manifest:
    profiles = UserProfiles(arrays["profiles/items"], arrays["profiles/weights"],
                            stats=manifest["user_profiles"]["stats"])
  data = BundleData(
      item_ids=item_ids, user_ids=np.asarray(vocab["users"], dtype=object),
      popularity=arrays["popularity"], histories=_unragged(arrays, "histories"),
      history_timestamps=_unragged(arrays, "history_timestamps"),
      history_ratings=_unragged(arrays, "history_ratings"),
      item_features=_features(arrays, manifest, item_ids), user_profiles=profiles,
      stats=manifest.get("data_stats", {}))
  return Bundle(path=path, manifest=manifest, params=params, data=data)


def warm_start(params: Any, source: Any, *, where: str = "source") -> tuple[Any, dict]:
  """(`params` with every leaf `source` has at the same path taken from it, what was taken).

  Leaves only `params` has (e.g. new adapters) keep their initial values;
  leaves only `source` has are ignored; a leaf both have with different shapes
  is an error naming it (another width or catalogue).
  """
  flat = {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(source)}
  taken, fresh, wrong = [], [], []

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    if key not in flat:
      fresh.append(key)
      return leaf
    if np.shape(flat[key]) != leaf.shape:
      wrong.append(f"{key}: {np.shape(flat[key])} (model: {leaf.shape})")
      return leaf
    taken.append(key)
    return jax.device_put(jnp.array(flat[key], leaf.dtype, copy=True), leaf.sharding)  # never aliased

  params = jax.tree_util.tree_map_with_path(pick, params)
  if wrong:
    raise BundleError(f"{where}: parameters do not fit this model: " + "; ".join(wrong[:5]))
  return params, {"taken_leaves": len(taken), "fresh_leaves": fresh,
                  "ignored_leaves": len(flat) - len(taken)}


def init_from_bundle(params: Any, path: str | pathlib.Path, item_ids: np.ndarray) -> tuple[Any, dict]:
  """`warm_start` from the bundle at `path` (or `path`/bundle), whose catalogue must be `item_ids`."""
  path = pathlib.Path(path)
  if not (path / MANIFEST).exists() and (path / "bundle" / MANIFEST).exists():
    path = path / "bundle"
  bundle = read_bundle(path)
  if list(bundle.data.item_ids) != list(item_ids):
    raise BundleError(f"train.init_from={str(path)!r}: the bundle's catalogue "
                      f"({len(bundle.data.item_ids) - 1} items) is not this run's "
                      f"({len(item_ids) - 1} items, or another order): its rows would be other items")
  params, report = warm_start(params, bundle.params, where=f"train.init_from={str(path)!r}")
  return params, {"path": str(path.absolute()), **report}
