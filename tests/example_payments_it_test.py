"""The payments example domain end to end: its own schema and model (named
inputs, two outputs, a tf.Example signature), streamed from a real broker
and backfilled from a file, every score checked against numpy and TF."""

import collections
import glob
import time

import numpy as np
import orjson
import pytest

from beam_jobs import backfill, score_stream
from examples.payments import build_model, events
from kafka_helpers import read_topic
from transforms.sinks import read_row_file

pytestmark = pytest.mark.it

N = 2000
SEED = 3
RATE = 50.0                                  # events per second of event time
START = float(int(time.time()) // 60 * 60 - 1800)
WINDOW_S = 60.0
VERSION = 7


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('payments-models'))
  build_model.build(root, version=VERSION, n=8000)
  return root, build_model.load_params(f'{root}/{VERSION}')


@pytest.fixture(scope='module')
def generated():
  return list(events.generate(N, seed=SEED, start_time=START, rate=RATE,
                              malformed_fraction=0.03))


def reference(generated, params):
  """Per well-formed event: numpy score, window start, win_count and the
  running mean of amount per merchant category and window (events in time
  order), computed here without the jobs."""
  x = events.features(N, seed=SEED)
  scores = build_model.expected_scores(params, x)
  running = collections.defaultdict(list)
  out = {}
  for e in generated:
    if e.malformed:
      continue
    t = START + e.index / RATE
    start = np.floor(t / WINDOW_S) * WINDOW_S
    amounts = running[(e.key, start)]
    amounts.append(float(x[e.index, 0]))
    out[f't{e.index}'] = (float(scores[e.index]), start, len(amounts),
                          float(np.mean(amounts)))
  return out


def check_rows(rows, expected):
  by_id = {r['event_id']: r for r in rows}
  assert len(by_id) == len(rows) == len(expected), 'missing or double rows'
  assert set(by_id) == set(expected)
  for event_id, (score, start, count, mean) in expected.items():
    r = by_id[event_id]
    assert abs(r['score'] - score) <= 1e-5, (event_id, r['score'], score)
    assert r['model_version'] == VERSION
    assert r['window_start'] == start and r['window_end'] == start + WINDOW_S
    assert r['win_count'] == count, event_id
    assert r['win_mean_amount'] == pytest.approx(mean, rel=1e-5)
    assert r['key'] in events.CATEGORIES and r['label'] in (0.0, 1.0)
  return by_id


def test_stream_and_backfill_score_the_payments_domain(
    broker, make_topic, model, generated, tmp_path):
  root, params = model
  expected = reference(generated, params)
  bad = {f't{e.index}': e.malformed for e in generated if e.malformed}
  assert len(expected) + len(bad) == N and 20 <= len(bad) <= 120

  # The model itself, called directly through TF, agrees with numpy.
  import tensorflow as tf
  loaded = tf.saved_model.load(f'{root}/{VERSION}')
  x = events.features(N, seed=SEED)
  direct = loaded.signatures['serving_default'](**{
      n: tf.constant(x[:, j]) for j, n in enumerate(events.FEATURES)})
  np.testing.assert_allclose(direct['fraud_probability'].numpy(),
                             build_model.expected_scores(params, x),
                             atol=1e-6)

  # --- stream: Kafka -> score_stream (named-input signature) -> Kafka.
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  # Keyed by merchant category (the example's producer): each key's events
  # in one partition, in order, as docs/your_data.md advises.
  stats = events.produce(generated, broker.client_config(), topics['in'])
  assert stats['produced'] == N and stats['failed'] == 0
  common = ['--schema', events.SCHEMA_PATH, '--model_dir', root,
            '--model_output', 'fraud_probability',
            '--window_size_s', str(WINDOW_S)]
  result = score_stream.run([
      '--bootstrap_servers', broker.bootstrap_servers,
      '--input_topic', topics['in'], '--output_topic', topics['out'],
      '--dead_letter_topic', topics['dlq'], '--start', 'earliest',
      '--consumer_group', f'g-{topics["in"]}', '--max_records', str(N),
      *[f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
        if k != 'bootstrap.servers'], *common])
  assert str(result.state) == 'DONE'
  stream_rows = [orjson.loads(m.value()) for m in read_topic(
      broker, topics['out'], len(expected))]
  stream = check_rows(stream_rows, expected)
  letters = read_topic(broker, topics['dlq'], len(bad))
  assert {m.key().decode() for m in letters} <= set(events.CATEGORIES)
  stream_reasons = collections.Counter(
      dict(m.headers())['dlq.reason'].decode() for m in letters)
  s = result.summary
  assert (s.records_read, s.events_scored, s.dead_letters) == (
      N, len(expected), len(bad))
  assert s.balanced and s.model_versions == {VERSION: len(expected)}
  assert s.dead_letter_reasons == dict(stream_reasons)
  assert s.offsets.lag == 0
  stream_summary = s.format()

  # --- backfill: the same events from a file, the tf.Example signature.
  path = tmp_path / 'payments.jsonl'
  events.write_jsonl(generated, str(path))
  out = tmp_path / 'out'
  result = backfill.run([
      '--input', str(path), '--output_path', str(out / 'predictions'),
      '--dead_letter_path', str(out / 'dead-letters'),
      '--model_signature', 'serve_examples', '--progress_interval_s', '0',
      *common])
  assert str(result.state) == 'DONE'
  batch_rows = []
  for name in glob.glob(str(out / 'predictions' / '*.jsonl')):
    batch_rows += read_row_file(name, 'jsonl')
  batch = check_rows(batch_rows, expected)
  batch_letters = []
  for name in glob.glob(str(out / 'dead-letters' / '*.jsonl')):
    batch_letters += read_row_file(name, 'jsonl')
  assert sorted(d['position'] for d in batch_letters) == sorted(
      int(i[1:]) + 1 for i in bad)  # file line numbers
  assert collections.Counter(d['reason'] for d in batch_letters) == (
      stream_reasons)
  s = result.summary
  assert (s.records_read, s.events_scored, s.dead_letters) == (
      N, len(expected), len(bad)) and s.balanced

  # Both jobs, two signatures: the same score for every event.
  worst = max(abs(stream[i]['score'] - batch[i]['score']) for i in expected)
  assert worst <= 1e-6
  print(f'\npayments: {N} events, {len(expected)} scored by stream and '
        f'backfill (max |stream - backfill| {worst:.1e}, scores within 1e-5 '
        f'of numpy), {len(bad)} dead letters {dict(stream_reasons)}\n'
        + stream_summary + '\n' + result.summary.format())
