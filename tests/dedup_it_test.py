"""Effectively-once: ids already scored are skipped, seeded from the output."""

import time

import pytest

from kafka_helpers import produce
from transforms import dedup


def test_seen_ids_mask_remembers_and_forgets_after_the_horizon():
  seen = dedup.SeenIds(horizon_s=100)
  seen.add_all(['a'], now=1000)
  mask = seen.keep_new(['a', 'b', 'b', 'c'], now=1010)
  assert mask.tolist() == [False, True, False, True]
  assert len(seen) == 3
  # 'a' (seen at 1000) is forgotten after 1100; 'b', 'c' (1010) after 1110.
  assert seen.keep_new(['a', 'b'], now=1105).tolist() == [True, False]


@pytest.mark.it
def test_read_recent_keys_reads_only_the_horizon(broker, make_topic,
                                                 known_broker_bug):
  known_broker_bug('tansu', 'offsets_for_times answers 0: everything is read')
  topic = make_topic(2)
  now_ms = int(time.time() * 1000)
  old = [(i % 2, f'old{i}'.encode(), b'v', None, now_ms - 3_600_000)
         for i in range(10)]
  recent = [(i % 2, f'new{i}'.encode(), b'v', None, now_ms - 1000)
            for i in range(10)]
  produce(broker, topic, old + recent)
  keys = dedup.read_recent_keys(broker.client_config(), topic,
                                time.time() - 60)
  assert keys == {f'new{i}' for i in range(10)}
