"""How a running score_stream should follow deployment records: measured.

Issue 18 names two ways for a job to learn that a deployment changed:

* ``side_input``: the control topic read as a second Kafka source and given
  to RunInference as its model side input (``model_metadata_pcoll``; one
  ``ModelMetadata`` per record, the record's JSON as the model id), in the
  global window with a trigger per record: Beam's documented pattern for
  model updates (as ``WatchFilePattern`` builds it). Beam then reloads the
  model inside the scoring DoFn when the side input changes
  (``_RunInferenceDoFn.update_model``).
* ``side_input_fixed``: the same, the side input in the scoring step's own
  fixed windows (the latest record of each window; a window without one
  keeps the model), a variant the local engine can run: its bundle-based
  DirectRunner holds a main-input element until the side input's watermark
  passes the end of the side window the element maps to, which for the
  global window is never while the control topic is unbounded.
* ``follower``: the model handler follows the topic itself
  (``--control_topic``: models/serving.py, a consumer thread per worker
  process assigned to the topic's partition, loading new versions off the
  scoring thread and swapping between batches).

and, for reference, ``watch``: no control topic, the newest complete version
of ``--model_dir`` served (``--model_poll_s 1``), switched by exporting a
version.

For each, one job runs on the local streaming engine (a subprocess, as
``python -m beam_jobs.score_stream`` runs) and the bench measures

1. throughput: a backlog of ``--events`` scored from start (steady rate:
   rows / (last scored_time - first read_time)), with the control topic
   holding one record;
2. switch latency: at ``--rate`` events/s, ``--switches`` changes of the
   primary between two versions ``--switch_every_s`` apart; latency = the
   first prediction scored by the new version minus the record's
   acknowledgement (or the version's rename into place, for ``watch``);
   and event->prediction latency p50/p99 of that phase.

  python -m bench.deployment_mechanism                  # all three
  python -m bench.deployment_mechanism --mechanisms follower,side_input

Measured figures and the decision: docs/operating_models.md.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import local_broker
from models import control_topic as ct
from models import deployments as dep
from models import susy
from transforms.kafka import admin

MECHANISMS = ('watch', 'follower', 'side_input', 'side_input_fixed')
PARTITIONS = 4
WINDOW_SIZE_S = 10


# --- The job, as a subprocess ----------------------------------------------


def _side_input_score_events(control_config: dict, control_topic: str,
                             deployment: str, window_size_s: float = 0.0):
  """transforms.inference.ScoreEvents with RunInference's model side input
  read from the control topic (installed into beam_jobs.scoring); in fixed
  windows of ``window_size_s`` when > 0, else in the global window."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.ml.inference.base import ModelMetadata  # pylint: disable=import-outside-toplevel
  from apache_beam.transforms import trigger, window  # pylint: disable=import-outside-toplevel
  from transforms import inference  # pylint: disable=import-outside-toplevel
  from transforms.kafka.read import ReadFromKafka  # pylint: disable=import-outside-toplevel

  def latest_record(records):
    mine = [r for r in records if (r.key or b'').decode() == deployment
            and r.value]
    if mine:
      yield ModelMetadata(model_id=mine[-1].value.decode(),
                          model_name=f'{deployment}@{mine[-1].offset}')

  def windowed(pcoll):
    if window_size_s <= 0:
      return pcoll | 'GlobalPanes' >> beam.WindowInto(
          window.GlobalWindows(),
          trigger=trigger.Repeatedly(trigger.AfterCount(1)),
          accumulation_mode=trigger.AccumulationMode.DISCARDING)
    # One record per window at most (a singleton view): the latest.
    return (pcoll
            | 'FixedWindows' >> beam.WindowInto(
                window.FixedWindows(window_size_s))
            | 'LatestOfWindow' >> beam.combiners.Latest.Globally(
                ).without_defaults())

  class SideInputScoreEvents(inference.ScoreEvents):

    def __init__(self, handler, **kwargs):
      # The records come through the side input: the handler reads the
      # latest once at load and does not follow the topic itself.
      handler._control = handler._control._replace(follow=False)  # pylint: disable=protected-access
      super().__init__(handler, **kwargs)

    def expand(self, pcoll):
      metadata = windowed(
          pcoll.pipeline
          | 'ReadControlTopic' >> ReadFromKafka(
              dict(control_config, **{
                  'group.id': f'bench-ctl-{uuid.uuid4().hex[:6]}'}),
              [control_topic], start='earliest', max_batch_records=100,
              timestamp_policy='processing_time', idle_timeout_s=0.5,
              commit_offsets=False)
          | 'LatestRecord' >> beam.FlatMap(latest_record))
      self._model_metadata = metadata
      return super().expand(pcoll)

  return SideInputScoreEvents


