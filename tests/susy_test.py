"""SUSY-like data: determinism, continuation, formats, drift, producer."""

import gzip
import io
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from models import susy

_CHUNK = susy.CHUNK_ROWS


def _logreg_fit(x, y, iters=12, l2=1e-3):
  """Newton-IRLS logistic regression on standardized features (numpy only)."""
  mean, std = x.mean(0), x.std(0) + 1e-9
  z = np.c_[(x - mean) / std, np.ones(len(x))]
  w = np.zeros(z.shape[1])
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-z @ w))
    grad = z.T @ (p - y) + l2 * w
    hess = (z * (p * (1 - p))[:, None]).T @ z + l2 * np.eye(len(w))
    w -= np.linalg.solve(hess, grad)

  def accuracy(xt, yt):
    zt = np.c_[(xt - mean) / std, np.ones(len(xt))]
    return float(np.mean((zt @ w > 0) == (yt == 1)))

  return accuracy


def test_feature_names():
  assert len(susy.FEATURE_NAMES) == 18
  assert susy.FEATURE_NAMES[0] == 'lepton_1_pT'
  assert susy.FEATURE_NAMES[-1] == 'cos_theta_r1'
  assert susy.LOW_LEVEL == susy.FEATURE_NAMES[:8]
  assert susy.HIGH_LEVEL == susy.FEATURE_NAMES[8:]
  assert susy.LOW_LEVEL[-1] == 'missing_energy_phi'
  assert susy.HIGH_LEVEL[0] == 'MET_rel'


def test_shapes_dtypes_and_values():
  data = susy.generate(10_000, seed=3)
  assert data.features.shape == (10_000, 18)
  assert data.features.dtype == np.float32
  assert data.labels.shape == (10_000,)
  assert data.labels.dtype == np.int64
  assert set(np.unique(data.labels)) == {0, 1}
  assert np.all(np.isfinite(data.features))
  assert abs(data.labels.mean() - 0.46) < 0.02
  assert len(susy.generate(0)) == 0
  assert susy.generate(0).features.shape == (0, 18)
  # Physics-shaped ranges: momenta positive, angles bounded.
  cols = {n: data.features[:, i] for i, n in enumerate(susy.FEATURE_NAMES)}
  assert cols['lepton_1_pT'].min() >= 0.25
  assert np.all(cols['lepton_1_pT'] >= cols['lepton_2_pT'])
  assert np.all(np.abs(cols['lepton_1_eta']) <= 2.5)
  assert np.all(np.abs(cols['lepton_1_phi']) <= np.pi + 1e-6)
  assert np.all(np.abs(cols['cos_theta_r1']) <= 1.0)
  # Signal is harder: larger lepton pT and missing energy on average.
  signal = data.labels == 1
  for name in ('lepton_1_pT', 'missing_energy_magnitude'):
    assert cols[name][signal].mean() > cols[name][~signal].mean()


def test_deterministic_by_seed():
  a = susy.generate(5000, seed=7)
  b = susy.generate(5000, seed=7)
  c = susy.generate(5000, seed=8)
  np.testing.assert_array_equal(a.features, b.features)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(a.features, c.features)


@pytest.mark.parametrize('drift', [0.0, 0.3, susy.drift_ramp(1000, 9000)])
def test_start_index_continues_the_stream(drift):
  n = 3 * _CHUNK + 123
  whole = susy.generate(n, seed=11, drift=drift)
  # Pieces of odd sizes that start and end inside and across chunks.
  cuts = [0, 1, 17, _CHUNK - 1, _CHUNK + 5, 2 * _CHUNK, n - 3, n]
  for lo, hi in zip(cuts, cuts[1:]):
    part = susy.generate(hi - lo, seed=11, drift=drift, start_index=lo)
    np.testing.assert_array_equal(part.features, whole.features[lo:hi])
    np.testing.assert_array_equal(part.labels, whole.labels[lo:hi])
  pieces = list(susy.iter_chunks(n, chunk_rows=1000, seed=11, drift=drift))
  np.testing.assert_array_equal(
      np.concatenate([p.features for _, p in pieces]), whole.features)


def test_drift_reuses_the_same_draws_and_labels():
  a = susy.generate(2000, seed=1, drift=0.0)
  b = susy.generate(2000, seed=1, drift=1.0)
  np.testing.assert_array_equal(a.labels, b.labels)
  # Lepton momenta do not drift; missing energy does.
  np.testing.assert_array_equal(a.features[:, 0], b.features[:, 0])
  assert not np.array_equal(a.features[:, 6], b.features[:, 6])
  with pytest.raises(ValueError):
    susy.generate(10, drift=1.5)


