"""Friend graph as a user context: reading, profiles, pipeline, encoders and one end-to-end run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.data.pipeline import eval_batches, train_dataset
from recattn_jax.data.preprocess import build_sequences, leave_one_out
from recattn_jax.data.readers import DataFormatError
from recattn_jax.data.social import UserProfiles, friend_profiles, read_friend_graph
from recattn_jax.models import init_encoder, last_hidden
from recattn_jax.training.loop import train_and_evaluate
from tests.helpers import make_encoder, tiny_config


def _split(histories: dict[str, list[int]]):
  import pandas as pd
  rows = [(u, str(i), t) for u, items in histories.items() for t, i in enumerate(items)]
  frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
  frame["rating"] = np.nan
  return leave_one_out(build_sequences(frame))


def test_friend_graph_reader_names_the_bad_line(tmp_path):
  path = tmp_path / "user_friends.dat"
  path.write_text("userID\tfriendID\n2\t3\n4\t4\n")
  with pytest.raises(DataFormatError, match=r"user_friends.dat, line 3: user 4 .* own friend"):
    read_friend_graph(tmp_path)
  path.write_text("user\tfriend\n2\t3\n")
  with pytest.raises(DataFormatError, match="userID"):
    read_friend_graph(path)
  with pytest.raises(FileNotFoundError, match="user_friends_path"):
    read_friend_graph(tmp_path / "missing.dat")
  path.write_text("userID\tfriendID\n2\t3\n3\t9\n")
  assert read_friend_graph(path) == [("2", "3"), ("3", "9")]


def test_profiles_count_friends_training_items_only():
  # Item ids are renumbered by first appearance; leave-one-out holds out each user's last two.
  split = _split({"a": [10, 11, 12, 13, 14], "b": [10, 12, 15, 16], "c": [11, 12, 17, 18],
                  "d": [19, 20, 21]})
  internal = {str(v): k for k, v in enumerate(split.item_ids) if k}
  a, b, c, d = (list(split.user_ids).index(u) for u in "abcd")
  profiles = friend_profiles(split, [("a", "b"), ("c", "a"), ("d", "x")], top_k=2)
  # a's friends b and c trained on {10, 12} and {11, 12}: 12 is shared by both.
  row = profiles.items[a + 1]
  assert row[0] == internal["12"] and set(row) <= {internal["10"], internal["11"], internal["12"]}
  np.testing.assert_allclose(profiles.weights[a + 1], [2 / 3, 1 / 3])
  # b's only friend is a (the graph is undirected); a's held-out 13, 14 never appear.
  assert set(profiles.items[b + 1][profiles.weights[b + 1] > 0]) <= {
      internal[i] for i in ("10", "11", "12")}
  assert not {internal["13"], internal["14"]} & set(profiles.items.ravel())
  # d's friend is unknown: no context; row 0 is padding.
  assert profiles.weights[d + 1].sum() == 0 and profiles.weights[0].sum() == 0
  assert profiles.stats["edges_with_unknown_users"] == 1
  assert profiles.stats["users_with_context"] == 3


def test_profiles_reject_weight_on_padding():
  with pytest.raises(ValueError, match="padding item"):
    UserProfiles(items=np.zeros((2, 1), np.int32), weights=np.ones((2, 1), np.float32))


SEQS = [np.arange(1, n + 1) + 100 * i for i, n in enumerate([2, 3, 5, 8, 13, 4])]


@pytest.mark.parametrize("pack, objective", [(False, "next_item"), (True, "next_item"),
                                             (True, "cloze")])
def test_pipeline_marks_every_position_with_its_user(pack, objective):
  users = np.arange(len(SEQS)) + 10
  it = iter(train_dataset(SEQS, max_len=8, batch_size=2, seed=1, pack=pack, users=users,
                          objective=objective, mask_id=10_000))
  for _ in range(6):
    batch = next(it)
    seen = batch["inputs"] > 0
    # Item 100 * i + k belongs to sequence i, whose user index is i + 10, stored + 1.
    items = np.where(batch["inputs"] == 10_000, batch["targets"], batch["inputs"])
    np.testing.assert_array_equal(batch["users"][seen], items[seen] // 100 + 11)
    if pack:
      np.testing.assert_array_equal(batch["users"][~seen], 0)


def test_eval_batches_carry_users():
  batch = next(eval_batches([np.array([1, 2]), np.array([3])], np.array([4, 5]), max_len=4,
                            batch_size=3, users=np.array([7, 9])))
  np.testing.assert_array_equal(batch["users"][:, 0], [8, 10, 0])
  with pytest.raises(ValueError, match="1 user indices for 2"):
    next(eval_batches([np.array([1]), np.array([2])], np.array([1, 1]), max_len=4, batch_size=2,
                      users=np.array([0])))


def _profiles(num_users=3, num_items=40, seed=0):
  rng = np.random.default_rng(seed)
  items = rng.integers(1, num_items + 1, size=(num_users + 1, 4)).astype(np.int32)
  weights = rng.random((num_users + 1, 4)).astype(np.float32)
  items[0], weights[0] = 0, 0
  return UserProfiles(items=items, weights=weights / weights.sum(1, keepdims=True).clip(1e-9))


def _model(name, profiles):
  fields = dict(embed_dim=16, num_heads=2, positions="start")
  if name != "hstu":
    fields["ff_dim"] = 32
  return make_encoder(name, num_items=40, max_len=12, user_profiles=profiles, **fields)


def _trained_projection(params, seed=1):
  """The context projection starts at zero; give it weights so that the context matters."""
  kernel = params["params"]["user_context"]["project"]["kernel"]
  noise = jax.random.normal(jax.random.key(seed), kernel.shape)
  return {**params, "params": {**params["params"], "user_context": {"project": {"kernel": noise}}}}


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "hstu"])
def test_context_starts_neutral_then_changes_outputs_and_packs_like_padding(name):
  profiles = _profiles()
  model, plain = _model(name, profiles), _model(name, None)
  params = init_encoder(model, jax.random.key(0), 12)
  items = jnp.asarray([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
  user_a, user_b = jnp.full_like(items, 1), jnp.full_like(items, 2)
  without = {"params": {k: v for k, v in params["params"].items() if k != "user_context"}}
  np.testing.assert_allclose(model.apply(params, items, users=user_a),
                             plain.apply(without, items), atol=1e-6)
  params = _trained_projection(params)
  out_a, out_b = model.apply(params, items, users=user_a), model.apply(params, items, users=user_b)
  assert np.abs(np.asarray(out_a - out_b))[0, 2:].min() > 1e-4
  with pytest.raises(ValueError, match="user context"):
    model.apply(params, items)
  # Packed: users 1 and 2 share a row and each gets its own padded output.
  histories = [[3, 4, 5], [7, 8, 9, 10, 11]]
  packed = jnp.asarray([sum(histories, []) + [0] * 4])
  segments = jnp.asarray([[1] * 3 + [2] * 5 + [0] * 4])
  users = jnp.asarray([[1] * 3 + [2] * 5 + [0] * 4])
  out = model.apply(params, packed, segments, users=users)
  offset = 0
  for user, history in enumerate(histories, start=1):
    alone = jnp.asarray([[0] * (12 - len(history)) + history])
    expected = model.apply(params, alone, users=jnp.full_like(alone, user))[0, 12 - len(history):]
    np.testing.assert_allclose(out[0, offset:offset + len(history)], expected, atol=1e-5)
    offset += len(history)


def test_cached_extension_with_context_equals_full_recomputation():
  model = _model("sasrec", _profiles())
  params = _trained_projection(init_encoder(model, jax.random.key(2), 12))
  history = jnp.asarray([[3, 4, 0, 0], [5, 6, 7, 0]])
  users = jnp.asarray([[1] * 4, [3] * 4])
  _, cache = model.apply(params, history, users=users, method=model.prefill)
  rep, _ = model.apply(params, cache, jnp.asarray([9, 8]), users=users[:, 0], method=model.extend)
  full = jnp.asarray([[3, 4, 9, 0], [5, 6, 7, 8]])
  expected = last_hidden(model.apply(params, full, users=users), full)
  np.testing.assert_allclose(rep, expected, atol=1e-5)


def write_social_data(folder, *, groups=6, per_group=12, shared=24, own=4, length=4, p_own=0.5, seed=0):
  """Each user's short history says little; their friends (same group) reveal the group's items.

  Users draw events half from a large shared pool and half from their group's
  few own items, so the group shows in friends' histories long before it shows
  in the user's own.
  """
  rng = np.random.default_rng(seed)
  lines, friends = ["userID\tartistID\tweight"], ["userID\tfriendID"]
  user = 0
  for g in range(groups):
    members = list(range(user + 1, user + per_group + 1))
    user += per_group
    own_items = [shared + 1 + g * own + k for k in range(own)]
    for u in members:
      for f in members:
        if f != u:
          friends.append(f"{u}\t{f}")
      events = [int(rng.choice(own_items)) if rng.random() < p_own else int(rng.integers(1, shared + 1))
                for _ in range(length)]
      events[-1] = int(rng.choice(own_items))  # the held-out favourite is a group item
      for rank, item in enumerate(dict.fromkeys(events)):
        lines.append(f"{u}\t{item}\t{rank + 1}")
  (folder / "user_artists.dat").write_text("\n".join(lines) + "\n")
  (folder / "user_friends.dat").write_text("\n".join(friends) + "\n")
  return folder


def test_friend_context_beats_the_same_model_without_it(tmp_path):
  data = write_social_data(tmp_path, length=8, p_own=0.3, per_group=16)
  results = {}
  for with_friends in (False, True):
    config = tiny_config(data, num_epochs=30, learning_rate=1e-2, patience=30)
    config.data.format = "lastfm"
    config.data.max_len = 8
    config.data.user_friends_path = str(data / "user_friends.dat") if with_friends else ""
    config.data.friend_items = 8
    results[with_friends] = train_and_evaluate(config, tmp_path / str(with_friends))
  ndcg = {k: r["test"]["seen_excluded"]["NDCG@10"] for k, r in results.items()}
  assert ndcg[True] > ndcg[False] + 0.05, ndcg
  assert results[True]["data"]["user_profiles"]["users_with_context"] == 96