def run_job(argv) -> int:
  """The job subprocess: score_stream, with the side-input ScoreEvents when
  asked (``--bench_side_input TOPIC``)."""
  from beam_jobs import score_stream  # pylint: disable=import-outside-toplevel
  from beam_jobs import scoring  # pylint: disable=import-outside-toplevel
  if argv[0] == '--bench_side_input':
    topic, deployment, bootstrap, window_s = argv[1:5]
    argv = argv[5:]
    scoring.ScoreEvents = _side_input_score_events(
        {'bootstrap.servers': bootstrap, 'fetch.queue.backoff.ms': 1,
         'receive.message.max.bytes': 1_000_000_000}, topic, deployment,
        float(window_s))
  return score_stream.main(argv)


def _job_command(mechanism: str, bootstrap: str, config: dict, topics: dict,
                 model_dir: str) -> list:
  args = ['--bootstrap_servers', bootstrap, '--input_topic', topics['in'],
          '--output_topic', topics['out'], '--dead_letter_topic',
          topics['dlq'], '--consumer_group', f'bench-{uuid.uuid4().hex[:6]}',
          '--start', 'earliest', '--model_dir', model_dir,
          '--window_size_s', str(WINDOW_SIZE_S), '--idle_timeout_s', '2']
  args += [f'--kafka_config={k}={v}' for k, v in config.items()
           if k != 'bootstrap.servers']
  if mechanism == 'watch':
    args += ['--model_poll_s', '1']
  elif mechanism == 'follower':
    args += ['--control_topic', topics['ctl']]
  else:
    # The handler must know the control source (its settings); the side
    # input, not its follower, brings the records (update_model_path).
    window_s = WINDOW_SIZE_S if mechanism == 'side_input_fixed' else 0
    args = ['--bench_side_input', topics['ctl'], dep.DEFAULT_DEPLOYMENT,
            bootstrap, str(window_s)] + args + ['--control_topic',
                                                topics['ctl']]
  return [sys.executable, '-m', 'bench.deployment_mechanism', '--job'] + args


# --- Producing, reading -----------------------------------------------------


def _produce(config: dict, topic: str, n: int, *, start_index: int,
             rate: float, start_time: float) -> None:
  producer = Producer(dict(config, **{'linger.ms': 20,
                                      'compression.type': 'lz4'}))
  paced = rate > 0 and start_time > time.time() - 1
  # Event i's time is start_time + i / rate: the first event produced here
  # is due at ``start_time``.
  for e in susy.iter_encoded_events(n, seed=11, start_index=start_index,
                                    start_time=start_time - start_index / (
                                        rate or 5000), rate=rate or 5000,
                                    keys=[f'det-{i}' for i in range(64)]):
    if paced:
      wait = e.timestamp_ms / 1000.0 - time.time()
      if wait > 0:
        producer.poll(0)
        time.sleep(wait)
    while True:
      try:
        producer.produce(topic, key=e.key, value=e.value,
                         timestamp=e.timestamp_ms)
        break
      except BufferError:
        producer.poll(0.01)
  producer.flush(120)


def _count(config: dict, topic: str) -> int:
  return sum(admin.end_offsets(config, topic).values())


