"""Dead letters keep the whole record and always fit their destination."""

import hashlib

import numpy as np
import pytest

from transforms import dead_letters as dl
from transforms.events import Document, EventBatch, RawRecord
from transforms.kafka.records import KafkaRecord


def _kafka(key, value, headers=(), ts=1_795_507_200_123):
  return KafkaRecord('events', 3, 41, key, value, ts, 1, headers)


@pytest.mark.parametrize('key', [None, b'', b'\x00\xff binary', b'k-1'])
def test_a_kafka_record_survives_as_a_dead_letter_and_back(key):
  headers = (('trace', b'\x01\x02'), ('empty', None), ('dup', b'a'),
             ('dup', b'b'))
  record = _kafka(key, b'\xff\xfe not json', headers)
  letter = dl.DeadLetter.of_record(record, stage=dl.PARSE,
                                   reason=dl.MALFORMED, detail='bad bytes')
  assert (letter.record_key, letter.payload, letter.record_headers,
          letter.record_timestamp_ms) == (key, b'\xff\xfe not json', headers,
                                          1_795_507_200_123)
  assert (letter.source, letter.position) == ('kafka:events/3', 41)
  again = dl.DeadLetter.from_dict(letter.to_dict())
  assert again == letter  # null key stays null, binary stays binary
  if key is None:
    assert letter.to_dict()['key_b64'] is None
  # On the topic: original headers first, then the dlq.* ones.
  kafka_headers = letter.kafka_headers()
  assert tuple(kafka_headers[:len(headers)]) == headers
  assert ('dlq.reason', b'malformed') in kafka_headers


def test_file_rows_and_documents_keep_what_they_have():
  raw = RawRecord('file:/d/a.jsonl', 7, b'{"x"', 1_700_000_000.5, None)
  letter = dl.DeadLetter.of_record(raw, stage=dl.PARSE, reason=dl.MALFORMED,
                                   detail='')
  assert (letter.record_timestamp_ms, letter.record_headers,
          letter.record_key) == (1_700_000_000_500, (), None)
  doc = Document('file:/d/a.parquet', 2, {'x': 1}, None, None, None)
  letter = dl.DeadLetter.of_record(doc, stage=dl.VALIDATE,
                                   reason=dl.MISSING_FIELD, detail='',
                                   payload=b'{"x":1}')
  assert letter.payload == b'{"x":1}' and letter.record_timestamp_ms is None


def test_a_later_stage_dead_letters_a_row_as_its_whole_record():
  records = [_kafka(None, b'{"a": 1}', (('h', b'1'),)),
             _kafka(b'k', b'{"a": 2}')]
  batch = EventBatch(
      source='kafka:events/3', positions=np.array([41, 42]),
      raw=[r.value for r in records], ids=['e1', 'e2'], keys=['x', 'x'],
      event_time=np.zeros(2), features=np.zeros((2, 1), np.float32),
      window_values=np.zeros((2, 0), np.float32), labels=None,
      read_time=np.zeros(2), records=records)
  letter = dl.of_row(batch.take([0]), 0, stage=dl.WINDOW, reason=dl.TOO_LATE,
                     detail='late')
  assert (letter.record_key, letter.record_headers, letter.event_id) == (
      None, (('h', b'1'),), 'e1')
  # Without records (file rows), source and position name the row.
  slim = batch.without_payloads()
  assert slim.records == []


def test_an_oversized_dead_letter_is_cut_to_fit_with_size_and_hash():
  limit = 1_000_000
  payload = bytes(range(256)) * 3907  # 1,000,192 bytes
  letter = dl.DeadLetter.of_record(_kafka(b'key', payload, (('h', b'v'),)),
                                   stage=dl.PARSE, reason=dl.TOO_LARGE,
                                   detail='payload of 1000192 bytes')
  fit = dl.KafkaFit(limit)
  value, headers = fit.value(letter), dict(fit.headers(letter))
  assert payload.startswith(value) and len(value) < len(payload)
  size = (len(value) + len(fit.key(letter)) +
          sum(len(n) + len(v) for n, v in fit.headers(letter)))
  assert size <= limit - 256
  assert headers[dl.TRUNCATED_HEADER] == b'true'
  assert headers[dl.ORIGINAL_SIZE_HEADER] == str(len(payload)).encode()
  assert headers[dl.SHA256_HEADER] == hashlib.sha256(payload).hexdigest(
  ).encode()
  assert headers['dlq.source'] == b'kafka:events/3'
  assert headers['dlq.position'] == b'41'
  assert headers['h'] == b'v'  # original headers kept
  # A dead letter that fits is untouched.
  small = dl.DeadLetter.of_record(_kafka(None, b'x' * 100), stage=dl.PARSE,
                                  reason=dl.MALFORMED, detail='')
  assert fit.value(small) == b'x' * 100
  assert dl.TRUNCATED_HEADER not in dict(fit.headers(small))


def test_original_headers_too_big_to_keep_are_dropped_and_counted():
  huge = tuple((f'h{i}', b'x' * 10_000) for i in range(60))  # 600 kB
  letter = dl.DeadLetter.of_record(_kafka(b'k', b'v', huge), stage=dl.PARSE,
                                   reason=dl.MALFORMED, detail='')
  headers = dl.KafkaFit(1_000_000).headers(letter)
  assert dict(headers)['dlq.headers_dropped'] == b'60'
  assert not any(name.startswith('h') for name, _ in headers)
