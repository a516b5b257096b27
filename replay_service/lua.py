"""Key layout of one replay namespace, and the Lua scripts that change it atomically.

Layout (``P`` = ``"{<namespace>}:"``; the hash tag keeps a namespace in one cluster slot)::

    P b:<id>    string  the encoded trajectory (common.codec), ids 0, 1, 2, ... in insert order
    P p:<token> string  a record uploaded but not committed yet (expires)
    P t:<token> string  id of a REMOVED trajectory's insert token (expires ``token_grace_ms``
                        after the removal): a retry of an insert whose record was already
                        evicted is still recognised as a duplicate (exactly-once across
                        eviction); not counted in ``bytes``
    P meta      hash    head (oldest id that may be live), next (next id), epoch (random, set
                        when the namespace is created: a changed epoch means "cleared/lost"),
                        count/steps/bytes (live totals), ins_traj/ins_steps/ins_bytes
                        (cumulative inserts), del_traj/del_steps/del_bytes (cumulative removals:
                        FIFO evictions + drops), drop_traj (drops: corrupt, unusable or
                        vanished records), samp_windows/samp_steps (cumulative samples)
    P info      hash    id -> "<timesteps> <bytes> <insert token>" of each live trajectory; the
                        stored token of a multi-task run's trajectory is "<task>~<token>"
                        (``task_token``: its ``meta.info["task"]``), which is how the index
                        knows every trajectory's task without its blob
    P tok       hash    insert token -> id of each LIVE trajectory (idempotent inserts; removed
                        trajectories' tokens move to ``P t:<token>``)
    P rej       hash    reason -> records rejected at ingest
    P bad       hash    reason -> records a sampler could not use (see ``replay_service.sampler``
                        for the reasons): corrupt blobs (dropped at once), records whose
                        relabeling or batching failed or that do not match the env spec
                        (skipped; dropped at their second failure), "missing" (an index entry
                        whose blob vanished: dropped, totals repaired), "layout" (valid records
                        of another layout, skipped, never dropped)

Live ids form the range [head, next) minus the rare holes left by dropped records, so a
sampler needs only (head, next) and the lengths to draw uniformly or by length. The rate
limiter reads ins_steps (I), del_steps (D) and samp_steps (S); see ``rate_limiter``.

A sampler detects a server that came back from an OLDER persisted state (AOF/RDB rewind, same
epoch, ids reused): it passes the newest id it knows with that record's insert token, and the
reserve script reports "resync" when the id counter went backwards or that id now holds
another token (see ``RESERVE``).

Numbers go back to Redis through ``string.format('%d')``: Lua would print large ones in
exponent notation. Under ``maxmemory`` + ``noeviction`` Redis refuses a script at its first
denied write (later writes then pass), so every script here starts writing with a command
that is never refused (RENAME, DEL) or carries the ``allow-oom`` flag: none half-happens.
Scripts keep the number of ``redis.call``s low (each costs about a microsecond or two).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.commands.core import Script


@dataclass(frozen=True)
class Keys:
    """Key names of one namespace."""

    namespace: str

    @property
    def prefix(self) -> str:
        return "{" + self.namespace + "}:"

    @property
    def blob_prefix(self) -> str:
        return self.prefix + "b:"

    def blob(self, traj_id: int) -> str:
        return f"{self.blob_prefix}{traj_id}"

    def pending(self, token: str) -> str:
        """Where a record is uploaded before its commit (expires if never committed)."""
        return f"{self.prefix}p:{token}"

    @property
    def token_prefix(self) -> str:
        return self.prefix + "t:"

    def token(self, token: str) -> str:
        """Where a removed trajectory's insert token is remembered (expires)."""
        return f"{self.token_prefix}{token}"

    @property
    def meta(self) -> str:
        return self.prefix + "meta"

    @property
    def info(self) -> str:
        return self.prefix + "info"

    @property
    def tokens(self) -> str:
        return self.prefix + "tok"

    @property
    def rejected(self) -> str:
        return self.prefix + "rej"

    @property
    def corrupt(self) -> str:
        return self.prefix + "bad"

    def record_keys(self) -> list[str]:
        """KEYS of the scripts that add or remove trajectories."""
        return [self.meta, self.info, self.tokens]


#: Seconds (at least) a removed trajectory's insert token is remembered.
TOKEN_GRACE_S = 600.0


def token_grace_ms(insert_timeout_s: float) -> int:
    """How long a removed trajectory's token is kept: max(TOKEN_GRACE_S, 2 x insert timeout),
    longer than any insert retry (actors retry an unreachable replay for 120 s by default)."""
    return int(1000 * max(TOKEN_GRACE_S, 2 * float(insert_timeout_s)))


