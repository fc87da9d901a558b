"""An HTTP service for a ranking bundle (starlette; `python -m recattn_jax.serve` runs it).

    app = build_app(Recommender.load("runs/sasrec/bundle"))   # then any ASGI server

Endpoints (JSON bodies and answers; ids are strings or integers, answered as strings;
a field set to null counts as absent):

  POST /recommend
      {"history": [ids], "k": 10, "exclude_seen": true, "timestamps": [seconds],
       "unknown": "error" | "drop", "user": id}
      or {"user": id, "k": 10, "exclude_seen": true} for a user the run knew (their
      whole history in its data, as `Recommender.recommend_users`). With a history,
      "user" is the user context of models that read one (required there, else
      ignored). "timestamps" (one per history event) are required by models that
      read event times (checked, and unused by other models). An empty history
      gets the popularity list.
      -> {"items": [ids], "scores": [..], "source": "model" | "popularity",
          "dropped": [ids], "truncated": n}
  POST /sessions/{session_id}/events  {"item": id, "timestamp": t, "k": 10, "user": id}
      Creates the session on its first event (after the known history of "user",
      when given), appends the event and answers the new list, as /recommend, plus
      {"session": id, "events": n}.
  GET /sessions/{session_id}?k=10   the session's current list (same answer).
  DELETE /sessions/{session_id}     -> {"session": id, "deleted": true}
  GET /healthz  -> {"status": "ok", "model": name, "items": n, "users": n}
  GET /metrics  Prometheus text: requests by endpoint, method and code, latency
      histograms per endpoint, micro-batch sizes, live sessions.

Status codes; every error answers {"error": message, "field": name or null}:
  400 the body is not JSON;
  404 unknown item or user ids (plus "kind": "item" | "user" and "ids"), or an
      unknown (deleted, expired, evicted) session. 404 rather than 422 because the
      request itself is well-formed; what it names is not in the model, so a
      client can tell "fix the request" (422) from "retry with unknown='drop'";
  409 the session already holds `max_history` events;
  413 a body over `max_body_bytes`;
  422 a malformed request: an unknown or missing field, a wrong type, k outside
      [1, min(max_k, catalogue)], a history over `max_history` events, a
      timestamp that is not a finite number;
  500 anything unexpected (logged); the server keeps serving.
Other paths and methods answer 404 and 405, also as JSON.

Concurrency: every model call runs in one worker thread, in arrival order, so the
event loop never blocks on JAX and calls never overlap. Concurrent /recommend
requests are validated on their own (one bad request fails only itself), then
`MicroBatcher` gathers them for up to `batch_window_ms`, or until `max_batch`
wait, and scores each group of the same kind (history or known user) and
`exclude_seen` in one call at the largest k of the group, each answer cut to its
own k. While a batch runs the next one fills, so batches grow with load. Session
operations run in the same thread, which also keeps each session's events in order.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import math
import threading
import time
from typing import Any, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from recattn_jax.serving.lists import UNKNOWN_POLICIES, Recommendation, UnknownIdError, batch_rows

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_SESSION_ID = 200  # characters
LATENCY_BUCKETS = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5)  # seconds
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WARMUP_K = 16


# ----------------------------------------------------------------------------
# Errors and request validation (by hand: no schema library to install).


class HttpError(Exception):
  """A request the service answers with `status` and a JSON error naming `field`."""

  def __init__(self, status: int, message: str, field: str | None = None, **extra):
    super().__init__(message)
    self.status, self.message, self.field, self.extra = status, message, field, extra

  def response(self) -> JSONResponse:
    return JSONResponse({"error": self.message, "field": self.field, **self.extra},
                        status_code=self.status)


def _invalid(field: str | None, message: str) -> HttpError:
  return HttpError(422, message, field)


def _unknown_ids(error: UnknownIdError, field: str) -> HttpError:
  return HttpError(404, str(error), field, kind=error.kind, ids=error.ids)


async def read_json(request: Request, limit: int) -> Any:
  """The request body parsed as JSON; 413 past `limit` bytes (read no further), 400 if not JSON."""
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise HttpError(413, f"the body is {declared} bytes; the limit is {limit}")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise HttpError(413, f"the body is over the limit of {limit} bytes")
    chunks.append(chunk)
  try:
    return json.loads(b"".join(chunks))
  except (ValueError, RecursionError) as e:  # ValueError covers bad JSON, UTF-8 and huge ints
    raise HttpError(400, f"the body is not JSON: {e}") from None


def _fields(body: Any, allowed: Sequence[str]) -> dict:
  """`body` as a JSON object with only `allowed` keys; JSON null counts as absent."""
  if not isinstance(body, dict):
    raise _invalid(None, f"the body must be a JSON object, got {type(body).__name__}")
  extra = [name for name in body if name not in allowed]
  if extra:
    raise _invalid(extra[0], f"unknown field {extra[0]!r}; the fields are {', '.join(allowed)}")
  return {name: value for name, value in body.items() if value is not None}


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _identifier(value, field: str) -> str:
  if isinstance(value, str) or _is_int(value):
    return str(value)
  raise _invalid(field, f"{field} must be an id (a string or an integer), "
                        f"got {json.dumps(value)[:80]}")


def _identifiers(value, field: str, max_count: int) -> list[str]:
  if not isinstance(value, list):
    raise _invalid(field, f"{field} must be a list of ids, got {type(value).__name__}")
  if len(value) > max_count:
    raise _invalid(field, f"{field} has {len(value)} events; at most {max_count} are served")
  return [_identifier(v, field) for v in value]


def _time(value, field: str) -> float:
  if (_is_int(value) or isinstance(value, float)) and math.isfinite(value):
    return float(value)
  raise _invalid(field, f"{field} must be a finite number of seconds, got {json.dumps(value)[:80]}")


def _flag(fields: dict, name: str, default: bool) -> bool:
  value = fields.get(name, default)
  if not isinstance(value, bool):
    raise _invalid(name, f"{name} must be true or false, got {json.dumps(value)[:80]}")
  return value


def _list_length(value, max_k: int) -> int:
  if not _is_int(value) or not 1 <= value <= max_k:
    raise _invalid("k", f"k must be an integer in [1, {max_k}], got {json.dumps(value)[:80]}")
  return value


def _known(vocabulary, ids: list[str], field: str) -> None:
  try:
    vocabulary.lookup(ids, "error")
  except UnknownIdError as e:
    raise _unknown_ids(e, field) from None


@dataclasses.dataclass(frozen=True)
class Query:
  """One validated /recommend request: a history, or only a known user."""

  history: list[str] | None
  user: str | None
  k: int
  exclude_seen: bool = True
  timestamps: list[float] | None = None


@dataclasses.dataclass(frozen=True)
class Event:
  """One validated session event."""

  item: str
  timestamp: float | None
  k: int
  user: str | None


RECOMMEND_FIELDS = ("history", "user", "k", "exclude_seen", "timestamps", "unknown")
EVENT_FIELDS = ("item", "timestamp", "k", "user")


def parse_recommend(body: Any, rec, *, max_k: int, max_history: int) -> Query:
  """A /recommend body checked against `rec` (`HttpError` 422 or 404 naming the field)."""
  fields = _fields(body, RECOMMEND_FIELDS)
  if "history" not in fields and "user" not in fields:
    raise _invalid("history", "give a history (a list of item ids) or a known user")
  k = _list_length(fields.get("k", 10), max_k)
  exclude_seen = _flag(fields, "exclude_seen", True)
  unknown = fields.get("unknown", "error")
  if unknown not in UNKNOWN_POLICIES:
    raise _invalid("unknown", f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, "
                              f"got {json.dumps(unknown)[:80]}")
  user = _identifier(fields["user"], "user") if "user" in fields else None
  if "history" not in fields:
    if "timestamps" in fields:
      raise _invalid("timestamps", "timestamps go with a history (a known user's are the run's)")
    _known(rec.users, [user], "user")
    return Query(history=None, user=user, k=k, exclude_seen=exclude_seen)

  history = _identifiers(fields["history"], "history", max_history)
  timestamps = None
  if "timestamps" in fields:
    values = fields["timestamps"]
    if not isinstance(values, list) or len(values) != len(history):
      raise _invalid("timestamps", f"timestamps must be a list of one time per history event "
                                   f"({len(history)})")
    timestamps = [_time(v, "timestamps") for v in values]
  elif rec.reads_timestamps:
    raise _invalid("timestamps", f"{rec.config.model.name} reads event times: give timestamps "
                                 "(seconds, one per history event)")
  if rec.reads_users:
    if user is None:
      raise _invalid("user", "this model reads a user context: give the user with the history")
    _known(rec.users, [user], "user")
  if unknown == "error":
    _known(rec.items, history, "history")
  return Query(history=history, user=user, k=k, exclude_seen=exclude_seen,
               timestamps=timestamps)


def parse_event(body: Any, rec, *, max_k: int) -> Event:
  """A session event body checked against `rec` (`HttpError` 422 or 404 naming the field)."""
  fields = _fields(body, EVENT_FIELDS)
  if "item" not in fields:
    raise _invalid("item", "an event needs its item id")
  item = _identifier(fields["item"], "item")
  _known(rec.items, [item], "item")
  timestamp = _time(fields["timestamp"], "timestamp") if "timestamp" in fields else None
  if timestamp is None and rec.reads_timestamps:
    raise _invalid("timestamp", f"{rec.config.model.name} reads event times: give the event's "
                                "timestamp (seconds)")
  user = _identifier(fields["user"], "user") if "user" in fields else None
  if user is not None:
    _known(rec.users, [user], "user")
  return Event(item=item, timestamp=timestamp, k=_list_length(fields.get("k", 10), max_k),
               user=user)


def _session_id(request: Request) -> str:
  session_id = request.path_params["session_id"]
  if not 1 <= len(session_id) <= MAX_SESSION_ID:
    raise _invalid("session_id", f"a session id has 1 to {MAX_SESSION_ID} characters")
  return session_id


def _query_k(request: Request, max_k: int) -> int:
  extra = [name for name in request.query_params if name != "k"]
  if extra:
    raise _invalid(extra[0], f"unknown query parameter {extra[0]!r}; the only one is k")
  raw = request.query_params.get("k", "10")
  try:
    value = int(raw)
  except ValueError:
    raise _invalid("k", f"k must be an integer in [1, {max_k}], got {raw[:80]!r}") from None
  return _list_length(value, max_k)


# ----------------------------------------------------------------------------
# Metrics, in the Prometheus text format.


class Histogram:
  """Counts of observations per bucket (upper bounds inclusive), their sum and count."""

  def __init__(self, bounds: Sequence[float]):
    self.bounds = tuple(bounds)
    self.counts = [0] * (len(self.bounds) + 1)
    self.sum = 0.0

  def observe(self, value: float) -> None:
    self.counts[bisect.bisect_left(self.bounds, value)] += 1
    self.sum += value

  def lines(self, name: str, labels: str) -> list[str]:
    out, cumulative = [], 0
    for bound, count in zip((*(f"{b:g}" for b in self.bounds), "+Inf"), self.counts):
      cumulative += count
      out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {cumulative}')
    braces = f"{{{labels}}}" if labels else ""
    out.append(f"{name}_sum{braces} {self.sum:.9g}")
    out.append(f"{name}_count{braces} {cumulative}")
    return out


class Metrics:
  """Request counts and latencies per endpoint, and micro-batch sizes (thread-safe)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.requests: collections.Counter = collections.Counter()  # (endpoint, method, code)
    self.latency: dict[tuple[str, str], Histogram] = {}
    self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)

  def observe_request(self, endpoint: str, method: str, code: int, seconds: float) -> None:
    with self._lock:
      self.requests[endpoint, method, code] += 1
      if (endpoint, method) not in self.latency:
        self.latency[endpoint, method] = Histogram(LATENCY_BUCKETS)
      self.latency[endpoint, method].observe(seconds)

  def observe_batch(self, size: int) -> None:
    with self._lock:
      self.batch_sizes.observe(size)

  def render(self, live_sessions: int) -> str:
    with self._lock:
      out = ["# HELP recattn_http_requests_total Requests answered, by endpoint, method and "
             "status code.", "# TYPE recattn_http_requests_total counter"]
      for (endpoint, method, code), count in sorted(self.requests.items()):
        out.append(f'recattn_http_requests_total{{endpoint="{endpoint}",method="{method}",'
                   f'code="{code}"}} {count}')
      out += ["# HELP recattn_http_request_duration_seconds Time to answer a request.",
              "# TYPE recattn_http_request_duration_seconds histogram"]
      for (endpoint, method), histogram in sorted(self.latency.items()):
        out += histogram.lines("recattn_http_request_duration_seconds",
                               f'endpoint="{endpoint}",method="{method}"')
      out += ["# HELP recattn_batch_size Requests scored by one model call (micro-batching).",
              "# TYPE recattn_batch_size histogram"]
      out += self.batch_sizes.lines("recattn_batch_size", "")
    out += ["# HELP recattn_sessions_live Sessions held (not expired or evicted).",
            "# TYPE recattn_sessions_live gauge", f"recattn_sessions_live {live_sessions}"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------
# Sessions.


class SessionStore:
  """Values by id; the least recently used leave beyond `max_sessions`, idle ones after `ttl_s`.

  Thread-safe. Expired entries leave on the next access of any entry.
  """

  def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
    self.max_sessions, self.ttl_s, self._clock = max_sessions, ttl_s, clock
    self._entries: collections.OrderedDict[str, tuple[Any, float]] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _expire(self, now: float) -> None:
    while self._entries:
      _, (_, used) = next(iter(self._entries.items()))  # least recently used first
      if now - used < self.ttl_s:
        return
      self._entries.popitem(last=False)

  def get(self, key: str):
    """The value of `key` (now the most recently used), or None."""
    with self._lock:
      now = self._clock()
      self._expire(now)
      if key not in self._entries:
        return None
      value, _ = self._entries.pop(key)
      self._entries[key] = value, now
      return value

  def put(self, key: str, value) -> None:
    with self._lock:
      now = self._clock()
      self._expire(now)
      self._entries.pop(key, None)
      self._entries[key] = value, now
      while len(self._entries) > self.max_sessions:
        self._entries.popitem(last=False)

  def pop(self, key: str) -> bool:
    """Whether `key` was held (and is now gone)."""
    with self._lock:
      self._expire(self._clock())
      return self._entries.pop(key, None) is not None

  def __len__(self) -> int:
    with self._lock:
      self._expire(self._clock())
      return len(self._entries)


@dataclasses.dataclass
class LiveSession:
  session: Any  # serving.session.Session
  user: str | None


# ----------------------------------------------------------------------------
# Micro-batching.


class MicroBatcher:
  """Gathers concurrent requests into batches that `score` answers in one call each.

  `score(items) -> results` (one result or exception per item) is blocking and
  runs through `run` (the model thread). A batch closes `window_s` after its
  first request or at `max_batch` requests; while it is scored, the next fills.
  """

  def __init__(self, score: Callable[[list], list], run: Callable, *, max_batch: int,
               window_s: float):
    self._score, self._run = score, run
    self.max_batch, self.window_s = max_batch, window_s
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None
    self._batch: list = []  # (item, future) pairs gathered or being scored

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._serve())

  async def stop(self) -> None:
    """Stops gathering; requests not yet answered fail."""
    if self._task is None:
      return
    self._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
      await self._task
    self._task = None
    waiting = self._batch + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
    for _, future in waiting:
      if not future.done():
        future.set_exception(RuntimeError("the server is shutting down"))
    self._batch = []

  async def submit(self, item):
    """The result of scoring `item` (raises its exception)."""
    if self._task is None or self._task.done():
      raise RuntimeError("the batcher is not running (the app's lifespan did not start)")
    future = asyncio.get_running_loop().create_future()
    self._queue.put_nowait((item, future))
    return await future

  async def _gather(self) -> None:
    """Fills `self._batch` (kept on the instance so that `stop` can fail it)."""
    loop = asyncio.get_running_loop()
    self._batch = [await self._queue.get()]
    deadline = loop.time() + self.window_s
    while len(self._batch) < self.max_batch:
      if not self._queue.empty():  # queued while the previous batch ran
        self._batch.append(self._queue.get_nowait())
        continue
      remaining = deadline - loop.time()
      if remaining <= 0:
        break
      try:
        self._batch.append(await asyncio.wait_for(self._queue.get(), remaining))
      except TimeoutError:
        break
    self._batch = [(item, future) for item, future in self._batch if not future.done()]

  async def _serve(self) -> None:
    while True:
      await self._gather()
      if not self._batch:
        continue
      try:
        results = await self._run(self._score, [item for item, _ in self._batch])
      except Exception as e:  # pylint: disable=broad-except  (the loop must outlive any batch)
        log.exception("scoring a batch failed")
        results = [e] * len(self._batch)
      for (_, future), result in zip(self._batch, results):
        if future.done():  # the client went away
          continue
        if isinstance(result, BaseException):
          future.set_exception(result)
        else:
          future.set_result(result)
      self._batch = []


