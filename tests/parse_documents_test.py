"""Typed rows through RecordParser.parse_documents, and the parse fast path.

parse_documents must validate exactly as parse does on the same data; the
columnar fast path of both must give exactly what the row-by-row full
validation gives (it may only skip work, never change an outcome).
"""

import datetime
import json
import math

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import susy
from transforms import dead_letters as dl
from transforms import schema as schema_lib
from transforms.events import RawRecord
from transforms.parse import Document, RecordParser

NOW = 1_800_000_000.0
SUSY = schema_lib.susy_schema()
CSV = schema_lib.susy_csv_schema()


def event(i=0, **overrides):
  e = {'event_id': f'e{i}', 'event_time': NOW - 100 + i, 'detector': 'det-1',
       'label': i % 2}
  e.update({n: (i + j) / 7 for j, n in enumerate(susy.FEATURE_NAMES)})
  e.update(overrides)
  return e


def parser(schema=SUSY, fmt='json'):
  return RecordParser(schema, fmt, now_fn=lambda: NOW)


def docs(rows, source='file:/d/rows.parquet'):
  return [Document(source, i, r) for i, r in enumerate(rows)]


def full_validation(p, records):
  """The reference: every record through the row-by-row validation."""
  good, dead = {}, {}
  for raw in records:
    try:
      good[raw.position] = p._validate_record(raw, raw.payload, NOW, None)
    except Exception as e:  # pylint: disable=broad-except
      dead[raw.position] = (getattr(e, 'reason', dl.MALFORMED),
                            getattr(e, 'stage', dl.PARSE))
  return good, dead


def outcome(batches, dead_letters):
  good = {}
  for b in batches:
    for i in range(len(b)):
      good[int(b.positions[i])] = (
          b.ids[i], b.keys[i], float(b.event_time[i]),
          b.features[i].tolist(), b.window_values[i].tolist(),
          None if b.labels is None or math.isnan(b.labels[i])
          else float(b.labels[i]))
  dead = {d.position: (d.reason, d.stage) for d in dead_letters}
  return good, dead


def reference_outcome(p, records):
  good, dead = full_validation(p, records)
  rows = {}
  for pos, (eid, key, t, feats, wvals, label) in good.items():
    f = np.asarray([feats], dtype=np.float32)
    w = np.asarray([wvals], dtype=np.float32).reshape(1, len(wvals))
    if not (np.isfinite(f).all() and np.isfinite(w).all()):
      dead[pos] = (dl.NON_FINITE, dl.VALIDATE)
      continue
    rows[pos] = (eid, key, float(t), f[0].tolist(), w[0].tolist(),
                 None if label is None or (isinstance(label, float) and
                                           math.isnan(label))
                 else float(label))
  return rows, dead


# --- parse_documents ----------------------------------------------------------


def test_documents_validate_exactly_as_their_json_payloads():
  rows = [event(i) for i in range(5)] + [
      event(5, MT2='x'), {k: v for k, v in event(6).items() if k != 'R'},
      event(7, extra=1), event(8, event_time='9999-01-01T00:00:00Z'),
      event(9, detector=''), event(10, MT2=float('nan'))]
  p = parser()
  from_docs = outcome(*p.parse_documents(docs(rows)))
  from_json = outcome(*p.parse([
      RawRecord('file:/d/rows.parquet', i, orjson.dumps(
          r, option=orjson.OPT_SERIALIZE_NUMPY) if not (
              isinstance(r.get('MT2'), float) and math.isnan(r['MT2']))
          else b'{"event_id": "e10", "MT2": NaN}')
      for i, r in enumerate(rows)]))
  assert from_docs[0] == from_json[0]
  assert sorted(from_docs[0]) == [0, 1, 2, 3, 4]
  assert from_docs[1] == {
      5: (dl.WRONG_TYPE, dl.VALIDATE), 6: (dl.MISSING_FIELD, dl.VALIDATE),
      7: (dl.EXTRA_FIELD, dl.VALIDATE), 8: (dl.TIME_IN_FUTURE, dl.VALIDATE),
      9: (dl.EMPTY_VALUE, dl.VALIDATE), 10: (dl.NON_FINITE, dl.VALIDATE)}


def test_typed_values_are_normalized_like_json_would_carry_them():
  when = datetime.datetime(2026, 11, 24, 8, 0, 0)  # naive: UTC
  row = event(0, event_time=when, label=None, MT2=np.float32(0.5),
              detector=b'det-9', event_id=np.str_('e0'))
  (batch,), dead = parser().parse_documents(docs([row]))
  assert dead == []
  assert batch.event_time[0] == when.replace(
      tzinfo=datetime.timezone.utc).timestamp()
  assert batch.keys == ['det-9'] and batch.ids == ['e0']
  assert math.isnan(batch.labels[0])  # None: the optional label is absent
  assert batch.features[0][susy.FEATURE_NAMES.index('MT2')] == 0.5
  # The payload kept for dead letters is the row as JSON.
  assert orjson.loads(batch.raw[0])['detector'] == "b'det-9'"


