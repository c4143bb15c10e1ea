"""The end-of-run summary of a job, read from its Beam metrics.

Both scoring jobs end with one: records read, events scored, dead letters by
reason, events/s, the model versions that scored them, and for a Kafka
stream the offsets committed and the consumer lag left. Each job names the
counters that hold its figures in a ``CounterNames`` table (the backfill
counts in pass-through ``progress`` steps, the stream in the steps
themselves: its step names must not change, see beam_jobs/scoring.py).
"""

import dataclasses
import logging
from typing import NamedTuple, Optional

from apache_beam.metrics import MetricsFilter

from transforms import dead_letters as dl

_LOGGER = logging.getLogger(__name__)

# transforms/inference.py counts scored events per model version as
# inference/events_scored_v<version>.
VERSION_NAMESPACE = 'inference'
VERSION_PREFIX = 'events_scored_v'


class CounterNames(NamedTuple):
  """Where a job's figures are: (namespace, name) of Beam counters.

  Attributes:
    read: records read.
    scored: events scored.
    reasons: ((namespace, name or prefix*), reason label or None) pairs: a
      counter of dead letters for one reason, or with a name ending in
      ``*`` every counter with that prefix, the rest of the name being the
      reason (when the label is None).
    skipped: counters of events deliberately not scored nor dead-lettered
      (e.g. duplicates), with their labels.
  """
  read: tuple
  scored: tuple
  reasons: tuple
  skipped: tuple = ()


# Dead letters of the scoring stages (beam_jobs/scoring.py), by reason:
# parse/validate counts each reason, windows the events too late, inference
# the rows that failed. The same in every job that scores.
SCORING_DEAD_LETTERS = (
    (('parse', 'dead_letter_*'), None),
    (('window', 'too_late_events'), dl.TOO_LATE),
    (('inference', 'events_failed'), dl.INFERENCE_ERROR),
)


# Rows each sink wrote: (label, step of the job's graph, counter namespace,
# counter name, namespace and name of a counter to subtract or None).
SINK_COUNTERS = (
    ('kafka', 'WritePredictions', 'kafka_write', 'records_written', None),
    ('files', 'WritePredictionFiles', 'file_sink', 'rows_written', None),
    ('bigquery', 'WriteBigQuery', 'bigquery_sink', 'rows_sent',
     ('bigquery_sink', 'rejected_rows')),
    ('dead-letter topic', 'WriteDeadLetters', 'kafka_write',
     'records_written', None),
    ('dead-letter files', 'WriteDeadLetterFiles', 'file_sink',
     'rows_written', None),
)


class OffsetsLeft(NamedTuple):
  """A consumer group's position on a topic when the run ended."""
  group: str
  topic: str
  partitions: int
  committed: int   # sum of the committed offsets
  lag: int         # records after the committed offsets


@dataclasses.dataclass
class RunSummary:
  """The figures of one run (``as_dict`` for the backfill's old keys)."""
  job: str
  state: str
  seconds: float
  records_read: int
  events_scored: int
  dead_letter_reasons: dict
  model_versions: dict
  skipped: dict = dataclasses.field(default_factory=dict)
  offsets: Optional[OffsetsLeft] = None
  # Rows written per sink the job has (SINK_COUNTERS labels).
  sink_rows: dict = dataclasses.field(default_factory=dict)

  @property
  def dead_letters(self) -> int:
    return sum(self.dead_letter_reasons.values())

  @property
  def events_per_s(self) -> float:
    return self.records_read / max(self.seconds, 1e-9)

  @property
  def balanced(self) -> bool:
    """read = scored + dead-lettered (+ deliberately skipped)."""
    return self.records_read == (self.events_scored + self.dead_letters +
                                 sum(self.skipped.values()))

  def as_dict(self) -> dict:
    return {'records_read': self.records_read,
            'events_scored': self.events_scored,
            'dead_letters': self.dead_letters,
            'dead_letter_reasons': dict(self.dead_letter_reasons),
            'model_versions': dict(self.model_versions),
            'skipped': dict(self.skipped), 'seconds': self.seconds,
            'events_per_s': self.events_per_s, 'state': self.state,
            'offsets': self.offsets._asdict() if self.offsets else None,
            'sink_rows': dict(self.sink_rows)}

  def format(self) -> str:
    """A few aligned lines for people."""
    reasons = ', '.join(f'{k} {v}' for k, v in
                        sorted(self.dead_letter_reasons.items()) if v)
    versions = ', '.join(f'v{k}: {v}' for k, v in
                         sorted(self.model_versions.items()))
    lines = [
        f'{self.job} summary ({self.state}, {self.seconds:.1f} s):',
        f'  read          {self.records_read} records '
        f'({self.events_per_s:.0f} records/s)',
        f'  scored        {self.events_scored} events'
        + (f' (model versions {versions})' if versions else ''),
        f'  dead letters  {self.dead_letters}'
        + (f' ({reasons})' if reasons else ''),
    ]
    for label, count in sorted(self.skipped.items()):
      lines.append(f'  {label:<13} {count}')
    if self.sink_rows:
      lines.append('  written       ' + ', '.join(
          f'{label} {count}' for label, count in self.sink_rows.items()))
    if self.offsets is not None:
      o = self.offsets
      lines.append(f'  committed     offsets {o.committed} on {o.partitions} '
                   f'partitions of {o.topic} (group {o.group})')
      lines.append(f'  lag left      {o.lag} records')
    lines.append('  counts balance: read = scored + dead letters'
                 + (' + skipped' if self.skipped else '') if self.balanced
                 else '  counts do not balance: records in flight when the '
                 'run stopped, or a step failed (see the log)')
    return '\n'.join(lines)


