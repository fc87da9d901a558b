"""Grain batching: padding, shapes, shuffling by seed, checkpointable iterator state."""

import numpy as np
import pytest

from recattn_jax.data.pipeline import eval_batches, pad_to, train_dataset

SEQS = [np.arange(1, n + 1) + 100 * i for i, n in enumerate([2, 3, 5, 8, 13, 4, 6, 7, 9, 2])]


def test_pad_to_keeps_newest_events_on_either_side():
  np.testing.assert_array_equal(pad_to([1, 2, 3], 5, "left"), [0, 0, 1, 2, 3])
  np.testing.assert_array_equal(pad_to([1, 2, 3], 5, "right"), [1, 2, 3, 0, 0])
  np.testing.assert_array_equal(pad_to([1, 2, 3, 4, 5, 6], 4, "left"), [3, 4, 5, 6])
  with pytest.raises(ValueError, match="data.padding"):
    pad_to([1], 3, "middle")


def test_next_item_examples_shift_by_one():
  def first(max_len, padding):
    return next(iter(train_dataset([np.array([7, 8, 9, 10])], max_len=max_len, batch_size=1,
                                   seed=0, padding=padding)))
  ex = first(5, "left")
  np.testing.assert_array_equal(ex["inputs"][0], [0, 0, 7, 8, 9])
  np.testing.assert_array_equal(ex["targets"][0], [0, 0, 8, 9, 10])
  ex = first(2, "right")
  np.testing.assert_array_equal(ex["inputs"][0], [8, 9])
  np.testing.assert_array_equal(ex["targets"][0], [9, 10])


def _example_ids(batches):
  """Identify each example by its newest event (unique per sequence here)."""
  return [int(t[-1]) for b in batches for t in b["targets"]]


def test_each_pass_is_a_permutation_and_seeded():
  ds = train_dataset(SEQS, max_len=6, batch_size=5, seed=3)
  it = iter(ds)
  batches = [next(it) for _ in range(4)]
  assert batches[0]["inputs"].shape == (5, 6) and batches[0]["inputs"].dtype == np.int32
  ids = _example_ids(batches)
  assert sorted(ids[:10]) == sorted(ids[10:]) == sorted(int(s[-1]) for s in SEQS)
  assert ids[:10] != ids[10:], "each pass should be reshuffled"
  again = iter(train_dataset(SEQS, max_len=6, batch_size=5, seed=3))
  assert _example_ids([next(again) for _ in range(4)]) == ids
  other = iter(train_dataset(SEQS, max_len=6, batch_size=5, seed=4))
  assert _example_ids([next(other) for _ in range(2)]) != ids[:10]


def test_iterator_state_round_trip():
  it = iter(train_dataset(SEQS, max_len=6, batch_size=3, seed=0))
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(train_dataset(SEQS, max_len=6, batch_size=3, seed=0))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])


def test_sequences_too_short_are_skipped_and_none_is_an_error():
  ds = train_dataset([np.array([1]), np.array([1, 2])], max_len=3, batch_size=1, seed=0)
  np.testing.assert_array_equal(next(iter(ds))["targets"], [[0, 0, 2]])
  with pytest.raises(ValueError, match="2 events"):
    train_dataset([np.array([1])], max_len=3, batch_size=1, seed=0)


def test_eval_batches_fixed_shape_with_weights():
  histories = [np.arange(1, n + 1) for n in (3, 9, 1)]
  targets = np.array([4, 10, 2])
  batches = list(eval_batches(histories, targets, max_len=4, batch_size=2))
  assert len(batches) == 2
  for b in batches:
    assert b["inputs"].shape == (2, 4) and b["exclude"].shape == (2, 16)
  np.testing.assert_array_equal(batches[0]["inputs"][1], [6, 7, 8, 9])
  np.testing.assert_array_equal(batches[0]["exclude"][1, :9], np.arange(1, 10))
  np.testing.assert_array_equal(batches[1]["weight"], [1, 0])
  np.testing.assert_array_equal(batches[1]["targets"][:1], [2])


def test_packing_one_pass_holds_every_event_once():
  import grain
  from recattn_jax.data.pipeline import _packed, _usable, rows_per_pass
  rows = list(_packed(grain.MapDataset.source(_usable(SEQS)).shuffle(seed=1), max_len=8, seed=1))
  assert len(rows) == rows_per_pass(SEQS, max_len=8, seed=1, pack=True) < len(SEQS)
  targets = sorted(int(t) for r in rows for t in r["targets"] if t > 0)
  assert targets == sorted(int(t) for s in SEQS for t in s[1:][-8:])
  for r in rows:
    assert r["inputs"].shape == r["segment_ids"].shape == (8,)
    np.testing.assert_array_equal(r["segment_ids"] > 0, r["inputs"] > 0)


def test_packed_stream_batches_and_resumes():
  it = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=1, pack=True))
  first = next(it)
  assert set(first) == {"inputs", "targets", "segment_ids"} and first["inputs"].shape == (2, 8)
  state = it.get_state()
  expected = next(it)
  resumed = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=1, pack=True))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["segment_ids"], expected["segment_ids"])


def test_windows_cover_every_target_once():
  from recattn_jax.data.pipeline import _window_slices, rows_per_pass
  seq = np.arange(1, 12)
  cut = [seq[s] for s in _window_slices(len(seq), 4)]
  assert [list(w) for w in cut] == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [1, 2, 3]]
  assert sorted(t for w in cut for t in w[1:]) == list(range(2, 12))
  assert rows_per_pass([seq], max_len=4, seed=0, pack=False, all_windows=True) == 3
  assert rows_per_pass([seq], max_len=4, seed=0, pack=False) == 1


def test_prefetched_stream_equals_plain_stream_and_resumes():
  plain = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=2, pack=True))
  fetched = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=2, pack=True, prefetch=3))
  for _ in range(4):
    np.testing.assert_array_equal(next(plain)["inputs"], next(fetched)["inputs"])
  state = fetched.get_state()
  expected = next(fetched)
  resumed = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=2, pack=True, prefetch=3))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], expected["inputs"])
  for it in (fetched, resumed):
    it.close()
