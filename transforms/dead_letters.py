"""Dead letters: events that could not be processed, with the reason.

Nothing is dropped silently: every record that fails a stage becomes a
DeadLetter carrying the whole original record (key, value, headers and
timestamp, a null key as null), where it came from (topic/partition/offset
or file/position), the stage and a reason code, and is written to the
dead-letter topic (or file). Reason codes are stable (dashboards and tests
count by them); ``detail`` is for humans. ``python -m beam_jobs.replay``
writes dead letters back as their original records once the cause is fixed.
"""

import base64
import dataclasses
import hashlib
import time
from typing import Optional, Sequence

import orjson

DEAD_LETTER_TAG = 'dead_letters'

# "The record's own payload" (of_record's default).
_RECORD_PAYLOAD = object()
_now = time.time

# Stages.
PARSE = 'parse'
VALIDATE = 'validate'
WINDOW = 'window'
INFERENCE = 'inference'

# Reason codes.
MALFORMED = 'malformed'             # bytes do not decode in the input format
NOT_AN_OBJECT = 'not_an_object'     # JSON that is not an object
MISSING_FIELD = 'missing_field'
EXTRA_FIELD = 'extra_field'
WRONG_TYPE = 'wrong_type'
EMPTY_VALUE = 'empty_value'         # empty id/key, empty payload
NON_FINITE = 'non_finite'           # NaN or infinity in a numeric field
TIME_OUT_OF_RANGE = 'time_out_of_range'  # before the schema's earliest
TIME_IN_FUTURE = 'time_in_future'   # further ahead of the clock than allowed
TOO_LATE = 'too_late'               # behind the watermark + allowed lateness
INFERENCE_ERROR = 'inference_error'
BAD_WIRE_FORMAT = 'bad_wire_format'  # Confluent magic byte / schema id
TOO_LARGE = 'too_large'             # payload above the configured limit


@dataclasses.dataclass
class DeadLetter:
  """One record that failed a stage.

  Attributes:
    stage: parse, validate, window, inference or sink.
    reason: a reason code (module constants).
    detail: a human-readable explanation.
    payload: the original value bytes (None for a tombstone).
    source: 'kafka:<topic>/<partition>' or 'file:<path>'.
    position: offset or line number in the source.
    event_id: the event id when it could be read.
    record_key: the original record key; None for none (a null key).
    time: epoch seconds when the record was dead-lettered.
    record_headers: the original record headers, (name, value) pairs.
    record_timestamp_ms: the original record timestamp (epoch ms), or None.
  """
  stage: str
  reason: str
  detail: str
  payload: Optional[bytes]
  source: str
  position: int
  event_id: Optional[str] = None
  record_key: Optional[bytes] = None
  time: float = dataclasses.field(default_factory=time.time)
  record_headers: tuple = ()
  record_timestamp_ms: Optional[int] = None

  @classmethod
  def of_record(cls, record, *, stage: str, reason: str, detail: str,
                event_id: Optional[str] = None, payload=_RECORD_PAYLOAD,
                time: Optional[float] = None) -> 'DeadLetter':  # pylint: disable=redefined-outer-name
    """The dead letter of a source record (a KafkaRecord, RawRecord or
    parse Document): its key, value, headers and timestamp, and where it
    came from. ``payload`` overrides the record's bytes (a Document's row
    as JSON)."""
    ts = getattr(record, 'timestamp_ms', None)
    if ts is None:
      seconds = getattr(record, 'timestamp', None)
      ts = None if seconds is None else int(round(seconds * 1000))
    elif ts < 0:
      ts = None
    return cls(
        stage=stage, reason=reason, detail=detail,
        payload=record.payload if payload is _RECORD_PAYLOAD else payload,
        source=record.source, position=record.position, event_id=event_id,
        record_key=record.key, time=_now() if time is None else time,
        record_headers=tuple(getattr(record, 'headers', ()) or ()),
        record_timestamp_ms=ts)

  def to_dict(self) -> dict:
    """JSON-ready form: bytes as base64 (they may not be text), a null key
    and null header values as null."""
    return {
        'stage': self.stage, 'reason': self.reason, 'detail': self.detail,
        'source': self.source, 'position': self.position,
        'event_id': self.event_id,
        'payload_b64': _b64(self.payload),
        'key_b64': _b64(self.record_key),
        'headers': [[name, _b64(value)] for name, value in
                    self.record_headers],
        'timestamp_ms': self.record_timestamp_ms,
        'time': self.time,
    }

  def to_json(self) -> bytes:
    return orjson.dumps(self.to_dict())

  def identity(self) -> tuple:
    """What makes two dead letters the same record's (see ``identity``)."""
    return identity(
        source=self.source, position=self.position,
        payload_sha256=sha256_hex(self.payload) if self.position >= 0 else '',
        stage=self.stage, reason=self.reason, event_id=self.event_id)

  def kafka_headers(self) -> list[tuple[str, bytes]]:
    """Headers for the dead-letter topic, whose key, value and timestamp
    are the original record's (as Kafka Connect's dead-letter queues keep
    them): the original headers first, then the ``dlq.*`` ones."""
    headers = list(self.record_headers)
    headers += [('dlq.stage', self.stage.encode()),
                ('dlq.reason', self.reason.encode()),
                ('dlq.detail', self.detail.encode('utf-8', 'replace')[:1000]),
                ('dlq.source', self.source.encode('utf-8', 'replace')),
                ('dlq.position', str(self.position).encode()),
                ('dlq.time', f'{self.time:.3f}'.encode())]
    if self.event_id is not None:
      headers.append(('dlq.event_id', self.event_id.encode('utf-8', 'replace')))
    return headers

  @classmethod
  def from_dict(cls, d: dict) -> 'DeadLetter':
    return cls(stage=d['stage'], reason=d['reason'], detail=d['detail'],
               payload=_unb64(d.get('payload_b64')),
               source=d['source'], position=d['position'],
               event_id=d.get('event_id'),
               record_key=_unb64(d.get('key_b64')),
               time=d.get('time', 0.0),
               record_headers=tuple((name, _unb64(value)) for name, value in
                                    d.get('headers') or ()),
               record_timestamp_ms=d.get('timestamp_ms'))