def metric_counters(result) -> dict:
  """{(namespace, name): value} of every counter of a pipeline result
  (committed values where the runner has them, else attempted); {} when
  the runner reports no metrics."""
  try:
    query = result.metrics().query(MetricsFilter())
  except Exception as e:  # pylint: disable=broad-except
    _LOGGER.warning('no metrics from the runner: %s', e)
    return {}
  out: dict = {}
  for c in query['counters']:
    value = c.committed if c.committed is not None else c.attempted
    key = (c.key.metric.namespace, c.key.metric.name)
    out[key] = out.get(key, 0) + (value or 0)
  return out


def sink_rows(result) -> dict:
  """{sink label: rows written} of the sinks this pipeline has (counters of
  the sink steps: SINK_COUNTERS)."""
  try:
    query = result.metrics().query(MetricsFilter())
  except Exception:  # pylint: disable=broad-except
    return {}
  by_step: dict = {}
  for c in query['counters']:
    value = c.committed if c.committed is not None else c.attempted
    top = c.key.step.split('/')[0]
    key = (top, c.key.metric.namespace, c.key.metric.name)
    by_step[key] = by_step.get(key, 0) + (value or 0)
  out = {}
  for label, step, namespace, name, minus in SINK_COUNTERS:
    if not any(s == step for s, _, _ in by_step):
      continue
    rows = by_step.get((step, namespace, name), 0)
    if minus is not None:
      rows -= by_step.get((step,) + minus, 0)
    out[label] = rows
  return out


def _reasons(counters: dict, table: tuple) -> dict:
  reasons: dict = {}
  for (namespace, name), label in table:
    for (ns, counter_name), value in counters.items():
      if ns != namespace:
        continue
      if name.endswith('*'):
        if not counter_name.startswith(name[:-1]):
          continue
        reason = label or counter_name[len(name) - 1:]
      elif counter_name == name:
        reason = label
      else:
        continue
      reasons[reason] = reasons.get(reason, 0) + value
  return reasons


def summarize(result, names: CounterNames, *, job: str, seconds: float,
              offsets: Optional[OffsetsLeft] = None) -> RunSummary:
  """The RunSummary of a finished (or running) pipeline from its counters."""
  counters = metric_counters(result)
  versions = {int(name[len(VERSION_PREFIX):]): value
              for (ns, name), value in counters.items()
              if ns == VERSION_NAMESPACE and name.startswith(VERSION_PREFIX)
              and name[len(VERSION_PREFIX):].isdigit()}
  return RunSummary(
      job=job, state=str(getattr(result, 'state', '?')), seconds=seconds,
      records_read=counters.get(names.read, 0),
      events_scored=counters.get(names.scored, 0),
      dead_letter_reasons=_reasons(counters, names.reasons),
      model_versions=versions,
      skipped={label: counters.get(key, 0) for key, label in names.skipped
               if counters.get(key, 0)},
      offsets=offsets, sink_rows=sink_rows(result))


__all__ = ['CounterNames', 'OffsetsLeft', 'SCORING_DEAD_LETTERS', 'RunSummary',
           'SINK_COUNTERS', 'metric_counters', 'sink_rows', 'summarize']