def test_rows_a_reader_could_not_decode_are_dead_letters():
  bad_utf8 = event(3, detector=b'\xff\xfe')
  items = [Document('file:/d/x.tfrecord', 0, ValueError('CRC mismatch'),
                    payload=b'\x01\x02'),
           Document('file:/d/x.tfrecord', 1, ['not', 'a', 'row']),
           Document('file:/d/x.tfrecord', 2, event(2)),
           Document('file:/d/x.tfrecord', 3, bad_utf8)]
  batches, dead = parser().parse_documents(items)
  assert [len(b) for b in batches] == [1]
  assert [(d.position, d.reason, d.stage) for d in dead] == [
      (0, dl.MALFORMED, dl.PARSE), (1, dl.NOT_AN_OBJECT, dl.PARSE),
      (3, dl.MALFORMED, dl.PARSE)]
  assert dead[0].payload == b'\x01\x02' and 'CRC' in dead[0].detail
  assert dead[2].event_id == 'e3'


def test_susy_csv_rows_without_id_time_or_key():
  row = {'label': 1.0, **{n: 0.25 for n in susy.FEATURE_NAMES}}
  (batch,), dead = parser(CSV).parse_documents(
      [Document('file:/d/s.parquet', 7, row, 1.7e9)])
  assert dead == [] and batch.ids == ['file:/d/s.parquet@7']
  assert batch.keys == [''] and batch.event_time.tolist() == [1.7e9]


# --- the fast path equals the full validation ---------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.integers(-2**70, 2**70), st.floats(allow_nan=False),
    st.floats(min_value=-1e300, max_value=1e300), st.text(max_size=6),
    st.sampled_from(['', '2026-11-24T08:00:00Z', '1e999', 'NaN']))


@st.composite
def chunks(draw):
  """Mostly valid events, some of them changed in small, nasty ways."""
  n = draw(st.integers(1, 30))
  payloads = []
  for i in range(n):
    e = event(i)
    for _ in range(draw(st.integers(0, 2))):
      field = draw(st.sampled_from(sorted(e) + ['extra']))
      action = draw(st.sampled_from(['drop', 'replace', 'replace', 'time']))
      if action == 'drop':
        e.pop(field, None)
      elif action == 'time':
        e['event_time'] = draw(st.one_of(
            st.floats(NOW - 1e6, NOW + 1e6), st.integers(
                int((NOW - 1e6) * 1000), int((NOW + 1e5) * 1000)),
            st.sampled_from([0, 1e11 + 1, 9e15, '2026-11-24T08:00:00',
                             'yesterday'])))
      else:
        e[field] = draw(json_scalars)
    payloads.append(json.dumps(e).encode())
    if draw(st.integers(0, 20)) == 0:
      payloads[-1] = payloads[-1][:7]
  return payloads


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(chunks())
def test_fast_path_outcome_equals_full_validation(payloads):
  p = parser()
  records = [RawRecord('kafka:t/0', i, b, None) for i, b in
             enumerate(payloads)]
  assert outcome(*p.parse(records)) == reference_outcome(p, records)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(chunks())
def test_fast_path_of_documents_equals_their_full_validation(payloads):
  p = parser()
  rows = []
  for b in payloads:
    try:
      rows.append(orjson.loads(b))
    except orjson.JSONDecodeError:
      rows.append(ValueError('undecodable'))
  items = docs(rows)
  good, dead = {}, {}
  for item in items:
    try:
      good[item.position] = p._validate_document(item, None, NOW, None)
    except Exception as e:  # pylint: disable=broad-except
      dead[item.position] = (getattr(e, 'reason', dl.MALFORMED),
                             getattr(e, 'stage', dl.PARSE))
  got_good, got_dead = outcome(*p.parse_documents(items))
  overflow = {pos for pos, (reason, _) in got_dead.items()
              if reason == dl.NON_FINITE and pos in good}
  assert set(got_good) == set(good) - overflow
  assert {k: v for k, v in got_dead.items() if k not in overflow} == dead
  for pos, row in got_good.items():
    assert row[:3] == (good[pos][0], good[pos][1], float(good[pos][2]))


def test_mixed_field_sets_and_sources_in_one_chunk():
  """Rows without the optional label, from two sources, interleaved."""
  records = []
  for i in range(12):
    e = event(i)
    if i % 3 == 0:
      del e['label']
    records.append(RawRecord(f'kafka:t/{i % 2}', i, orjson.dumps(e)))
  p = parser()
  batches, dead = p.parse(records)
  assert dead == [] and sorted(b.source for b in batches) == [
      'kafka:t/0', 'kafka:t/1']
  assert outcome(batches, dead) == reference_outcome(p, records)
  for b in batches:
    assert b.positions.tolist() == sorted(b.positions.tolist())


