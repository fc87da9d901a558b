"""The bundle a run writes, and `Recommender` / `Session` / `CandidateScorer` serving from it."""

import functools
import json
import pathlib
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import pandas as pd
import pytest

import recattn_jax
from recattn_jax.config import get_default_config
from recattn_jax.data import readers
from recattn_jax.data.features import ItemFeatures
from recattn_jax.explain import load_run
from recattn_jax.models import build_encoder, build_pointwise_model, init_encoder
from recattn_jax.serving import BundleError, CandidateScorer, Recommender, UnknownIdError, load
from recattn_jax.serving.portable import export_scorer, run_scorer
from recattn_jax.training import pointwise_task
from recattn_jax.training.bundle import BundleData, read_bundle, write_bundle
from recattn_jax.training.checkpoint import sha256_file
from recattn_jax.training.loop import export_bundle

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(finished_run):
  return finished_run[0] / "bundle"


@pytest.fixture(scope="module")
def rec(bundle):
  return Recommender.load(bundle)


def _test_examples(workdir):
  """(histories, targets) of the run's test set, as original ids."""
  config, split, _, _ = load_run(workdir)
  del config
  ids = split.item_ids
  return [list(ids[h]) for h in split.test.histories], list(ids[split.test.targets])


# ----------------------------------------------------------------------------
# The bundle.


def test_a_finished_run_writes_a_bundle_that_reproduces_its_test_metrics(finished_run, rec,
                                                                         monkeypatch):
  workdir, results = finished_run
  def no_raw_data(*args, **kwargs):
    raise AssertionError("the bundle must not read the raw data")
  histories, targets = _test_examples(workdir)
  monkeypatch.setattr(readers, "read_interactions", no_raw_data)
  # Evaluation keeps a target rankable even when the user saw it before, which a served list
  # excluding the history does not: compare with the protocol that excludes nothing.
  lists = rec.recommend(histories, k=10, exclude_seen=False)
  hits = np.mean([t in r.items for t, r in zip(targets, lists)])
  assert hits == pytest.approx(results["test"]["all_items"]["HR@10"], abs=1e-6)
  first = np.mean([r.items[0] == t for t, r in zip(targets, lists)])
  assert first == pytest.approx(results["test"]["all_items"]["HR@1"], abs=1e-6)
  manifest = read_bundle(workdir / "bundle").manifest
  assert manifest["run"]["best_step"] == results["best_step"]
  assert set(manifest["files"]) == {"params.msgpack", "vocab.json", "arrays.npz"}


def test_bundle_parameters_are_the_best_checkpoint(finished_run, rec):
  _, _, _, params = load_run(finished_run[0])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(rec.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_rewrites_the_same_bundle(run_copy):
  workdir, _ = run_copy
  before = Recommender.load(workdir / "bundle")
  (workdir / "bundle" / "params.msgpack").write_bytes(b"x")
  out = export_bundle(workdir)
  after = Recommender.load(out)
  for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert list(after.items.ids) == list(before.items.ids)


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "params.msgpack").write_bytes((b / "params.msgpack").read_bytes()[:-10]),
     "params.msgpack is .* bytes but the bundle records .*truncated"),
    (lambda b: (b / "arrays.npz").write_bytes(b"\0" + (b / "arrays.npz").read_bytes()[1:]),
     "arrays.npz does not match its SHA256"),
    (lambda b: (b / "vocab.json").unlink(), "vocab.json is missing"),
    (lambda b: (b / "bundle.json").write_text("{"), "bundle.json is damaged"),
    (lambda b: (b / "bundle.json").unlink(), "not a model bundle"),
    (lambda b: (b / "bundle.json").write_text(json.dumps(
        {**json.loads((b / "bundle.json").read_text()), "format_version": 99})),
     r"format version 99 but this recattn_jax reads versions \[1, 2\]"),
])
def test_a_damaged_or_foreign_bundle_is_refused_naming_the_file(run_copy, damage, message):
  bundle = run_copy[0] / "bundle"
  damage(bundle)
  with pytest.raises(BundleError, match=message):
    Recommender.load(bundle)


def test_a_bundle_never_replaces_a_folder_that_is_not_one(tmp_path, rec):
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "mine.txt").write_text("keep")
  with pytest.raises(BundleError, match="is not a bundle"):
    write_bundle(tmp_path / "notes", config=rec.config, params=rec.params, data=rec.bundle.data)
  assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


