"""The LoRA text tower trained with the recommender: the candidate loss, the frozen weights, the refresh."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recattn_jax.training import losses


def numpy_mixed_softmax(hidden, candidates, ids, targets, weight, uniform_count):
  """Row by row: own column positive, other columns with the target's item dropped, log E[count]."""
  hidden, candidates = np.float64(hidden), np.float64(candidates)
  m = len(targets)
  total, weights = 0.0, 0.0
  for p in range(m):
    if weight[p] == 0:
      continue
    logits = []
    for c, item in enumerate(ids):
      real = weight[c] > 0 if c < m else item > 0
      if c != p and (not real or item == targets[p]):
        continue
      count = sum(1 for q in range(m) if weight[q] > 0 and targets[q] == item) + uniform_count
      logits.append((hidden[p] @ candidates[c] - np.log(count), c == p))
    values = np.array([v for v, _ in logits])
    positive = next(v for v, own in logits if own)
    total += weight[p] * (np.log(np.exp(values - values.max()).sum()) + values.max() - positive)
    weights += weight[p]
  return total / weights


def test_mixed_softmax_equals_a_numpy_reference_with_its_gradient():
  rng = np.random.default_rng(0)
  m, k, d = 6, 5, 4
  targets = np.array([3, 7, 3, 0, 9, 7], np.int32)  # repeats (in-batch hits) and a padding position
  negatives = np.array([7, 2, 0, 11, 3], np.int32)  # accidental hits and an ignored id 0
  ids = np.concatenate([targets, negatives])
  weight = (targets > 0).astype(np.float32)
  hidden = rng.normal(size=(m, d)).astype(np.float32)
  candidates = rng.normal(size=(m + k, d)).astype(np.float32)
  uniform_count = k / 12
  loss = lambda h, c: losses.mixed_softmax(h, c, jnp.asarray(ids), jnp.asarray(targets),
                                           jnp.asarray(weight), uniform_count=uniform_count)
  expected = numpy_mixed_softmax(hidden, candidates, ids, targets, weight, uniform_count)
  np.testing.assert_allclose(float(loss(hidden, candidates)), expected, rtol=1e-5)

  grad_h, grad_c = jax.grad(loss, argnums=(0, 1))(hidden, candidates)
  eps = 1e-4
  for array, grad, which in ((hidden, grad_h, 0), (candidates, grad_c, 1)):
    for index in [(0, 0), (2, 3), (array.shape[0] - 1, 1)]:
      plus, minus = [np.array(a, np.float64) for a in (hidden, candidates)], \
          [np.array(a, np.float64) for a in (hidden, candidates)]
      plus[which][index] += eps
      minus[which][index] -= eps
      numeric = (numpy_mixed_softmax(*plus, ids, targets, weight, uniform_count)
                 - numpy_mixed_softmax(*minus, ids, targets, weight, uniform_count)) / (2 * eps)
      np.testing.assert_allclose(float(grad[index]), numeric, rtol=1e-3, atol=1e-6)


def test_candidate_sampling_picks_real_positions_and_allowed_negatives():
  loss_fn = losses.next_item_loss_fn("mixed_softmax", positions=5, num_negatives=64)
  targets = jnp.array([[0, 0, 4, 5, 6], [0, 7, 8, 9, 3]], jnp.int32)  # 8 real positions
  mask = np.zeros(11, bool)
  mask[[2, 4, 6]] = True
  picked, ids = loss_fn.sample(jax.random.PRNGKey(0), targets, 10, mask)
  flat = np.asarray(targets).reshape(-1)
  assert len(set(np.asarray(picked).tolist())) == 5 and (flat[np.asarray(picked)] > 0).all()
  np.testing.assert_array_equal(np.asarray(ids[:5]), flat[np.asarray(picked)])
  assert set(np.asarray(ids[5:]).tolist()) <= {2, 4, 6}
  everything, _ = losses.next_item_loss_fn("mixed_softmax", positions=0).sample(
      jax.random.PRNGKey(0), targets, 10)
  np.testing.assert_array_equal(np.asarray(everything), np.arange(10))
  with pytest.raises(ValueError, match="positions must be >= 0"):
    losses.next_item_loss_fn("mixed_softmax", positions=-1)


def tower_config(tmp_path, data_file, **lora):
  from tests.helpers import tiny_config  # noqa: PLC0415
  from tests.test_text_encoder import write_tiny_checkpoint  # noqa: PLC0415

  table = tmp_path / "items.csv"
  table.write_text("item_id,title\n" + "".join(f"{i},w{i % 30} w{(i * 7) % 30} w{i % 11}\n"
                                               for i in range(1, 41)))
  config = tiny_config(data_file, loss="mixed_softmax", loss_fields={"positions": 32,
                                                                     "num_negatives": 16})
  config.data.update(text_model=str(write_tiny_checkpoint(tmp_path / "bert")),
                     item_text_path=str(table), item_text_columns="title", text_max_length=8)
  config.model.sasrec.update(item_representation="both", item_text_lora_rank=4, **lora)
  return config


