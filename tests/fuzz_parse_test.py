"""Hostile input through the real parse stage: it never raises, every record
is either a row or a dead letter with a known reason, and counts balance."""

import math
import time

import apache_beam as beam
import orjson
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import susy
from transforms import dead_letters as dl
from transforms import schema as schema_lib
from transforms.events import RawRecord
from transforms.parse import ParseEvents, RecordParser

SCHEMA = schema_lib.susy_schema()
NOW = float(int(time.time()))
KNOWN_REASONS = {dl.MALFORMED, dl.NOT_AN_OBJECT, dl.MISSING_FIELD,
                 dl.EXTRA_FIELD, dl.WRONG_TYPE, dl.EMPTY_VALUE, dl.NON_FINITE,
                 dl.TIME_OUT_OF_RANGE, dl.TIME_IN_FUTURE,
                 dl.TOO_LARGE}


def valid_event(i: int) -> dict:
  event = {'event_id': f'e{i}', 'event_time': NOW - 60, 'detector': 'd',
           'label': 0}
  event.update({n: 0.5 for n in susy.FEATURE_NAMES})
  return event


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(['', 'NaN', '0001-01-01T00:00:00Z',
                     '9999-12-31T23:59:59Z', '\u202e\u0000x', '1e999']))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children,
                                               max_size=4)),
    max_leaves=12)


@st.composite
def mutated_events(draw):
  """A valid event with one or more fields broken in a hostile way."""
  event = valid_event(draw(st.integers(0, 50)))  # ids repeat: duplicates
  for _ in range(draw(st.integers(1, 3))):
    field = draw(st.sampled_from(sorted(event) + ['extra', '']))
    action = draw(st.sampled_from(['drop', 'replace', 'nest']))
    if action == 'drop':
      event.pop(field, None)
    elif action == 'replace':
      event[field] = draw(json_values)
    else:
      event[field] = {'a': [{'b': event.get(field)}]}
  return orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS)


def deeply_nested(depth: int) -> bytes:
  return b'{"a":' * depth + b'1' + b'}' * depth


hostile_payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda e, cut: orjson.dumps(valid_event(e))[:cut],
              st.integers(0, 10), st.integers(0, 400)),
    mutated_events(),
    st.integers(1, 200).map(deeply_nested),
    st.just(b'{"event_id": "huge", "x": "' + b'a' * 2_000_000 + b'"}'),
    st.just(b'{"event_id": "e1", "MT2": NaN}'),
    st.just(b'{"event_id": "e1", "MT2": Infinity}'),
    # Integers beyond 64 bits, as raw JSON text.
    st.integers(2**64, 2**200).map(
        lambda n: orjson.dumps(valid_event(1))[:-1] + b',"big":%d}' % n),
    st.builds(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS),
              json_values),
    st.just(b''), st.none(),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(st.one_of(hostile_payloads,
                          st.integers(0, 100).map(
                              lambda i: orjson.dumps(valid_event(i)))),
                min_size=1, max_size=30))
def test_parser_never_raises_and_every_record_is_accounted_for(payloads):
  parser = RecordParser(SCHEMA, now_fn=lambda: NOW)
  records = [RawRecord('kafka:t/0', i, p, NOW) for i, p in enumerate(payloads)]
  batches, dead = parser.parse(records)
  parsed_positions = [int(p) for b in batches for p in b.positions]
  dead_positions = [d.position for d in dead]
  # Every record exactly once, as a row or as a dead letter.
  assert sorted(parsed_positions + dead_positions) == list(range(len(records)))
  for letter in dead:
    assert letter.reason in KNOWN_REASONS, letter
    assert letter.payload == payloads[letter.position]
    assert letter.detail
  for batch in batches:
    assert batch.features.shape == (len(batch), len(SCHEMA.features))
    assert all(math.isfinite(x) for x in batch.features.ravel().tolist())
    assert all(SCHEMA.min_event_time <= t <= NOW + SCHEMA.max_future_s
               for t in batch.event_time.tolist())
    assert all(i and k for i, k in zip(batch.ids, batch.keys))


def test_hostile_corpus_through_the_beam_stage_balances():
  corpus = [orjson.dumps(valid_event(i)) for i in range(200)]
  corpus += [b'\x00\xff' * 10, deeply_nested(500), b'{"event_id":',
             orjson.dumps(valid_event(1)) + b'garbage', b'[]', b'null',
             orjson.dumps({**valid_event(3), 'event_time': '9999-01-01'}),
             orjson.dumps({**valid_event(4), 'event_time': -62135596800}),
             orjson.dumps({**valid_event(5), 'MT2': 'x'}),
             orjson.dumps({**valid_event(6), 'detector': ''}),
             'é'.encode('utf-16')]
  records = [RawRecord('kafka:t/0', i, p, NOW) for i, p in enumerate(corpus)]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    parsed = p | beam.Create([records]) | ParseEvents(SCHEMA)
    rows = parsed.events | beam.Map(len) | 'Rows' >> beam.CombineGlobally(sum)
    dead = (parsed[dl.DEAD_LETTER_TAG]
            | 'Dead' >> beam.combiners.Count.Globally())
    assert_that(rows, equal_to([200]), label='Rows')
    assert_that(dead, equal_to([len(corpus) - 200]), label='DeadLetters')