# ----------------------------------------------------------------------------
# Requests.


def test_recommend_by_original_ids_batched_equals_one_by_one(rec):
  histories = [["1", "2", "3"], ["7"], ["30", "31", "32", "33"]]
  batch = rec.recommend(histories, k=5)
  for history, listed in zip(histories, batch):
    alone = rec.recommend(history, k=5)
    assert alone.items == listed.items and len(alone.items) == 5
    np.testing.assert_allclose(alone.scores, listed.scores, rtol=1e-6)
    assert not set(history) & set(alone.items)  # exclude_seen
    assert all(isinstance(i, str) for i in alone.items)
  assert np.all(np.diff(batch[0].scores) <= 0)


def test_unknown_ids_are_named_or_dropped_never_scored(rec):
  with pytest.raises(UnknownIdError, match=r"1 unknown item id\(s\): '5000'"):
    rec.recommend(["1", "5000"])
  dropped = rec.recommend(["1", "5000", "zz"], k=5, unknown="drop")
  assert dropped.dropped == ["5000", "zz"] and dropped.source == "model"
  assert dropped.items == rec.recommend(["1"], k=5).items
  assert np.all(np.isfinite(dropped.scores))
  with pytest.raises(UnknownIdError, match="unknown user"):
    rec.recommend_users(["no-such-user"])


def test_an_empty_history_gets_the_popularity_list_flagged(rec):
  for listed in (rec.recommend([], k=4), rec.recommend(["5000"], k=4, unknown="drop")):
    assert listed.source == "popularity"
    counts = rec.popularity[[int(np.flatnonzero(rec.items.ids == i)[0]) for i in listed.items]]
    assert np.all(np.diff(counts) <= 0) and counts[0] == rec.popularity.max()


def test_duplicates_and_too_long_histories(rec):
  repeated = rec.recommend(["4", "4", "4"], k=5)
  assert "4" not in repeated.items
  long = [str(i % 40 + 1) for i in range(3 * rec.max_len)]
  listed = rec.recommend(long, k=5, exclude_seen=False)
  assert listed.truncated == 2 * rec.max_len
  newest = rec.recommend(long[-rec.max_len:], k=5, exclude_seen=False)
  assert listed.items == newest.items  # the encoder reads the newest max_len events
  excluded = rec.recommend(long[-rec.max_len:] + ["1"], k=5)
  assert "1" not in excluded.items


def test_recommend_users_uses_the_whole_known_history(rec):
  (listed,) = rec.recommend_users(["5"], k=5)
  history = rec.user_history("5")
  assert listed.items == rec.recommend(history, k=5).items
  assert not set(history) & set(listed.items)


def test_k_is_checked(rec):
  for bad in (0, rec.num_items + 1, 2.5, True):
    with pytest.raises(ValueError, match="k must be an integer"):
      rec.recommend(["1"], k=bad)


def test_explain_from_the_bundle_names_original_ids(rec):
  explanation = rec.explain(["1", "2", "3"], item="4", k=5)
  assert list(explanation.history) == ["1", "2", "3"]
  assert list(explanation.items) == rec.recommend(["1", "2", "3"], k=5).items
  assert explanation.weights.shape[-1] == 3
  np.testing.assert_allclose(explanation.weights.sum(-1), 1.0, rtol=1e-5)
  assert explanation.item == "4" and 0 <= explanation.item_rank < rec.num_items


# ----------------------------------------------------------------------------
# Sessions, on bundles of randomly initialised models (what is tested is the
# cache, not the training).


