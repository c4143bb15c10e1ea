"""Reliability: crashes, hostile input and faults lose nothing.

The job runs as a real subprocess (python -m beam_jobs.score_stream) against
a real broker; outcomes are counted from the output topics.
"""

import pytest

import model_fixtures as mf
from beam_jobs import fault_harness as rel

pytestmark = [pytest.mark.it, pytest.mark.slow]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('models')
  mf.write_versioned(str(root), 1)
  return str(root)


def _topics(make_topic):
  return {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
          'dlq': make_topic(1, suffix='-dlq')}


def test_sigkill_five_times_loses_nothing(broker, make_topic, model_dir,
                                          tmp_path):
  topics = _topics(make_topic)
  outcome = rel.crash_restart(
      broker.client_config(), broker.bootstrap_servers, topics, model_dir,
      str(tmp_path / 'job.log'), n=50_000, rate=1000, kills=5, seed=1)
  print('\n' + rel.HEADER + '\n' + outcome.row())
  assert outcome.lost == 0, outcome
  assert outcome.scored + outcome.dead_lettered == outcome.produced
  assert outcome.dead_lettered == outcome.malformed
  # The last run stopped on SIGTERM by draining and committing everything.
  assert (outcome.exit_code, outcome.lag_after) == (0, 0), outcome


def test_sigkill_with_dedup_is_effectively_once(broker, make_topic, model_dir,
                                                tmp_path):
  topics = _topics(make_topic)
  # Killed while reading, with 5% malformed events: each kill leaves
  # predictions and dead letters written whose offsets were not committed
  # (without dedup, they are all written again after the restart).
  outcome = rel.crash_restart(
      broker.client_config(), broker.bootstrap_servers, topics, model_dir,
      str(tmp_path / 'job.log'), n=20_000, rate=1000, kills=3, seed=2,
      extra_args=['--dedup_horizon_s', '600'], scenario='crash/restart+dedup',
      malformed_fraction=0.05, kill_after_reading_s=(2.0, 5.0))
  print('\n' + rel.HEADER + '\n' + outcome.row())
  assert outcome.lost == 0, outcome
  assert outcome.duplicates == 0, outcome
  assert outcome.dead_duplicates == 0, outcome
  assert outcome.dead_lettered == outcome.malformed, outcome
  assert (outcome.exit_code, outcome.lag_after) == (0, 0), outcome


def test_broker_restart_mid_stream_rides_through(model_dir, tmp_path):
  # noida keeps its log across a graceful restart, except its last ~100 ms
  # of acknowledged writes (on input and output topics: the "!in"/"!out"
  # columns); Tansu stores topics in memory only, so a Tansu restart loses
  # every record on the broker itself (docs/operations.md): this scenario
  # is noida's. "lost" counts ids on the input topic whose output never
  # appeared on the output topics: the job's own loss.
  outcome = rel.broker_restart(model_dir, str(tmp_path / 'job.log'),
                               str(tmp_path), n=15_000, rate=1000, down_s=5)
  print('\n' + rel.HEADER + '\n' + outcome.row())
  print('dead letters:', outcome.dead_reasons)
  assert 'rode through' in outcome.notes, outcome
  assert outcome.lost == 0, outcome
  assert (outcome.exit_code, outcome.lag_after) == (0, 0), outcome
