"""ParseEvents: the parse stage of a pipeline, a RecordParser in a DoFn.

Retry policy: none needed; parsing is deterministic, so a bad record is bad
forever and goes to the dead-letter output at once.
"""

from typing import Any, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms import dead_letters as dl
from transforms.events import Document, EventBatch
from transforms.parse.parser import DEFAULT_MAX_PAYLOAD_BYTES, RecordParser
from transforms.schema import EventSchema

_NAMESPACE = 'parse'


class _ParseFn(beam.DoFn):
  """Chunks of raw records -> EventBatches (main) + DeadLetters (tagged).

  A chunk of ``Document`` items (typed rows from Parquet/TFRecord files)
  goes through ``parse_documents``: the same validation without decoding.
  """

  def __init__(self, parser: RecordParser):
    self._parser = parser
    self.parsed = Metrics.counter(_NAMESPACE, 'events_parsed')
    self.dead = Metrics.counter(_NAMESPACE, 'events_dead_lettered')
    self.chunk_sizes = Metrics.distribution(_NAMESPACE, 'chunk_size')
    self._by_reason: dict[str, Any] = {}

  def _reason_counter(self, reason: str):
    counter = self._by_reason.get(reason)
    if counter is None:
      counter = self._by_reason[reason] = Metrics.counter(
          _NAMESPACE, f'dead_letter_{reason}')
    return counter

  def process(self, element, timestamp=beam.DoFn.TimestampParam):
    records = element if isinstance(element, list) else [element]
    self.chunk_sizes.update(len(records))
    if records and isinstance(records[0], Document):
      batches, dead = self._parser.parse_documents(records)
    else:
      batches, dead = self._parser.parse(records)
    for batch in batches:
      self.parsed.inc(len(batch))
      # The batch's own earliest event time: windows downstream see each
      # row's time; the element time must not be later than any of them.
      yield beam.window.TimestampedValue(batch, batch.min_time())
    for letter in dead:
      self.dead.inc()
      self._reason_counter(letter.reason).inc()
      yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, letter)


class ParseEvents(beam.PTransform):
  """Raw records or Documents (or lists of them) -> EventBatch, with dead
  letters.

  Returns a ``DoOutputsTuple`` with ``events`` (EventBatch) and
  ``dead_letters`` (DeadLetter)::

    parsed = records | ParseEvents(schema, 'json')
    parsed.events, parsed.dead_letters
  """

  def __init__(self, schema: EventSchema, input_format: str = 'json', *,
               confluent_wire_format: bool = False,
               expected_schema_id: Optional[int] = None,
               max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
    super().__init__()
    self._parser = RecordParser(
        schema, input_format, confluent_wire_format=confluent_wire_format,
        expected_schema_id=expected_schema_id,
        max_payload_bytes=max_payload_bytes)

  def expand(self, pcoll):
    return pcoll | 'ParseAndValidate' >> beam.ParDo(
        _ParseFn(self._parser)).with_output_types(EventBatch).with_outputs(
            dl.DEAD_LETTER_TAG, main='events')