def _random_bundle(path, name, *, max_len=8, num_items=30, users=4, seed=0, item_features=None,
                   **fields):
  config = get_default_config()
  config.model.name = name
  config.data.max_len = max_len
  config.model[name].update(embed_dim=16, num_layers=2, num_heads=2, **fields)
  model = build_encoder(config.model, num_items=num_items, max_len=max_len,
                        item_features=item_features)
  params = jax.jit(functools.partial(init_encoder, model, max_len=max_len))(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  histories = [rng.integers(1, num_items + 1, size=int(rng.integers(1, 2 * max_len)))
               .astype(np.int32) for _ in range(users)]
  times = [np.cumsum(rng.exponential(5000, len(h))) + 1.7e9 for h in histories]
  data = BundleData(item_ids=np.asarray(["<pad>"] + [f"i{j}" for j in range(1, num_items + 1)]),
                    user_ids=np.asarray([f"u{u}" for u in range(users)]),
                    popularity=rng.integers(0, 50, num_items + 1), histories=histories,
                    history_timestamps=times, item_features=item_features)
  return write_bundle(path, config=config, params=params, data=data)


def test_a_version_1_bundle_is_migrated_to_padded_tables(tmp_path):
  """Version 1 stored per-item parameters with N + 1 rows; they are padded on load, lists unchanged."""
  bundle = _random_bundle(tmp_path / "b", "bert4rec", num_items=30)
  want = Recommender.load(bundle).recommend(["i1", "i2", "i3"], k=10)
  params = flax.serialization.msgpack_restore((bundle / "params.msgpack").read_bytes())
  params["params"]["item_embed"]["embedding"] = params["params"]["item_embed"]["embedding"][:31]
  params["params"]["output_bias"] = params["params"]["output_bias"][:31]
  (bundle / "params.msgpack").write_bytes(flax.serialization.msgpack_serialize(params))
  manifest = json.loads((bundle / "bundle.json").read_text())
  manifest["format_version"] = 1
  manifest["files"]["params.msgpack"] = {"bytes": (bundle / "params.msgpack").stat().st_size,
                                         "sha256": sha256_file(bundle / "params.msgpack")}
  (bundle / "bundle.json").write_text(json.dumps(manifest))
  got = Recommender.load(bundle).recommend(["i1", "i2", "i3"], k=10)
  assert got.items == want.items


def test_a_content_model_is_served_from_the_features_in_its_bundle(tmp_path):
  rng = np.random.default_rng(0)
  padded = lambda a: np.concatenate([np.zeros_like(a[:1]), a[1:]])  # row 0 is padding
  features = ItemFeatures(
      categorical={"genre": padded(rng.integers(1, 5, 31).astype(np.int32))},
      tokens={"words": padded(rng.integers(0, 9, (31, 3)).astype(np.int32))},
      vocab_sizes={"genre": 5, "words": 9},
      text_embeddings=padded(rng.normal(size=(31, 4)).astype(np.float32)),
      trained=np.arange(31) % 3 > 0, stats={"fields": 3})
  path = _random_bundle(tmp_path / "b", "sasrec", item_features=features,
                        item_representation="both")
  loaded = read_bundle(path).data.item_features
  np.testing.assert_array_equal(loaded.categorical["genre"], features.categorical["genre"])
  np.testing.assert_array_equal(loaded.tokens["words"], features.tokens["words"])
  np.testing.assert_array_equal(loaded.text_embeddings, features.text_embeddings)
  np.testing.assert_array_equal(loaded.trained, features.trained)
  assert loaded.vocab_sizes == features.vocab_sizes
  rec = Recommender.load(path)
  model = build_encoder(rec.config.model, num_items=30, max_len=8, item_features=features)
  params = jax.jit(functools.partial(init_encoder, model, max_len=8))(jax.random.key(0))
  table = jax.jit(functools.partial(model.apply, method="item_embeddings"))(params)
  np.testing.assert_allclose(rec.table[:rec.table_rows], table, rtol=1e-5, atol=1e-7)  # cold too
  assert len(rec.recommend(["i1", "i2"], k=5).items) == 5


SESSION_MODELS = [
    ("sasrec", dict(positions="start"), True),
    ("hstu", dict(positions="start"), True),
    ("hstu", dict(positions="start", attention_norm="causal", num_position_buckets=4), True),
    ("sasrec", dict(positions="end"), False),  # every position moves on append
    ("bert4rec", {}, False),  # bidirectional
]


@pytest.mark.parametrize("name, fields, cached", SESSION_MODELS)
def test_session_appends_equal_full_recomputation_past_max_len(tmp_path, name, fields, cached):
  rec = Recommender.load(_random_bundle(tmp_path / "b", name, **fields))
  rng = np.random.default_rng(1)
  events = [f"i{j}" for j in rng.integers(1, 31, size=2 * rec.max_len + 3)]
  times = list(np.cumsum(rng.exponential(3000, len(events))) + 1.7e9)
  timed = rec.reads_timestamps
  session = rec.session(history=events[:2], timestamps=times[:2] if timed else None)
  assert session.uses_cache == cached
  for n in range(3, len(events) + 1):
    session.append(events[n - 1], timestamp=times[n - 1] if timed else None)
    listed = session.recommend(k=6)
    full = rec.recommend(events[:n], k=6, timestamps=times[:n] if timed else None)
    assert listed.items == full.items, n
    np.testing.assert_allclose(listed.scores, full.scores, rtol=2e-5, atol=2e-5)
    cloze = rec.model.mask_id is not None  # the mask token takes one place of the window
    assert listed.truncated == full.truncated == max(0, n - rec.max_len + cloze)
  assert session.history == events
  several = rec.session(history=events[:3], timestamps=times[:3] if timed else None)
  several.extend(events[3:6], timestamps=times[3:6] if timed else None)  # no recommend between
  assert several.recommend(k=6).items == rec.recommend(
      events[:6], k=6, timestamps=times[:6] if timed else None).items


def test_explain_of_a_model_that_reads_time_uses_the_times(tmp_path):
  rec = Recommender.load(_random_bundle(tmp_path / "b", "hstu", positions="start"))
  history, times = rec.user_history("u2"), list(rec.bundle.data.history_timestamps[2])
  explained = rec.explain(user="u2", k=5)
  assert list(explained.items) == rec.recommend(history, k=5, timestamps=times).items
  assert list(rec.explain(history, timestamps=times, k=5).items) == list(explained.items)
  with pytest.raises(ValueError, match="reads event times"):
    rec.explain(history, k=5)


def test_a_session_starts_from_a_known_users_history(tmp_path):
  rec = Recommender.load(_random_bundle(tmp_path / "b", "sasrec", positions="start"))
  session = rec.session(user="u1").append("i3")
  assert session.history == rec.user_history("u1") + ["i3"]
  assert session.recommend(k=5).items == rec.recommend(session.history, k=5).items
  with pytest.raises(UnknownIdError, match="'nope'"):
    session.append("nope")
  assert rec.session().recommend(k=3).source == "popularity"


# ----------------------------------------------------------------------------
# Target-attention click models: many candidates in one pass.


@pytest.mark.parametrize("name", ["din", "bst"])
def test_candidates_scored_in_one_pass_equal_one_by_one(tmp_path, name):
  config = get_default_config()
  config.task, config.model.name, config.data.max_len = "ctr", name, 6
  model = build_pointwise_model(config.model, task="ctr", num_items=25, num_users=3, max_len=6)
  example = {"users": np.zeros(1, np.int32), "history": np.zeros((1, 6), np.int32),
             "items": np.zeros(1, np.int32)}
  params = pointwise_task.init_params(model, example)(jax.random.key(3))
  # Non-zero biases and a trained-looking head: perturb every parameter.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape), params)
  data = BundleData(item_ids=np.asarray(["<pad>"] + [f"m{j}" for j in range(1, 26)]),
                    user_ids=np.asarray(["a", "b", "c"]), popularity=np.ones(26, np.int64),
                    histories=[np.asarray([1, 2, 3], np.int32), np.asarray([4], np.int32),
                               np.asarray([5, 6, 7, 8, 9, 10, 11], np.int32)])
  scorer = load(write_bundle(tmp_path / "b", config=config, params=params, data=data))
  assert isinstance(scorer, CandidateScorer)
  candidates = [f"m{j}" for j in range(1, 26)]
  together = scorer.score(candidates, user="c")
  alone = np.array([scorer.score([c], user="c")[0] for c in candidates])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
  history = scorer.model.apply(params, np.asarray([2]), np.asarray([[6, 7, 8, 9, 10, 11]]),
                               np.asarray([[7]]))  # newest 6 events, left padded
  np.testing.assert_allclose(together[6], jax.nn.sigmoid(history)[0, 0], rtol=1e-5)
  assert len(set(np.round(together, 6))) > 5 and together.max() < 0.99  # not all alike
  best = scorer.recommend(user="c", k=3)
  assert not {"m5", "m6", "m7", "m8", "m9", "m10", "m11"} & set(best.items)


# ----------------------------------------------------------------------------
# The portable scorer and the batch CLI.


PORTABLE_RUNNER = """
import json, sys
import jax, numpy as np
folder, histories = sys.argv[1], json.loads(sys.argv[2])
exported = jax.export.deserialize(bytearray(open(folder + "/scorer.jaxexport", "rb").read()))
signature = json.load(open(folder + "/signature.json"))
items = json.load(open(folder + "/items.json"))
index = {item: i for i, item in enumerate(items) if i}
L = signature["max_len"]
inputs = np.zeros((len(histories), L), np.int32)
exclude = np.zeros((len(histories), 8), np.int32)
for row, history in enumerate(histories):
  ids = [index[i] for i in history]
  exclude[row, :len(ids)] = ids
  ids = ids[-L:]
  inputs[row, L - len(ids):] = ids  # left padding, as signature["padding"] says
ids, scores = exported.call(inputs, exclude)
assert not any(m.startswith("recattn_jax") for m in sys.modules)
print(json.dumps([[items[i] for i in row] for row in np.asarray(ids)]))
"""


def test_portable_scorer_runs_with_jax_alone_in_a_fresh_process(rec, tmp_path):
  folder = export_scorer(rec, tmp_path / "scorer", k=5)
  assert json.loads((folder / "signature.json").read_text())["padding"] == "left"
  histories = [["1", "2", "3"], ["7"], ["12", "13"]]
  expected = [r.items for r in rec.recommend(histories, k=5)]
  done = subprocess.run([sys.executable, "-c", PORTABLE_RUNNER, str(folder), json.dumps(histories)],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
  assert run_scorer(folder, histories) == expected
  for batch in (1, 7):  # the batch size is symbolic
    assert len(run_scorer(folder, [["1"]] * batch)) == batch


def _cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd,
                        timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_batch_cli_writes_every_users_top_k_with_original_ids(bundle, rec, tmp_path):
  done = _cli("recattn_jax.recommend", f"--bundle={bundle}", "--users=all", "--k=4",
              f"--out={tmp_path / 'topk.parquet'}", cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  table = pd.read_parquet(tmp_path / "topk.parquet")
  assert len(table) == 4 * len(rec.users) and set(table["rank"]) == {1, 2, 3, 4}
  some = table[table["id"] == "5"].sort_values("rank")
  assert list(some["item"]) == rec.recommend_users(["5"], k=4)[0].items
  (tmp_path / "h.jsonl").write_text('{"id": "a", "history": ["1", "2"]}\n{"id": "b", "history": []}\n'
                                    'not json\n')
  done = _cli("recattn_jax.recommend", f"--bundle={bundle}", f"--histories={tmp_path / 'h.jsonl'}",
              f"--out={tmp_path / 'h.parquet'}", "--k=3", cwd=tmp_path)
  assert done.returncode == 1 and "h.jsonl:3: not a JSON object" in done.stderr
  assert not (tmp_path / "h.parquet").exists()  # no half-written output
  (tmp_path / "h.jsonl").write_text('{"id": "a", "history": ["1", "2"]}\n{"id": "b", "history": []}\n')
  done = _cli("recattn_jax.recommend", f"--bundle={bundle}", f"--histories={tmp_path / 'h.jsonl'}",
              f"--out={tmp_path / 'h.parquet'}", "--k=3", cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  table = pd.read_parquet(tmp_path / "h.parquet")
  assert list(table[table["id"] == "a"]["item"]) == rec.recommend(["1", "2"], k=3).items
  assert set(table[table["id"] == "b"]["source"]) == {"popularity"}


def test_top_level_import():
  assert recattn_jax.Recommender is Recommender


def test_bad_batch_requests_and_exports_are_named(rec, tmp_path):
  from recattn_jax.serving.batch import read_histories, write_top_k  # pylint: disable=g-import-not-at-top
  (tmp_path / "h.jsonl").write_text('{"id": "a", "history": ["1"]}\n{"id": "b", "items": ["1"]}\n')
  with pytest.raises(ValueError, match=r"h.jsonl:2: expected an object with a \"history\" list"):
    write_top_k(rec, tmp_path / "o.parquet", k=3, histories=read_histories(tmp_path / "h.jsonl"),
                progress=False)
  (tmp_path / "h.jsonl").write_text('{"id": "a", "history": ["1", "5000"]}\n')
  with pytest.raises(UnknownIdError, match="request 'a': 1 unknown item id"):
    write_top_k(rec, tmp_path / "o.parquet", k=3, histories=read_histories(tmp_path / "h.jsonl"),
                progress=False)
  with pytest.raises(UnknownIdError, match="unknown user"):
    write_top_k(rec, tmp_path / "o.parquet", k=3, users=["nobody"], progress=False)
  assert not (tmp_path / "o.parquet").exists()
  with pytest.raises(ValueError, match="one time per history event"):
    rec.recommend(["1", "2"], timestamps=[1.0])
  with pytest.raises(FileNotFoundError, match="results.json is missing: the run .* has not finished"):
    export_bundle(tmp_path)