# --- all-float CSV chunks (the UCI SUSY file) ---------------------------------


@st.composite
def csv_lines(draw):
  """Mostly plain numeric SUSY lines, some with odd numerals or shapes."""
  width = 1 + len(susy.FEATURE_NAMES)
  token = st.one_of(
      st.floats(allow_nan=False, allow_infinity=False).map(repr),
      st.floats(-1e6, 1e6).map(lambda x: '%.18e' % x),
      st.text('0123456789eE+-.', min_size=0, max_size=6),
      st.sampled_from(['nan', 'inf', '1_0', ' 1', '"1"', '', '1e999',
                       '.5', '5.', '-0', '+1e-5', '1e', '--1']))
  lines = []
  for _ in range(draw(st.integers(1, 25))):
    values = ['%.18e' % draw(st.floats(-1e3, 1e3)) for _ in range(width)]
    for _ in range(draw(st.integers(0, 1))):
      values[draw(st.integers(0, width - 1))] = draw(token)
    if draw(st.integers(0, 30)) == 0:
      values = values[:-1]
    lines.append(','.join(values).encode())
  return lines


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(csv_lines())
def test_numeric_csv_chunks_equal_the_row_by_row_path(lines):
  fast = parser(CSV, 'csv')
  slow = parser(CSV, 'csv')
  slow._decoder.parse_chunk = None  # pylint: disable=protected-access
  records = [RawRecord('file:/d/SUSY.csv', i + 1, line, NOW - 60)
             for i, line in enumerate(lines)]
  got, want = outcome(*fast.parse(records)), outcome(*slow.parse(records))
  assert got == want


@settings(max_examples=2000, deadline=None)
@given(st.text('0123456789eE+-.', min_size=1, max_size=12))
def test_arrow_and_python_read_plain_numerals_alike(text):
  """The chunk parser's premise: on the characters it admits, Arrow's CSV
  float parser accepts exactly what float() accepts, with the same value."""
  import pyarrow as pa
  from pyarrow import csv as pa_csv
  try:
    expected = float(text)
  except ValueError:
    expected = None
  try:
    table = pa_csv.read_csv(
        pa.BufferReader(text.encode()),
        read_options=pa_csv.ReadOptions(column_names=['x']),
        convert_options=pa_csv.ConvertOptions(
            column_types={'x': pa.float64()}))
    got = table.column('x')[0].as_py()
  except pa.ArrowInvalid:
    got = None
  assert got == expected or (got is not None and expected is not None and
                             math.isnan(got) and math.isnan(expected))


# --- JSON objects decoded straight into typed values (msgspec) ---------------


def test_events_with_every_field_take_the_typed_decoder():
  p = parser()
  payloads = [orjson.dumps(event(i)) for i in range(5)]
  payloads.append(orjson.dumps({k: v for k, v in event(5).items()
                                if k != 'label'}))  # optional field absent
  payloads.append(orjson.dumps(event(6, MT2=True)))  # wrong type
  payloads.append(b'{"event_id": "e7", ')  # malformed
  docs_, (taken, _) = p._decoder.typed.decode_all(payloads, 10_000)  # pylint: disable=protected-access
  assert taken == [0, 1, 2, 3, 4]
  assert [d is None for d in docs_] == [True] * 5 + [False, False, True]
  records = [RawRecord('kafka:t/0', i, b) for i, b in enumerate(payloads)]
  got = outcome(*p.parse(records))
  assert got == reference_outcome(p, records)
  assert sorted(got[0]) == [0, 1, 2, 3, 4, 5] and got[1] == {
      6: (dl.WRONG_TYPE, dl.VALIDATE), 7: (dl.MALFORMED, dl.PARSE)}


numerals = st.one_of(
    st.text('0123456789eE+-.', min_size=1, max_size=25),
    st.floats(allow_nan=False).map(repr),
    st.floats(allow_nan=False).map(lambda x: '%.17g' % x),
    st.integers(-2**80, 2**80).map(str),
    st.sampled_from(['-0', '-0.0', '1E400', '4.9e-324', '2.5e-324',
                     '9007199254740993', '9007199254740993.0', '1e-400',
                     '0.1e1', '01', '1.', '.5', '+1', '1e+2', 'true',
                     '"1.5"', 'null', '[1]', '{}', '"\\u00e9"',
                     '"\\ud800"']))


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(numerals, st.sampled_from(['MT2', 'label', 'event_time', 'event_id']))
def test_typed_decoder_reads_values_as_the_general_path(text, field):
  """Whatever the typed decoder takes, it reads as orjson and the full
  validation do: numerals in float, timestamp and string fields."""
  p = parser()
  e = event(3)
  e[field] = '__VALUE__'
  payload = orjson.dumps(e).replace(b'"__VALUE__"', text.encode())
  records = [RawRecord('kafka:t/0', 0, payload)]
  assert outcome(*p.parse(records)) == reference_outcome(p, records)
