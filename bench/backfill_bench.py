"""Backfill throughput against the raw limits of the same machine, in one run.

Writes N SUSY-like events as JSON lines (cached in --workdir) and a small
SavedModel (18 -> 32 -> 1 MLP, random weights), then measures:

  parse_only   the file read in 4 MB blocks, split into lines, orjson.loads
               per line: the floor of any JSON pipeline in Python.
  parse_stage  RecordParser.parse on 1000-line chunks: the job's own parse
               and validation, without Beam.
  model        the SavedModel signature on 4096-row float batches (rows/s).
  backfill     python -m beam_jobs.backfill on the file -> Parquet, on the
               FnApiRunner in this process (--engine in_memory) and/or with
               worker processes (--engine multi_processing): events/s of the
               pipeline run (from p.run() to its end, as the job's summary
               line reports it), and of the whole backfill.run() call
               (model check, input listing, graph construction; the imports
               are done by then).

Each figure is the best of --repeat runs; the load average before and after
is printed, because other work on a shared machine moves these numbers.
The outputs are checked (Parquet rows == events) so a fast wrong run cannot
pass for a fast run.

  python -m bench.backfill_bench                          # 1M events
  python -m bench.backfill_bench --n 200000 --repeat 3
  python -m bench.backfill_bench --engine in_memory --engine multi_processing
  python -m bench.backfill_bench --susy_csv               # + 1M-row SUSY CSV

Measured on the 2-core development machine, 2026-11-24 (load average
0.7-1.6 during these runs), 1M events, best of 3:

  parse_only    630-640k events/s;  parse_stage 290-300k events/s;
  model         13-15M rows/s
  backfill      in process: 8.6-9.6 s = 104-116k events/s (0.16-0.18 of
                parse_only, ~0.4 of parse_stage); 13.7-18.0 s (55-73k)
                before the changes below, 21.6 s on a slower hour.
  multi_processing (2 workers): 19.7 s = 51k events/s: slower, every
                element between stages goes through the runner process over
                gRPC, and on two cores the runner competes with both workers.
  susy_csv      1M-row UCI-format CSV (.gz, one split): 10.4 s = 96k
                events/s (15.3-16.6 s before).

What made the difference (each measured on the whole run):
  * The FnApiRunner copies a PCollection several times between stages
    (one buffer per PCollection, then protobuf copies), at ~1-2 GB/s on this
    VM: ~300 MB of packed events into the window join cost ~3 s. A batch
    now scores first and joins the window features to the scores (ids,
    keys, times, scores: ~60 MB), the aggregates are a dict side input
    (no Flatten stage, no shuffle of the events): 17.5 -> 11.7-12.5 s.
  * Parse: msgspec decodes JSON objects with every schema field straight
    into typed values (syntax, field set and types checked in C), columns
    from one flat iterator: ~4.0 -> ~2.3 us/event: -> 9-9.5 s.
  * The file sink encodes a few blobs per window and bundle instead of
    one or two per 1000-row batch; Parquet dictionaries only for repeating
    strings (0.82 -> 0.30 s for the Parquet writes).

Where the in-process time goes now (py-spy): read + parse + score + slim
~5 s (parse ~2.3 us/event), join + prediction rows + Arrow encoding
~1.3 s, Parquet writes ~1.1 s, aggregation ~0.5 s; the rest is the
runner moving data between those stages.
"""

import argparse
import datetime
import gc
import glob
import json
import logging
import os
import shutil
import sys
import time

import numpy as np
import orjson

from models import susy

CHUNK = 1000


def _load() -> str:
  one, five, _ = os.getloadavg()
  return f'load average {one:.2f} (1 min), {five:.2f} (5 min)'


