"""The collector: tails the job topics and samples offsets in the
background, and answers with a snapshot (snapshot.py) at any time.

Two threads: one tails the output, dead-letter and control topics
(tail.py); one samples offsets every ``poll_s`` and rescans the model
directory every ``model_poll_s`` (offsets.py, model_dir.py). Neither ever
rereads a topic: state is the bucket ring and the sample ring
(aggregate.py), whose size the settings fix.
"""

import logging
import os
import threading
import time
from typing import NamedTuple, Optional

from beam_jobs.status import snapshot as snap
from beam_jobs.status.aggregate import Aggregates, OffsetHistory
from beam_jobs.status.model_dir import ModelDir
from beam_jobs.status.offsets import OffsetSampler, discover_input_topics
from beam_jobs.status.tail import Deployments, TopicTail
from transforms.kafka import admin

_LOGGER = logging.getLogger(__name__)


class Settings(NamedTuple):
  """The collector's settings, resolved once from the flags (cli.py)."""
  client_config: dict
  group: str
  input_topics: tuple
  output_topics: tuple
  dead_letter_topics: tuple
  control_topic: Optional[str]
  model_dir: Optional[str]
  poll_s: float
  model_poll_s: float
  bucket_s: float
  history_s: float
  window_s: float
  backfill_records: int
  max_behind: int
  recent_dead_letters: int
  timeout_s: float

  @property
  def buckets(self) -> int:
    return max(1, int(round(self.history_s / self.bucket_s)))


def rss_bytes() -> Optional[int]:
  """This process's resident memory now (Linux), else None."""
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError, IndexError):
    return None


class Collector:
  """See the module docstring. ``open()`` connects and reads the recent
  window's start; ``start()`` runs the threads; ``snapshot()`` is the
  JSON document of the page."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.aggregates = Aggregates(buckets=settings.buckets,
                                 bucket_s=settings.bucket_s,
                                 recent_samples=settings.recent_dead_letters)
    self.history = OffsetHistory(
        maxlen=int(settings.history_s / settings.poll_s) + 1)
    self.deployments = Deployments()
    self.model_dir = ModelDir(settings.model_dir) if settings.model_dir \
        else None
    self.topics: Optional[snap.Topics] = None
    self._versions: list = []
    self._tail: Optional[TopicTail] = None
    self._sampler: Optional[OffsetSampler] = None
    self._stop = threading.Event()
    self._threads: list = []
    self._snapshot_s = None

  def open(self) -> None:
    """Connects, finds the input topics, assigns the tail's start offsets
    and takes the first offset sample.

    Raises:
      admin.KafkaUnavailableError: the cluster does not answer.
      admin.TopicNotFoundError: a named topic does not exist, or no input
        topic was named and the group has no committed offsets.
    """
    s = self.settings
    admin.wait_for_cluster(s.client_config, timeout_s=s.timeout_s)
    inputs = s.input_topics or tuple(discover_input_topics(
        s.client_config, s.group, s.timeout_s))
    if not inputs and not (s.output_topics or s.dead_letter_topics):
      raise admin.TopicNotFoundError(
          f'group {s.group!r} has no committed offsets and no topic was '
          f'named: name --input_topic, --output_topic or --dead_letter_topic')
    self.topics = snap.Topics(
        group=s.group, inputs=tuple(inputs), outputs=s.output_topics,
        dead_letters=s.dead_letter_topics, control=s.control_topic)
    self._sampler = OffsetSampler(
        s.client_config, group=s.group, input_topics=inputs,
        other_topics=s.output_topics + s.dead_letter_topics,
        timeout_s=s.timeout_s)
    self.history.add(self._sampler.sample())
    self._scan_models()
    self._tail = TopicTail(
        s.client_config, output_topics=s.output_topics,
        dead_letter_topics=s.dead_letter_topics,
        control_topic=s.control_topic, aggregates=self.aggregates,
        deployments=self.deployments, backfill_records=s.backfill_records,
        history_s=s.history_s, max_behind=s.max_behind,
        timeout_s=s.timeout_s)
    try:
      self._tail.open()
    except LookupError as e:
      raise admin.TopicNotFoundError(str(e)) from e

  def _scan_models(self) -> None:
    if self.model_dir is not None:
      self._versions = self.model_dir.scan()

  def catch_up(self, timeout_s: float) -> bool:
    """Reads until the tail reached the ends it had at open (``--once``);
    False when ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while not self._tail.caught_up():
      if time.monotonic() > deadline:
        return False
      self._tail.poll(timeout_s=0.2)
    return True

  def sample_offsets(self) -> None:
    self.history.add(self._sampler.sample())

  def _sample_loop(self) -> None:
    s = self.settings
    next_models = time.monotonic() + s.model_poll_s
    while not self._stop.wait(s.poll_s):
      try:
        self.sample_offsets()
        if time.monotonic() >= next_models:
          next_models = time.monotonic() + s.model_poll_s
          self._scan_models()
      except Exception:  # pylint: disable=broad-except
        _LOGGER.exception('sampling offsets failed; retrying')

  def start(self) -> None:
    """Runs the tail and the sampler in daemon threads."""
    self._threads = [
        threading.Thread(target=self._tail.run_forever, name='status-tail',
                         daemon=True),
        threading.Thread(target=self._sample_loop, name='status-sampler',
                         daemon=True)]
    for t in self._threads:
      t.start()

  def snapshot(self) -> dict:
    """The page's JSON document, now."""
    started = time.perf_counter()
    doc = snap.build(
        self.aggregates.view(), self.history.samples(), self._versions,
        self.deployments.latest(), self.topics,
        window_s=self.settings.window_s,
        collector=dict(self._tail.stats() if self._tail else {},
                       rss_bytes=rss_bytes(), snapshot_s=self._snapshot_s,
                       buckets=self.settings.buckets,
                       bucket_s=self.settings.bucket_s,
                       poll_s=self.settings.poll_s))
    self._snapshot_s = time.perf_counter() - started
    return doc

  def close(self) -> None:
    self._stop.set()
    if self._tail is not None:
      self._tail.stop()
    for t in self._threads:
      t.join(timeout=5)
    if self._tail is not None:
      self._tail.close()
    if self._sampler is not None:
      self._sampler.close()
