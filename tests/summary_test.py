"""End-of-run summaries from Beam counters."""

import apache_beam as beam
import numpy as np
from apache_beam.metrics.execution import MetricKey
from apache_beam.metrics.metric import MetricResult
from apache_beam.metrics.metricbase import MetricName

from beam_jobs import summary
from beam_jobs.score_stream import SUMMARY_COUNTERS as STREAM
from transforms.events import ScoredBatch
from transforms.events import EventBatch
from transforms.inference import _SplitFailedRows


class _Result:
  """What summarize reads of a PipelineResult."""

  def __init__(self, counters, state='DONE'):
    self.state = state
    self._counters = counters

  def metrics(self):
    results = [MetricResult(MetricKey('step', MetricName(ns, name)), v, v)
               for (ns, name), v in self._counters.items()]

    class _Query:
      def query(self, unused_filter=None):
        return {'counters': results, 'distributions': [], 'gauges': []}
    return _Query()


def test_stream_summary_balances_and_formats():
  result = _Result({
      ('kafka_read', 'records'): 1000, ('inference', 'events_scored'): 960,
      ('inference', 'events_scored_v3'): 900,
      ('inference', 'events_scored_v4'): 60,
      ('parse', 'dead_letter_malformed'): 20,
      ('parse', 'dead_letter_missing_field'): 12,
      ('parse', 'events_dead_lettered'): 32,  # a total, not a reason
      ('window', 'too_late_events'): 5, ('inference', 'events_failed'): 3,
      ('dedup', 'duplicates_skipped'): 0})
  s = summary.summarize(
      result, STREAM, job='score_stream', seconds=10.0,
      offsets=summary.OffsetsLeft('g', 'events', 4, 1000, 0))
  assert s.dead_letter_reasons == {'malformed': 20, 'missing_field': 12,
                                   'too_late': 5, 'inference_error': 3}
  assert (s.records_read, s.events_scored, s.dead_letters) == (1000, 960, 40)
  assert s.model_versions == {3: 900, 4: 60}
  assert s.balanced and s.events_per_s == 100.0 and s.skipped == {}
  text = s.format()
  assert text.splitlines() == [
      'score_stream summary (DONE, 10.0 s):',
      '  read          1000 records (100 records/s)',
      '  scored        960 events (model versions v3: 900, v4: 60)',
      '  dead letters  40 (inference_error 3, malformed 20, missing_field 12, '
      'too_late 5)',
      '  committed     offsets 1000 on 4 partitions of events (group g)',
      '  lag left      0 records',
      '  counts balance: read = scored + dead letters']


def test_a_stopped_run_that_does_not_balance_says_so():
  s = summary.summarize(_Result({('kafka_read', 'records'): 10,
                                 ('inference', 'events_scored'): 7},
                                state='CANCELLED'),
                        STREAM, job='score_stream', seconds=1.0)
  assert not s.balanced
  assert 'counts do not balance' in s.format()
  assert s.as_dict()['records_read'] == 10 and s.as_dict()['offsets'] is None


def test_no_metrics_from_the_runner_is_not_an_error():
  class _NoMetrics:
    state = 'DONE'

    def metrics(self):
      raise NotImplementedError('no metrics here')

  s = summary.summarize(_NoMetrics(), STREAM, job='x', seconds=1.0)
  assert s.records_read == 0 and s.balanced


def _batch(n: int) -> EventBatch:
  return EventBatch(
      source='t', positions=np.arange(n), raw=[b''] * n,
      ids=[f'e{i}' for i in range(n)], keys=['k'] * n,
      event_time=np.zeros(n), features=np.zeros((n, 1), np.float32),
      window_values=np.zeros((n, 0), np.float32), labels=None,
      read_time=np.zeros(n))


def test_inference_counts_scored_events_per_model_version():
  failed_row = ScoredBatch(_batch(2), np.zeros(2, np.float32), 2, 0.0,
                           errors=[None, 'boom'])
  p = beam.Pipeline()
  _ = (p | beam.Create([
      ScoredBatch(_batch(3), np.zeros(3, np.float32), 1, 0.0),
      ScoredBatch(_batch(5), np.zeros(5, np.float32), 2, 0.0), failed_row])
       | beam.ParDo(_SplitFailedRows()).with_outputs('dead_letters',
                                                     main='scored'))
  result = p.run()
  result.wait_until_finish()
  counters = summary.metric_counters(result)
  assert counters[('inference', 'events_scored_v1')] == 3
  assert counters[('inference', 'events_scored_v2')] == 6
  assert counters[('inference', 'events_scored')] == 9
  assert counters[('inference', 'events_failed')] == 1