def test_the_tower_starts_at_the_frozen_vectors_trains_only_adapters_and_refreshes(
    tmp_path, monkeypatch, data_file):
  from recattn_jax.models import build_encoder  # noqa: PLC0415
  from recattn_jax.models.scoring import catalogue_text_vectors, item_table  # noqa: PLC0415
  from recattn_jax.models.text_tower import insert_pretrained  # noqa: PLC0415
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.text import load_pretrained  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415
  from recattn_jax.training.steps import make_catalogue_step, shard_batch  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  config = tower_config(tmp_path, data_file)
  mesh = make_mesh(num_devices=1)
  job = tasks.build_job(config, mesh)
  data, _ = tasks._ranking_data(tasks.resolve_paths(config.data), config.model)
  model = build_encoder(config.model, num_items=data.split.num_items, max_len=config.data.max_len,
                        item_features=data.item_features)
  params = job.state.params
  tower = params["params"]["item_embed"]["text_tower"]["bert"]
  pretrained = load_pretrained(config.data.text_model).params["params"]
  np.testing.assert_array_equal(np.asarray(tower["layer_0"]["query"]["kernel"]),
                                np.asarray(pretrained["layer_0"]["query"]["kernel"]))
  sizes = job.stats["text_tower"]
  # The state holds its own copy: the train step donates it, the caller's arrays must survive.
  source = jax.tree.map(jnp.asarray, {"params": pretrained})
  copied = insert_pretrained(params, source)
  kernel = lambda tree: tree["params"]["item_embed"]["text_tower"]["bert"]["layer_0"]["query"]["kernel"]
  assert (kernel(copied).unsafe_buffer_pointer()
          != source["params"]["layer_0"]["query"]["kernel"].unsafe_buffer_pointer())
  assert sizes["adapter_params"] == 2 * 2 * (16 * 4 + 4 * 16)  # 2 layers x (query, value) x (A, B)
  assert sizes["pretrained_params"] == sum(x.size for x in jax.tree.leaves(pretrained))

  # Adapters start at zero effect: the tower reproduces the stored (frozen) text vectors.
  vectors = np.asarray(jax.jit(lambda p: catalogue_text_vectors(model, p))(params))
  np.testing.assert_allclose(vectors, data.item_features.text_embeddings, atol=2e-5)

  before = jax.tree.map(np.asarray, params)
  step = job.make_train_step(job.state)
  state = job.state
  for _ in range(3):
    state, metrics = step(state, shard_batch(next(job.data_iter), mesh))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["events"]) > 0
  after = jax.tree.map(np.asarray, state.params)
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = jax.tree.leaves(after)
  moved = {jax.tree_util.keystr(path): not np.array_equal(b, a)
           for (path, b), a in zip(flat_before, flat_after)}
  tower_keys = [k for k in moved if "text_tower" in k]
  assert all(not moved[k] for k in tower_keys if "_lora" not in k), "pretrained weights moved"
  assert any(moved[k] for k in tower_keys if "_lora" in k and k.endswith("['b']"))
  assert moved["['params']['item_embed']['embedding']"]

  # The evaluation table is the refreshed catalogue: row by row what the trained tower gives.
  table = np.asarray(make_catalogue_step(model, mesh)(state.params))
  ids = jnp.arange(1, 9)
  rows = np.asarray(model.apply(state.params, ids, method="item_vectors"))
  np.testing.assert_allclose(table[1:9], rows, atol=2e-5)
  np.testing.assert_allclose(table, np.asarray(item_table(model, state.params)), atol=1e-6)
  assert not np.allclose(table, np.asarray(item_table(model, params)), atol=1e-4)


def test_a_trained_tower_run_is_served_with_its_refreshed_catalogue(tmp_path, monkeypatch,
                                                                     data_file):
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.serving import Recommender  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415
  from recattn_jax.training.loop import train_and_evaluate  # noqa: PLC0415
  from recattn_jax.training.steps import make_catalogue_step  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  config = tower_config(tmp_path, data_file)
  config.train.num_epochs = 1
  results = train_and_evaluate(config, str(tmp_path / "run"))
  written = json.loads((tmp_path / "run" / "results.json").read_text())
  assert written["data"]["text_tower"]["adapter_params"] > 0
  assert np.isfinite(results["test"]["seen_excluded"]["HR@10"])
  recommender = Recommender.load(tmp_path / "run" / "bundle")
  assert recommender.model.has_text_tower
  # The bundle carries the tower (tokens, encoder settings, adapters): its table is the job's.
  mesh = make_mesh(num_devices=1)
  data, _ = tasks._ranking_data(tasks.resolve_paths(config.data), config.model)
  job_model = tasks.build_encoder(config.model, num_items=data.split.num_items,
                                  max_len=config.data.max_len, item_features=data.item_features)
  expected = np.asarray(make_catalogue_step(job_model, mesh)(recommender.params))
  np.testing.assert_allclose(np.asarray(recommender.table)[:len(expected)], expected, atol=1e-6)
  assert len(recommender.recommend(["1", "2", "3"], k=5).items) == 5


