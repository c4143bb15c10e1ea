"""Card payment events: a deterministic generator, files and Kafka.

Each event is a JSON object of schema.json (an ISO-8601 ``ts``, the
merchant category as the key, five numeric features, an ``is_fraud``
label), generated from a seed so that tests can recompute every model input
(``features``). A share of events is malformed on purpose, one kind each:
invalid JSON, a missing field, an amount sent as a string, a time that is
not ISO-8601.

  python -m examples.payments.events write --n 10000 --out payments.jsonl
  python -m examples.payments.events produce --n 10000 --rate 500 \\
      --bootstrap_servers localhost:9092 --topic payments
"""

import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import orjson

from models import susy

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'schema.json')
FEATURES = ('amount', 'hour', 'card_present', 'distance_km', 'n_items')
CATEGORIES = ('grocery', 'fuel', 'restaurants', 'travel', 'electronics',
              'online_services')
MALFORMED_KINDS = ('not_json', 'missing_ts', 'amount_as_string',
                   'time_not_iso')


@dataclasses.dataclass(frozen=True)
class Event:
  """One generated event, as produced to Kafka or written to a file."""
  index: int
  key: bytes            # the merchant category (Kafka record key)
  value: bytes          # the JSON payload
  timestamp_ms: int     # record timestamp = event time
  malformed: Optional[str] = None   # a MALFORMED_KINDS entry, or None


def _iso(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).isoformat(timespec='milliseconds')


def _columns(n: int, seed: int) -> dict:
  """The events' fields as arrays (labels drawn from a known rule)."""
  rng = np.random.default_rng(seed)
  category = rng.integers(0, len(CATEGORIES), n)
  amount = np.round(rng.lognormal(3.2, 1.1, n) *
                    np.where(category >= 3, 4.0, 1.0), 2)
  hour = rng.integers(0, 24, n)
  card_present = rng.random(n) < np.where(category == 5, 0.0, 0.8)
  distance_km = np.round(rng.exponential(12.0, n), 1)
  n_items = rng.integers(1, 12, n)
  night = (hour < 6).astype(float)
  risk = (-5.0 + 0.004 * amount + 1.6 * (~card_present) + 0.03 * distance_km
          + 1.2 * night - 0.05 * n_items)
  is_fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-risk))).astype(int)
  return {'category': category, 'amount': amount, 'hour': hour,
          'card_present': card_present, 'distance_km': distance_km,
          'n_items': n_items, 'is_fraud': is_fraud,
          'card': rng.integers(0, 5000, n),
          'malformed': rng.random(n), 'kind': rng.integers(
              0, len(MALFORMED_KINDS), n)}


def features(n: int, *, seed: int) -> np.ndarray:
  """float32 [n, 5] model inputs of events 0..n-1 of ``seed``, in the
  schema's feature order (card_present as 1.0/0.0): what the jobs feed the
  model for every well-formed event."""
  c = _columns(n, seed)
  return np.stack([c[f].astype(np.float64) for f in FEATURES],
                  axis=1).astype(np.float32)


def labels(n: int, *, seed: int) -> np.ndarray:
  return _columns(n, seed)['is_fraud']


def _malform(doc: dict, kind: str) -> bytes:
  if kind == 'not_json':
    return orjson.dumps(doc)[:-7]
  if kind == 'missing_ts':
    return orjson.dumps({k: v for k, v in doc.items() if k != 'ts'})
  if kind == 'amount_as_string':
    return orjson.dumps(dict(doc, amount=f'{doc["amount"]:.2f}'))
  return orjson.dumps(dict(doc, ts='yesterday at noon'))


def generate(n: int, *, seed: int = 0, start_time: Optional[float] = None,
             rate: float = 100.0, malformed_fraction: float = 0.0
            ) -> Iterator[Event]:
  """Events 0..n-1: event i at ``start_time + i / rate`` (epoch s)."""
  start_time = time.time() if start_time is None else start_time
  c = _columns(n, seed)
  for i in range(n):
    t = start_time + i / rate
    category = CATEGORIES[c['category'][i]]
    doc = {'txn_id': f't{i}', 'ts': _iso(t), 'merchant_category': category,
           'card_id': f'c{c["card"][i]}', 'amount': float(c['amount'][i]),
           'hour': int(c['hour'][i]),
           'card_present': bool(c['card_present'][i]),
           'distance_km': float(c['distance_km'][i]),
           'n_items': int(c['n_items'][i]), 'is_fraud': int(c['is_fraud'][i])}
    kind = (MALFORMED_KINDS[c['kind'][i]]
            if c['malformed'][i] < malformed_fraction else None)
    value = orjson.dumps(doc) if kind is None else _malform(doc, kind)
    yield Event(i, category.encode(), value, int(round(t * 1000)), kind)


def write_jsonl(events, path: str) -> int:
  """Writes payloads one per line; returns the count."""
  count = 0
  with open(path, 'wb') as f:
    for e in events:
      f.write(e.value + b'\n')
      count += 1
  return count


def produce(events, client_config: dict, topic: str, *, rate: float = 0.0
           ) -> dict:
  """Produces events keyed by merchant category, at ``rate`` per second
  (0: as fast as possible), with models.susy's paced producer.

  Returns:
    ``{"produced", "malformed", "failed", "seconds"}``.
  """
  return susy.produce_events(events, topic, producer_config=client_config,
                             rate=rate)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m examples.payments.events',
      description='Card payment events (examples/payments/schema.json).')
  sub = parser.add_subparsers(dest='command', required=True)
  for name, text in (('write', 'write a JSON-lines file'),
                     ('produce', 'produce to a Kafka topic')):
    p = sub.add_parser(name, help=text)
    p.add_argument('--n', type=int, required=True, help='number of events')
    p.add_argument('--seed', type=int, default=0, help='(default: 0)')
    p.add_argument('--rate', type=float, default=100.0,
                   help='events per second of event time; for produce also '
                   'the production rate, 0 = as fast as possible (default: '
                   '100)')
    p.add_argument('--malformed_fraction', type=float, default=0.01,
                   help='share of malformed events (default: 0.01)')
    if name == 'write':
      p.add_argument('--out', required=True, help='the .jsonl file')
      p.add_argument('--start_time', type=float, default=None,
                     help='event time of the first event, epoch s '
                     '(default: now)')
    else:
      p.add_argument('--bootstrap_servers', required=True,
                     help='host:port[,...]')
      p.add_argument('--topic', required=True)
  args = parser.parse_args(argv)
  events = generate(args.n, seed=args.seed, rate=args.rate or 1000.0,
                    start_time=getattr(args, 'start_time', None),
                    malformed_fraction=args.malformed_fraction)
  if args.command == 'write':
    print(f'wrote {write_jsonl(events, args.out)} events to {args.out}')
    return 0
  stats = produce(events, {'bootstrap.servers': args.bootstrap_servers},
                  args.topic, rate=args.rate)
  print(f'produced {stats["produced"] - stats["failed"]} events to '
        f'{args.topic}')
  return 0 if not stats['failed'] else 1


if __name__ == '__main__':
  sys.exit(main())
