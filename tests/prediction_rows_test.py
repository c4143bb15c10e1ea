"""Prediction rows: one flat record per scored event, for every sink."""

import math

import numpy as np
import orjson
import pyarrow as pa

from transforms.events import ScoredBatch
from transforms import prediction_rows as output, schema
from transforms.events import EventBatch
from transforms.sinks.files import arrow_schema

SUSY = schema.resolve('susy')


def scored_batch(window=(1800.0, 1860.0), labels=(1.0, math.nan, 0.0)):
  n = len(labels)
  w = len(SUSY.window_features)
  rng = np.random.default_rng(3)
  batch = EventBatch(
      source='kafka:t/0', positions=np.arange(n), raw=[b'{}'] * n,
      ids=[f'e{i}' for i in range(n)], keys=['det-1', 'det-2', 'det-1'][:n],
      event_time=1800.5 + np.arange(n), features=np.zeros((n, 18), np.float32),
      window_values=np.zeros((n, w), np.float32),
      labels=np.asarray(labels, dtype=np.float64),
      read_time=np.full(n, 1900.25), window=window,
      win_count=np.arange(1, n + 1), win_mean=rng.normal(size=(n, w)).astype(
          np.float32), win_std=rng.random((n, w)).astype(np.float32),
      late=np.asarray([False, True, False][:n]))
  return ScoredBatch(batch, np.asarray([0.25, 0.5, 0.75][:n], np.float32), 7,
                     1901.0)


def test_rows_carry_every_column_in_order_with_the_batch_values():
  scored = scored_batch()
  b = scored.batch
  rows = output.prediction_rows(scored, SUSY.window_features, True)
  assert [list(r) for r in rows] == [[n for n, _ in output.output_columns(
      SUSY)]] * 3
  for i, row in enumerate(rows):
    assert row['event_id'] == f'e{i}' and row['key'] == b.keys[i]
    assert (row['window_start'], row['window_end']) == (1800.0, 1860.0)
    assert row['score'] == float(scored.scores[i])
    assert row['model_version'] == 7 and row['scored_time'] == 1901.0
    assert row['event_time'] == 1800.5 + i and row['read_time'] == 1900.25
    assert row['late'] is bool(b.late[i]) and row['win_count'] == i + 1
    for j, name in enumerate(SUSY.window_features):
      assert row[f'win_mean_{name}'] == float(b.win_mean[i, j])
      assert row[f'win_std_{name}'] == float(b.win_std[i, j])
  assert [r['label'] for r in rows] == [1.0, None, 0.0]
  # JSON-ready as they are (the Kafka sink's records).
  assert [orjson.loads(v) for _, v in output.kafka_records(rows)] == rows


def test_global_window_bounds_are_null_and_columns_match_the_rows():
  scored = scored_batch(window=None)
  rows = output.PredictionRows.of(scored, SUSY.window_features, True)
  assert rows[0]['window_start'] is None and rows[0]['window_end'] is None
  arrow = arrow_schema(output.output_columns(SUSY))
  assert rows.to_record_batch(arrow).equals(
      pa.RecordBatch.from_pylist(rows.rows(), schema=arrow))
  assert rows[1:] == rows.rows()[1:]
