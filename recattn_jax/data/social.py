"""A friend graph as a user feature: each user's context is what their friends consume.

`read_friend_graph` reads a headed two-column table of user/friend ids (Last.fm
HetRec's `user_friends.dat`: `userID  friendID`); `friend_profiles` turns it
into `UserProfiles`: for user u, the items u's friends interacted with in
*training* (never a validation or test event, so nothing leaks from the
held-out targets), weighted by how many friends had each, the `top_k` most
shared ones kept (ties: lower item id first).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from recattn_jax.data.preprocess import Split
from recattn_jax.data.readers import DataFormatError, read_table


@dataclasses.dataclass(frozen=True, eq=False)
class UserProfiles:
  """Row u + 1 holds user u's context items and weights (row 0: padding, no items).

  items: int32 [num_users + 1, F] item ids (0 = unused slot);
  weights: float32 [num_users + 1, F], summing to 1 over a row with items, 0 without.
  """

  items: np.ndarray
  weights: np.ndarray
  stats: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.items.ndim != 2 or self.items.shape != self.weights.shape:
      raise ValueError(f"UserProfiles items {self.items.shape} and weights {self.weights.shape} "
                       "must be matching [num_users + 1, F] arrays")
    if np.any((self.items == 0) & (self.weights != 0)):
      raise ValueError("UserProfiles gives weight to the padding item 0")

  @property
  def num_users(self) -> int:
    return self.items.shape[0] - 1


def read_friend_graph(path: str | Path, *, user_col: str = "userID",
                      friend_col: str = "friendID") -> list[tuple[str, str]]:
  """(user id, friend id) pairs as strings; a folder means its `user_friends.dat`.

  The graph is taken as undirected (Last.fm lists both directions anyway);
  self-loops are an error, naming the file and line.
  """
  path = Path(path)
  if path.is_dir():
    path = path / "user_friends.dat"
  if not path.is_file():
    raise FileNotFoundError(f"data.user_friends_path: no friend graph at {path}")
  table = read_table(path, user_col=user_col, item_col=friend_col, sep="\t")
  users = table["user_id"].astype(str).to_numpy()
  friends = table["item_id"].astype(str).to_numpy()
  loops = np.flatnonzero(users == friends)
  if loops.size:
    raise DataFormatError(f"{path}, line {int(loops[0]) + 2}: user {users[loops[0]]} is "
                          "listed as their own friend")
  return list(zip(users, friends))


def friend_profiles(split: Split, edges: list[tuple[str, str]], *, top_k: int) -> UserProfiles:
  """Row u + 1: up to `top_k` items of u's friends' training sequences, by number of friends.

  Friends unknown to `split` (no interactions) are ignored; users without known
  friends get an empty row (zero context).
  """
  if split.user_ids is None:
    raise ValueError("split has no user_ids to align the friend graph with")
  if top_k < 1:
    raise ValueError(f"data.friend_items must be >= 1, got {top_k}")
  index = {str(u): i for i, u in enumerate(split.user_ids)}
  num_users = len(split.user_ids)
  friends = [set() for _ in range(num_users)]
  unknown = 0
  for user, friend in edges:
    if user not in index or friend not in index:
      unknown += 1
      continue
    friends[index[user]].add(index[friend])
    friends[index[friend]].add(index[user])
  trained = [np.zeros(0, np.int32)] * num_users
  for user, sequence in zip(split.train_users, split.train):
    trained[int(user)] = np.unique(np.asarray(sequence, np.int32))

  items = np.zeros((num_users + 1, top_k), np.int32)
  weights = np.zeros((num_users + 1, top_k), np.float32)
  for user in range(num_users):
    counts = Counter()
    for friend in friends[user]:
      counts.update(trained[friend].tolist())
    if not counts:
      continue
    chosen = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    ids, counted = zip(*chosen)
    items[user + 1, :len(ids)] = ids
    weights[user + 1, :len(ids)] = np.asarray(counted, np.float32) / sum(counted)
  with_context = int((weights.sum(axis=1) > 0).sum())
  stats = {"edges": len(edges), "edges_with_unknown_users": unknown,
           "users_with_friends": int(sum(1 for f in friends if f)),
           "users_with_context": with_context, "items_per_user": top_k}
  return UserProfiles(items=items, weights=weights, stats=stats)
