"""The networked state store: one Redis server shared by replicas on any number of machines.

``redis://host:6379/0`` (or ``rediss://`` for TLS) selects it; ``?prefix=myapp:`` puts every
key under another prefix so several apps can share one database. Needs the ``redis`` client
(``pip install 'rayrec[redis]'``).

Every write is one Lua script, so it is atomic (all the events of a batch or none) and
idempotent re-sends are decided inside Redis, never racing between replicas. Durability is
Redis's: an event is acknowledged when Redis has answered, so run Redis with
``appendonly yes`` and ``appendfsync always`` for the same guarantee as the SQLite store (an
acknowledged event survives a crash of Redis or of its machine); ``appendfsync everysec``
may lose the last second on a machine crash. The store logs a warning when it can see that
Redis is not configured that way. Scripts name their keys inside, so use a single Redis
primary (with replicas or Sentinel if you like), not Redis Cluster.

Keys (``P`` is the prefix)::

    P:event_ids                 hash  event_id -> user_id       (idempotency)
    P:events:count              int   events in the log
    P:log:<user>                list  the user's events as JSON, arrival order
    P:recent:<user>             list  JSON [item_id, event_type], newest recent_limit kept
    P:dislikes:<user>           set   disliked item ids
    P:erased                    hash  user_id -> erased-at unix time
    P:item_last_seen            hash  item_id -> latest event time (unix seconds)
    P:catalog:version           int   catalogue version counter
    P:catalog:items             hash  item_id -> JSON {"record", "deleted", "version"}
    P:catalog:log               zset  item_id scored by its latest version
    P:models:seq                int   last model generation number
    P:models:dir / :status      hash  generation -> model_dir / status
    P:models:active             int   the live generation
    P:experiments               hash  name -> JSON record
    P:experiments:order         list  names, oldest first
    P:impressions               hash  impression_id -> JSON {experiment, arm, item_ids}
    P:impressions:count:<exp>   hash  arm -> impressions stored
    P:attributed:<exp>          hash  event_id -> JSON attributed event (HSETNX: idempotent)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Collection, Iterator, Sequence
from urllib.parse import parse_qs, urlparse, urlunparse

from pydantic import BaseModel, ConfigDict, Field

from rayrec.components import FeedbackEvent
from rayrec.errors import ConfigError
from rayrec.state.base import (
    AppendResult,
    AttributedEvent,
    BaseStateStore,
    CatalogChange,
    Impression,
    ModelGeneration,
    UserState,
)

logger = logging.getLogger(__name__)

# ARGV: prefix, recent_limit, then 7 per event: event_id ('' = none), user_id, item_id,
# event_type, is_dislike ('1'/'0'), the event as JSON, its time. Returns 1 per event newly
# stored, 0 per duplicate, in order.
_APPEND = """
local p = ARGV[1]
local limit = tonumber(ARGV[2])
local stored = 0
local flags = {}
for i = 3, #ARGV, 7 do
  local event_id, user, item, kind, dislike, blob = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local fresh = true
  if event_id ~= '' then
    fresh = redis.call('HSETNX', p .. 'event_ids', event_id, user) == 1
  end
  flags[#flags + 1] = fresh and 1 or 0
  if fresh then
    local seen = tonumber(redis.call('HGET', p .. 'item_last_seen', item))
    if not seen or tonumber(ARGV[i+6]) > seen then
      redis.call('HSET', p .. 'item_last_seen', item, ARGV[i+6])
    end
    redis.call('RPUSH', p .. 'log:' .. user, blob)
    redis.call('RPUSH', p .. 'recent:' .. user, cjson.encode({item, kind}))
    redis.call('LTRIM', p .. 'recent:' .. user, -limit, -1)
    if dislike == '1' then
      redis.call('SADD', p .. 'dislikes:' .. user, item)
    end
    stored = stored + 1
  end
end
if stored > 0 then
  redis.call('INCRBY', p .. 'events:count', stored)
end
return flags
"""

# ARGV: prefix, user_id, now. Returns the number of events deleted.
_ERASE = """
local p, user = ARGV[1], ARGV[2]
local log = redis.call('LRANGE', p .. 'log:' .. user, 0, -1)
for _, blob in ipairs(log) do
  local event = cjson.decode(blob)
  if type(event.event_id) == 'string' then
    redis.call('HDEL', p .. 'event_ids', event.event_id)
  end
end
redis.call('DEL', p .. 'log:' .. user, p .. 'recent:' .. user, p .. 'dislikes:' .. user)
if #log > 0 then
  redis.call('DECRBY', p .. 'events:count', #log)
end
redis.call('HSET', p .. 'erased', user, ARGV[3])
return #log
"""

# ARGV: prefix, item_id, JSON record (ignored when deleting), '1' to delete. Returns the version.
_CATALOG = """
local p, item = ARGV[1], ARGV[2]
local version = redis.call('INCR', p .. 'catalog:version')
local entry
if ARGV[4] == '1' then
  entry = '{"deleted":true,"record":{},"version":' .. version .. '}'
else
  entry = '{"deleted":false,"record":' .. ARGV[3] .. ',"version":' .. version .. '}'
end
redis.call('HSET', p .. 'catalog:items', item, entry)
redis.call('ZADD', p .. 'catalog:log', version, item)
return version
"""

# ARGV: prefix, since_version. Returns item_id, entry, item_id, entry, ... in version order,
# read atomically (a change racing with two separate reads could otherwise be skipped).
_CHANGES = """
local p = ARGV[1]
local items = redis.call('ZRANGEBYSCORE', p .. 'catalog:log', '(' .. ARGV[2], '+inf')
local result = {}
for _, item in ipairs(items) do
  result[#result + 1] = item
  result[#result + 1] = redis.call('HGET', p .. 'catalog:items', item)
end
return result
"""

_STAGE = """
local p = ARGV[1]
local generation = redis.call('INCR', p .. 'models:seq')
redis.call('HSET', p .. 'models:dir', generation, ARGV[2])
redis.call('HSET', p .. 'models:status', generation, 'staged')
return generation
"""

_ACTIVATE = """
local p, generation = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. 'models:dir', generation) == 0 then
  return redis.error_reply('no model generation ' .. generation)
end
local active = redis.call('GET', p .. 'models:active')
if active then
  redis.call('HSET', p .. 'models:status', active, 'retired')
end
redis.call('HSET', p .. 'models:status', generation, 'active')
redis.call('SET', p .. 'models:active', generation)
return 1
"""

# ARGV: prefix, experiment, then 2 per event: event_id, the event as JSON. Returns events newly stored.
_ATTRIBUTE = """
local p, experiment = ARGV[1], ARGV[2]
local stored = 0
for i = 3, #ARGV, 2 do
  stored = stored + redis.call('HSETNX', p .. 'attributed:' .. experiment, ARGV[i], ARGV[i+1])
end
return stored
"""

_FAIL = """
local p, generation = ARGV[1], ARGV[2]
if redis.call('HGET', p .. 'models:status', generation) == 'staged' then
  redis.call('HSET', p .. 'models:status', generation, 'failed')
end
return 1
"""


def _event_from_json(blob: str) -> FeedbackEvent:
    """An event of a ``P:log:<user>`` list."""
    r = json.loads(blob)
    return FeedbackEvent(user_id=r["user_id"], item_id=r["item_id"], event_type=r["event_type"],
                         timestamp=r["timestamp"], value=r["value"], event_id=r["event_id"])


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN MATCH pattern (a prefix may hold ``*``, ``?`` or ``[``)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisStateStore(BaseStateStore):
    """Event log, user state, catalogue and model generations in Redis (atomic Lua writes)."""

    name = "redis"
    schemes = ("rediss",)
    description = "Redis server (redis://host:port/db); for replicas on several machines."

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str = Field(description="redis://[user:password@]host:port/db (rediss:// for TLS).")
        prefix: str = Field("rayrec:", description="Prefix of every key, so several apps can share a database.")
        recent_limit: int = Field(500, ge=1, description="Recent events kept per user for the user tower.")
        socket_timeout_s: float = Field(10.0, gt=0, description="How long a command may take before it fails.")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "RedisStateStore":
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        ours = {key: query.pop(key) for key in list(query) if key in cls.Options.model_fields}
        rest = "&".join(f"{k}={v}" for k, v in query.items())  # left for redis-py (e.g. ssl_cert_reqs)
        return cls({"url": urlunparse(parsed._replace(query=rest)), **ours, **options})

    def __init__(self, options: BaseModel | dict[str, Any] | None = None) -> None:
        super().__init__(options)
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"state URL {self._shown_url()!r} needs the redis client: pip install 'rayrec[redis]'"
            ) from None
        self._client = None
        self._scripts: dict[str, Any] = {}
        self._connect()
        self._warn_if_not_durable()

    def __repr__(self) -> str:  # never show a password from the URL
        return f"RedisStateStore({self._shown_url()!r}, prefix={self.options.prefix!r})"

    # -- connection ------------------------------------------------------------------------
    def _shown_url(self) -> str:
        """The URL without its password, for messages."""
        parsed = urlparse(self.options.url)
        if parsed.password:
            netloc = f"{parsed.username or ''}:***@{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "")
            parsed = parsed._replace(netloc=netloc)
        return urlunparse(parsed)

    def _connect(self):
        import redis

        if self._client is None:
            # redis-py's pool notices a fork and reconnects in the child.
            self._client = redis.Redis.from_url(
                self.options.url, socket_timeout=self.options.socket_timeout_s,
                socket_connect_timeout=self.options.socket_timeout_s, decode_responses=True,
            )
            try:
                self._client.ping()
            except redis.RedisError as exc:
                self._client = None
                raise ConfigError(f"state store {self._shown_url()}: cannot reach Redis ({exc})") from None
            self._scripts = {
                name: self._client.register_script(source)
                for name, source in (("append", _APPEND), ("erase", _ERASE), ("catalog", _CATALOG),
                                     ("changes", _CHANGES), ("stage", _STAGE), ("activate", _ACTIVATE), ("fail", _FAIL),
                                     ("attribute", _ATTRIBUTE))
            }
        return self._client

    def _warn_if_not_durable(self) -> None:
        import redis

        try:
            config = self._connect().config_get("append*")
        except redis.RedisError:  # CONFIG may be disabled (managed Redis): nothing to check
            return
        if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
            logger.warning(
                "Redis at %s runs with appendonly=%s appendfsync=%s: acknowledged events may be lost if Redis "
                "or its machine crashes; use appendonly yes and appendfsync always",
                self._shown_url(), config.get("appendonly"), config.get("appendfsync"),
            )

    def _run(self, script: str, *args: Any) -> Any:
        self._connect()
        return self._scripts[script](args=[self.options.prefix, *args])

    def _key(self, *parts: str) -> str:
        return self.options.prefix + ":".join(parts)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None
                self._scripts = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_scripts"] = {}
        return state

    # -- events and user state -------------------------------------------------------------
    def append_events(
        self, events: Sequence[FeedbackEvent], dislike_types: Collection[str] = ()
    ) -> AppendResult:
        if not events:
            return AppendResult(stored=0, duplicates=0)
        now = time.time()
        args: list[Any] = [self.options.recent_limit]
        for event in events:
            timestamp = event.timestamp if event.timestamp is not None else now
            blob = json.dumps({
                "user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type,
                "timestamp": timestamp, "value": event.value, "event_id": event.event_id, "received_at": now,
            })
            args += [event.event_id or "", event.user_id, event.item_id, event.event_type,
                     "1" if event.event_type in dislike_types else "0", blob, repr(float(timestamp))]
        new = [bool(int(flag)) for flag in self._run("append", *args)]
        stored = sum(new)
        return AppendResult(stored=stored, duplicates=len(events) - stored, new=new)

    def item_last_seen(self, item_ids: Collection[str]) -> dict[str, float]:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        values = self._connect().hmget(self._key("item_last_seen"), ids)
        return {item_id: float(value) for item_id, value in zip(ids, values) if value is not None}

    def user_state(self, user_id: str, limit: int) -> UserState:
        pipe = self._connect().pipeline(transaction=True)  # one snapshot, like SQLite's read transaction
        pipe.lrange(self._key("recent", user_id), -max(1, limit), -1)
        pipe.smembers(self._key("dislikes", user_id))
        pipe.hexists(self._key("erased"), user_id)
        recent, disliked, erased = pipe.execute()
        if limit <= 0:
            recent = []
        pairs = [tuple(json.loads(entry)) for entry in recent]
        return UserState(user_id=user_id, recent=[(str(i), str(t)) for i, t in pairs], disliked=set(disliked),
                         erased=bool(erased))

    def erase_user(self, user_id: str) -> int:
        return int(self._run("erase", user_id, repr(time.time())))

    def event_count(self, user_id: str | None = None) -> int:
        client = self._connect()
        if user_id is None:
            return int(client.get(self._key("events", "count")) or 0)
        return int(client.llen(self._key("log", user_id)))

    def iter_event_log(self, chunk_size: int = 10_000) -> Iterator[list[FeedbackEvent]]:
        """Every ``P:log:<user>`` list, found with SCAN (which never blocks Redis the way KEYS
        does; each key read once, though SCAN may repeat it) and read a page at a time."""
        client = self._connect()
        chunk_size = max(1, int(chunk_size))
        pattern = _glob_escape(self._key("log", "")) + "*"
        chunk: list[FeedbackEvent] = []
        seen: set[str] = set()
        for key in client.scan_iter(match=pattern, count=1000):
            if key in seen:  # SCAN may return a key more than once
                continue
            seen.add(key)
            start = 0
            while True:
                page = client.lrange(key, start, start + chunk_size - 1)
                chunk.extend(_event_from_json(blob) for blob in page)
                while len(chunk) >= chunk_size:
                    yield chunk[:chunk_size]
                    chunk = chunk[chunk_size:]
                if len(page) < chunk_size:
                    break
                start += chunk_size
        if chunk:
            yield chunk

    def erased_users(self) -> set[str]:
        return set(self._connect().hkeys(self._key("erased")))

    def events(self, user_id: str) -> list[FeedbackEvent]:
        """The user's logged events in arrival order (for inspection and tests)."""
        return [_event_from_json(blob) for blob in self._connect().lrange(self._key("log", user_id), 0, -1)]

    # -- item catalogue --------------------------------------------------------------------
    def put_item(self, item_id: str, record: dict[str, Any]) -> int:
        return int(self._run("catalog", item_id, json.dumps(record), "0"))

    def delete_item(self, item_id: str) -> int:
        return int(self._run("catalog", item_id, "{}", "1"))

    def catalog_version(self) -> int:
        return int(self._connect().get(self._key("catalog", "version")) or 0)

    def catalog_changes(self, since_version: int) -> list[CatalogChange]:
        flat = self._run("changes", str(int(since_version)))
        changes = []
        for item_id, entry in zip(flat[0::2], flat[1::2]):
            data = json.loads(entry)
            changes.append(CatalogChange(item_id=item_id, version=int(data["version"]), deleted=bool(data["deleted"]),
                                         record=data["record"]))
        return changes

    # -- model generations -----------------------------------------------------------------
    def stage_model(self, model_dir: str) -> int:
        return int(self._run("stage", model_dir))

    def activate_model(self, generation: int) -> None:
        import redis

        try:
            self._run("activate", str(int(generation)))
        except redis.ResponseError as exc:
            raise KeyError(str(exc)) from None

    def fail_model(self, generation: int) -> None:
        self._run("fail", str(int(generation)))

    def model_generation(self, generation: int | None = None) -> ModelGeneration | None:
        client = self._connect()
        if generation is None:
            active = client.get(self._key("models", "active"))
            if active is None:
                return None
            generation = int(active)
        pipe = client.pipeline(transaction=True)
        pipe.hget(self._key("models", "dir"), str(generation))
        pipe.hget(self._key("models", "status"), str(generation))
        model_dir, status = pipe.execute()
        if model_dir is None:
            return None
        return ModelGeneration(generation=int(generation), model_dir=model_dir, status=status)

    def set_model_status(self, generation: int, status: str) -> None:
        self._connect().hset(self._key("models", "status"), str(int(generation)), status)

    # -- experiments -----------------------------------------------------------------------
    def save_experiment(self, record: dict[str, Any]) -> None:
        client = self._connect()
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(self._key("experiments", "seen"), record["name"], "1")
        pipe.hset(self._key("experiments"), record["name"], json.dumps(record))
        first, _ = pipe.execute()
        if first:
            client.rpush(self._key("experiments", "order"), record["name"])

    def experiments(self) -> list[dict[str, Any]]:
        client = self._connect()
        names = client.lrange(self._key("experiments", "order"), 0, -1)
        blobs = client.hmget(self._key("experiments"), names) if names else []
        return [json.loads(blob) for blob in blobs if blob is not None]

    def record_impression(self, impression: Impression) -> None:
        pipe = self._connect().pipeline(transaction=True)  # MULTI/EXEC: the record and its count together
        pipe.hset(self._key("impressions"), impression.impression_id, json.dumps(
            {"experiment": impression.experiment, "arm": impression.arm, "item_ids": impression.item_ids}))
        pipe.hincrby(self._key("impressions", "count", impression.experiment), impression.arm, 1)
        pipe.execute()

    def impressions(self, impression_ids: Collection[str]) -> dict[str, Impression]:
        ids = list(dict.fromkeys(impression_ids))
        if not ids:
            return {}
        found = {}
        for impression_id, blob in zip(ids, self._connect().hmget(self._key("impressions"), ids)):
            if blob is not None:
                data = json.loads(blob)
                found[impression_id] = Impression(impression_id, data["experiment"], data["arm"], data["item_ids"])
        return found

    def record_attributed_events(self, events: Sequence[AttributedEvent]) -> int:
        stored = 0
        by_experiment: dict[str, list[str]] = {}
        for event in events:
            by_experiment.setdefault(event.experiment, []).extend([event.event_id, json.dumps(event.__dict__)])
        for experiment, args in by_experiment.items():
            stored += int(self._run("attribute", experiment, *args))
        return stored

    def impression_counts(self, experiment: str) -> dict[str, int]:
        counts = self._connect().hgetall(self._key("impressions", "count", experiment))
        return {arm: int(count) for arm, count in counts.items()}

    def attributed_events(self, experiment: str) -> list[AttributedEvent]:
        blobs = self._connect().hvals(self._key("attributed", experiment))
        return [AttributedEvent(**json.loads(blob)) for blob in blobs]
