"""Deployment records and canary routing: pure functions, no broker."""

import collections
import json

import numpy as np
import pytest

import model_fixtures as mf
from models import deployments as dep
from models import routing


def record(**kw) -> dep.Deployment:
  fields = dict(deployment='default', primary=1, action=dep.PIN,
                updated_at='2026-12-01T00:00:00.000Z', actor='t@h')
  fields.update(kw)
  return dep.Deployment(**fields)


def test_record_roundtrips_through_json_and_keeps_one_previous():
  first = record()
  second = first.successor(canary=2, canary_fraction=0.2, shadow=3,
                           action=dep.CANARY, reason='try 2')
  third = second.successor(primary=2, canary=None, canary_fraction=0.0,
                           action=dep.PROMOTE,
                           gate={'decision': 'accept', 'metric': 'auc'})
  decoded = dep.decode(dep.encode(third))
  assert decoded == third
  assert decoded.previous['canary'] == 2 and 'previous' not in (
      decoded.previous)
  assert decoded.gate['decision'] == 'accept'
  assert third.describe() == 'primary 2, shadow 3'
  assert second.describe() == 'primary 1, canary 2 (20%), shadow 3'
  assert second.serving() == (1, 2, 0.2, 3)
  assert second.role_of(3) == 'shadow' and second.role_of(9) is None
  doc = json.loads(dep.encode(third))
  assert doc['format'] == dep.FORMAT and doc['primary'] == 2
  # The status page marks roles from top-level integer fields.
  assert {k for k, v in doc.items() if isinstance(v, int) and
          not isinstance(v, bool)} == {'primary', 'shadow', 'format'}


@pytest.mark.parametrize('kw, message', [
    (dict(primary=-1), 'primary must be a version'),
    (dict(primary='2'), 'primary must be a version'),
    (dict(primary=True), 'primary must be a version'),
    (dict(canary=2), r'canary_fraction must be in \(0, 1\]'),
    (dict(canary=2, canary_fraction=1.5), 'canary_fraction must be in'),
    (dict(canary_fraction=0.1), 'canary_fraction without a canary'),
    (dict(canary=1, canary_fraction=0.1), 'both primary and canary'),
    (dict(shadow=1), 'both primary and shadow'),
    (dict(action='deploy'), 'action must be one of'),
    (dict(deployment=''), 'deployment name'),
])
def test_bad_records_are_refused_naming_the_field(kw, message):
  with pytest.raises(dep.DeploymentError, match=message):
    record(**kw)


@pytest.mark.parametrize('value, message', [
    (b'not json', 'not a JSON record'),
    (b'[1, 2]', 'is a JSON object'),
    (b'{"deployment": "d"}', "field 'primary' is missing"),
    (b'{"deployment": "d", "primary": 1, "colour": "red"}', 'unknown fields'),
    (b'{"deployment": "d", "primary": 1, "format": 99}', 'newer than'),
])
def test_unreadable_values_are_refused(value, message):
  with pytest.raises(dep.DeploymentError, match=message):
    dep.decode(value)
  assert dep.decode(None) is None  # a tombstone


def test_versions_are_checked_with_the_one_completeness_rule(tmp_path):
  root = str(tmp_path)
  mf.write_versioned(root, 1)
  mf.write_versioned(root, 2, complete=False)
  dep.check_versions(record(), root)
  with pytest.raises(dep.DeploymentError,
                     match='canary 2: .* is not a complete version'):
    dep.check_versions(record(canary=2, canary_fraction=0.5), root)
  with pytest.raises(dep.DeploymentError,
                     match=r'shadow 7: no version 7 under .*\(complete '
                     r'versions: \[1\]\)'):
    dep.check_versions(record(shadow=7), root)


def test_routing_is_stable_proportional_and_monotonic():
  keys = [f'key-{i}' for i in range(20_000)]
  buckets = [routing.bucket(k) for k in keys]
  # Not Python's salted hash: fixed values, the same in every process.
  assert routing.bucket('det-1') == routing.bucket('det-1')
  assert [routing.bucket(k) for k in ('a', 'det-1', 'turbine-7')] == [
      int.from_bytes(__import__('hashlib').blake2b(
          k.encode(), digest_size=8).digest(), 'big') % 10_000
      for k in ('a', 'det-1', 'turbine-7')]
  for fraction in (0.01, 0.1, 0.2, 0.5):
    share = np.mean([b < routing.threshold(fraction) for b in buckets])
    assert abs(share - fraction) < 0.01, (fraction, share)
  # A key in the canary at 10% stays in it at 20%.
  at10 = {k for k in keys if routing.in_canary(k, 0.1)}
  at20 = {k for k in keys if routing.in_canary(k, 0.2)}
  assert at10 < at20


def test_canary_mask_routes_by_key_and_by_id_without_key():
  keys = ['a'] * 5 + ['b'] * 5
  ids = [f'e{i}' for i in range(10)]
  mask = routing.canary_mask(keys, ids, 0.5)
  assert mask[:5].all() or not mask[:5].any()   # one key, one side
  assert mask[5:].all() or not mask[5:].any()
  assert routing.canary_mask(keys, ids, 0.0).sum() == 0
  assert routing.canary_mask(keys, ids, 1.0).all()
  # No key: by event id, so empty keys are spread, not all on one side.
  empty = [''] * 1000
  ids = [f'e{i}' for i in range(1000)]
  share = routing.canary_mask(empty, ids, 0.3).mean()
  assert 0.25 < share < 0.35
  counts = collections.Counter(routing.canary_mask(['k'] * 3, ids[:3],
                                                   0.3).tolist())
  assert len(counts) == 1