def _cut(recommendation: Recommendation, k: int) -> Recommendation:
  return dataclasses.replace(recommendation, items=recommendation.items[:k],
                             scores=recommendation.scores[:k])


def score_queries(rec, queries: list[Query], observe_batch: Callable[[int], None] = lambda n: None
                  ) -> list[Recommendation | Exception]:
  """Each query's list, every group of the same kind and exclude_seen scored in one call."""
  groups = collections.defaultdict(list)
  for i, query in enumerate(queries):
    groups[query.history is None, query.exclude_seen].append(i)
  results: list = [None] * len(queries)
  for (by_user, exclude_seen), rows in groups.items():
    members = [queries[i] for i in rows]
    try:
      observe_batch(len(members))
      lists = _score_group(rec, members, by_user, exclude_seen)
    except Exception as e:  # pylint: disable=broad-except
      if len(members) == 1:
        lists = [e]
      else:  # a request validation let through: alone, it fails only itself
        log.warning("a batch of %d failed (%s); scoring its requests one by one", len(members), e)
        lists = []
        for query in members:
          try:
            lists += _score_group(rec, [query], by_user, exclude_seen)
          except Exception as single:  # pylint: disable=broad-except
            lists.append(single)
    for i, result in zip(rows, lists):
      results[i] = result if isinstance(result, Exception) else _cut(result, queries[i].k)
  return results


