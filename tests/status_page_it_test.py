"""The status page in headless Chromium, against a real broker and real
runs of the scoring job: the numbers the page shows are checked against
the topics (beam_jobs/status)."""

import collections
import html.parser
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

import model_fixtures as mf
from beam_jobs import score_stream
from beam_jobs.status import assets
from kafka_helpers import produce, read_topic
from models import susy
from transforms.kafka import admin

pytestmark = pytest.mark.it

N = 1200
CHROMIUM = 'chromium'
# As docs/status_page.md: headless, no network beyond the page, no sync.
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu',
                  '--disable-quic', '--no-first-run',
                  '--disable-background-networking',
                  '--disable-component-update', '--disable-sync')
HOSTILE = b'<img src=x onerror="document.title=\'pwned\'">'
CHARTS = 7  # throughput, lag, dead letters, latency, drift, histogram, quality


class _Page(html.parser.HTMLParser):
  """What the page shows: the text of every element carrying one of the
  data-* attributes the page marks its figures with, <canvas> and <img>
  counts, the dead-letter previews and the body's refresh count."""

  MARKS = ('data-k', 'data-records', 'data-lag', 'data-reason',
           'data-reason-recent', 'data-predictions', 'data-latency',
           'data-rate')

  def __init__(self, dom: str):
    super().__init__()
    self.values = collections.defaultdict(dict)
    self.tags = collections.Counter()
    self.previews = []
    self.refreshes = 0
    self.error = ''
    self._open = None
    self._code = False
    self._in_error = False
    self.feed(dom)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags[tag] += 1
    if tag == 'body':
      self.refreshes = int(attrs.get('data-refreshes', 0))
    for mark in self.MARKS:
      if mark in attrs:
        self._open = (mark, attrs[mark])
        self.values[mark][attrs[mark]] = ''
    self._code = tag == 'code'
    self._in_error = attrs.get('id') == 'error'

  def handle_endtag(self, tag):
    self._open = None
    self._code = False
    self._in_error = False

  def handle_data(self, data):
    if self._open:
      self.values[self._open[0]][self._open[1]] += data
    if self._code:
      self.previews.append(data)
    if self._in_error:
      self.error += data


def _chromium(tmp_path, url, *args):
  profile = tmp_path / f'chromium-{time.monotonic_ns()}'
  out = subprocess.run(
      [CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args, url],
      capture_output=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr.decode(errors='replace')[-2000:]
  return out.stdout.decode()


def _load(tmp_path, url) -> _Page:
  # The virtual time budget lets the page fetch and poll a few times.
  return _Page(_chromium(tmp_path, url, '--dump-dom',
                         '--virtual-time-budget=8000'))


def _seconds(text: str) -> float:
  value, unit = text.split()
  return float(value) / (1000 if unit == 'ms' else 1)


def _job(broker, topics, model_root, n, *extra):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'],
          '--consumer_group', topics['group'], '--start', 'committed',
          '--model_dir', model_root, '--window_size_s', '2',
          '--max_records', str(n), *extra]
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  result = score_stream.run(args)
  assert str(result.state) == 'DONE'
  return result.summary


def _truth(broker, topics, predictions, dead_letters):
  """What the topics hold: per-version and per-reason counts, latencies,
  record counts and lag."""
  rows = [orjson.loads(m.value()) for m in read_topic(
      broker, topics['out'], predictions, quiet_s=0.5)]
  letters = read_topic(broker, topics['dlq'], dead_letters, quiet_s=0.5)
  config = broker.client_config()
  ends = {t: admin.end_offsets(config, topics[t])
          for t in ('in', 'out', 'dlq')}
  committed = admin.committed_offsets(config, topics['group'], topics['in'])
  return {
      'rows': rows, 'letters': letters,
      'versions': collections.Counter(r['model_version'] for r in rows),
      'reasons': collections.Counter(
          dict(m.headers())['dlq.reason'].decode() for m in letters),
      'p50': statistics.median(r['scored_time'] - r['event_time']
                               for r in rows),
      'records': {t: sum(e.values()) for t, e in ends.items()},
      'lag': {p: ends['in'][p] - (committed[p] or 0) for p in ends['in']},
  }


def _wait_counted(url, predictions, dead_letters, timeout_s=60):
  deadline = time.monotonic() + timeout_s
  while True:
    with urllib.request.urlopen(url + 'api/status', timeout=10) as r:
      doc = json.loads(r.read())
    c = doc['collector']
    if (c['predictions_counted'], c['dead_letters_counted']) == (
        predictions, dead_letters):
      return doc
    assert time.monotonic() < deadline, c
    time.sleep(0.5)


def _check_page(page: _Page, truth: dict, topics: dict):
  """The page's figures against the topics'."""
  assert page.error == '' and page.refreshes >= 2
  assert page.tags['canvas'] >= CHARTS
  shown = page.values
  assert shown['data-records'] == {
      topics[t]: str(truth['records'][t]) for t in ('in', 'out', 'dlq')}
  assert shown['data-lag'] == {f'{topics["in"]}/{p}': str(lag)
                               for p, lag in truth['lag'].items()}
  assert shown['data-reason'] == {r: str(n) for r, n in
                                  truth['reasons'].items()}
  assert shown['data-reason-recent'] == shown['data-reason']
  # Every version of the model directory has a row; those that served
  # show what the topic holds.
  assert {v: n for v, n in shown['data-predictions'].items() if n != '0'} \
      == {str(v): str(n) for v, n in truth['versions'].items()}
  dead, scored = len(truth['letters']), len(truth['rows'])
  assert shown['data-k']['dead_letter_rate'] == (
      f'{100 * dead / (dead + scored):.2f}%')
  # The histogram's p50 is its bin's middle: within 6% (+ display rounding).
  p50 = _seconds(shown['data-latency']['scored_p50'])
  assert p50 == pytest.approx(truth['p50'], rel=0.07, abs=0.001)
  assert shown['data-k']['lag'] == '0'