def write_events(path: str, n: int, start_time: float) -> None:
  meta_path = path + '.meta.json'
  meta = {'n': n, 'start_time': start_time}
  if os.path.exists(path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      if json.load(f) == meta:
        return
  t0 = time.perf_counter()
  with open(path + '.tmp', 'wb') as out:
    for e in susy.iter_encoded_events(n, seed=0, start_time=start_time):
      out.write(e.value)
      out.write(b'\n')
  os.replace(path + '.tmp', path)
  with open(meta_path, 'w') as f:
    json.dump(meta, f)
  print(f'wrote {n} events to {path} ({os.path.getsize(path) / 1e6:.0f} MB) '
        f'in {time.perf_counter() - t0:.1f} s')


def write_model(root: str) -> str:
  """An 18 -> 32 -> 1 MLP as a complete version 1 under ``root``."""
  import tensorflow as tf
  path = os.path.join(root, '1')
  if os.path.exists(os.path.join(path, 'metrics.json')):
    return root
  rng = np.random.default_rng(0)

  class Mlp(tf.Module):

    def __init__(self):
      super().__init__()
      self.w1 = tf.Variable(rng.normal(0, 0.3, (18, 32)).astype(np.float32))
      self.b1 = tf.Variable(np.zeros(32, np.float32))
      self.w2 = tf.Variable(rng.normal(0, 0.3, (32, 1)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 18], tf.float32)])
    def serve(self, features):
      hidden = tf.nn.relu(tf.matmul(features, self.w1) + self.b1)
      return {'score': tf.sigmoid(tf.matmul(hidden, self.w2))[:, 0]}

  module = Mlp()
  tf.saved_model.save(module, path, signatures={'serving_default':
                                                module.serve})
  with open(os.path.join(path, 'metrics.json'), 'w') as f:
    f.write('{}')
  return root


def bench_parse_only(path: str) -> float:
  loads = orjson.loads
  n = 0
  t0 = time.perf_counter()
  with open(path, 'rb') as f:
    pending = b''
    while True:
      block = f.read(4 << 20)
      if not block:
        break
      lines = (pending + block).split(b'\n')
      pending = lines.pop()
      for line in lines:
        loads(line)
      n += len(lines)
  return n / (time.perf_counter() - t0)


def bench_parse_stage(path: str) -> float:
  from transforms import schema as schema_lib
  from transforms.events import RawRecord
  from transforms.parse import RecordParser
  parser = RecordParser(schema_lib.susy_schema(), 'json')
  source = f'file:{path}'
  n = 0
  t0 = time.perf_counter()
  with open(path, 'rb') as f:
    number = 1
    pending = b''
    while True:
      block = f.read(4 << 20)
      if not block:
        break
      lines = (pending + block).split(b'\n')
      pending = lines.pop()
      for i in range(0, len(lines), CHUNK):
        chunk = [RawRecord(source, number + j, line)
                 for j, line in enumerate(lines[i:i + CHUNK])]
        parser.parse(chunk)
      number += len(lines)
      n += len(lines)
  return n / (time.perf_counter() - t0)


def bench_model(model_root: str) -> float:
  import tensorflow as tf
  fn = tf.saved_model.load(os.path.join(model_root, '1')).signatures[
      'serving_default']
  batch = tf.constant(susy.generate(4096, seed=1).features)
  fn(features=batch)  # warm up
  calls = 200
  t0 = time.perf_counter()
  for _ in range(calls):
    fn(features=batch)['score'].numpy()
  return calls * 4096 / (time.perf_counter() - t0)


