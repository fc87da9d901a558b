"""The HTTP service over real sockets: answers equal the in-process `Recommender`'s."""

import asyncio
import concurrent.futures
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from recattn_jax.serving import Recommendation, Recommender  # noqa: E402
from recattn_jax.serving import http  # noqa: E402

MAX_BATCH = 8  # few shapes to compile at warm-up, on a shared CPU
MAX_K = 16  # below the catalogue (40), and the list length warm-up compiles
STARTUP_TIMEOUT_S = 300


class Server:
  """A uvicorn server of `build_app(rec)` in a background thread, on a free port of 127.0.0.1."""

  def __init__(self, rec, **options):
    self.socket = socket.socket()
    self.socket.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves this socket
    self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
    config = uvicorn.Config(http.build_app(rec, **options), log_level="warning", access_log=False,
                            lifespan="on")
    self.server = uvicorn.Server(config)
    self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                   daemon=True)

  def __enter__(self):
    self.thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not self.server.started:
      assert self.thread.is_alive(), "the server stopped during startup"
      assert time.monotonic() < deadline, "the server did not start (warm-up too slow?)"
      time.sleep(0.05)
    return self

  def __exit__(self, *exc):
    self.server.should_exit = True
    self.thread.join(30)
    self.socket.close()


@pytest.fixture(scope="module")
def rec(finished_run):
  workdir, _ = finished_run
  return Recommender.load(workdir / "bundle")


@pytest.fixture(scope="module")
def client(rec):
  # The in-process reference shares `rec` (and so its compiled shapes) with the server.
  with Server(rec, max_batch=MAX_BATCH, batch_window_ms=20.0, max_k=MAX_K) as server:
    # One client for all threads: a client per request spends more time on its setup
    # than the server spends answering.
    with httpx.Client(base_url=server.url, timeout=60) as c:
      yield c


def assert_same_list(answer: dict, expected: Recommendation):
  assert answer["items"] == expected.items
  np.testing.assert_allclose(answer["scores"], expected.scores, rtol=1e-5, atol=1e-6)
  assert answer["source"] == expected.source
  assert answer["dropped"] == expected.dropped
  assert answer["truncated"] == expected.truncated


def assert_error(response, status: int, field):
  assert response.status_code == status, response.text
  assert response.json()["field"] == field, response.text


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
  samples = []
  for line in text.splitlines():
    if not line or line.startswith("#"):
      continue
    match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
    assert match, f"not a Prometheus sample line: {line!r}"
    name, labels, value = match.groups()
    samples.append((name, dict(re.findall(r'(\w+)="([^"]*)"', labels or "")), float(value)))
  return samples


def sample(samples, name: str, **labels) -> float:
  values = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
  assert len(values) == 1, f"{name}{labels}: {values}"
  return values[0]


# ----------------------------------------------------------------------------
# Over HTTP.


def test_healthz(client, rec):
  assert client.get("/healthz").json() == {
      "status": "ok", "model": rec.config.model.name, "items": rec.num_items,
      "users": len(rec.users)}


def test_recommend_by_history_equals_in_process(client, rec):
  for exclude_seen in (True, False):
    answer = client.post("/recommend", json={"history": ["1", "2", 3], "k": 5,
                                             "exclude_seen": exclude_seen})
    assert answer.status_code == 200, answer.text
    assert_same_list(answer.json(), rec.recommend(["1", "2", "3"], k=5, exclude_seen=exclude_seen))


def test_recommend_by_user_equals_recommend_users(client, rec):
  answer = client.post("/recommend", json={"user": "1", "k": 7})
  assert answer.status_code == 200, answer.text
  assert_same_list(answer.json(), rec.recommend_users(["1"], k=7)[0])


def test_k_out_of_bounds_is_422_naming_k(client, rec):
  assert MAX_K < rec.num_items
  for k in (0, MAX_K + 1, rec.num_items + 1, -3, 2.5, "5", True):
    response = client.post("/recommend", json={"history": ["1"], "k": k})
    assert_error(response, 422, "k")
    assert f"[1, {MAX_K}]" in response.json()["error"]
  assert client.post("/recommend", json={"history": ["1"], "k": MAX_K}).status_code == 200