def task_token(token: str, task: str | None) -> str:
    """The token stored for an insert of ``token`` whose record names ``task`` (a
    ``common.records.TASK_NAME_RE`` name; anything else counts as no task): ``<task>~<token>``,
    else ``token`` itself (``~<token>`` if it holds a ``~``, so the tag stays unambiguous).
    One-to-one, so dedup by token is unchanged."""
    from common.records import TASK_NAME_RE

    if isinstance(task, str) and TASK_NAME_RE.fullmatch(task):
        return f"{task}~{token}"
    return f"~{token}" if "~" in token else token


def token_task(stored: str) -> str:
    """The task of a stored token ("" = none): the inverse of :func:`task_token`'s tag."""
    return stored.split("~", 1)[0] if "~" in stored else ""


def parse_info(value: bytes) -> tuple[int, int, str]:
    """(timesteps, bytes, insert token) from a value of the ``info`` hash."""
    steps, nbytes, token = value.split(b" ", 2)
    return int(steps), int(nbytes), token.decode()


# Shared prologue of the record scripts: KEYS meta, info, toks; `fmt`; the meta values the
# scripts decide on (head, nxt, steps, bytes, ins_steps, del_steps, samp_steps, epoch);
# `remove(prefix, id)` deletes a live trajectory (DEL first), moves its token to
# `tomb_prefix .. token` (expiring after `tomb_ms`; scripts set both first) and returns its
# timesteps (0 if it was not live); `save(epoch)` writes the changed counters and head/next
# in one HSET (the counters are read here with the rest, in one HMGET: a script runs
# atomically, so old value + delta is exactly what a HINCRBY per counter would store).
_RECORD_PROLOGUE = """
local meta, info, toks = KEYS[1], KEYS[2], KEYS[3]
local function fmt(x) return string.format('%d', x) end
local CF = {'count', 'steps', 'bytes', 'ins_traj', 'ins_steps', 'ins_bytes', 'del_traj',
            'del_steps', 'del_bytes', 'drop_traj'}
local raw = redis.call('HMGET', meta, 'head', 'next', 'samp_steps', 'epoch', unpack(CF))
local head, nxt = tonumber(raw[1]) or 0, tonumber(raw[2]) or 0
local samp_steps, epoch = tonumber(raw[3]) or 0, raw[4]
local C0 = {}
for i = 1, #CF do C0[CF[i]] = tonumber(raw[4 + i]) or 0 end
local steps, bytes = C0['steps'], C0['bytes']
local ins_steps, del_steps = C0['ins_steps'], C0['del_steps']
local head0, nxt0 = head, nxt
local tomb_prefix, tomb_ms = nil, 0
local D = {}
local function add(f, x) D[f] = (D[f] or 0) + x end
local function remove(prefix, id)
  local sid = fmt(id)
  local v = redis.call('HGET', info, sid)
  if not v then return 0 end
  redis.call('DEL', prefix .. sid)
  local l, b, t = string.match(v, '^(%d+) (%d+) (.*)$')
  l, b = tonumber(l), tonumber(b)
  redis.call('HDEL', info, sid)
  redis.call('HDEL', toks, t)
  if tomb_prefix then redis.call('SET', tomb_prefix .. t, sid, 'PX', tomb_ms) end
  steps, bytes, del_steps = steps - l, bytes - b, del_steps + l
  add('count', -1)
  add('steps', -l)
  add('bytes', -b)
  add('del_traj', 1)
  add('del_steps', l)
  add('del_bytes', b)
  return l
end
local function save(new_epoch)
  local args = {}
  for f, x in pairs(D) do
    if x ~= 0 then args[#args + 1] = f; args[#args + 1] = fmt(C0[f] + x) end
  end
  if head ~= head0 then args[#args + 1] = 'head'; args[#args + 1] = fmt(head) end
  if nxt ~= nxt0 then args[#args + 1] = 'next'; args[#args + 1] = fmt(nxt) end
  if new_epoch and not epoch then args[#args + 1] = 'epoch'; args[#args + 1] = new_epoch end
  if #args > 0 then redis.call('HSET', meta, unpack(args)) end
end
"""

