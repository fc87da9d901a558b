"""Cloze masking (BERT4Rec) and the cloze objective of the grain pipelines."""

import grain
import numpy as np
import pytest

from recattn_jax.data.cloze import append_mask, cloze_example, mask_positions
from recattn_jax.data.pipeline import (_examples, _pack, _usable, eval_batches, rows_per_pass,
                                      train_dataset)

MASK = 999
SEQS = [np.arange(1, n + 1) + 100 * i for i, n in enumerate([2, 3, 5, 8, 13, 4, 6, 7, 9, 2])]


def test_mask_rate_is_near_p_and_never_zero():
  rng = np.random.default_rng(0)
  masked = mask_positions(20_000, rng, 0.2)
  assert abs(masked.mean() - 0.2) < 0.01  # 5 standard deviations
  # Short sequences with a tiny p would usually draw no mask; each still gets one.
  counts = [mask_positions(n, rng, 0.01).sum() for n in (1, 2, 3) for _ in range(200)]
  assert min(counts) == 1
  with pytest.raises(ValueError, match="mask_prob"):
    mask_positions(5, rng, 0.0)


def test_cloze_example_targets_are_the_masked_originals():
  seq = np.arange(1, 31, dtype=np.int32)
  ex = cloze_example(seq, np.random.default_rng(1), max_len=20, mask_prob=0.3, mask_id=MASK)
  kept = seq[-20:]
  masked = ex["inputs"] == MASK
  assert ex["inputs"].shape == ex["targets"].shape == (20,)
  assert masked.any()
  np.testing.assert_array_equal(ex["targets"] > 0, masked)
  np.testing.assert_array_equal(ex["targets"][masked], kept[masked])
  np.testing.assert_array_equal(ex["inputs"][~masked], kept[~masked])


def test_cloze_example_is_a_function_of_the_seed():
  seq = np.arange(1, 41)
  draw = lambda seed: cloze_example(seq, np.random.default_rng(seed), max_len=40,
                                    mask_prob=0.2, mask_id=MASK)["inputs"]
  np.testing.assert_array_equal(draw(7), draw(7))
  assert not np.array_equal(draw(7), draw(8))


def test_last_item_examples_mask_only_the_newest_event():
  ex = cloze_example(np.arange(1, 9), np.random.default_rng(0), max_len=8, mask_prob=0.5,
                     mask_id=MASK, last_item_prob=1.0)
  np.testing.assert_array_equal(ex["inputs"], [1, 2, 3, 4, 5, 6, 7, MASK])
  np.testing.assert_array_equal(ex["targets"], [0] * 7 + [8])


def test_append_mask_drops_the_oldest_events_to_fit():
  np.testing.assert_array_equal(append_mask(np.array([4, 5]), 5, MASK), [4, 5, MASK])
  np.testing.assert_array_equal(append_mask(np.arange(1, 10), 4, MASK), [7, 8, 9, MASK])
  np.testing.assert_array_equal(append_mask(np.arange(1, 10), 1, MASK), [MASK])


def _cloze_stream(**kwargs):
  args = dict(max_len=6, batch_size=5, seed=3, objective="cloze", mask_prob=0.3, mask_id=MASK)
  return iter(train_dataset(SEQS, **(args | kwargs)))


@pytest.mark.parametrize("padding", ["left", "right"])
def test_cloze_batches_mask_and_pad(padding):
  it = _cloze_stream(padding=padding)
  batch = next(it)
  assert set(batch) == {"inputs", "targets"}
  assert batch["inputs"].shape == batch["targets"].shape == (5, 6)
  for inputs, targets in zip(batch["inputs"], batch["targets"]):
    masked = inputs == MASK
    assert masked.any()
    np.testing.assert_array_equal(targets > 0, masked)
    real = inputs > 0
    assert (real[:real.sum()].all() if padding == "right" else real[len(real) - real.sum():].all())


