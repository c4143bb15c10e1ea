"""No secret is ever printed: fake secrets through every path that used to
echo them (issue 21), and every output of those runs scanned."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE = 'hunter2-FAKE'
JAAS = ('sasl.jaas.config=org.apache.kafka.common.security.plain.'
        f'PlainLoginModule required username="u" password="{FAKE}";')
ENV = {'PROJECT': 'my-proj', 'REGION': 'europe-west1', 'BUCKET': 'my-bucket',
       'SERVICE_ACCOUNT': 'default', 'KBI_PYTHON': sys.executable}
JOB_FLAGS = ['--bootstrap_servers', '10.0.0.2:9092', '--input_topic', 'events',
             '--output_topic', 'p', '--dead_letter_topic', 'd',
             '--model_dir', 'gs://my-bucket/models/susy']


def script(*args):
  env = {k: v for k, v in os.environ.items()
         if k not in ('TEMP_LOCATION', 'JOB_NAME', 'DRY_RUN_OUT')}
  env.update(ENV)
  return subprocess.run([str(REPO / 'run_dataflow.sh'), *args], env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)


def job(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        check=False)


# (what the run is, how to run it, its exit status)
RUNS = [
    ('run_dataflow.sh --print, inline secrets',
     lambda: script('--print', 'score_stream', *JOB_FLAGS, '--kafka_config',
                    f'sasl.password={FAKE}', f'--kafka_config={JAAS}',
                    f'--kafka_config=ssl.key.password={FAKE}'), 0),
    ('run_dataflow.sh --dry-run, an inline secret validation rejects',
     lambda: script('--dry-run', 'score_stream', *JOB_FLAGS,
                    '--kafka_config', f'sasl.password={FAKE}'), 2),
    ('run_dataflow.sh --dry-run, an inline JAAS config',
     lambda: script('--dry-run', 'backfill', '--input', 'gs://b/e.jsonl',
                    '--model_dir', 'gs://b/m', '--output_path', 'gs://b/o',
                    '--dead_letter_path', 'gs://b/d', f'--kafka_config={JAAS}'),
     2),
    ('run_dataflow.sh --dry-run, a mistyped flag with a secret',
     lambda: script('--dry-run', 'score_stream', *JOB_FLAGS,
                    f'--kafka-config=sasl.password={FAKE}'), 2),
    ('score_stream, a mistyped flag (was Beam\'s "Unparseable argument")',
     lambda: job('beam_jobs.score_stream', *JOB_FLAGS,
                 f'--kafka-config=sasl.password={FAKE}'), 2),
    ('backfill, a mistyped flag, the value apart',
     lambda: job('beam_jobs.backfill', '--input', 'x.jsonl',
                 '--kafka-config', f'sasl.password={FAKE}'), 2),
    ('ingest_examples, a mistyped flag',
     lambda: job('beam_jobs.ingest_examples', '--output', '/tmp/x',
                 f'--kafka_confg=sasl.password={FAKE}'), 2),
    ('score_stream, a malformed --kafka_config entry',
     lambda: job('beam_jobs.score_stream', *JOB_FLAGS[:-2], '--model_dir',
                 '/nowhere', '--kafka_config', f'sasl.password:{FAKE}'), 2),
    ('score_stream, a secret where a number goes',
     lambda: job('beam_jobs.score_stream', *JOB_FLAGS,
                 f'--max_records=sasl.password={FAKE}'), 2),
    ('score_stream, a secret without its flag',
     lambda: job('beam_jobs.score_stream', *JOB_FLAGS, '--kafka_config',
                 'acks=all', f'sasl.password={FAKE}'), 2),
]


@pytest.mark.parametrize('name, run, status', RUNS, ids=[r[0] for r in RUNS])
def test_no_output_shows_a_secret(name, run, status):
  result = run()
  assert result.returncode == status, (name, result.stderr[-3000:])
  output = result.stdout + result.stderr
  assert FAKE not in output, f'{name}: a secret was printed:\n{output}'
  # Each says what is wrong, with the key and the masked value.
  assert '***' in output or 'unknown flag' in output, output
  print(f'\n[{name}] exit {result.returncode}\n' + '\n'.join(
      l for l in output.splitlines() if 'error' in l or 'command:' in l))