def test_invalid_fields_are_422_naming_the_field(client):
  cases = [
      ({"history": ["1"], "colour": "red"}, "colour"),
      ({}, "history"),
      ({"history": "1 2 3"}, "history"),
      ({"history": [["1"]]}, "history"),
      ({"history": ["1"] * 10_001}, "history"),  # over max_history
      ({"history": ["1"], "exclude_seen": "yes"}, "exclude_seen"),
      ({"history": ["1"], "unknown": "ignore"}, "unknown"),
      ({"history": ["1", "2"], "timestamps": [1.0]}, "timestamps"),
      ({"user": "1", "timestamps": [1.0]}, "timestamps"),
      ({"user": 1.5}, "user"),
  ]
  for body, field in cases:
    assert_error(client.post("/recommend", json=body), 422, field)
  assert_error(client.post("/recommend", content=b'{"history": ["1"], "timestamps": [NaN]}'),
               422, "timestamps")
  assert_error(client.post("/recommend", content=b"[1, 2]"), 422, None)
  assert_error(client.post("/sessions/s/events", json={}), 422, "item")
  assert_error(client.post("/sessions/s/events", json={"item": "1", "k": 0}), 422, "k")
  assert_error(client.post("/sessions/" + "x" * 201 + "/events", json={"item": "1"}), 422,
               "session_id")
  assert_error(client.get("/sessions/s", params={"k": "ten"}), 422, "k")
  assert_error(client.get("/sessions/s", params={"top": "3"}), 422, "top")


def test_body_not_json_is_400(client):
  for content in (b"history=1,2", b"", b"{", b"\xff\xfe\xfa", b"[" * 100_000 + b"]" * 100_000,
                  b'{"k": ' + b"9" * 5000 + b"}"):
    assert_error(client.post("/recommend", content=content), 400, None)


def test_body_over_the_limit_is_413(client):
  response = client.post("/recommend", content=b'{"history": [' + b'"1",' * 300_000 + b'"1"]}')
  assert response.status_code == 413, response.text


def test_unknown_ids_are_404_naming_them_and_drop_scores_the_rest(client, rec):
  response = client.post("/recommend", json={"history": ["1", "nope", "2", "nada"], "k": 5})
  assert_error(response, 404, "history")
  assert response.json()["kind"] == "item" and response.json()["ids"] == ["nope", "nada"]
  assert "'nope'" in response.json()["error"]
  response = client.post("/recommend", json={"user": "nobody"})
  assert_error(response, 404, "user")
  assert response.json()["ids"] == ["nobody"]
  assert_error(client.post("/sessions/s/events", json={"item": "nope"}), 404, "item")

  dropped = client.post("/recommend", json={"history": ["1", "nope", "2"], "k": 5,
                                            "unknown": "drop"})
  assert dropped.status_code == 200, dropped.text
  assert dropped.json()["dropped"] == ["nope"]
  assert_same_list(dropped.json(), rec.recommend(["1", "nope", "2"], k=5, unknown="drop"))


def test_empty_history_gets_the_popularity_list(client, rec):
  answer = client.post("/recommend", json={"history": [], "k": 4}).json()
  assert answer["source"] == "popularity"
  assert_same_list(answer, rec.recommend([], k=4))


def test_session_events_equal_an_in_process_session(client, rec):
  events = ["3", "4", "5"]
  for count, item in enumerate(events, 1):
    answer = client.post("/sessions/alice/events", json={"item": item, "k": 6})
    assert answer.status_code == 200, answer.text
    assert answer.json()["session"] == "alice" and answer.json()["events"] == count
  expected = rec.session(history=events).recommend(6)
  assert_same_list(answer.json(), expected)
  current = client.get("/sessions/alice", params={"k": 6}).json()
  assert_same_list(current, expected)
  assert current["events"] == 3

  # A session started from a known user's history.
  answer = client.post("/sessions/bob/events", json={"item": "7", "k": 6, "user": "2"}).json()
  assert answer["events"] == len(rec.user_history("2")) + 1
  assert_same_list(answer, rec.session(user="2", history=["7"]).recommend(6))
  assert_error(client.post("/sessions/bob/events", json={"item": "8", "user": "3"}), 422, "user")


