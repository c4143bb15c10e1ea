"""The ingest job on JSON-lines files: spans of tf.Example that training reads.

Kafka input is covered in ingest_examples_it_test.py.
"""

import collections
import json
import os

import numpy as np
import orjson
import pytest
import tensorflow as tf

from beam_jobs import ingest_examples as ingest
from models import examples_io, susy, train

N_EVENTS = 3000
MALFORMED_FRACTION = 0.01
N_UNLABELLED = 20


def _split_files(span_dir: str, split: str) -> list[str]:
  return sorted(tf.io.gfile.glob(os.path.join(span_dir, f'Split-{split}',
                                              'data_tfrecord-*.gz')))


def _read_examples(span_dir: str, split: str) -> list[tf.train.Example]:
  files = _split_files(span_dir, split)
  return [tf.train.Example.FromString(r.numpy()) for r in
          tf.data.TFRecordDataset(files, compression_type='GZIP')]


def _value(example, key):
  f = example.features.feature[key]
  return (f.float_list.value or f.int64_list.value or f.bytes_list.value)[0]


@pytest.fixture(scope='module')
def event_files(tmp_path_factory):
  """Two JSONL files: labelled events with 1% malformed lines, and events
  without a label (dead letters for training)."""
  root = tmp_path_factory.mktemp('events')
  malformed = {}
  with open(root / 'events-a.jsonl', 'wb') as f:
    for e in susy.iter_encoded_events(N_EVENTS, seed=5,
                                      malformed_fraction=MALFORMED_FRACTION):
      f.write(e.value + b'\n')
      if e.malformed:
        malformed[e.key.decode()] = e.malformed
  unlabelled = susy.to_events(susy.generate(N_UNLABELLED, seed=6),
                              start_index=N_EVENTS)
  with open(root / 'events-b.jsonl', 'wb') as f:
    f.write(b'\n')  # blank lines are skipped, not dead letters
    for event in unlabelled:
      del event['label']
      f.write(orjson.dumps(event) + b'\n')
  return {'glob': str(root / 'events-*.jsonl'), 'malformed': malformed,
          'unlabelled': {e['event_id'] for e in unlabelled}}


@pytest.fixture(scope='module')
def ingested(event_files, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('data'))
  first = ingest.run(['--input', event_files['glob'], '--output', out,
                      '--window_size_s', '1'])
  second = ingest.run(['--input', event_files['glob'], '--output', out,
                       '--window_size_s', '1'])
  return {'out': out, 'runs': (first, second)}


def test_flags_are_checked_before_the_job_starts(event_files, tmp_path):
  base = ['--output', str(tmp_path / 'data')]
  cases = [
      (['--input', event_files['glob'], '--splits', 'train:2,eval'],
       '--splits'),
      (['--input', event_files['glob'], '--splits', 'train:0'], '--splits'),
      (['--input', event_files['glob'], '--splits', 'a:1,a:2'], '--splits'),
      (['--input', event_files['glob'], '--split_by', 'no_such'],
       '--split_by'),
      (['--input', str(tmp_path / 'none-*.jsonl')], 'matches no files'),
      (['--input', event_files['glob'], '--input_topic', 't'],
       'exactly one of --input'),
      (['--input', event_files['glob'], '--max_records', '5'],
       '--max_records is for --input_topic'),
      (['--input', event_files['glob'], '--num_shards', '0'],
       '--num_shards'),
      (['--input', event_files['glob'], '--output_topic', 'x'],
       '--output_topic is a scoring-job flag'),
  ]
  for extra, message in cases:
    with pytest.raises(ValueError, match=message):
      ingest.run(base + extra)
  with pytest.raises(ValueError, match='--output is required'):
    ingest.run(['--input', event_files['glob']])


def test_splits_and_hash_buckets_are_stable():
  assert ingest.parse_splits('train:2,eval:1') == [('train', 2), ('eval', 1)]
  assert ingest.bucket_table([('train', 2), ('eval', 1)]) == [0, 0, 1]
  # md5-based: the same on every run, host and Python version.
  assert [ingest.hash_bucket(f'e{i}', 3) for i in range(10)] == [
      0, 1, 1, 0, 1, 2, 0, 2, 0, 2]
  assert ingest.hash_bucket('det-0', 1000) == 640


def test_span_holds_every_labelled_event_once_in_its_hash_split(
    ingested, event_files):
  out = ingested['out']
  first = ingested['runs'][0]
  assert first.span == 0
  assert first.span_dir == examples_io.version_dir(out, 0, 0)
  assert examples_io.list_spans(out) == [0, 1]
  valid = {f'e{i}' for i in range(N_EVENTS)} - set(event_files['malformed'])
  data = susy.generate(N_EVENTS, seed=5)
  seen = collections.Counter()
  for split, bucket_ids in (('train', (0, 1)), ('eval', (2,))):
    examples = _read_examples(first.span_dir, split)
    for ex in examples:
      eid = _value(ex, 'event_id').decode()
      seen[eid] += 1
      assert ingest.hash_bucket(eid, 3) in bucket_ids, (split, eid)
      i = int(eid[1:])
      row = [_value(ex, n) for n in susy.FEATURE_NAMES]
      np.testing.assert_array_equal(np.float32(row), data.features[i])
      assert _value(ex, 'label') == data.labels[i]
      assert _value(ex, 'detector').decode() == susy.DEFAULT_KEYS[i % 4]
      t_ms = _value(ex, 'event_time_ms')
      assert t_ms == round((susy.DEFAULT_START_TIME + i / 1000) * 1000)
      start, end = _value(ex, 'window_start_ms'), _value(ex, 'window_end_ms')
      assert end - start == 1000 and start <= t_ms < end
      assert _value(ex, 'win_count') >= 1
  assert set(seen) == valid and max(seen.values()) == 1