@pytest.mark.parametrize("fix, message", [
    ({"train.loss.name": "softmax"}, "set train.loss.name='mixed_softmax'"),
    ({"data.text_model": ""}, "set data.text_model"),
    ({"model.sasrec.item_representation": "id"}, "needs item_representation 'content' or 'both'"),
])
def test_tower_settings_that_cannot_work_are_named(tmp_path, monkeypatch, data_file, fix, message):
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  config = tower_config(tmp_path, data_file)
  for field, value in fix.items():
    section, *rest = field.split(".")
    target = config[section]
    for name in rest[:-1]:
      target = target[name]
    target[rest[-1]] = value
  with pytest.raises(ValueError, match=message):
    tasks.build_job(config, make_mesh(num_devices=1))


def test_adapters_in_the_last_blocks_only():
  from recattn_jax.text.bert import BertEncoder, LoRAConfig  # noqa: PLC0415
  from tests.test_text_encoder import TINY  # noqa: PLC0415

  ids = jnp.ones((2, 5), jnp.int32)
  params = BertEncoder(TINY, lora=LoRAConfig(rank=2, layers=1)).init(jax.random.PRNGKey(0), ids, ids)
  adapted = {name for name, layer in params["params"].items()
             if any(key.endswith("_lora") for key in getattr(layer, "keys", lambda: [])())}
  assert adapted == {f"layer_{TINY.num_hidden_layers - 1}"}
  with pytest.raises(ValueError, match="layers must be >= 0"):
    LoRAConfig(rank=2, layers=-1)


def test_init_from_a_frozen_text_run_takes_its_parameters_and_adds_fresh_adapters(
    tmp_path, monkeypatch, data_file):
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415
  from recattn_jax.training.bundle import (BundleError, init_from_bundle, read_bundle,  # noqa: PLC0415
                                           warm_start)
  from recattn_jax.training.loop import train_and_evaluate  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  frozen = tower_config(tmp_path, data_file)
  frozen.model.sasrec.item_text_lora_rank = 0
  frozen.train.loss.name = "softmax"
  frozen.train.num_epochs = 1
  train_and_evaluate(frozen, str(tmp_path / "frozen"))
  source = read_bundle(tmp_path / "frozen" / "bundle").params

  config = tower_config(tmp_path, data_file)
  config.train.init_from = str(tmp_path / "frozen")  # a workdir: its bundle
  job = tasks.build_job(config, make_mesh(num_devices=1))
  report = job.stats["init_from"]
  assert report["fresh_leaves"] and all("_lora" in key or "text_tower" in key
                                        for key in report["fresh_leaves"])
  params = job.state.params["params"]
  np.testing.assert_array_equal(np.asarray(params["item_embed"]["embedding"]),
                                source["params"]["item_embed"]["embedding"])
  np.testing.assert_array_equal(
      np.asarray(params["item_embed"]["content"]["text_projection"]["kernel"]),
      source["params"]["item_embed"]["content"]["text_projection"]["kernel"])

  wider = jax.tree.map(lambda x: np.zeros((*np.shape(x)[:-1], np.shape(x)[-1] + 1)) if np.ndim(x)
                       else x, source)
  with pytest.raises(BundleError, match="do not fit this model"):
    warm_start(job.state.params, wider)
  item_ids = read_bundle(tmp_path / "frozen" / "bundle").data.item_ids
  with pytest.raises(BundleError, match="catalogue"):
    init_from_bundle(job.state.params, tmp_path / "frozen", item_ids[::-1])


def test_train_trainable_keeps_everything_else_fixed(tmp_path, monkeypatch, data_file):
  from recattn_jax.parallel import make_mesh  # noqa: PLC0415
  from recattn_jax.training import tasks  # noqa: PLC0415
  from recattn_jax.training.steps import shard_batch  # noqa: PLC0415

  monkeypatch.setenv("RECATTN_EMBEDDING_DIR", str(tmp_path / "cache"))
  config = tower_config(tmp_path, data_file)
  config.train.trainable = "_lora"
  mesh = make_mesh(num_devices=1)
  job = tasks.build_job(config, mesh)
  sizes = job.stats["text_tower"]
  assert sizes["trainable_params"] == sizes["adapter_params"] > 0
  before = jax.tree_util.tree_leaves_with_path(jax.tree.map(np.asarray, job.state.params))
  state, _ = job.make_train_step(job.state)(job.state, shard_batch(next(job.data_iter), mesh))
  moved = {jax.tree_util.keystr(path): not np.array_equal(old, np.asarray(new))
           for (path, old), new in zip(before, jax.tree.leaves(state.params))}
  assert not any(m for name, m in moved.items() if "_lora" not in name)
  assert any(m for name, m in moved.items() if name.endswith("_lora']['b']"))
  config.train.trainable = "no_such_parameter"
  with pytest.raises(ValueError, match="matches no parameter"):
    tasks.build_job(config, mesh)
  config.train.trainable = "("
  with pytest.raises(ValueError, match="not a regular expression"):
    tasks.build_job(config, mesh)