def test_deleted_session_is_404(client):
  assert client.post("/sessions/carol/events", json={"item": "1"}).status_code == 200
  assert client.delete("/sessions/carol").json() == {"session": "carol", "deleted": True}
  assert_error(client.get("/sessions/carol"), 404, "session_id")
  assert_error(client.delete("/sessions/carol"), 404, "session_id")


def batch_sizes(client) -> tuple[float, float]:
  """(micro-batches so far, of which single requests)."""
  samples = parse_metrics(client.get("/metrics").text)
  return sample(samples, "recattn_batch_size_count"), sample(samples, "recattn_batch_size_bucket",
                                                             le="1")


def test_concurrent_requests_are_batched_and_exact(client, rec):
  rng = np.random.default_rng(0)
  requests = [{"history": [str(i) for i in rng.integers(1, rec.num_items + 1, rng.integers(1, 9))],
               "k": int(rng.choice([3, 10, 16]))} for _ in range(32)]
  batches_before, singles_before = batch_sizes(client)
  start = threading.Barrier(len(requests))

  def send(body):
    start.wait()
    return client.post("/recommend", json=body)

  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    answers = list(pool.map(send, requests))
  for body, answer in zip(requests, answers):
    assert answer.status_code == 200, answer.text
    assert_same_list(answer.json(), rec.recommend(body["history"], k=body["k"]))
  batches, singles = batch_sizes(client)
  assert batches - batches_before < len(requests), "no two concurrent requests shared a batch"
  assert batches - batches_before > singles - singles_before  # some batch of more than one


def test_server_survives_malformed_requests(client):
  garbage = [b"\x00" * 100, b'{"history": [1, {"x": []}]}', b'{"history": [1], "k": 1e999}',
             b'{"user": null, "history": null}', b'{"history": ' + b"[" * 5000 + b"]" * 5000 + b"}",
             b"nul", b'"a string"']
  for content in garbage:
    assert client.post("/recommend", content=content).status_code in (400, 422)
    assert client.post("/sessions/x/events", content=content).status_code in (400, 404, 422)
  assert client.post("/recommend", content=b"{}", headers={"content-type": "text/plain"}
                     ).status_code == 422
  assert client.put("/healthz").status_code == 405
  assert client.get("/no/such/page").status_code == 404
  assert client.get("/healthz").json()["status"] == "ok"
  assert client.post("/recommend", json={"history": ["1"]}).status_code == 200


def test_metrics_count_requests_and_latencies(client):
  client.post("/recommend", json={"history": ["1"], "k": 2})
  client.post("/recommend", json={"history": ["1"], "k": 0})
  client.post("/sessions/metrics-test/events", json={"item": "2"})
  text = client.get("/metrics").text
  assert "# TYPE recattn_http_request_duration_seconds histogram" in text
  samples = parse_metrics(text)
  for code in ("200", "422"):
    assert sample(samples, "recattn_http_requests_total", endpoint="/recommend", method="POST",
                  code=code) >= 1
  assert sample(samples, "recattn_sessions_live") >= 1
  latency = [(l["le"], v) for n, l, v in samples
             if n == "recattn_http_request_duration_seconds_bucket"
             and l["endpoint"] == "/recommend"]
  assert [le for le, _ in latency] == [f"{b:g}" for b in http.LATENCY_BUCKETS] + ["+Inf"]
  counts = [v for _, v in latency]
  assert counts == sorted(counts)  # cumulative
  assert counts[-1] == sample(samples, "recattn_http_request_duration_seconds_count",
                              endpoint="/recommend", method="POST")
  assert sample(samples, "recattn_http_request_duration_seconds_sum", endpoint="/recommend",
                method="POST") > 0


# ----------------------------------------------------------------------------
# The parts, without a model or a socket.