def _events(batch):
  """Each row's newest original event, whether it was masked or not."""
  originals = np.where(batch["inputs"] == MASK, batch["targets"], batch["inputs"])
  return [int(row[row > 0][-1]) for row in originals]


def test_cloze_masks_change_every_pass_and_resume_exactly():
  it = _cloze_stream()
  batches = [next(it) for _ in range(4)]  # two passes of 10 examples
  first, second = batches[:2], batches[2:]
  assert sorted(_events(first[0]) + _events(first[1])) == sorted(
      _events(second[0]) + _events(second[1])) == sorted(int(s[-1]) for s in SEQS)
  by_example = lambda bs: {e: tuple(row) for b in bs for e, row in zip(_events(b), b["inputs"])}
  assert by_example(first) != by_example(second), "masks must be drawn afresh each pass"
  again = _cloze_stream()
  for want in batches:
    np.testing.assert_array_equal(next(again)["inputs"], want["inputs"])
  resumed = _cloze_stream()
  next(resumed)
  state = resumed.get_state()
  continued = _cloze_stream()
  continued.set_state(state)
  for want in batches[1:]:
    got = next(continued)
    np.testing.assert_array_equal(got["inputs"], want["inputs"])
    np.testing.assert_array_equal(got["targets"], want["targets"])


def test_packed_cloze_rows_keep_users_apart_and_count_rows():
  it = _cloze_stream(pack=True, max_len=8, batch_size=2)
  batches = [next(it) for _ in range(6)]
  for batch in batches:
    assert set(batch) == {"inputs", "targets", "segment_ids"}
    np.testing.assert_array_equal(batch["segment_ids"] > 0, batch["inputs"] > 0)
    for inputs, targets, segments in zip(batch["inputs"], batch["targets"], batch["segment_ids"]):
      for segment in set(segments[segments > 0].tolist()):
        part = segments == segment
        assert (inputs[part] == MASK).any()  # every packed user has its own mask
        originals = np.where(inputs[part] == MASK, targets[part], inputs[part])
        assert len(set(originals // 100)) == 1  # one user's items per segment
  # A cloze example holds one event more than a next-item one: rows pack differently.
  cloze_rows = rows_per_pass(SEQS, max_len=8, seed=1, pack=True, objective="cloze")
  assert cloze_rows >= rows_per_pass(SEQS, max_len=8, seed=1, pack=True)
  one_pass = _examples(grain.MapDataset.source(_usable(SEQS)).shuffle(seed=1), objective="cloze",
                       max_len=8, seed=1, mask_prob=0.3, mask_id=MASK, last_item_prob=0.0)
  assert cloze_rows == sum(1 for _ in _pack(one_pass, 8, 1, ("inputs", "targets")))


def test_cloze_needs_a_mask_id_and_a_known_objective():
  with pytest.raises(ValueError, match="mask_id"):
    train_dataset(SEQS, max_len=6, batch_size=2, seed=0, objective="cloze")
  with pytest.raises(ValueError, match="objective"):
    train_dataset(SEQS, max_len=6, batch_size=2, seed=0, objective="mlm")


@pytest.mark.parametrize("padding", ["left", "right"])
def test_eval_batches_append_the_mask_after_the_history(padding):
  histories = [np.arange(1, n + 1) for n in (3, 9)]
  batch = next(eval_batches(histories, np.array([4, 10]), max_len=4, batch_size=2,
                            padding=padding, append_mask_id=MASK))
  np.testing.assert_array_equal(batch["inputs"], [[1, 2, 3, MASK], [7, 8, 9, MASK]])
  np.testing.assert_array_equal(batch["exclude"][1, :9], np.arange(1, 10))
  short = next(eval_batches([np.array([5])], np.array([6]), max_len=4, batch_size=1,
                            padding=padding, append_mask_id=MASK))["inputs"][0]
  np.testing.assert_array_equal(short, [0, 0, 5, MASK] if padding == "left" else [5, MASK, 0, 0])
