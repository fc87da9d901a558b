"""Cloze (masked-item) examples for bidirectional encoders such as BERT4Rec.

Training (Sun et al. 2019; RecBole's BERT4Rec): each event of the newest
`max_len` events is replaced by `mask_id` with probability `mask_prob`,
independently; a sequence that drew no mask gets one at a uniformly random
position, so that every example has a loss. Targets hold the original id at
the masked positions and 0 everywhere else. With probability
`last_item_prob` an example instead masks only its newest event (RecBole's
`ft_ratio`, the original's "mask last" instances): that is exactly the
evaluation task, which the random masks see only rarely.

Evaluation appends `mask_id` after the history (dropping the oldest events so
that history + mask fit in `max_len`); the encoder's output at the mask is the
user representation.

Masked positions are always replaced by the mask token (no BERT 80/10/10
rule, as in BERT4Rec's and RecBole's code), and the number of masks per
sequence is not capped.
"""

from __future__ import annotations

import numpy as np


def mask_positions(length: int, rng: np.random.Generator, mask_prob: float) -> np.ndarray:
  """[length] bool: each position True with probability `mask_prob`, at least one True."""
  if not 0.0 < mask_prob <= 1.0:
    raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
  if length < 1:
    raise ValueError("a cloze example needs at least one event")
  masked = rng.random(length) < mask_prob
  if not masked.any():
    masked[rng.integers(length)] = True
  return masked


def cloze_example(seq: np.ndarray, rng: np.random.Generator, *, max_len: int, mask_prob: float,
                  mask_id: int, last_item_prob: float = 0.0) -> dict[str, np.ndarray]:
  """Unpadded {"inputs", "targets"} for the newest `max_len` events of `seq`."""
  seq = np.asarray(seq, np.int32)[-max_len:]
  if last_item_prob and rng.random() < last_item_prob:
    masked = np.zeros(len(seq), bool)
    masked[-1] = True
  else:
    masked = mask_positions(len(seq), rng, mask_prob)
  return {"inputs": np.where(masked, np.int32(mask_id), seq),
          "targets": np.where(masked, seq, 0).astype(np.int32)}


def append_mask(history: np.ndarray, max_len: int, mask_id: int) -> np.ndarray:
  """The newest `max_len - 1` events of `history` followed by `mask_id` (unpadded)."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  history = np.asarray(history, np.int32)
  newest = history[-(max_len - 1):] if max_len > 1 else history[:0]
  return np.concatenate([newest, np.array([mask_id], np.int32)])