def test_session_store_drops_least_recently_used_and_idle():
  now = [0.0]
  store = http.SessionStore(max_sessions=2, ttl_s=10, clock=lambda: now[0])
  store.put("a", 1)
  store.put("b", 2)
  assert store.get("a") == 1  # now b is the least recently used
  store.put("c", 3)
  assert store.get("b") is None and len(store) == 2
  now[0] = 5.0
  assert store.get("c") == 3
  now[0] = 12.0  # a idle for 12 s, c for 7 s
  assert store.get("a") is None and store.get("c") == 3
  now[0] = 30.0
  assert len(store) == 0
  assert not store.pop("c")


class StubRecommender:
  """Records each batched call; a history holding "boom" fails the call it is in."""

  reads_timestamps = reads_users = False

  def __init__(self):
    self.calls = []

  def _lists(self, keys, k):
    if any("boom" in key for key in keys):
      raise RuntimeError("boom")
    return [Recommendation(items=[f"{key}:{i}" for i in range(k)], scores=np.arange(k, 0, -1.0))
            for key in keys]

  def recommend(self, histories, k, *, exclude_seen, unknown, timestamps, user):
    del timestamps, user
    assert unknown == "drop"
    self.calls.append(("history", len(histories), k, exclude_seen))
    return self._lists([",".join(h) for h in histories], k)

  def recommend_users(self, users, k, *, exclude_seen):
    self.calls.append(("user", len(users), k, exclude_seen))
    return self._lists(list(users), k)


def test_score_queries_groups_cuts_and_isolates_failures():
  stub = StubRecommender()
  queries = [http.Query(history=["a"], user=None, k=2), http.Query(history=["b"], user=None, k=5),
             http.Query(history=["c"], user=None, k=3, exclude_seen=False),
             http.Query(history=None, user="u", k=4), http.Query(history=None, user="v", k=1)]
  sizes = []
  results = http.score_queries(stub, queries, observe_batch=sizes.append)
  assert sorted(stub.calls) == [("history", 1, 3, False), ("history", 2, 5, True),
                                ("user", 2, 4, True)]
  assert sorted(sizes) == [1, 2, 2]
  assert [r.items for r in results] == [
      ["a:0", "a:1"], [f"b:{i}" for i in range(5)], ["c:0", "c:1", "c:2"],
      [f"u:{i}" for i in range(4)], ["v:0"]]
  assert list(results[0].scores) == [5.0, 4.0]

  results = http.score_queries(stub, [http.Query(history=["a"], user=None, k=1),
                                      http.Query(history=["boom"], user=None, k=1)])
  assert results[0].items == ["a:0"] and isinstance(results[1], RuntimeError)


def test_micro_batcher_batches_concurrent_requests_and_routes_each_answer():
  calls = []

  def score(items):
    calls.append(list(items))
    time.sleep(0.01)  # so that the next batch fills meanwhile
    return [ValueError(item) if item < 0 else item * 2 for item in items]

  async def run(fn, *args):
    return await asyncio.to_thread(fn, *args)

  async def main():
    batcher = http.MicroBatcher(score, run, max_batch=4, window_s=0.005)
    batcher.start()
    answers = await asyncio.gather(*(batcher.submit(i) for i in [*range(10), -1]),
                                   return_exceptions=True)
    await batcher.stop()
    with pytest.raises(RuntimeError, match="not running"):
      await batcher.submit(1)
    return answers

  answers = asyncio.run(main())
  assert answers[:10] == [2 * i for i in range(10)] and isinstance(answers[10], ValueError)
  assert sorted(i for call in calls for i in call) == [-1, *range(10)]
  assert max(map(len, calls)) == 4  # batched, never over max_batch


def test_cli_without_the_serve_extra_says_what_to_install():
  blocked = ("import runpy, sys; sys.modules['uvicorn'] = None; "
             "sys.argv = ['serve', '--bundle', 'b']; runpy.run_module('recattn_jax.serve', "
             "run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          timeout=60, check=False)
  assert result.returncode == 1
  assert "pip install 'recattn_jax[serve]'" in result.stderr