def test_drift_moves_the_class_boundary():
  train0 = susy.generate(30_000, seed=1, drift=0.0)
  test0 = susy.generate(15_000, seed=2, drift=0.0)
  test1 = susy.generate(15_000, seed=3, drift=1.0)
  model0 = _logreg_fit(train0.features.astype(np.float64), train0.labels)
  acc00 = model0(test0.features.astype(np.float64), test0.labels)
  acc01 = model0(test1.features.astype(np.float64), test1.labels)
  assert acc00 > 0.74, acc00
  assert acc00 - acc01 >= 0.05, (acc00, acc01)
  # Retraining on recent (drifted) data recovers.
  train1 = susy.generate(30_000, seed=4, drift=1.0)
  model1 = _logreg_fit(train1.features.astype(np.float64), train1.labels)
  acc11 = model1(test1.features.astype(np.float64), test1.labels)
  assert acc11 >= acc00 - 0.02, (acc00, acc11)


def test_high_level_features_carry_information():
  train = susy.generate(30_000, seed=1)
  test = susy.generate(15_000, seed=2)
  x, xt = train.features.astype(np.float64), test.features.astype(np.float64)
  low = _logreg_fit(x[:, :8], train.labels)(xt[:, :8], test.labels)
  high = _logreg_fit(x[:, 8:], train.labels)(xt[:, 8:], test.labels)
  both = _logreg_fit(x, train.labels)(xt, test.labels)
  assert high > low + 0.02, (low, high)
  assert both > max(low, high), (low, high, both)


def test_to_events():
  data = susy.generate(10, seed=2, start_index=100)
  events = susy.to_events(data, start_index=100, start_time=1000.0,
                          rate=4.0)
  assert [e['event_id'] for e in events[:2]] == ['e100', 'e101']
  assert [e['event_time'] for e in events[:3]] == [1025.0, 1025.25, 1025.5]
  assert [e['detector'] for e in events[:5]] == [
      'det-0', 'det-1', 'det-2', 'det-3', 'det-0']
  for i, event in enumerate(events):
    assert list(event)[:4] == ['event_id', 'event_time', 'detector', 'label']
    assert event['label'] == data.labels[i]
    values = np.array([event[n] for n in susy.FEATURE_NAMES], np.float32)
    np.testing.assert_array_equal(values, data.features[i])
  # Chunks of a stream give the same events as one conversion.
  whole = susy.to_events(susy.generate(20, seed=2), rate=4.0)
  tail = susy.to_events(susy.generate(5, seed=2, start_index=15),
                        start_index=15, rate=4.0)
  assert tail == whole[15:]
  assert orjson.loads(orjson.dumps(events[0])) == events[0]


def test_csv_round_trip_in_the_real_format(tmp_path):
  data = susy.generate(300, seed=4)
  path = tmp_path / 'susy.csv'
  susy.write_susy_csv(data, path)
  lines = path.read_text().splitlines()
  assert len(lines) == 300  # no header
  first = lines[0].split(',')
  assert len(first) == 19
  assert first[0] == ('1.000000000000000000e+00' if data.labels[0]
                      else '0.000000000000000000e+00')
  assert float(first[1]) == float(data.features[0, 0])
  loaded = susy.load_susy_csv(path)
  np.testing.assert_array_equal(loaded.features, data.features)
  np.testing.assert_array_equal(loaded.labels, data.labels)
  assert loaded.features.dtype == np.float32
  assert loaded.labels.dtype == np.int64

  gz = tmp_path / 'susy.csv.gz'
  susy.write_susy_csv(data, gz)
  assert gz.read_bytes()[:2] == b'\x1f\x8b'
  assert gzip.decompress(gz.read_bytes()).decode() == path.read_text()
  for source in (gz, str(gz), io.BytesIO(gz.read_bytes()),
                 io.StringIO(path.read_text())):
    loaded = susy.load_susy_csv(source)
    np.testing.assert_array_equal(loaded.features, data.features)
    np.testing.assert_array_equal(loaded.labels, data.labels)


def test_load_accepts_a_uci_style_line_and_rejects_bad_rows(tmp_path):
  line = ','.join(['1.000000000000000000e+00']
                  + ['8.728758990764617920e-01'] * 18)
  loaded = susy.load_susy_csv(io.StringIO(line + '\n' + line + '\n'))
  assert loaded.labels.tolist() == [1, 1]
  assert loaded.features.shape == (2, 18)
  bad = tmp_path / 'bad.csv'
  bad.write_text('1.0,2.0,3.0\n')
  with pytest.raises(ValueError):
    susy.load_susy_csv(bad)
  bad.write_text(','.join(['2.0'] + ['0.5'] * 18) + '\n')
  with pytest.raises(ValueError, match='labels'):
    susy.load_susy_csv(bad)


