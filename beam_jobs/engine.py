"""Which local engine runs a job when the user asks for ``DirectRunner``.

Beam 2.77's ``DirectRunner`` tries Prism first; Prism downloads its binary
from GitHub at run time. Where that works, Prism is the right engine for
streaming (it runs the splittable Kafka read as Dataflow would). Where it does
not (offline machines, CI, locked-down laptops), Beam falls back to engines on
which an unbounded Python source does not flow (docs/local_streaming.md).
This module makes that choice explicit and logs it:

* ``--runner`` other than DirectRunner (DataflowRunner, FlinkRunner,
  PrismRunner, ...): used as given.
* DirectRunner + ``--streaming``: Prism if a binary is at hand
  (``--prism_location``, ``prism`` on PATH, or Beam's download cache), else
  ``LocalStreamingRunner`` (Beam's bundle-based runner with a native local
  Kafka read).
* DirectRunner, batch: the FnApiRunner (what DirectRunner falls back to for
  batch anyway, without first trying to download Prism).
"""

import glob
import logging
import os
import shutil
from typing import Any, NamedTuple, Union

from apache_beam import version as beam_version
from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  PrismRunnerOptions,
                                                  StandardOptions)

_LOGGER = logging.getLogger(__name__)

_DIRECT_NAMES = {None, '', 'DirectRunner', 'SwitchingDirectRunner',
                 'direct', 'Direct'}
_PRISM_CACHE = os.path.expanduser('~/.apache_beam/cache/prism/bin')


class Engine(NamedTuple):
  """The runner a job will use and a name for logs and docs."""
  runner: Union[str, Any]
  name: str


def local_prism_binary(options: PipelineOptions) -> Union[str, None]:
  """A Prism binary usable without network access, or None.

  Looks at ``--prism_location`` (any value: the user chose it), ``prism`` on
  PATH, and Beam's own download cache for this Beam version.
  """
  location = options.view_as(PrismRunnerOptions).prism_location
  if location:
    return location
  on_path = shutil.which('prism')
  if on_path:
    return on_path
  pattern = os.path.join(_PRISM_CACHE,
                         f'apache_beam-v{beam_version.__version__}-prism-*')
  cached = sorted(glob.glob(pattern))
  return cached[0] if cached else None


def select_engine(options: PipelineOptions) -> Engine:
  """Chooses the runner for ``options`` (see the module docstring)."""
  requested = options.view_as(StandardOptions).runner
  if not isinstance(requested, str) and requested is not None:
    return Engine(requested, type(requested).__name__)
  if requested not in _DIRECT_NAMES:
    return Engine(requested, requested)
  streaming = options.view_as(StandardOptions).streaming
  if streaming:
    prism = local_prism_binary(options)
    if prism:
      options.view_as(PrismRunnerOptions).prism_location = prism
      return Engine('PrismRunner', f'PrismRunner ({prism})')
    # Imported here: it pulls in the direct runner's internals.
    from transforms.kafka.local_streaming import LocalStreamingRunner
    return Engine(LocalStreamingRunner(),
                  'LocalStreamingRunner (bundle-based DirectRunner with a '
                  'native local Kafka read; no Prism binary available)')
  return Engine(_fn_api_runner(options),
                'FnApiRunner (DirectRunner batch engine)')


def _fn_api_runner(options: PipelineOptions):
  # Built as Beam's SwitchingDirectRunner builds it, so that the pipeline
  # options reach the SDK harness (e.g. for --direct_num_workers).
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(
      options.get_all_options())
  return fn_runner.FnApiRunner(
      provision_info=fn_runner.ExtendedProvisionInfo(
          beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def finalizes_bundles(runner: Any) -> bool:
  """Whether ``runner`` finalizes bundles once their outputs are committed
  (the portable runners: Dataflow, Prism, Flink, the FnApiRunner). Beam's
  bundle-based DirectRunner, under LocalStreamingRunner, never does; it
  runs each step as a bundle of its own instead (no fusion)."""
  from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
  return not isinstance(runner, BundleBasedDirectRunner)