def run_backfill(args, input_path: str, model_root: str, out: str,
                 extra: list, expected_rows: int, parquet_check=True) -> dict:
  from beam_jobs import backfill
  shutil.rmtree(out, ignore_errors=True)
  argv = ['--input', input_path, '--model_dir', model_root,
          '--output_path', os.path.join(out, 'predictions'),
          '--output_file_format', 'parquet',
          '--dead_letter_path', os.path.join(out, 'dead-letters'),
          '--progress_interval_s', str(args.progress_interval_s), *extra]
  gc.collect()
  t0 = time.perf_counter()
  result = backfill.run(argv)
  wall = time.perf_counter() - t0
  summary = dict(result.summary.as_dict(), wall=wall)
  if parquet_check:
    import pyarrow.parquet as pq
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(
        os.path.join(out, 'predictions', '*.parquet')))
    if rows != expected_rows:
      raise AssertionError(f'{rows} prediction rows, expected '
                           f'{expected_rows}')
    summary['rows'] = rows
  return summary


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=1_000_000)
  parser.add_argument('--workdir', default='/tmp/kbi-backfill-bench')
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--engine', action='append',
                      choices=('in_memory', 'multi_processing'),
                      help='repeatable (default: in_memory)')
  parser.add_argument('--workers', type=int, default=2,
                      help='--direct_num_workers for multi_processing')
  parser.add_argument('--susy_csv', action='store_true',
                      help='also a backfill of an --n row SUSY CSV (.gz)')
  parser.add_argument('--skip_limits', action='store_true')
  parser.add_argument('--progress_interval_s', type=float, default=0)
  args = parser.parse_args(argv)
  engines = args.engine or ['in_memory']
  logging.basicConfig(level=logging.WARNING)
  logging.getLogger('beam_jobs.backfill').setLevel(logging.INFO)
  os.makedirs(args.workdir, exist_ok=True)
  # Event times two days ago: inside the schema's accepted range.
  start_time = float(int(time.time() // 86400 * 86400) - 2 * 86400)
  events = os.path.join(args.workdir, f'events-{args.n}.jsonl')
  write_events(events, args.n, start_time)
  model_root = write_model(os.path.join(args.workdir, 'model'))
  print(f'start: {_load()}; {os.cpu_count()} CPUs')

  results = {}
  if not args.skip_limits:
    results['parse_only'] = max(bench_parse_only(events)
                                for _ in range(args.repeat))
    results['parse_stage'] = max(bench_parse_stage(events)
                                 for _ in range(args.repeat))
    results['model'] = max(bench_model(model_root)
                           for _ in range(args.repeat))
    print(f'parse_only   {results["parse_only"]:>12,.0f} events/s  '
          f'(orjson.loads per line)')
    print(f'parse_stage  {results["parse_stage"]:>12,.0f} events/s  '
          f'(RecordParser.parse, {CHUNK}-line chunks)')
    print(f'model        {results["model"]:>12,.0f} rows/s    '
          f'(signature on 4096-row batches)')

  for engine in engines:
    extra = []
    if engine == 'multi_processing':
      extra = ['--direct_num_workers', str(args.workers),
               '--direct_running_mode', 'multi_processing']
    runs = [run_backfill(args, events, model_root,
                         os.path.join(args.workdir, 'out'), extra, args.n)
            for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r['seconds'])
    rate = args.n / best['seconds']
    line = (f'backfill     {rate:>12,.0f} events/s  ({engine}: pipeline '
            f'{best["seconds"]:.1f} s, run() {best["wall"]:.1f} s = '
            f'{args.n / best["wall"]:,.0f} events/s; {best["rows"]} Parquet '
            f'rows')
    if 'parse_only' in results:
      line += (f'; {rate / results["parse_only"]:.2f} of parse_only, '
               f'{rate / results["parse_stage"]:.2f} of parse_stage')
    print(line + ')')

  if args.susy_csv:
    csv_path = os.path.join(args.workdir, f'SUSY-{args.n}.csv.gz')
    if not os.path.exists(csv_path):
      t0 = time.perf_counter()
      susy.write_susy_csv(susy.generate(args.n, seed=0), csv_path)
      print(f'wrote {csv_path} ({os.path.getsize(csv_path) / 1e6:.0f} MB) '
            f'in {time.perf_counter() - t0:.1f} s')
    when = datetime.datetime.fromtimestamp(start_time, datetime.timezone.utc)
    r = run_backfill(args, csv_path, model_root,
                     os.path.join(args.workdir, 'out-csv'),
                     ['--schema', 'susy_csv',
                      '--default_event_time', when.isoformat()], args.n)
    print(f'susy_csv     {args.n / r["seconds"]:>12,.0f} events/s  (pipeline '
          f'{r["seconds"]:.1f} s, run() {r["wall"]:.1f} s; read '
          f'{r["records_read"]}, scored {r["events_scored"]}, dead letters '
          f'{r["dead_letters"]}, {r["rows"]} Parquet rows)')
  print(f'end: {_load()}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
