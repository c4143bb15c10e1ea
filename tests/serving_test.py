"""Scoring under a deployment record: primary, canary, shadow (no broker).

The handler serves a fixed record here (the path RunInference's side input
takes); tests/deployments_it_test.py covers the control topic follower on
a running job.
"""

import logging

import numpy as np
import pyarrow as pa
import pytest

import model_fixtures as mf
from models import deployments as dep
from models import routing
from models.handler import SavedModelHandler, release_models
from models.serving import ControlSource, DeployedModels
from transforms import prediction_rows as output
from transforms import schema as schema_lib
from transforms.events import EventBatch
from transforms.sinks.files import arrow_schema

NAMES = list(schema_lib.susy_schema().features)
RNG = np.random.default_rng(5)
W = {1: mf.WEIGHTS, 2: -mf.WEIGHTS, 3: mf.WEIGHTS * 0.5}
SOURCE = ControlSource.of({'bootstrap.servers': 'unused:9092'}, 'control')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('models'))
  for version, weights in W.items():
    mf.write_versioned(path, version, weights=weights)
  # 4 fails on any feature above 2 (some rows of every batch here).
  mf.write_versioned(path, 4, weights=mf.WEIGHTS, raise_above=2.0)
  mf.write_corrupt_version(path, 5)
  yield path
  release_models()


def batch_of(n: int, key: str, start: int = 0) -> EventBatch:
  return EventBatch(
      source='kafka:t/0', positions=np.arange(n), raw=[b'x'] * n,
      ids=[f'{key}-e{start + i}' for i in range(n)], keys=[key] * n,
      event_time=np.full(n, 1.7e9),
      features=RNG.normal(size=(n, 18)).astype(np.float32),
      window_values=np.zeros((n, 0), np.float32), labels=None,
      read_time=np.zeros(n))


def record(**kw) -> dep.Deployment:
  return dep.Deployment(**dict(dict(deployment='default', primary=1), **kw))


def handler_for(root: str, rec: dep.Deployment) -> SavedModelHandler:
  handler = SavedModelHandler(root, NAMES, control=SOURCE)
  handler.update_model_path(dep.encode(rec).decode())
  return handler


def run(handler, batches):
  return list(handler.run_inference(batches, handler.load_model()))


def test_primary_only_rows_say_primary(root):
  batches = [batch_of(7, 'a'), batch_of(5, 'b')]
  out = run(handler_for(root, record(primary=2)), batches)
  for b, scored in zip(batches, out):
    np.testing.assert_allclose(scored.scores, mf.scores_of(b.features, W[2]),
                               atol=1e-6)
    assert scored.model_version == 2 and scored.versions is None
    assert scored.row_roles() == ['primary'] * len(b)
    assert scored.shadow_scores is None


def test_canary_scores_its_keys_and_only_them(root):
  keys = [f'k{i}' for i in range(200)]
  batches = [batch_of(3, k) for k in keys]
  # One batch mixing keys: split by key inside the element.
  mixed = EventBatch(**{**batch_of(40, 'x').__dict__,
                        'keys': [keys[i % 10] for i in range(40)]})
  out = run(handler_for(root, record(canary=2, canary_fraction=0.3)),
            batches + [mixed])
  in_canary = {k for k in keys if routing.in_canary(k, 0.3)}
  assert 40 <= len(in_canary) <= 80
  for b, scored in zip(batches + [mixed], out):
    want_canary = np.asarray([k in in_canary for k in b.keys])
    versions = scored.row_versions()
    assert (versions == np.where(want_canary, 2, 1)).all()
    assert scored.row_roles() == ['canary' if c else 'primary'
                                  for c in want_canary]
    want = np.where(want_canary, mf.scores_of(b.features, W[2]),
                    mf.scores_of(b.features, W[1]))
    np.testing.assert_allclose(scored.scores, want, atol=1e-6)
    assert scored.batch is b and scored.errors is None
  assert out[-1].versions is not None  # the mixed element was split
  rows = output.PredictionRows.of(out[-1], (), False)
  assert [r['model_role'] for r in rows] == out[-1].row_roles()
  assert [r['model_version'] for r in rows] == out[-1].row_versions().tolist()