def identity(*, source: str, position: int, payload_sha256: str,
             stage: Optional[str], reason: Optional[str],
             event_id: Optional[str]) -> tuple:
  """The identity of a dead letter, for deduplication (transforms/dedup.py).

  A record read from a source is dead-lettered once whatever the stage:
  its coordinates and the SHA-256 of its bytes name it (with the hash, a
  new record at an offset a broker handed out again is another record; a
  replayed record has new coordinates, so it may be dead-lettered again).
  A dead letter without coordinates (a row a sink rejected, position -1)
  is named by its stage, reason and event id.
  """
  if position >= 0:
    return (source, position, payload_sha256)
  return (source, stage, reason, event_id)


def of_row(batch, i: int, *, stage: str, reason: str,
           detail: str) -> DeadLetter:
  """The dead letter of row ``i`` of an EventBatch: its source record when
  the batch kept them (Kafka records keep key, headers and timestamp),
  else its payload and position."""
  records = batch.records
  if records:
    return DeadLetter.of_record(records[i], stage=stage, reason=reason,
                                detail=detail, event_id=batch.ids[i],
                                payload=batch.raw[i])
  return DeadLetter(stage=stage, reason=reason, detail=detail,
                    payload=batch.raw[i], source=batch.source,
                    position=int(batch.positions[i]), event_id=batch.ids[i])


# --- Fitting a dead letter into its destination ------------------------------

TRUNCATED_HEADER = 'dlq.truncated'
ORIGINAL_SIZE_HEADER = 'dlq.original_size'
SHA256_HEADER = 'dlq.sha256'
# Room left in a record for the key, the headers and the record framing.
_RECORD_OVERHEAD = 512


def sha256_hex(data: Optional[bytes]) -> str:
  return hashlib.sha256(data or b'').hexdigest()


class KafkaFit:
  """A dead letter as a record its topic accepts: ``key``, ``value``,
  ``headers`` and ``timestamp`` functions for WriteToKafka.

  A value that would make the record larger than ``max_record_bytes`` (the
  destination topic's limit, admin.max_record_bytes) is cut to fit; the
  record then says so (``dlq.truncated``), with the original size, the
  SHA-256 of the whole value and the source coordinates (``dlq.source``,
  ``dlq.position``) from which ``beam_jobs.replay`` fetches it again. A
  dead letter that cannot be delivered whole is still delivered: one
  oversized record must not stop the job for good. Original headers that
  alone would not fit are dropped (``dlq.headers_dropped``).
  """

  def __init__(self, max_record_bytes: int):
    if max_record_bytes <= 4 * _RECORD_OVERHEAD:
      raise ValueError(f'max_record_bytes {max_record_bytes} is too small')
    self.max_record_bytes = max_record_bytes

  @staticmethod
  def key(letter: DeadLetter) -> Optional[bytes]:
    return letter.record_key

  @staticmethod
  def timestamp(letter: DeadLetter) -> Optional[int]:
    return letter.record_timestamp_ms

  def _budget(self, letter: DeadLetter) -> tuple[int, bool]:
    """(bytes left for the value, whether the original headers fit)."""
    own = sum(len(n) + len(v) for n, v in letter.kafka_headers()[
        len(letter.record_headers):]) + 200
    originals = sum(len(n) + len(v or b'') for n, v in letter.record_headers)
    fixed = len(letter.record_key or b'') + own + _RECORD_OVERHEAD
    keep = fixed + originals <= self.max_record_bytes // 2
    return self.max_record_bytes - fixed - (originals if keep else 0), keep

  def value(self, letter: DeadLetter) -> Optional[bytes]:
    payload = letter.payload
    if payload is None:
      return None
    budget, _ = self._budget(letter)
    return payload if len(payload) <= budget else payload[:max(0, budget)]

  def headers(self, letter: DeadLetter) -> list[tuple[str, bytes]]:
    headers = letter.kafka_headers()
    budget, keep = self._budget(letter)
    if not keep:
      headers = headers[len(letter.record_headers):]
      headers.append(('dlq.headers_dropped',
                      str(len(letter.record_headers)).encode()))
    payload = letter.payload
    if payload is not None and len(payload) > budget:
      headers += [(TRUNCATED_HEADER, b'true'),
                  (ORIGINAL_SIZE_HEADER, str(len(payload)).encode()),
                  (SHA256_HEADER, sha256_hex(payload).encode())]
    return headers


def _b64(data: Optional[bytes]) -> Optional[str]:
  return None if data is None else base64.b64encode(data).decode('ascii')


def _unb64(text: Optional[str]) -> Optional[bytes]:
  return None if text is None else base64.b64decode(text)


__all__: Sequence[str] = ['DeadLetter', 'KafkaFit', 'identity', 'of_row',
                          'sha256_hex']
