"""Dead letters: events that could not be processed, with the reason.

Nothing is dropped silently: every record that fails a stage becomes a
DeadLetter carrying its original bytes, where it came from, the stage and a
reason code, and is written to the dead-letter topic (or file). Reason codes
are stable (dashboards and tests count by them); ``detail`` is for humans.
"""

import base64
import dataclasses
import time
from typing import Optional

import orjson

DEAD_LETTER_TAG = 'dead_letters'

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
    stage: parse, validate, window or inference.
    reason: a reason code (module constants).
    detail: a human-readable explanation.
    payload: the original bytes (None for a tombstone).
    source: 'kafka:<topic>/<partition>' or 'file:<path>'.
    position: offset or line number in the source.
    event_id: the event id when it could be read.
    record_key: the Kafka record key, if any.
    time: epoch seconds when the record was dead-lettered.
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

  def to_dict(self) -> dict:
    """JSON-ready form; the payload is base64 (it may not be text)."""
    return {
        'stage': self.stage, 'reason': self.reason, 'detail': self.detail,
        'source': self.source, 'position': self.position,
        'event_id': self.event_id,
        'payload_b64': (None if self.payload is None else
                        base64.b64encode(self.payload).decode('ascii')),
        'time': self.time,
    }

  def to_json(self) -> bytes:
    return orjson.dumps(self.to_dict())

  def kafka_headers(self) -> list[tuple[str, bytes]]:
    """Headers for the dead-letter topic, whose value is the original bytes
    (as Kafka Connect's dead-letter queues do)."""
    headers = [('dlq.stage', self.stage.encode()),
               ('dlq.reason', self.reason.encode()),
               ('dlq.detail', self.detail.encode('utf-8', 'replace')[:1000]),
               ('dlq.source', self.source.encode('utf-8', 'replace')),
               ('dlq.position', str(self.position).encode())]
    if self.event_id is not None:
      headers.append(('dlq.event_id', self.event_id.encode('utf-8', 'replace')))
    return headers

  @classmethod
  def from_dict(cls, d: dict) -> 'DeadLetter':
    payload = d.get('payload_b64')
    return cls(stage=d['stage'], reason=d['reason'], detail=d['detail'],
               payload=None if payload is None else base64.b64decode(payload),
               source=d['source'], position=d['position'],
               event_id=d.get('event_id'), time=d.get('time', 0.0))