def test_shadow_scores_every_row_beside_the_primary(root):
  batches = [batch_of(6, 'a'), batch_of(4, 'b')]
  out = run(handler_for(root, record(primary=1, shadow=3, canary=2,
                                     canary_fraction=0.5)), batches)
  for b, scored in zip(batches, out):
    np.testing.assert_allclose(scored.shadow_scores,
                               mf.scores_of(b.features, W[3]), atol=1e-6)
    assert scored.shadow_version == 3
    want = mf.scores_of(b.features, W[scored.model_version])
    np.testing.assert_allclose(scored.scores, want, atol=1e-6)
  rows = output.PredictionRows.of(out[0], (), False).rows()
  assert all(r['shadow_version'] == 3 for r in rows)
  assert [r['shadow_score'] for r in rows] == pytest.approx(
      out[0].shadow_scores.tolist())


def test_a_failing_shadow_never_touches_the_rows(root, caplog):
  caplog.set_level(logging.WARNING, logger='models.handler')
  batches = [batch_of(50, 'a')]
  batches[0].features[3, 0] = 5.0   # version 4 raises on this row
  out = run(handler_for(root, record(primary=1, shadow=4)), batches)
  (scored,) = out
  assert scored.errors is None
  np.testing.assert_allclose(scored.scores,
                             mf.scores_of(batches[0].features, W[1]),
                             atol=1e-6)
  assert np.isnan(scored.shadow_scores).all()
  assert any('shadow version 4 failed' in r.getMessage()
             for r in caplog.records)
  rows = output.PredictionRows.of(scored, (), False)
  assert {r['shadow_score'] for r in rows} == {None}
  table = rows.to_record_batch(arrow_schema(output.output_columns(
      schema_lib.susy_schema())))
  assert table.column('shadow_score').null_count == 50
  assert table.column('shadow_version').to_pylist() == [4] * 50


def test_a_failing_canary_row_is_a_dead_letter_like_the_primary(root):
  b = batch_of(30, 'only-key')
  b.features[:] = np.clip(b.features, -1.5, 1.5)
  b.features[7, 0] = 5.0
  key_fraction = 1.0  # every key to the canary
  (scored,) = run(handler_for(root, record(canary=4,
                                           canary_fraction=key_fraction)), [b])
  assert scored.model_version == 4 and scored.role == 'canary'
  assert [i for i, e in enumerate(scored.errors) if e] == [7]


def test_records_with_a_corrupt_version_are_refused_and_the_set_kept(root):
  load = SavedModelHandler(root, NAMES)  # for its loader settings
  from models.handler import VersionLoader
  loader = VersionLoader(root, signature='serving_default',
                         layout=load._layout, output_key=None)  # pylint: disable=protected-access
  models = DeployedModels(SOURCE, loader, record=record(primary=1))
  first = models.serving()
  assert models.apply(record(primary=1, shadow=5)) is False  # corrupt
  assert models.apply(record(primary=9)) is False            # missing
  assert models.serving() is first
  assert models.apply(record(primary=2, canary=3, canary_fraction=0.1))
  now = models.serving()
  assert (now.primary.version, now.canary.version) == (2, 3)
  # A record that serves the same set is not a change.
  assert models.apply(record(primary=2, canary=3, canary_fraction=0.1,
                             reason='same again'))
  assert models.serving() is now
  models.close()


def test_a_job_restarting_after_a_refused_record_serves_the_one_before(root):
  from models.handler import VersionLoader
  loader = VersionLoader(root, signature='serving_default',
                         layout=SavedModelHandler(root, NAMES)._layout,  # pylint: disable=protected-access
                         output_key=None)
  refused = record(primary=2).successor(primary=5, action=dep.PROMOTE)
  models = DeployedModels(SOURCE, loader, record=refused)
  assert models.serving().primary.version == 2
  models.close()


def test_output_columns_have_the_role_and_shadow():
  cols = dict(output.output_columns(schema_lib.susy_schema()))
  assert (cols['model_role'], cols['shadow_score'],
          cols['shadow_version']) == ('STRING', 'FLOAT', 'INTEGER')
  assert arrow_schema(list(cols.items())).field('model_role').type == (
      pa.string())