def test_window_features_match_the_events_of_their_window(ingested):
  span_dir = ingested['runs'][0].span_dir
  examples = (_read_examples(span_dir, 'train')
              + _read_examples(span_dir, 'eval'))
  by_window = collections.defaultdict(list)
  for ex in examples:
    key = (_value(ex, 'detector'), _value(ex, 'window_start_ms'))
    by_window[key].append(ex)
  for group in by_window.values():
    group.sort(key=lambda ex: _value(ex, 'event_time_ms'))
    # win_count counts the key's events in the window so far (time order),
    # over all events, not only this span's labelled ones: it ends at the
    # group size unless some of the window's events were dead letters.
    counts = [_value(ex, 'win_count') for ex in group]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    pts = [_value(ex, 'lepton_1_pT') for ex in group]
    last = group[-1]
    if counts[-1] == len(group):
      assert _value(last, 'win_mean_lepton_1_pT') == pytest.approx(
          np.mean(np.float64(pts)), rel=1e-5)


def test_span_is_in_tfx_layout_and_reads_back_through_tfxio(
    ingested, event_files):
  """The span's tree, its schema.pbtxt, and its statistics checked against
  numpy on the rows TFXIO reads back with that schema."""
  from tensorflow_metadata.proto.v0 import statistics_pb2
  from tfx_bsl.public import tfxio
  span_dir = ingested['runs'][0].span_dir
  tree = sorted(os.path.relpath(os.path.join(d, f), ingested['out'])
                for d, _, files in os.walk(os.path.dirname(span_dir))
                for f in files)
  print('\n' + '\n'.join(tree))
  assert tree == [
      'span-0/version-0/Split-eval/data_tfrecord-00000-of-00002.gz',
      'span-0/version-0/Split-eval/data_tfrecord-00001-of-00002.gz',
      'span-0/version-0/Split-train/data_tfrecord-00000-of-00002.gz',
      'span-0/version-0/Split-train/data_tfrecord-00001-of-00002.gz',
      'span-0/version-0/schema/schema.pbtxt',
      'span-0/version-0/statistics/Split-eval/FeatureStats.pb',
      'span-0/version-0/statistics/Split-train/FeatureStats.pb']
  schema = examples_io.read_schema(ingested['out'], 0)
  with open(os.path.join(span_dir, 'schema', 'schema.pbtxt')) as f:
    print(''.join(f.readlines()[:16]))
  assert examples_io.model_inputs(schema) == list(susy.FEATURE_NAMES)
  assert 'kbi:splits=train:2,eval:1' in schema.annotation.tag

  n_valid = N_EVENTS - len(event_files['malformed'])
  data = susy.generate(N_EVENTS, seed=5)
  counts = {}
  for split in ('train', 'eval'):
    source = tfxio.TFExampleRecord(_split_files(span_dir, split),
                                   schema=schema)
    batches = list(source.RecordBatches(tfxio.RecordBatchesOptions(
        batch_size=1000, shuffle=False, num_epochs=1)))
    columns = {name: np.concatenate([
        b.column(name).flatten().to_numpy(zero_copy_only=False)
        for b in batches]) for name in batches[0].schema.names}
    n = len(columns['event_id'])
    counts[split] = n
    # The rows are the events: the features as generated (float32).
    index = np.array([int(e[1:]) for e in columns['event_id'].astype(str)])
    np.testing.assert_array_equal(columns['lepton_1_pT'],
                                  data.features[index, 0])
    listed = examples_io.read_statistics(ingested['out'], 0, split)
    (stats,) = listed.datasets
    if split == 'train':
      print(str(listed)[:1200])
    assert stats.name == split and stats.num_examples == n
    assert [f.path.step[0] for f in stats.features] == [
        f.name for f in schema.feature]
    for feature in stats.features:
      name = feature.path.step[0]
      if feature.type == statistics_pb2.FeatureNameStatistics.STRING:
        values, value_counts = np.unique(columns[name].astype(str),
                                         return_counts=True)
        string = feature.string_stats
        assert string.common_stats.num_non_missing == n
        if name == 'detector':
          assert string.unique == 4
          assert sorted((v.value, v.frequency) for v in string.top_values) \
              == sorted(zip(values, value_counts.astype(float)))
        continue
      x = columns[name].astype(np.float64)
      num = feature.num_stats
      assert num.common_stats.num_non_missing == n, name
      assert num.common_stats.num_missing == 0, name
      assert num.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-9), name
      assert num.std_dev == pytest.approx(x.std(), rel=1e-6, abs=1e-9), name
      assert (num.min, num.max) == (x.min(), x.max()), name
      quantiles = next(h for h in num.histograms
                       if h.type == statistics_pb2.Histogram.QUANTILES)
      ordered = np.sort(x)
      for k, bucket in enumerate(quantiles.buckets[:-1]):
        rank = np.searchsorted(ordered, bucket.high_value, side='right') / n
        assert rank >= (k + 1) / 10 - 0.01 - 1e-9, (name, k)
        assert np.searchsorted(ordered, bucket.high_value) / n <= (
            (k + 1) / 10 + 0.01 + 1e-9), (name, k)
  assert sum(counts.values()) == n_valid
  assert abs(counts['train'] / n_valid - 2 / 3) < 0.03
  labels = {s: examples_io.read_statistics(ingested['out'], 0, s)
            for s in counts}
  positives = sum(
      next(f for f in labels[s].datasets[0].features
           if f.path.step == ['label']).num_stats.mean * counts[s]
      for s in counts)
  keep = np.asarray([f'e{i}' not in event_files['malformed']
                     for i in range(N_EVENTS)])
  assert round(positives) == int(data.labels[keep].sum())