# Commits uploaded records, in order. The client first SETs each blob under its pending key
# P p:<token> (with an expiry, in the same pipeline): a plain SET is the only command that
# carries the bytes, so big records are never copied through Lua, and under maxmemory it is
# that SET which is refused (nothing else written). Each commit's first write is RENAME
# (allowed under maxmemory), so none half-happens.
# KEYS: meta, info, toks, then the N pending keys.
# ARGV: blob_prefix, epoch, max_steps, max_bytes, spi, min_size, max_diff, tomb_prefix,
# tomb_ms, then N pairs (timesteps, token).
# Returns 3 values per record: 1, id, evicted (committed) | 2, id, 0 (token committed
# before: its record may be live or removed less than tomb_ms ago) | 0, stored timesteps,
# diff (rate-limited; this and later records wait, their pending blobs stay) | -1, 0, 0 (no
# pending blob).
COMMIT = (
    _RECORD_PROLOGUE
    + """
local prefix, new_epoch = ARGV[1], ARGV[2]
local max_steps, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local spi, min_size, max_diff = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
tomb_prefix, tomb_ms = ARGV[8], ARGV[9]
local out = {}
local blocked = nil
for r = 1, #KEYS - 3 do
  local pending, n, token = KEYS[r + 3], tonumber(ARGV[8 + 2 * r]), ARGV[9 + 2 * r]
  local dup = redis.call('HGET', toks, token) or redis.call('GET', tomb_prefix .. token)
  if dup then
    redis.call('DEL', pending)
    out[#out + 1] = 2; out[#out + 1] = tonumber(dup); out[#out + 1] = 0
  elseif blocked then
    out[#out + 1] = 0; out[#out + 1] = blocked[1]; out[#out + 1] = blocked[2]
  else
    if spi > 0 and ins_steps - del_steps >= min_size then
      local diff = (ins_steps + n) * spi - samp_steps
      if diff > max_diff then blocked = {fmt(ins_steps - del_steps), tostring(diff)} end
    end
    if blocked then
      out[#out + 1] = 0; out[#out + 1] = blocked[1]; out[#out + 1] = blocked[2]
    else
      local id = nxt
      local sid = fmt(id)
      local key = prefix .. sid
      local ok = redis.pcall('RENAME', pending, key)
      if type(ok) == 'table' and ok.err then
        out[#out + 1] = -1; out[#out + 1] = 0; out[#out + 1] = 0
      else
        redis.call('PERSIST', key)
        local nb = redis.call('STRLEN', key)
        redis.call('HSET', info, sid, fmt(n) .. ' ' .. fmt(nb) .. ' ' .. token)
        redis.call('HSET', toks, token, sid)
        nxt = id + 1
        steps, bytes, ins_steps = steps + n, bytes + nb, ins_steps + n
        add('count', 1)
        add('steps', n)
        add('bytes', nb)
        add('ins_traj', 1)
        add('ins_steps', n)
        add('ins_bytes', nb)
        local evicted = 0
        while (steps > max_steps or bytes > max_bytes) and head < id do
          if remove(prefix, head) > 0 then evicted = evicted + 1 end
          head = head + 1
        end
        out[#out + 1] = 1; out[#out + 1] = id; out[#out + 1] = evicted
      end
    end
  end
end
save(nxt ~= nxt0 and new_epoch or nil)
return out
"""
)

# Evicts up to ARGV[2] of the oldest trajectories (its first write is a DEL, so it runs
# under maxmemory too). KEYS: record keys. ARGV: blob_prefix, n, tomb_prefix, tomb_ms.
# Returns the number evicted.
EVICT = (
    _RECORD_PROLOGUE
    + """
local want = tonumber(ARGV[2])
tomb_prefix, tomb_ms = ARGV[3], ARGV[4]
local evicted = 0
while evicted < want and head < nxt do
  if remove(ARGV[1], head) > 0 then evicted = evicted + 1 end
  head = head + 1
end
if evicted > 0 then save(nil) end
return evicted
"""
)

# Removes unusable trajectories (corrupt, unusable, or whose blob vanished) and counts them
# under one reason, each once: only those still live. With only_missing = 1 only those whose
# blob is gone are removed: an index entry without its blob (external eviction, a manual DEL)
# is repaired, totals included, while a blob that exists (ids reused after a rewind) stays.
# KEYS: record keys + corrupt-counter hash. ARGV: blob_prefix, reason, only_missing,
# tomb_prefix, tomb_ms, then the ids. Returns the number removed.
DROP = (
    _RECORD_PROLOGUE
    + """
local prefix, only_missing = ARGV[1], ARGV[3] == '1'
tomb_prefix, tomb_ms = ARGV[4], ARGV[5]
local n = 0
for i = 6, #ARGV do
  local id = tonumber(ARGV[i])
  if not only_missing or redis.call('EXISTS', prefix .. fmt(id)) == 0 then
    if remove(prefix, id) > 0 then n = n + 1 end
  end
end
if n == 0 then return 0 end
add('drop_traj', n)
save(nil)
redis.call('HINCRBY', KEYS[4], ARGV[2], n)
return n
"""
)

