"""What effectively-once output (--dedup_horizon_s) costs, measured.

Two parts:

* ``memory``: the structures that can remember the event ids of a horizon,
  each filled with N fresh ids in batches of 1000 (as the job's
  DropScoredEvents sees them), in its own process: resident bytes per id
  held (after the fill, and at the peak), ids/s inserted, ids/s looked up
  again (all must be found), and never-seen ids wrongly taken for seen.
  Candidates: the dict of id strings the job used before issue 21; exact
  time-bucketed sets of the strings; time-bucketed sets of 64-bit
  fingerprints (Python ints); time-bucketed Bloom filters at a total
  false-positive rate of 1e-9; and time-bucketed sorted numpy arrays of
  64-bit fingerprints (transforms/seen_ids.py, the one chosen).
* ``seed``: the restart seed on an embedded broker: N prediction records
  (~300 bytes, like the job's) on a 4-partition topic, read back by
  transforms/dedup_seed.py: records/s, and what a too short timeout does.

  python -m bench.dedup_bench memory [--ids 1000000 10000000] [--id_kind hex]
  python -m bench.dedup_bench seed [--records 1000000]

Figures and the choice they led to: docs/operations.md (section 7).
"""

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

from transforms import seen_ids as seen_lib

BATCH = 1000
HORIZON_S = 3600.0
CANDIDATES = ('dict-of-str', 'sets-of-str', 'sets-of-int', 'bloom-1e-9',
              'sorted-int64')


# --- Candidates: keep_new(ids, now) -> mask of ids not seen before -------------
# (remember=False: look up only.)


class _DictOfStr:
  """The structure before issue 21: {id: time seen}; a dict comprehension
  drops the expired entries every tenth of the horizon."""

  def __init__(self, horizon_s: float, expected: int):
    del expected
    self._horizon_s = horizon_s
    self._seen: dict = {}
    self._next_sweep = 0.0

  def keep_new(self, ids, now, remember=True):
    if now >= self._next_sweep:
      cutoff = now - self._horizon_s
      self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
      self._next_sweep = now + self._horizon_s / 10
    mask = np.ones(len(ids), dtype=bool)
    seen = self._seen
    for i, event_id in enumerate(ids):
      if event_id in seen:
        mask[i] = False
      elif remember:
        seen[event_id] = now
    return mask


class _BucketedSets:
  """16 time buckets of Python sets, of the id strings (exact) or of their
  64-bit fingerprints; a bucket is dropped when it leaves the horizon."""

  def __init__(self, horizon_s: float, expected: int, *, fingerprint: bool):
    del expected
    self._horizon_s = horizon_s
    self._width = horizon_s / seen_lib.BUCKETS
    self._fingerprint = fingerprint
    self._buckets: dict = {}

  def keep_new(self, ids, now, remember=True):
    oldest = math.floor((now - self._horizon_s) / self._width)
    for b in [b for b in self._buckets if b < oldest]:
      del self._buckets[b]
    sets = list(self._buckets.values())
    current = self._buckets.setdefault(math.floor(now / self._width), set())
    keys = list(map(hash, ids)) if self._fingerprint else ids
    mask = np.ones(len(ids), dtype=bool)
    for i, key in enumerate(keys):
      if key in current or any(key in s for s in sets):
        mask[i] = False
      elif remember:
        current.add(key)
    return mask


