"""MovieLens downloads, checksummed and cached, with an offline route for ML-100K.

GroupLens archives are fetched with pooch, which verifies the hash of a cached
archive and downloads it again when it does not match. The extracted files are
checked against the (verified) archive's own sizes and CRC-32s on every call
and extracted again when any is missing, truncated or changed. Machines without general
internet access can usually still reach PyPI; the RecBole wheel ships ML-100K as
atomic files, so `ml100k_from_recbole_wheel` gets the data from there, checking
every extracted file against a pinned SHA256.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
from typing import Any
import zipfile
import zlib

import pooch
from recattn_jax.data.readers import MOVIELENS_FILES

_log = logging.getLogger(__name__)

_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

# name -> (url, known hash for pooch). The MD5s are the ones GroupLens publishes
# beside each archive (`<name>.zip.md5`). ml-latest-small is rebuilt by GroupLens
# from time to time, so no hash can be pinned: it is downloaded unverified, with
# a warning (see docs/data.md).
MOVIELENS: dict[str, tuple[str, str | None]] = {
    "ml-100k": (_GROUPLENS + "ml-100k.zip", "md5:0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": (_GROUPLENS + "ml-1m.zip", "md5:c4d9eecfca2ab87c1945afe126590906"),
    "ml-20m": (_GROUPLENS + "ml-20m.zip", "md5:cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-latest-small": (_GROUPLENS + "ml-latest-small.zip", None),
}

RECBOLE_REQUIREMENT = "recbole==1.2.1"
_WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
# SHA256 of the ML-100K atomic files inside the recbole 1.2.1 wheel.
ML100K_RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
_RECBOLE_SUBDIR = "ml-100k-recbole"


class DownloadError(OSError):
  """A dataset could not be fetched or failed its checksum."""


def default_cache_dir() -> Path:
  """`$RECATTN_DATA_DIR`, else ~/.cache/recattn_jax."""
  env = os.environ.get("RECATTN_DATA_DIR")
  return Path(env).expanduser() if env else Path.home() / ".cache" / "recattn_jax"


def _cache(cache_dir: str | os.PathLike | None) -> Path:
  return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def sha256_of(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ----------------------------------------------------------------------------
# GroupLens.


def _downloader(timeout: float) -> Any:
  """The pooch downloader; a seam so tests can serve archives without a network."""
  return pooch.HTTPDownloader(timeout=timeout, progressbar=False)


def _ratings_folder(files: list[str], name: str) -> Path:
  for wanted in MOVIELENS_FILES:
    for file in files:
      if Path(file).name == wanted:
        return Path(file).parent
  raise DownloadError(f"{name}: the archive has none of {MOVIELENS_FILES}")


def fetch_movielens(name: str = "ml-100k", cache_dir: str | os.PathLike | None = None,
                    *, timeout: float = 60.0) -> Path:
  """Downloads (or reuses) a GroupLens MovieLens zip and unpacks it.

  Args:
    name: a key of `MOVIELENS`.
    cache_dir: defaults to `default_cache_dir()`; files go to `<cache>/movielens`.
    timeout: seconds for the connection and each read.

  Returns:
    the folder holding the ratings file (`u.data`, `ratings.dat` or `ratings.csv`),
    ready for `readers.read_movielens`.

  Raises:
    OSError (requests' errors are OSErrors) when the server cannot be reached;
    ValueError when the archive does not match its pinned hash.
  """
  if name not in MOVIELENS:
    raise ValueError(f"unknown MovieLens dataset {name!r}; choose one of {sorted(MOVIELENS)}")
  url, known_hash = MOVIELENS[name]
  if known_hash is None:
    _log.warning("%s: no checksum is pinned for this archive; it is NOT verified", name)
  folder = _cache(cache_dir) / "movielens"
  archive = pooch.retrieve(
      url, known_hash=known_hash, fname=f"{name}.zip", path=folder,
      downloader=_downloader(timeout), progressbar=False)
  return _ratings_folder(_unzip_verified(Path(archive), folder / name), name)


def _crc32_of(path: Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      crc = zlib.crc32(block, crc)
  return crc


def _extracted_intact(archive: zipfile.ZipFile, target: Path) -> bool:
  for info in archive.infolist():
    if info.is_dir():
      continue
    file = target / info.filename
    if not file.is_file() or file.stat().st_size != info.file_size or _crc32_of(file) != info.CRC:
      _log.warning("%s: missing or differs from %s; extracting the archive again", file,
                   archive.filename)
      return False
  return True


def _unzip_verified(archive_path: Path, target: Path) -> list[str]:
  """The archive's files under `target`, each matching the archive's size and CRC-32.

  A damaged or half-finished extraction is replaced whole: the archive is
  extracted into a temporary folder beside `target`, which then takes its place.
  """
  with zipfile.ZipFile(archive_path) as archive:
    members = [info.filename for info in archive.infolist() if not info.is_dir()]
    if not (target.is_dir() and _extracted_intact(archive, target)):
      scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
      try:
        archive.extractall(scratch)  # zipfile verifies each member's CRC-32 as it reads
        if target.exists():
          shutil.rmtree(target)
        os.replace(scratch, target)
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
  return [str(target / member) for member in members]


# ----------------------------------------------------------------------------
# ML-100K from the RecBole wheel on PyPI.


def _recbole_cache_ok(folder: Path) -> bool:
  """True if every file is present and intact; removes corrupt ones."""
  intact = True
  for name, expected in ML100K_RECBOLE_SHA256.items():
    file = folder / name
    if not file.is_file():
      intact = False
    elif sha256_of(file) != expected:
      _log.warning("%s: cached file fails its SHA256 check; fetching it again", file)
      file.unlink()
      intact = False
  return intact


def pip_download_wheel(requirement: str, folder: Path, *, timeout: float = 900) -> Path:
  """The wheel of `requirement` alone (no dependencies), fetched by pip into `folder`.

  Through pip, so its index, proxy and certificate settings apply.
  """
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--quiet", requirement, "-d", str(folder)]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DownloadError(f"pip download {requirement} failed: {e}") from e
  wheels = sorted(folder.glob("*.whl"))
  if done.returncode != 0 or not wheels:
    raise DownloadError(f"pip could not download {requirement} (exit {done.returncode}): "
                        f"{done.stderr.strip()[-2000:]}")
  return wheels[0]


def _extract_verified(wheel: Path, member: str, target: Path, expected: str) -> None:
  """Writes a wheel member to `target` only if its SHA256 matches.

  The bytes go to a temporary file beside the target and are moved in place with
  `os.replace`, so an interrupted run never leaves a truncated cache file.
  """
  digest = hashlib.sha256()
  handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                       suffix=".part")
  try:
    with os.fdopen(handle, "wb") as sink, zipfile.ZipFile(wheel) as archive, \
        archive.open(member) as source:
      for block in iter(lambda: source.read(1 << 20), b""):
        digest.update(block)
        sink.write(block)
      sink.flush()
      os.fsync(sink.fileno())
    if digest.hexdigest() != expected:
      raise DownloadError(f"{wheel}:{member} has SHA256 {digest.hexdigest()}, "
                          f"expected {expected}")
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache
    os.replace(temporary, target)
  except KeyError as e:
    raise DownloadError(f"{wheel} has no {member}") from e
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


def ml100k_from_recbole_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
  """ML-100K as RecBole atomic files, taken from the `recbole` wheel on PyPI.

  Returns:
    `<cache>/ml-100k-recbole`, holding ml-100k.{inter,item,user}, each verified
    against `ML100K_RECBOLE_SHA256` (on every call, so corruption is repaired).
  """
  folder = _cache(cache_dir) / _RECBOLE_SUBDIR
  folder.mkdir(parents=True, exist_ok=True)
  if _recbole_cache_ok(folder):
    return folder
  with tempfile.TemporaryDirectory(prefix="recbole-wheel-") as scratch:
    wheel = pip_download_wheel(RECBOLE_REQUIREMENT, Path(scratch))
    for name, expected in ML100K_RECBOLE_SHA256.items():
      _extract_verified(wheel, _WHEEL_FOLDER + name, folder / name, expected)
  return folder


def resolve_ml100k(cache_dir: str | os.PathLike | None = None, *,
                   timeout: float = 60.0) -> Path:
  """A folder with ML-100K that `readers.read_interactions` can read.

  Order: the cached GroupLens archive, the cached RecBole files, a GroupLens
  download, and when that server cannot be reached, the RecBole wheel. Both
  sources hold the same 100,000 ratings; only the file layout differs.

  Args:
    cache_dir: defaults to `default_cache_dir()`.
    timeout: seconds for GroupLens to answer before falling back.
  """
  cache = _cache(cache_dir)
  if (cache / "movielens" / "ml-100k.zip").is_file():
    return fetch_movielens("ml-100k", cache, timeout=timeout)  # verified; no download
  recbole = cache / _RECBOLE_SUBDIR
  if recbole.is_dir() and _recbole_cache_ok(recbole):
    return recbole
  try:
    return fetch_movielens("ml-100k", cache, timeout=timeout)
  except OSError as e:  # includes requests' connection errors and timeouts
    _log.warning("GroupLens is unreachable (%s); using the RecBole wheel from PyPI", e)
    return ml100k_from_recbole_wheel(cache)