def test_malformed_plan_is_deterministic_and_breaks_messages():
  plan = susy.plan_malformed(20_000, seed=5, fraction=0.01)
  assert plan == susy.plan_malformed(20_000, seed=5, fraction=0.01)
  assert 120 < len(plan) < 280
  assert set(plan.values()) == set(susy.MALFORMED_KINDS)
  tail = susy.plan_malformed(7_000, seed=5, fraction=0.01,
                             start_index=13_000)
  assert tail == {i: k for i, k in plan.items() if i >= 13_000}
  assert susy.plan_malformed(1000, fraction=0.0) == {}

  event = susy.to_events(susy.generate(1, seed=5, start_index=8),
                         start_index=8)[0]
  for kind in susy.MALFORMED_KINDS:
    raw = susy.malform(event, kind)
    assert b'\n' not in raw
    try:
      parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
      assert kind in ('not_json', 'truncated', 'nan'), kind
      continue
    values = [parsed.get(n) for n in susy.FEATURE_NAMES]
    assert not all(isinstance(v, float) for v in values), kind


def test_cli_write_csv_and_jsonl(tmp_path):
  out = tmp_path / 'd.csv.gz'
  assert susy.main(['write-csv', '--n', '50', '--seed', '3',
                    '--out', str(out)]) == 0
  loaded = susy.load_susy_csv(out)
  np.testing.assert_array_equal(loaded.features,
                                susy.generate(50, seed=3).features)

  jsonl, bad = tmp_path / 'e.jsonl', tmp_path / 'bad.jsonl'
  assert susy.main(['write-jsonl', '--n', '2000', '--seed', '3', '--out',
                    str(jsonl), '--malformed-fraction', '0.02',
                    '--malformed-out', str(bad)]) == 0
  lines = jsonl.read_bytes().split(b'\n')[:-1]
  assert len(lines) == 2000
  plan = susy.plan_malformed(2000, seed=3, fraction=0.02)
  logged = [orjson.loads(l) for l in bad.read_bytes().splitlines()]
  assert {r['event_id']: r['kind'] for r in logged} == {
      f'e{i}': k for i, k in plan.items()}
  expected = susy.to_events(susy.generate(2000, seed=3))
  for i, line in enumerate(lines):
    if i not in plan:
      assert orjson.loads(line) == expected[i]


@pytest.mark.it
def test_produce_to_kafka(broker, make_topic):
  topic = make_topic(partitions=2)
  n, rate = 3000, 6000.0
  logged = []
  start = time.time()
  stats = susy.produce(broker.bootstrap_servers, topic, n=n, rate=rate,
                       seed=9, malformed_fraction=0.02, start_time=start,
                       on_malformed=logged.append)
  assert stats['produced'] == n and stats['failed'] == 0
  # Rate-limited: n / rate seconds, give or take scheduling.
  assert stats['seconds'] >= n / rate * 0.9
  plan = susy.plan_malformed(n, seed=9, fraction=0.02)
  assert stats['malformed'] == len(plan) > 0
  assert {e.key.decode(): e.malformed for e in logged} == {
      f'e{i}': k for i, k in plan.items()}

  consumer = Consumer(broker.client_config(**{
      'group.id': f'verify-{topic}', 'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0) for p in range(2)])
  got = {}
  deadline = time.monotonic() + 30
  try:
    while len(got) < n and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=1000, timeout=0.5):
        assert m.error() is None, m.error()
        got[m.key().decode()] = (m.value(), m.timestamp()[1])
  finally:
    consumer.close()
  assert len(got) == n
  events = susy.to_events(susy.generate(n, seed=9), start_time=start,
                          rate=rate)
  for i, event in enumerate(events):
    value, ts = got[event['event_id']]
    assert ts == int(round(event['event_time'] * 1000))
    if i in plan:
      assert value == susy.malform(event, plan[i])
    else:
      assert orjson.loads(value) == event


@pytest.mark.it
def test_produce_cli(broker, make_topic, tmp_path, capsys):
  topic = make_topic(partitions=1)
  bad = tmp_path / 'bad.jsonl'
  extra = [f'--producer-config={k}={v}'
           for k, v in broker.client_config().items()
           if k != 'bootstrap.servers' and not k.startswith(
               ('fetch.', 'receive.'))]
  code = susy.main(['produce', '--bootstrap-servers',
                    broker.bootstrap_servers, '--topic', topic, '--rate',
                    '0', '--n', '500', '--seed', '4',
                    '--malformed-fraction', '0.05', '--malformed-out',
                    str(bad)] + extra)
  assert code == 0
  plan = susy.plan_malformed(500, seed=4, fraction=0.05)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith(f'produced=500 malformed={len(plan)} failed=0 ')
  logged = [orjson.loads(l) for l in bad.read_bytes().splitlines()]
  assert [r['event_id'] for r in logged] == [f'e{i}' for i in sorted(plan)]
