"""WriteToKafka against real brokers (contract tests run on tansu and noida)."""

import collections
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from kafka_helpers import read_topic
from transforms.kafka import KafkaDeliveryError, WriteToKafka
from transforms.outage import OutageError, OutagePolicy

pytestmark = pytest.mark.it


def _run(build) -> beam.runners.runner.PipelineResult:
  """Runs ``build(p)`` on the FnApiRunner to completion; returns the result."""
  p = beam.Pipeline(runner=FnApiRunner())
  build(p)
  result = p.run()
  result.wait_until_finish()
  return result


def _written(result) -> int:
  counters = result.metrics().query(
      MetricsFilter().with_namespace('kafka_write').with_name(
          'records_written'))['counters']
  return sum(c.committed or 0 for c in counters)


def _kv(n, offset=0):
  return [(f'k{i}'.encode(), f'v{i}'.encode()) for i in range(offset,
                                                               offset + n)]


def _generate(p, elements, label='Generate'):
  """A PCollection of ``elements`` (a picklable list), spread over bundles."""
  return (p
          | f'{label}Impulse' >> beam.Impulse()
          | f'{label}Explode' >> beam.FlatMap(lambda _, xs=elements: xs)
          | f'{label}Spread' >> beam.Reshuffle())


@pytest.mark.contract
def test_clean_run_writes_every_element_exactly_once(broker, make_topic):
  topic = make_topic(4)
  elements = _kv(5000)
  result = _run(lambda p: _generate(p, elements)
                | WriteToKafka(broker.client_config(), topic))

  got = read_topic(broker, topic, len(elements))
  assert len(got) == len(elements)
  assert collections.Counter((m.key(), m.value()) for m in got) == (
      collections.Counter(elements))
  # Keyed records spread over all partitions by the default partitioner.
  assert {m.partition() for m in got} == {0, 1, 2, 3}
  assert _written(result) == len(elements)


@pytest.mark.contract
def test_batched_elements_write_each_record_once(broker, make_topic):
  topic = make_topic(4)
  records = [{'id': i, 'score': i / 10} for i in range(5000)]
  batches = [records[i:i + 1000] for i in range(0, len(records), 1000)]
  result = _run(lambda p: _generate(p, batches)
                | WriteToKafka(broker.client_config(), topic, batched=True,
                               key=lambda r: str(r['id']),
                               value=lambda r: f'{r["score"]:.1f}',
                               headers=lambda r: [('id', b'%d' % r['id'])]))

  got = read_topic(broker, topic, len(records))
  assert len(got) == len(records)
  assert sorted((m.key(), m.value(), tuple(m.headers())) for m in got) == (
      sorted((str(r['id']).encode(), f'{r["score"]:.1f}'.encode(),
              (('id', b'%d' % r['id']),)) for r in records))
  assert _written(result) == len(records)


@pytest.mark.contract
def test_topic_function_routes_each_element(broker, make_topic):
  even, odd = make_topic(2, suffix='-even'), make_topic(2, suffix='-odd')
  elements = _kv(300)
  _run(lambda p: _generate(p, elements)
       | WriteToKafka(broker.client_config(),
                      lambda kv: even if int(kv[0][1:]) % 2 == 0 else odd))

  got_even = read_topic(broker, even, 150)
  got_odd = read_topic(broker, odd, 150)
  assert sorted(m.key() for m in got_even) == sorted(
      k for k, _ in elements if int(k[1:]) % 2 == 0)
  assert sorted(m.key() for m in got_odd) == sorted(
      k for k, _ in elements if int(k[1:]) % 2 == 1)


@pytest.mark.contract
def test_headers_keys_and_values_from_functions(broker, make_topic):
  topic = make_topic(1)
  events = [{'id': i, 'payload': 'é' * (i % 3), 'trace': f't{i}'}
            for i in range(50)]
  _run(lambda p: _generate(p, events)
       | WriteToKafka(broker.client_config(), topic,
                      key=lambda e: None if e['id'] % 10 == 0 else
                      str(e['id']),
                      value=lambda e: e['payload'],
                      headers=lambda e: [('trace', e['trace'].encode()),
                                         ('src', b'test')]))

  got = {m.headers()[0][1]: m for m in read_topic(broker, topic, 50)}
  assert len(got) == 50
  for e in events:
    m = got[e['trace'].encode()]
    assert m.headers() == [('trace', e['trace'].encode()), ('src', b'test')]
    # None stays "no key"; str keys and values are UTF-8 encoded.
    assert m.key() == (None if e['id'] % 10 == 0 else str(e['id']).encode())
    assert m.value() == e['payload'].encode('utf-8')


_SHORT_OUTAGES = OutagePolicy(max_outage_s=4, initial_backoff_s=0.1,
                              max_backoff_s=1)


def test_unreachable_broker_is_retried_then_fails_naming_output_and_cause():
  t0 = time.monotonic()
  with pytest.raises(OutageError) as raised:
    _run(lambda p: p
         | beam.Create(_kv(20))
         | WriteToKafka({'bootstrap.servers': '127.0.0.1:9',
                         'message.timeout.ms': 1000}, 'events',
                        outage_policy=_SHORT_OUTAGES))
  # Retried in place for the policy's 4 s (not given up after one timeout).
  assert 4 <= time.monotonic() - t0 < 60
  message = str(raised.value)
  # Names the output, the failure and its likely cause.
  assert "Kafka output topic 'events' at 127.0.0.1:9 unavailable for" in (
      message)
  assert 'Message timed out' in message
  assert 'Connection refused' in message


def test_records_still_queued_after_the_flush_wait_count_as_an_outage():
  with pytest.raises(OutageError,
                     match=r'20 record\(s\) not delivered within 1s'):
    _run(lambda p: p
         | beam.Create(_kv(20))
         | WriteToKafka({'bootstrap.servers': '127.0.0.1:9',
                         'message.timeout.ms': 60_000}, 'events',
                        flush_timeout_s=1.0, outage_policy=_SHORT_OUTAGES))


def test_a_record_the_broker_never_accepts_fails_the_bundle_at_once(
    broker, make_topic):
  """Not an outage: a record above the producer's size limit is refused
  for good; the bundle fails (the runner retries it), naming the record."""
  topic = make_topic(1)
  t0 = time.monotonic()
  with pytest.raises(KafkaDeliveryError, match='MSG_SIZE_TOO_LARGE'):
    _run(lambda p: p
         | beam.Create([(b'big', b'x' * 2_000_000)])
         | WriteToKafka(broker.client_config(), topic))
  assert time.monotonic() - t0 < 30


def test_missing_bootstrap_servers_is_rejected_at_construction():
  with pytest.raises(ValueError, match='bootstrap.servers'):
    WriteToKafka({}, 'events')
  with pytest.raises(ValueError, match='topic'):
    WriteToKafka({'bootstrap.servers': 'x:1'}, '')