def _read_rows(config: dict, topic: str) -> list:
  ends = admin.end_offsets(config, topic)
  consumer = Consumer(dict(config, **{
      'group.id': f'bench-{uuid.uuid4().hex[:8]}',
      'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0) for p in ends])
  rows, left = [], sum(ends.values())
  deadline = time.monotonic() + 120
  while left > 0 and time.monotonic() < deadline:
    for m in consumer.consume(num_messages=10_000, timeout=0.5):
      if m.error() is None:
        rows.append(orjson.loads(m.value()))
        left -= 1
  consumer.close()
  return rows


def _wait_rows(config: dict, topic: str, n: int, proc, timeout_s: float):
  deadline = time.monotonic() + timeout_s
  while _count(config, topic) < n:
    if proc.poll() is not None:
      raise RuntimeError(f'the job exited with {proc.returncode}')
    if time.monotonic() > deadline:
      raise TimeoutError(f'{topic}: fewer than {n} rows in {timeout_s} s '
                         f'({_count(config, topic)})')
    time.sleep(0.2)


# --- One mechanism ------------------------------------------------------------


def _switch(mechanism: str, control, model_dir: str, version: int,
            serving: dep.Deployment) -> tuple[float, dep.Deployment]:
  """Makes ``version`` serve; returns (when it was visible, new record)."""
  if mechanism == 'watch':
    # A new newest version (a copy of version 1, renamed in): the watch
    # cannot go back to a version, only on to a newer one.
    newest = max(int(n) for n in os.listdir(model_dir) if n.isdigit()) + 1
    tmp = os.path.join(model_dir, f'.tmp-{newest}')
    shutil.copytree(os.path.join(model_dir, '1'), tmp)
    os.rename(tmp, os.path.join(model_dir, str(newest)))
    return time.time(), serving
  record = serving.successor(primary=version, action=dep.PIN,
                             updated_at=dep.now_iso(), actor='bench')
  control.publish(record)
  return time.time(), record


def measure(mechanism: str, config: dict, bootstrap: str, model_src: str,
            args, log) -> dict:
  run = uuid.uuid4().hex[:6]
  topics = {k: f'bench-mech-{mechanism}-{k}-{run}'
            for k in ('in', 'out', 'dlq', 'ctl')}
  for kind, topic in topics.items():
    admin.create_topic(config, topic, PARTITIONS if kind == 'in' else 1,
                       config=dict(ct.TOPIC_CONFIG) if kind == 'ctl' else
                       {'retention.ms': '-1'})
  model_dir = tempfile.mkdtemp(prefix=f'bench-mech-{mechanism}-')
  # Two versions that score differently: the demo model (1) and the same
  # model negated is not possible without retraining; a copy of it (2)
  # scores the same, so the version number tells them apart.
  for v in (1, 2):
    shutil.copytree(model_src, os.path.join(model_dir, str(v)))
  if mechanism == 'watch':
    shutil.rmtree(os.path.join(model_dir, '2'))
  control = ct.ControlTopic(config, topics['ctl'])
  serving = dep.Deployment(dep.DEFAULT_DEPLOYMENT, 1, action=dep.PIN,
                           updated_at=dep.now_iso(), actor='bench')
  control.publish(serving)
  n = args.events
  _produce(config, topics['in'], n, start_index=0, rate=0,
           start_time=time.time() - n / 5000)
  proc = subprocess.Popen(_job_command(mechanism, bootstrap, config, topics,
                                       model_dir), stdout=log, stderr=log)
  out = {'mechanism': mechanism}
  try:
    started = time.time()
    try:
      _wait_rows(config, topics['out'], 1, proc, args.first_row_timeout_s)
    except TimeoutError:
      # The global-window side input on the local engine (module doc).
      out['never_scored_s'] = args.first_row_timeout_s
      return out
    _wait_rows(config, topics['out'], n, proc, 900)
    out['startup_plus_backlog_s'] = time.time() - started
    rows = _read_rows(config, topics['out'])
    first = min(r['read_time'] for r in rows)
    last = max(r['scored_time'] for r in rows)
    out['backlog_rate'] = len(rows) / max(last - first, 1e-6)
    # Steady input with switches.
    steady_n = int(args.rate * args.switch_every_s * (args.switches + 1))
    producer = threading.Thread(target=_produce, args=(
        config, topics['in'], steady_n), kwargs=dict(
            start_index=n, rate=args.rate, start_time=time.time() + 0.5))
    producer.start()
    time.sleep(args.switch_every_s)
    switches = []
    version = 1
    for _ in range(args.switches):
      version = 2 if version == 1 else 1
      visible, serving = _switch(mechanism, control, model_dir, version,
                                 serving)
      switches.append(visible)
      time.sleep(args.switch_every_s)
    producer.join()
    try:
      _wait_rows(config, topics['out'], n + steady_n, proc, 120)
    except (TimeoutError, RuntimeError) as e:
      # The fixed-window side input on the local engine (module doc).
      out['stalled'] = (f'{_count(config, topics["out"]) - n} of {steady_n} '
                        f'steady events scored: {e}')
      return out
    rows = _read_rows(config, topics['out'])
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
    shutil.rmtree(model_dir, ignore_errors=True)
  steady = sorted((r for r in rows if int(r['event_id'][1:]) >= n),
                  key=lambda r: r['scored_time'])
  latencies, stale = [], 0
  for i, t in enumerate(switches):
    until = switches[i + 1] if i + 1 < len(switches) else float('inf')
    before, switched = None, None
    for r in steady:
      if r['scored_time'] < t:
        before = r['model_version']
        continue
      if r['scored_time'] >= until:
        break
      if switched is None and r['model_version'] != before:
        switched = r['scored_time']
        latencies.append(switched - t)
      elif switched is not None and r['model_version'] == before:
        stale += 1  # the old version again after the switch showed
    if switched is None:
      latencies.append(float('nan'))
  lat = np.asarray([r['scored_time'] - r['event_time'] for r in steady])
  ids = [r['event_id'] for r in rows]
  out.update(switch_latencies=latencies, stale_rows=stale,
             scored_twice=len(ids) - len(set(ids)),
             lost=n + steady_n - len(set(ids)),
             event_latency_p50=float(np.percentile(lat, 50)),
             event_latency_p99=float(np.percentile(lat, 99)),
             steady_rows=len(steady),
             versions=sorted({r['model_version'] for r in steady}))
  return out


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv and argv[0] == '--job':
    return run_job(argv[1:])
  from beam_jobs import demo  # pylint: disable=import-outside-toplevel
  from models import versions  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--mechanisms', default=','.join(MECHANISMS),
                      help='comma-separated, of ' + ', '.join(MECHANISMS) +
                      ' (default: all)')
  parser.add_argument('--events', type=int, default=100_000,
                      help='backlog events for the throughput figure '
                      '(default: 100000)')
  parser.add_argument('--rate', type=float, default=2000,
                      help='events/s while switching (default: 2000)')
  parser.add_argument('--switches', type=int, default=6,
                      help='switches of the primary (default: 6)')
  parser.add_argument('--switch_every_s', type=float, default=6.0,
                      help='seconds between switches (default: 6)')
  parser.add_argument('--first_row_timeout_s', type=float, default=240,
                      help='seconds from the job\'s start to its first '
                      'prediction before a mechanism is reported as never '
                      'scoring (default: 240)')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help='the demo model root; trained if empty (default: '
                      f'{demo.DEFAULT_MODEL_DIR})')
  parser.add_argument('--broker_kind', choices=local_broker.KINDS,
                      default='noida', help='embedded broker (default: noida)')
  args = parser.parse_args(argv)
  chosen = [m.strip() for m in args.mechanisms.split(',') if m.strip()]
  unknown = set(chosen) - set(MECHANISMS)
  if unknown:
    parser.error(f'--mechanisms: unknown {sorted(unknown)}')
  print(demo.ensure_demo_model(args.model_dir), flush=True)
  source = versions.version_dir(args.model_dir,
                                versions.latest_version(args.model_dir))
  broker = local_broker.start(args.broker_kind)
  config = dict(broker.client_config(), log_level=0)
  log = tempfile.NamedTemporaryFile('w', prefix='deployment-mechanism-',
                                    suffix='.log', delete=False)
  results = []
  try:
    for mechanism in chosen:
      print(f'{mechanism}: running (job log {log.name})', flush=True)
      results.append(measure(mechanism, config, config['bootstrap.servers'],
                             source, args, log))
      print(f'  {results[-1]}', flush=True)
  finally:
    local_broker.stop(broker)
    log.close()
  print(f'\n{"mechanism":16} {"backlog ev/s":>12} {"switch p50":>11} '
        f'{"switch max":>11} {"missed":>6} {"event p50":>10} '
        f'{"event p99":>10} {"stale":>6} {"twice":>6} {"lost":>5}')
  for r in results:
    if 'never_scored_s' in r:
      print(f'{r["mechanism"]:16} no prediction within '
            f'{r["never_scored_s"]:.0f} s of the job\'s start')
      continue
    if 'stalled' in r:
      print(f'{r["mechanism"]:16} {r["backlog_rate"]:12,.0f}  stalled while '
            f'switching: {r["stalled"]}')
      continue
    lat = np.asarray(r['switch_latencies'])
    ok = lat[np.isfinite(lat)]
    print(f'{r["mechanism"]:16} {r["backlog_rate"]:12,.0f} '
          f'{np.median(ok) if len(ok) else float("nan"):10.2f}s '
          f'{ok.max() if len(ok) else float("nan"):10.2f}s '
          f'{int((~np.isfinite(lat)).sum()):6d} '
          f'{r["event_latency_p50"] * 1000:8.0f}ms '
          f'{r["event_latency_p99"] * 1000:8.0f}ms {r["stale_rows"]:6d} '
          f'{r["scored_twice"]:6d} {r["lost"]:5d}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
