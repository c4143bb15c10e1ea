"""Which local engine can run an unbounded Kafka read with event-time windows?

The measurement behind docs/local_streaming.md. For each candidate engine it
starts the embedded broker, runs ReadFromKafka (unbounded) -> 1 s fixed
windows -> count in a subprocess while a producer writes 200 records/s for
``--seconds``, and reports how many windows fired and when the first one did:

  python -m bench.local_streaming_design --seconds 20

Candidates: the FnApiRunner (DirectRunner's default fallback when Prism is
not available), Beam's BundleBasedDirectRunner in streaming mode running the
splittable DoFn (as is, and with its overrides reordered so that it can
build the pipeline), and LocalStreamingRunner (this project's local path).
"""

import argparse
import json
import multiprocessing
import queue
import sys
import threading
import time

ENGINES = ('fnapi_sdf', 'bundle_based_sdf', 'bundle_based_sdf_reordered',
           'local_streaming')

# Set in the child process: where firings are reported. A module global, so
# the DoFn pickles by reference (a queue cannot be pickled into a DoFn).
_OUT = None
_T0 = 0.0


def _report(count):
  _OUT.put({'fired_after_s': round(time.time() - _T0, 2), 'count': count})


def _pipeline_main(engine: str, config: dict, topic: str, out) -> None:
  """Runs in a child process; reports firings and errors through ``out``."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from transforms.kafka import ReadFromKafka

  global _OUT, _T0
  _OUT, _T0 = out, time.time()
  options = PipelineOptions(['--streaming'])
  if engine == 'fnapi_sdf':
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    runner = FnApiRunner()
  elif engine == 'bundle_based_sdf':
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    runner = BundleBasedDirectRunner()
  elif engine == 'bundle_based_sdf_reordered':
    # Repairing the SDF path: Beam's overrides in a working order, and the
    # splittable DoFn itself as the source (no native read).
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from beam_jobs import local_runner

    class Reordered(BundleBasedDirectRunner):

      def run_pipeline(self, pipeline, options):
        local_runner._apply_overrides_in_working_order(pipeline, options)  # pylint: disable=protected-access
        return super().run_pipeline(pipeline, options)

    runner = Reordered()
  else:
    from beam_jobs.local_runner import LocalStreamingRunner
    runner = LocalStreamingRunner()
  try:
    p = beam.Pipeline(runner=runner, options=options)
    _ = (p
         | ReadFromKafka(config, topic, start='earliest', idle_timeout_s=1)
         | beam.WindowInto(beam.window.FixedWindows(1))
         | beam.Map(lambda r: 1)
         | beam.CombineGlobally(sum).without_defaults()
         | beam.Map(_report))
    p.run().wait_until_finish()
    out.put({'finished': True})
  except Exception as e:  # pylint: disable=broad-except
    out.put({'error': f'{type(e).__name__}: {str(e)[:300]}'})


def measure(engine: str, broker, seconds: float) -> dict:
  from confluent_kafka import Producer
  from transforms.kafka import admin
  topic = f'design-{engine}-{int(time.time())}'
  admin.create_topic(broker.client_config(), topic, 2)
  ctx = multiprocessing.get_context('spawn')
  out = ctx.Queue()
  child = ctx.Process(target=_pipeline_main,
                      args=(engine, broker.client_config(log_level=0), topic,
                            out))
  child.start()
  stop = threading.Event()

  def produce():
    producer = Producer(broker.client_config(log_level=0))
    while not stop.is_set():
      for _ in range(20):
        producer.produce(topic, value=b'x', timestamp=int(time.time() * 1000))
      producer.poll(0)
      time.sleep(0.1)
    producer.flush(10)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  deadline = time.time() + seconds
  firings, error = [], None
  while time.time() < deadline:
    try:
      msg = out.get(timeout=0.5)
    except queue.Empty:
      if not child.is_alive():
        break
      continue
    if 'error' in msg:
      error = msg['error']
      break
    if 'count' in msg:
      firings.append(msg)
  stop.set()
  thread.join()
  child.terminate()
  child.join(10)
  return {
      'engine': engine, 'windows_fired': len(firings),
      'first_fired_after_s': firings[0]['fired_after_s'] if firings else None,
      'records_counted': sum(f['count'] for f in firings), 'error': error,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=20)
  parser.add_argument('--engines', default=','.join(ENGINES))
  args = parser.parse_args(argv)
  from beam_jobs import local_broker
  broker = local_broker.start('noida')
  try:
    results = [measure(e, broker, args.seconds)
               for e in args.engines.split(',')]
  finally:
    local_broker.stop(broker)
  print(f'{"engine":26} {"windows fired":>13} {"first after":>11} '
        f'{"records":>8}  error')
  for r in results:
    first = ('-' if r['first_fired_after_s'] is None else
             f'{r["first_fired_after_s"]:.1f} s')
    print(f'{r["engine"]:26} {r["windows_fired"]:>13} {first:>11} '
          f'{r["records_counted"]:>8}  {r["error"] or ""}')
  print(json.dumps(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
