"""Records of the jobs' topics, decoded into what the page counts.

Prediction rows (transforms/output.py) are read for the few columns the
page needs with a msgspec struct (unknown columns are skipped unparsed),
a batch at a time; a row that is not a prediction is counted, not fatal.
Dead letters are read from their ``dlq.*`` headers (transforms/
dead_letters.py); their value is the original record, shown only as a
short preview. Control records are JSON objects keyed by deployment name.
Everything here is untrusted input: lengths are capped and text is cut.
"""

import math
from typing import Optional

import msgspec
import numpy as np

from beam_jobs.status.aggregate import DeadLetterSample, Predictions

PREVIEW_BYTES = 256
DETAIL_CHARS = 300
_SHORT_CHARS = 200
# Control characters shown as U+FFFD (tab and newline kept).
_CONTROLS = {c: '\ufffd' for c in range(32) if chr(c) not in '\t\n'}
_CONTROLS[127] = '\ufffd'


class _Row(msgspec.Struct):
  """The prediction columns the page reads; the others are skipped."""
  score: Optional[float] = None
  model_version: Optional[int] = None
  model_role: Optional[str] = None
  event_time: Optional[float] = None
  read_time: Optional[float] = None
  scored_time: Optional[float] = None
  label: Optional[float] = None


_ROWS = msgspec.json.Decoder(list[_Row])
_ROW = msgspec.json.Decoder(_Row)


def _nan(x) -> float:
  return math.nan if x is None else x


def predictions(values: list) -> tuple[Predictions, int]:
  """Decodes prediction rows (JSON values); returns (columns, how many
  values were not prediction rows)."""
  values = [v for v in values if v]
  rows = None
  if values:
    try:
      # One call for the batch; per row only when some row is bad.
      rows = _ROWS.decode(b'[' + b','.join(values) + b']')
    except (msgspec.DecodeError, msgspec.ValidationError):
      rows = None
  bad = 0
  if rows is None:
    rows = []
    for v in values:
      try:
        rows.append(_ROW.decode(v))
      except (msgspec.DecodeError, msgspec.ValidationError):
        bad += 1
  col = lambda name: np.array(  # pylint: disable=unnecessary-lambda-assignment
      [_nan(getattr(r, name)) for r in rows], np.float64)
  return Predictions(
      scored_time=col('scored_time'), event_time=col('event_time'),
      read_time=col('read_time'), score=col('score'), label=col('label'),
      model_version=[r.model_version for r in rows],
      model_role=[(r.model_role or None) and r.model_role[:_SHORT_CHARS]
                  for r in rows]), bad


def text(data: Optional[bytes], limit: int) -> str:
  """Bytes as displayable text: at most ``limit`` bytes, invalid UTF-8 and
  control characters replaced."""
  if data is None:
    return ''
  return data[:limit].decode('utf-8', 'replace').translate(_CONTROLS)


def dead_letter(message, now: float) -> DeadLetterSample:
  """A dead-letter record (a confluent_kafka Message) as a sample."""
  headers = {}
  for name, value in message.headers() or ():
    if name.startswith('dlq.'):
      headers[name] = value
  h = lambda name, limit=_SHORT_CHARS: text(headers.get(name), limit)  # pylint: disable=unnecessary-lambda-assignment
  try:
    when = float(h('dlq.time'))
    if not math.isfinite(when):
      raise ValueError
  except ValueError:
    _, ts = message.timestamp()
    when = ts / 1000.0 if ts and ts > 0 else now
  value = message.value()
  return DeadLetterSample(
      time=when, reason=h('dlq.reason', 64) or 'unknown',
      stage=h('dlq.stage', 64), detail=h('dlq.detail', DETAIL_CHARS),
      source=h('dlq.source'), position=h('dlq.position', 32),
      event_id=h('dlq.event_id') or None,
      payload=text(value, PREVIEW_BYTES),
      payload_bytes=0 if value is None else len(value),
      partition=message.partition(), offset=message.offset())


def control_record(value: Optional[bytes]):
  """A control record's value: a JSON object, None for a tombstone, or
  ``{'unreadable': preview}``."""
  if value is None:
    return None
  try:
    record = msgspec.json.decode(value)
  except msgspec.DecodeError:
    return {'unreadable': text(value, PREVIEW_BYTES)}
  if not isinstance(record, dict):
    return {'value': record}
  return record