class _BucketedBloom:
  """16 time buckets of Bloom filters sized for ``expected`` ids in all,
  1e-9 false positives in all (1e-9/16 per bucket), k indexes by double
  hashing of the 64-bit fingerprint."""

  def __init__(self, horizon_s: float, expected: int, fp_rate: float = 1e-9):
    buckets = seen_lib.BUCKETS
    per_bucket = max(1, expected // buckets)
    p = fp_rate / buckets
    self._bits = int(math.ceil(-per_bucket * math.log(p) / math.log(2) ** 2))
    self._k = max(1, round(self._bits / per_bucket * math.log(2)))
    self._horizon_s = horizon_s
    self._width = horizon_s / buckets
    self._filters: dict = {}

  def _indexes(self, ids) -> np.ndarray:
    h1 = seen_lib.fingerprints(ids).view(np.uint64)
    h2 = (h1 * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    j = np.arange(self._k, dtype=np.uint64)
    return (h1[:, None] + j[None, :] * h2[:, None]) % np.uint64(self._bits)

  def keep_new(self, ids, now, remember=True):
    oldest = math.floor((now - self._horizon_s) / self._width)
    for b in [b for b in self._filters if b < oldest]:
      del self._filters[b]
    idx = self._indexes(ids)
    byte, bit = idx >> np.uint64(3), (idx & np.uint64(7)).astype(np.uint8)
    found = np.zeros(len(ids), dtype=bool)
    for f in self._filters.values():
      found |= ((f[byte] >> bit) & 1).all(axis=1)
    mask = ~found & seen_lib.first_occurrences(seen_lib.fingerprints(ids))
    if not remember:
      return ~found
    current = self._filters.setdefault(
        math.floor(now / self._width),
        np.zeros((self._bits + 7) // 8, dtype=np.uint8))
    np.bitwise_or.at(current, byte[mask].ravel(),
                     (np.uint8(1) << bit[mask]).ravel())
    return mask


class _SortedInt64:
  """transforms/seen_ids.py SeenIds, fed strings."""

  def __init__(self, horizon_s: float, expected: int):
    del expected
    self._seen = seen_lib.SeenIds(horizon_s)

  def keep_new(self, ids, now, remember=True):
    fps = seen_lib.fingerprints(ids)
    if not remember:
      return self._seen.unseen(fps)
    return self._seen.keep_new(fps, now)


def _make(name: str, expected: int):
  return {
      'dict-of-str': lambda: _DictOfStr(HORIZON_S, expected),
      'sets-of-str': lambda: _BucketedSets(HORIZON_S, expected,
                                           fingerprint=False),
      'sets-of-int': lambda: _BucketedSets(HORIZON_S, expected,
                                           fingerprint=True),
      'bloom-1e-9': lambda: _BucketedBloom(HORIZON_S, expected),
      'sorted-int64': lambda: _SortedInt64(HORIZON_S, expected),
  }[name]()


# --- Measuring one candidate in its own process --------------------------------


def _ids(batch: int, kind: str, salt: int = 0) -> list:
  base = batch * BATCH
  if kind == 'short':   # like the demo's e0, e1, ...
    return [f'e{salt}{base + j}' for j in range(BATCH)]
  # 32 hex digits, like a UUID without dashes.
  return [f'{((base + j) * 0x9E3779B97F4A7C15 + salt) % (1 << 128):032x}'
          for j in range(BATCH)]


def _trim() -> None:
  """Hands the allocator's free pages back (glibc), to tell live bytes
  from bytes the allocator keeps."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _rss() -> int:
  with open('/proc/self/statm', encoding='ascii') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def measure_one(name: str, n: int, kind: str) -> dict:
  """Fills one candidate with ``n`` ids over 95% of the horizon."""
  batches = n // BATCH
  dt = 0.95 * HORIZON_S / batches
  t0 = 1_800_000_000.0
  gc.collect()
  structure = _make(name, n)
  base = _rss()
  insert_s = 0.0
  for b in range(batches):
    ids = _ids(b, kind)
    start = time.perf_counter()
    mask = structure.keep_new(ids, t0 + b * dt)
    insert_s += time.perf_counter() - start
    if not mask.all():
      raise AssertionError(f'{name}: fresh ids taken for seen ones')
  gc.collect()
  held = _rss() - base
  _trim()
  trimmed = _rss() - base
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
  rng = np.random.default_rng(1)
  now = t0 + batches * dt
  lookups = min(300, batches)
  again_s = 0.0
  for b in rng.choice(batches, size=lookups, replace=False).tolist():
    ids = _ids(b, kind)
    start = time.perf_counter()
    mask = structure.keep_new(ids, now)
    again_s += time.perf_counter() - start
    if mask.any():
      raise AssertionError(f'{name}: a seen id was not found')
  false_drops = 0
  for b in range(lookups):
    false_drops += int((~structure.keep_new(_ids(b, kind, salt=7), now,
                                            remember=False)).sum())
  return {'candidate': name, 'ids': n, 'id_kind': kind,
          'bytes_per_id': held / n, 'trimmed_bytes_per_id': trimmed / n,
          'peak_bytes_per_id': max(held, peak) / n,
          'insert_ids_s': n / insert_s,
          'lookup_ids_s': lookups * BATCH / again_s,
          'false_drops': false_drops, 'false_checked': lookups * BATCH}


def _run_memory(args) -> None:
  print(f'{"candidate":14} {"ids":>10} {"B/id held":>10} {"trimmed":>8} '
        f'{"B/id peak":>10} '
        f'{"insert id/s":>12} {"lookup id/s":>12} {"false drops":>12}',
        flush=True)
  for n in args.ids:
    for name in args.candidates:
      out = subprocess.run(
          [sys.executable, '-m', 'bench.dedup_bench', '_one', name, str(n),
           args.id_kind], capture_output=True, text=True, check=False)
      if out.returncode != 0:
        print(f'{name:14} {n:>10} failed: {out.stderr.strip()[-300:]}')
        continue
      r = json.loads(out.stdout)
      print(f'{name:14} {n:>10,} {r["bytes_per_id"]:>10.1f} '
            f'{r["trimmed_bytes_per_id"]:>8.1f} '
            f'{r["peak_bytes_per_id"]:>10.1f} {r["insert_ids_s"]:>12,.0f} '
            f'{r["lookup_ids_s"]:>12,.0f} '
            f'{r["false_drops"]:>5} / {r["false_checked"]:,}', flush=True)


# --- The restart seed on an embedded broker -----------------------------------


def _produce_predictions(config: dict, topic: str, n: int) -> float:
  """``n`` records like the job's predictions (key = event id, ~300 bytes
  of JSON); returns the seconds taken."""
  import orjson
  from confluent_kafka import Producer
  producer = Producer(dict(config, **{'linger.ms': 20,
                                      'compression.type': 'lz4'}))
  start = time.time()
  for i in range(n):
    row = {'event_id': f'e{i}', 'key': f'k{i % 97}', 'window_start': start,
           'window_end': start + 5, 'score': 0.5, 'model_version': 1,
           'event_time': start, 'read_time': start, 'scored_time': start,
           'late': False, 'win_count': 3, 'win_mean_a': 0.1,
           'win_std_a': 0.2, 'win_mean_b': 0.3, 'win_std_b': 0.4}
    while True:
      try:
        producer.produce(topic, key=row['event_id'].encode(),
                         value=orjson.dumps(row))
        break
      except BufferError:
        producer.poll(0.01)
  producer.flush(120)
  return time.time() - start


def _bare_read(config: dict, topic: str) -> tuple[int, float]:
  """Every key of ``topic`` into a set, nothing else: the floor."""
  from confluent_kafka import Consumer, TopicPartition
  from transforms.kafka import admin
  ends = admin.end_offsets(config, topic)
  consumer = Consumer(dict(config, **{'group.id': 'bench-bare',
                                      'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0) for p in ends])
  pending = {p for p, end in ends.items() if end > 0}
  keys = set()
  start = time.monotonic()
  while pending:
    for m in consumer.consume(num_messages=10_000, timeout=0.5):
      if m.error() is None:
        keys.add(m.key())
        if m.offset() + 1 >= ends[m.partition()]:
          pending.discard(m.partition())
  seconds = time.monotonic() - start
  consumer.close()
  return len(keys), seconds


def _run_seed(args) -> None:
  import tempfile
  from beam_jobs import local_broker
  from transforms import dedup, dedup_seed
  from transforms.kafka import admin
  info = local_broker.start('noida', data_dir=tempfile.mkdtemp())
  try:
    config = dict(info.client_config(log_level=0))
    admin.create_topic(config, 'predictions', 4)
    admin.create_topic(config, 'dead-letters', 1)
    took = _produce_predictions(config, 'predictions', args.records)
    print(f'{args.records:,} prediction records on 4 partitions (produced in '
          f'{took:.1f} s)', flush=True)
    n, seconds = _bare_read(config, 'predictions')
    print(f'bare read of the keys (floor)      {n:>10,} in {seconds:6.1f} s '
          f'= {n / seconds:>9,.0f} records/s', flush=True)
    settings = dedup.DedupSettings('predictions', 'dead-letters', 3600)
    start = time.monotonic()
    memory = dedup.seed(config, settings)
    seconds = time.monotonic() - start
    held = len(memory.predictions)
    print(f'seed, derived timeout ({dedup_seed.derived_timeout_s(n):.0f} s)'
          f'   {held:>10,} in {seconds:6.1f} s = {held / seconds:>9,.0f} '
          f'records/s, {memory.predictions.nbytes() / held:.1f} bytes/id '
          f'in arrays', flush=True)
    start = time.monotonic()
    try:
      dedup.seed(config, settings._replace(seed_timeout_s=1.0))
      print('seed, 1 s timeout: finished (the machine is fast)')
    except dedup_seed.SeedIncompleteError as e:
      print(f'seed, 1 s timeout: raised after '
            f'{time.monotonic() - start:.1f} s: {e}')
  finally:
    local_broker.stop(info)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='part', required=True)
  mem = sub.add_parser('memory', help='structures: bytes per id, ids/s')
  mem.add_argument('--ids', type=int, nargs='+',
                   default=[1_000_000, 10_000_000],
                   help='ids to hold (default: 1000000 10000000)')
  mem.add_argument('--id_kind', choices=('hex', 'short'), default='hex',
                   help='32 hex digits (UUID-like) or e<N> (default: hex)')
  mem.add_argument('--candidates', nargs='+', choices=CANDIDATES,
                   default=list(CANDIDATES),
                   help='structures to measure (default: all)')
  seed = sub.add_parser('seed', help='the restart seed: records/s')
  seed.add_argument('--records', type=int, default=1_000_000,
                    help='prediction records to read back (default: 1000000)')
  one = sub.add_parser('_one')
  one.add_argument('name')
  one.add_argument('n', type=int)
  one.add_argument('kind')
  args = parser.parse_args(argv)
  if args.part == '_one':
    print(json.dumps(measure_one(args.name, args.n, args.kind)))
    return 0
  if args.part == 'memory':
    _run_memory(args)
  else:
    _run_seed(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