def test_the_page_shows_what_the_topics_hold(broker, make_topic, tmp_path):
  if not shutil.which(CHROMIUM):
    pytest.fail('chromium is not installed: run scripts/ensure_chromium.sh')
  assets.uplot_dir()  # fails naming scripts/ensure_status_assets.sh
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq'),
            'ctl': make_topic(1, suffix='-ctl')}
  topics['group'] = f'g-{topics["in"]}'
  root = tmp_path / 'models'
  for version, accuracy in ((1, 0.71), (2, 0.74)):
    mf.write_versioned(str(root), version)
    (root / str(version) / 'metrics.json').write_text(json.dumps(
        {'accuracy': accuracy, 'auc': accuracy + 0.08, 'loss': 0.5,
         'examples': 5000}))
  config = broker.client_config()

  # Run 1: version 1 serves N events and one hostile record (the only dead
  # letter, so the page's few latest samples show it).
  susy.produce(broker.bootstrap_servers, topics['in'], n=N, rate=2000,
               seed=1, producer_config=config)
  produce(broker, topics['in'], [(0, b'hostile', HOSTILE, None, None)])
  first = _job(broker, topics, str(root), N + 1, '--model_version', '1')
  produce(broker, topics['ctl'], [(0, b'susy', json.dumps(
      {'primary': 2, 'canary': 1, 'canary_fraction': 0.1}).encode(), None,
      None)])

  server = subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.status',
       '--bootstrap_servers', broker.bootstrap_servers,
       '--group', topics['group'], '--input_topic', topics['in'],
       '--output_topic', topics['out'], '--dead_letter_topic', topics['dlq'],
       '--control_topic', topics['ctl'], '--model_dir', str(root),
       '--port', '0', '--poll_s', '1', '--bucket_s', '5',
       '--history_s', '900']
      + [f'--kafka_config={k}={v}' for k, v in config.items()
         if k != 'bootstrap.servers'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = server.stdout.readline()
    match = re.search(r'http://127\.0\.0\.1:\d+/', line)
    assert match, line + server.stderr.read() if server.poll() else line
    url = match.group(0)
    _wait_counted(url, first.events_scored, first.dead_letters)
    truth = _truth(broker, topics, first.events_scored, first.dead_letters)
    assert set(truth['versions']) == {1}
    page = _load(tmp_path, url)
    _check_page(page, truth, topics)
    # The hostile payload is shown as text: no element was made of it.
    assert any(p.startswith(HOSTILE.decode()) for p in page.previews)
    assert page.tags['img'] == 0
    serving = page.values['data-k']['serving']
    # Rows say the role they were scored in (primary: the one version a job
    # without a deployment serves); the control topic adds its roles.
    assert 'v1: primary, susy:canary' in serving and 'v2: susy:primary' in \
        serving
    print(f'\nafter run 1: {dict(page.values["data-k"])}')

    # Run 2 while the page is up: version 2 (the newest) serves N more.
    susy.produce(broker.bootstrap_servers, topics['in'], n=N, rate=2000,
                 seed=2, start_index=N, malformed_fraction=0.03,
                 producer_config=config)
    second = _job(broker, topics, str(root), N)
    predictions = first.events_scored + second.events_scored
    dead = first.dead_letters + second.dead_letters
    _wait_counted(url, predictions, dead)
    time.sleep(2)  # an offset sample after the job's last commit
    truth = _truth(broker, topics, predictions, dead)
    assert set(truth['versions']) == {1, 2}
    page = _load(tmp_path, url)
    _check_page(page, truth, topics)
    print(f'after run 2: {dict(page.values["data-k"])}')
    print(f'topics: records {truth["records"]}, versions '
          f'{dict(truth["versions"])}, dead letters '
          f'{dict(truth["reasons"])}, exact p50 {truth["p50"]:.3f} s; '
          f'page p50 {page.values["data-latency"]["scored_p50"]}: all equal')

    shot = tmp_path / 'status.png'
    _chromium(tmp_path, url, f'--screenshot={shot}', '--window-size=1400,2300',
              '--hide-scrollbars', '--virtual-time-budget=8000')
    assert shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    if os.environ.get('KBI_STATUS_SCREENSHOT'):
      shutil.copy(shot, os.environ['KBI_STATUS_SCREENSHOT'])

    # --once: the same facts as a table; thresholds set the exit status.
    once = [sys.executable, '-m', 'beam_jobs.status', '--once',
            '--sample_s', '1', '--bootstrap_servers', broker.bootstrap_servers,
            '--group', topics['group'], '--output_topic', topics['out'],
            '--dead_letter_topic', topics['dlq'], '--control_topic',
            topics['ctl'], '--model_dir', str(root)] + [
                f'--kafka_config={k}={v}' for k, v in config.items()
                if k != 'bootstrap.servers']
    ok = subprocess.run(once + ['--max_lag', '0', '--max_dead_letter_rate',
                                '0.5'], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    print(ok.stdout)
    for reason, n in truth['reasons'].items():
      assert re.search(rf'\n  {reason} +{n}\n', ok.stdout), reason
    bad = subprocess.run(once + ['--max_dead_letter_rate', '0.001'],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert 'exceeds --max_dead_letter_rate 0.001' in bad.stderr
  finally:
    server.send_signal(signal.SIGTERM)
    try:
      server.wait(timeout=15)
    except subprocess.TimeoutExpired:
      server.kill()
  assert server.returncode == 0, server.stderr.read()