# Snapshot delta + optional sample reservation. KEYS: meta, info.
# ARGV: k (timesteps to reserve; 0 = snapshot only), windows, spi, min_size, min_diff,
#       from_id (first id the caller has no length for), epoch the caller knows, check_id
#       (newest id the caller knows, -1 = none) and check_token (its insert token).
# The lengths are sent from from_id on, or from head ("resync": the caller must drop what it
# knows) when the epoch differs, or - same epoch - when the id counter went backwards or
# check_id (if still in [head, next)) now holds another token: the server came back from an
# older persisted state and reuses ids.
# Returns {status, epoch, head, next, from, lengths csv of ids from..next-1 (0 = gone),
# resync (1/0), newest live id of that range (-1: none), its token, tasks csv of the same ids
# (the "<task>~" tag of each stored token, "" = none or gone)};
# status 1 reserved / snapshot only, -1 empty store, -2 below min size, -3 ratio exhausted.
RESERVE = """
local meta, info = KEYS[1], KEYS[2]
local function fmt(x) return string.format('%d', x) end
local k, w = tonumber(ARGV[1]), tonumber(ARGV[2])
local spi, min_size, min_diff = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local from, cid = tonumber(ARGV[6]), tonumber(ARGV[8])
local m = redis.call('HMGET', meta, 'epoch', 'head', 'next', 'count',
                     'ins_steps', 'del_steps', 'samp_steps')
local epoch = m[1] or ''
local head, nxt, count = tonumber(m[2]) or 0, tonumber(m[3]) or 0, tonumber(m[4]) or 0
local ins, del, samp = tonumber(m[5]) or 0, tonumber(m[6]) or 0, tonumber(m[7]) or 0
local resync = 0
if epoch ~= ARGV[7] or from < 0 then from = head
elseif from > nxt then from = head; resync = 1
elseif cid >= head then
  local v = redis.call('HGET', info, fmt(cid))
  if not v or string.match(v, '^%d+ %d+ (.*)$') ~= ARGV[9] then from = head; resync = 1 end
end
if from < head then from = head end
local out, tasks = {}, {}
local last_id, last_v = -1, nil
local i = from
while i < nxt do
  local j = math.min(i + 999, nxt - 1)
  local args = {}
  for id = i, j do args[#args + 1] = fmt(id) end
  local vals = redis.call('HMGET', info, unpack(args))
  for t = 1, #args do
    local v = vals[t]
    if v then
      out[#out + 1] = string.match(v, '^%d+')
      tasks[#tasks + 1] = string.match(v, '^%d+ %d+ ([^~ ]*)~') or ''
      last_id, last_v = i + t - 1, v
    else
      out[#out + 1] = '0'
      tasks[#tasks + 1] = ''
    end
  end
  i = j + 1
end
local last_tok = last_v and string.match(last_v, '^%d+ %d+ (.*)$') or ''
local status = 1
if k > 0 then
  if count <= 0 then status = -1
  elseif ins - del < min_size then status = -2
  elseif spi > 0 and ins * spi - samp - k < min_diff then status = -3
  else
    redis.call('HINCRBY', meta, 'samp_steps', fmt(k))
    redis.call('HINCRBY', meta, 'samp_windows', fmt(w))
  end
end
return {status, epoch, fmt(head), fmt(nxt), fmt(from), table.concat(out, ','), resync,
        fmt(last_id), last_tok, table.concat(tasks, ',')}
"""

# Corrects the sample counters (refunds of reservations that were not used).
# KEYS: meta. ARGV: steps delta, windows delta.
ADJUST = """
redis.call('HINCRBY', KEYS[1], 'samp_steps', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'samp_windows', ARGV[2])
return 1
"""

# Marks a script as allowed to write while the server is over maxmemory (Redis >= 7 /
# Valkey): sampling only bumps counters and must keep working when inserts are refused.
_ALLOW_OOM = "#!lua flags=allow-oom\n"


class Scripts:
    """The scripts, registered on one client (redis-py reloads them after NOSCRIPT).

    The sample-side scripts (``reserve``, ``adjust``) carry the ``allow-oom`` flag where
    the server supports script flags (probed once, at their first use); elsewhere (Redis 6,
    fakeredis) they run unflagged.
    """

    def __init__(self, client: redis.Redis):
        self._client = client
        self.commit: Script = client.register_script(COMMIT)
        self.evict: Script = client.register_script(EVICT)
        self.drop: Script = client.register_script(DROP)
        self._sample_side: tuple[Script, Script] | None = None

    def _sample_scripts(self) -> tuple[Script, Script]:
        if self._sample_side is None:
            try:
                self._client.eval(_ALLOW_OOM + "return 1", 0)
                prefix = _ALLOW_OOM
            except redis.exceptions.ResponseError:
                prefix = ""
            self._sample_side = (
                self._client.register_script(prefix + RESERVE),
                self._client.register_script(prefix + ADJUST),
            )
        return self._sample_side

    @property
    def reserve(self) -> Script:
        return self._sample_scripts()[0]

    @property
    def adjust(self) -> Script:
        return self._sample_scripts()[1]