def test_dead_letters_carry_malformed_and_unlabelled_events(
    ingested, event_files):
  letters_dir = os.path.join(ingested['out'], 'dead-letters', 'span-0')
  letters = []
  for name in os.listdir(letters_dir):
    with open(os.path.join(letters_dir, name), 'rb') as f:
      letters += [orjson.loads(line) for line in f if line.strip()]
  unlabelled = [d for d in letters if d['event_id'] in
                event_files['unlabelled']]
  assert len(unlabelled) == N_UNLABELLED
  assert {(d['stage'], d['reason']) for d in unlabelled} == {
      ('validate', 'missing_field')}
  assert all(d['source'].startswith('file:') and
             d['source'].endswith('events-b.jsonl') for d in unlabelled)
  assert len(letters) == N_UNLABELLED + len(event_files['malformed'])


def test_second_run_writes_the_next_span_with_the_same_splits(ingested):
  first, second = ingested['runs']
  assert second.span == 1
  for split in ('train', 'eval'):
    ids = lambda d: sorted(_value(e, 'event_id') for e in
                           _read_examples(d, split))
    assert ids(first.span_dir) == ids(second.span_dir)


def test_training_reads_the_span(ingested, tmp_path):
  assert train.main(['--data', ingested['out'], '--model_dir',
                     str(tmp_path / 'models'), '--config', 'logreg',
                     '--epochs', '1', '--spans', '0']) == 0
  x, y = examples_io.read_arrays(ingested['out'], 'eval', spans=[0])
  assert x.shape[1] == 18 and set(np.unique(y)) == {0, 1}


def test_split_by_key_keeps_each_detector_in_one_split(event_files, tmp_path):
  out = str(tmp_path / 'data')
  done = ingest.run(['--input', event_files['glob'], '--output', out,
                     '--split_by', 'detector', '--splits', 'a:1,b:1',
                     '--span', '4', '--num_shards', '1'])
  assert done.span == 4
  detectors = {}
  for split in ('a', 'b'):
    for ex in _read_examples(done.span_dir, split):
      detectors.setdefault(_value(ex, 'detector'), set()).add(split)
  assert len(detectors) == 4
  assert all(len(splits) == 1 for splits in detectors.values())
  with pytest.raises(ValueError, match='--span 4: .* exists already'):
    ingest.run(['--input', event_files['glob'], '--output', out,
                '--span', '4'])


def test_input_without_examples_leaves_no_span(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_bytes(b'not json\n{"event_id": "x"}\n')
  out = str(tmp_path / 'data')
  done = ingest.run(['--input', str(path), '--output', out])
  assert done.span == 0 and done.span_dir is None
  assert examples_io.list_spans(out) == []
  assert not os.path.exists(os.path.join(out, 'span-0'))
  letters = os.listdir(os.path.join(out, 'dead-letters', 'span-0'))
  assert len(letters) == 1


def test_the_command_line_reports_the_span_it_wrote(event_files, tmp_path,
                                                    capsys):
  # Through main(), as `python -m beam_jobs.ingest_examples` runs: the
  # report reads the split counts back from the span's statistics.
  out = str(tmp_path / 'data')
  assert ingest.main(['--input', event_files['glob'], '--output', out,
                      '--splits', 'train:3,eval:1', '--span', '2']) == 0
  printed = capsys.readouterr().out.strip().splitlines()[-1]
  span_dir = examples_io.version_dir(out, 2)
  train = len(_read_examples(span_dir, 'train'))
  evaluation = len(_read_examples(span_dir, 'eval'))
  dead = len(event_files['malformed']) + N_UNLABELLED
  assert printed == (f'span 2: {train + evaluation} examples at {span_dir} '
                     f'(train: {train}, eval: {evaluation}), {dead} dead '
                     f'letters')
  assert train + evaluation + dead == N_EVENTS + N_UNLABELLED