def _score_group(rec, queries: list[Query], by_user: bool, exclude_seen: bool):
  k = max(query.k for query in queries)
  if by_user:
    return rec.recommend_users([query.user for query in queries], k, exclude_seen=exclude_seen)
  # Ids were checked per request where unknown="error", so dropping changes only "drop" ones.
  return rec.recommend(
      [query.history for query in queries], k, exclude_seen=exclude_seen, unknown="drop",
      timestamps=[query.timestamps for query in queries] if rec.reads_timestamps else None,
      user=[query.user for query in queries] if rec.reads_users else None)


def warm_up(rec, max_batch: int) -> None:
  """Compiles the batch shapes up to `max_batch` rows at k <= 16, and the session path."""
  item = next(iter(rec.items.index))
  k = min(WARMUP_K, rec.num_items)
  user = rec.users.ids[0] if rec.reads_users else None
  times = [0.0] if rec.reads_timestamps else None
  for rows in sorted({batch_rows(n) for n in range(1, max_batch + 1)}):
    rec.recommend([[item]] * rows, k, timestamps=None if times is None else [times] * rows,
                  user=None if user is None else [user] * rows)
  session = rec.session(user=user, timestamps=[] if times is not None and user is None else None)
  for t in (0.0, 1.0):
    session.append(item, timestamp=t if times is not None else None)
    session.recommend(k)


# ----------------------------------------------------------------------------
# The app.


class Service:
  """The state behind the routes: the model, its thread, the batcher, sessions and metrics."""

  def __init__(self, rec, *, max_batch: int, batch_window_ms: float, max_k: int,
               max_history: int, max_sessions: int, session_ttl_s: float, warmup: bool,
               max_body_bytes: int):
    if max_batch < 1 or max_k < 1 or max_history < 1 or max_sessions < 1:
      raise ValueError("max_batch, max_k, max_history and max_sessions must be at least 1")
    self.rec = rec
    self.max_k = min(max_k, rec.num_items)
    self.max_history, self.max_body_bytes = max_history, max_body_bytes
    self.max_batch, self.warmup = max_batch, warmup
    self.metrics = Metrics()
    self.sessions = SessionStore(max_sessions, session_ttl_s)
    self.batcher = MicroBatcher(
        functools.partial(score_queries, rec, observe_batch=self.metrics.observe_batch),
        self.in_model_thread, max_batch=max_batch, window_s=batch_window_ms / 1000)
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None

  async def in_model_thread(self, fn, *args):
    """`fn(*args)` in the model thread; calls run one at a time, in order."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    del app
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recattn-model")
    try:
      if self.warmup:
        start = time.perf_counter()
        await self.in_model_thread(warm_up, self.rec, self.max_batch)
        log.info("warm-up compiled in %.1f s", time.perf_counter() - start)
      self.batcher.start()
      yield
    finally:
      await self.batcher.stop()
      self._executor.shutdown(wait=False, cancel_futures=True)

  def endpoint(self, name: str, handler):
    """`handler` answering errors as JSON, timed and counted under `name`."""

    async def answer(request: Request) -> Response:
      start = time.perf_counter()
      try:
        response = await handler(request)
      except HttpError as e:
        response = e.response()
      except UnknownIdError as e:
        response = _unknown_ids(e, None).response()
      except Exception as e:  # pylint: disable=broad-except
        log.exception("%s %s failed", request.method, request.url.path)
        response = HttpError(500, f"internal error ({type(e).__name__}): {e}").response()
      self.metrics.observe_request(name, request.method, response.status_code,
                                   time.perf_counter() - start)
      return response

    return answer

  # Routes.

  async def healthz(self, request: Request) -> Response:
    del request
    return JSONResponse({"status": "ok", "model": self.rec.config.model.name,
                         "items": self.rec.num_items, "users": len(self.rec.users)})

  async def metrics_text(self, request: Request) -> Response:
    del request
    return PlainTextResponse(self.metrics.render(len(self.sessions)),
                             media_type="text/plain; version=0.0.4")

  async def recommend(self, request: Request) -> Response:
    body = await read_json(request, self.max_body_bytes)
    query = parse_recommend(body, self.rec, max_k=self.max_k, max_history=self.max_history)
    recommendation = await self.batcher.submit(query)
    return JSONResponse(recommendation.to_dict())

  async def session_event(self, request: Request) -> Response:
    session_id = _session_id(request)
    event = parse_event(await read_json(request, self.max_body_bytes), self.rec, max_k=self.max_k)
    return JSONResponse(await self.in_model_thread(self._append, session_id, event))

  async def session_get(self, request: Request) -> Response:
    session_id = _session_id(request)
    k = _query_k(request, self.max_k)
    return JSONResponse(await self.in_model_thread(self._current, session_id, k))

  async def session_delete(self, request: Request) -> Response:
    session_id = _session_id(request)
    # Through the model thread, so that it lands after the session's earlier events.
    if not await self.in_model_thread(self.sessions.pop, session_id):
      raise _no_session(session_id)
    return JSONResponse({"session": session_id, "deleted": True})

  # Session work, in the model thread.

  def _append(self, session_id: str, event: Event) -> dict:
    live = self.sessions.get(session_id)
    if live is None:
      if event.user is None and self.rec.reads_users:
        raise _invalid("user", "this model reads a user context: give the user with the "
                               "session's first event")
      times = [] if self.rec.reads_timestamps and event.user is None else None
      live = LiveSession(self.rec.session(user=event.user, timestamps=times), event.user)
    elif event.user is not None and event.user != live.user:
      raise _invalid("user", f"session {session_id!r} belongs to user {live.user!r}; the user is "
                             "given with its first event only")
    if len(live.session.items) >= self.max_history:
      raise HttpError(409, f"session {session_id!r} holds {len(live.session.items)} events, the "
                           "most served; delete it to start again", "item")
    live.session.append(event.item, timestamp=event.timestamp)
    self.sessions.put(session_id, live)  # created only once its first event is in
    return self._answer(session_id, live, event.k)

  def _current(self, session_id: str, k: int) -> dict:
    live = self.sessions.get(session_id)
    if live is None:
      raise _no_session(session_id)
    return self._answer(session_id, live, k)

  def _answer(self, session_id: str, live: LiveSession, k: int) -> dict:
    return {**live.session.recommend(k).to_dict(), "session": session_id,
            "events": len(live.session.items)}


def _no_session(session_id: str) -> HttpError:
  return HttpError(404, f"no session {session_id!r} (never created, deleted, expired or evicted)",
                   "session_id")


async def _http_exception(request: Request, error: HTTPException) -> Response:
  del request
  return JSONResponse({"error": error.detail, "field": None}, status_code=error.status_code)


async def _unexpected(request: Request, error: Exception) -> Response:
  log.error("%s %s failed: %r", request.method, request.url.path, error)
  return JSONResponse({"error": f"internal error ({type(error).__name__})", "field": None},
                      status_code=500)


def build_app(rec, *, max_batch: int = 64, batch_window_ms: float = 2.0, max_k: int = 1000,
              max_history: int = 10_000, max_sessions: int = 100_000, session_ttl_s: float = 3600,
              warmup: bool = True, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
  """The service of `rec` (a `Recommender`) as an ASGI app; see the module docstring.

  Args:
    rec: the model.
    max_batch: most /recommend requests scored in one call.
    batch_window_ms: how long a batch waits for more requests after its first.
    max_k: longest list served (also bounded by the catalogue).
    max_history: most events of a request's history, or of a session.
    max_sessions: sessions held; the least recently used leave first.
    session_ttl_s: a session unused this long is gone.
    warmup: compile the common shapes at startup, so that first requests are fast.
    max_body_bytes: larger request bodies are refused (413).
  """
  service = Service(rec, max_batch=max_batch, batch_window_ms=batch_window_ms, max_k=max_k,
                    max_history=max_history, max_sessions=max_sessions,
                    session_ttl_s=session_ttl_s, warmup=warmup, max_body_bytes=max_body_bytes)
  routes = [
      Route("/recommend", service.endpoint("/recommend", service.recommend), methods=["POST"]),
      Route("/sessions/{session_id}/events",
            service.endpoint("/sessions/{id}/events", service.session_event), methods=["POST"]),
      Route("/sessions/{session_id}", service.endpoint("/sessions/{id}", service.session_get),
            methods=["GET"]),
      Route("/sessions/{session_id}", service.endpoint("/sessions/{id}", service.session_delete),
            methods=["DELETE"]),
      Route("/healthz", service.endpoint("/healthz", service.healthz), methods=["GET"]),
      Route("/metrics", service.endpoint("/metrics", service.metrics_text), methods=["GET"]),
  ]
  app = Starlette(routes=routes, lifespan=service.lifespan,
                  exception_handlers={HTTPException: _http_exception, Exception: _unexpected})
  app.state.service = service
  return app
