"""Command lines of the Beam jobs: a grouped --help, no silently ignored flag.

Beam parses a job's flags with every PipelineOptions class at once and logs
a flag it does not know as a warning (with its value) and carries on, and
``PipelineOptions(argv)`` has no flags of its own, so its ``--help`` lists
nothing. ``parse_args`` puts an argparse parser in front:

* ``--help`` lists the job's flags in groups (one per table row of the
  job's ``FLAG_GROUPS``: Kafka, Events and schema, Windows, ...) and says
  that Beam's and Dataflow's own options pass through. Nothing heavy is
  imported for it (no TensorFlow).
* A flag that is neither the job's nor one of Beam's registered options
  (``apache_beam.options.pipeline_options``) ends the run with exit status
  2 and ``error: unknown flag --max_recods (did you mean --max_records?)``.
  A value without a flag ends it too: ``--kafka_config a=1 b=2`` would
  otherwise drop ``b=2``.
* Errors never show a flag's value unmasked (transforms/redact.py): values
  can be secrets.

What it returns is ``PipelineOptions(argv)``, exactly what the jobs built
before, so nothing downstream changes. Beam's parser accepts ``--flag
value`` and ``--flag=value``, and repeated list flags (``--experiments``,
``--labels``); so does this check, which parses with the same argparse.
"""

import argparse
import difflib
import sys
import textwrap
from typing import Any, Callable, NamedTuple, Optional, Sequence

from apache_beam.options import pipeline_options as beam_options
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import logs
from beam_jobs import options as opts
from beam_jobs.spelling import flag_names
from transforms import redact

USAGE = '%(prog)s [flags]'
PASS_THROUGH = (
    'Beam\'s and Dataflow\'s own pipeline options are accepted as well and '
    'passed to Beam unchanged: --runner, --project, --region, '
    '--temp_location, --staging_location, --streaming, --setup_file, '
    '--sdk_container_image, --experiments, --direct_num_workers, ... (see '
    'https://cloud.google.com/dataflow/docs/reference/pipeline-options).')


class Group(NamedTuple):
  """A titled group of flags in --help: the flags of ``options`` classes
  (PipelineOptions subclasses, or any class with ``_add_argparse_args``)."""
  title: str
  options: tuple


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors mask secret values."""

  def error(self, message):
    self.print_usage(sys.stderr)
    self.exit(2, f'{self.prog}: error: {redact.mask_text(message)}\n')


# Beam's own parser class: its options use add_value_provider_argument.
_BEAM_PARSER = beam_options._BeamArgumentParser  # pylint: disable=protected-access


class _BeamParser(_BEAM_PARSER):
  """Beam's parser, with masked errors."""

  error = _Parser.error


def build_parser(groups: Sequence[Group], *, prog: str,
                 description: str) -> argparse.ArgumentParser:
  """The job's parser: its flags in groups, --help, Beam's pass-through."""
  parser = _Parser(prog=prog, usage=USAGE, description=_wrap(description),
                   epilog=_wrap(PASS_THROUGH), allow_abbrev=False,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  for group in groups:
    section = parser.add_argument_group(group.title)
    for options in group.options:
      options._add_argparse_args(section)  # pylint: disable=protected-access
  return parser


def _wrap(text: str) -> str:
  return '\n\n'.join(textwrap.fill(p, 79) for p in text.split('\n\n'))


def _beam_parser(prog: str) -> argparse.ArgumentParser:
  # The classes Beam itself defines (not the jobs': each job's own flags are
  # checked by its parser, so one job does not accept another's flags).
  parser = _BeamParser(prog=prog, usage=USAGE, add_help=False,
                       allow_abbrev=False)
  seen = set()
  for cls in PipelineOptions.__subclasses__():
    if cls.__module__.startswith('apache_beam.') and str(cls) not in seen:
      seen.add(str(cls))
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def nearest_flag(name: str, *candidate_lists: Sequence[str]) -> Optional[str]:
  """The closest known flag to a mistyped one, from the first list that has
  one (the job's own flags before Beam's). ``--model-dir`` finds
  ``--model_dir``."""
  wanted = name.replace('-', '_')
  wanted = '--' + wanted.lstrip('_')
  for candidates in candidate_lists:
    if wanted in candidates:
      return wanted
    close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.75)
    if close:
      return close[0]
  return None


def check_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> None:
  """Exits 2 naming the first argument neither the job nor Beam knows.

  Also checks types and choices of the job's flags (argparse errors, exit 2)
  and handles --help (exit 0).
  """
  _, rest = parser.parse_known_args(list(argv))
  beam = _beam_parser(parser.prog)
  _, unknown = beam.parse_known_args(rest)
  for arg in unknown:
    if arg.startswith('-'):
      name = arg.split('=', 1)[0]
      nearest = nearest_flag(name, flag_names(parser), flag_names(beam))
      hint = (f'did you mean {nearest}?' if nearest else
              f'{parser.prog} --help lists the flags')
      # The flag's name only: its value may be a secret.
      parser.error(f'unknown flag {name} ({hint})')
  if unknown:
    parser.error(f'unexpected value {redact.mask_arg(unknown[0])!r}: every '
                 f'value follows its flag (--flag VALUE or --flag=VALUE)')


def parse_args(argv: Optional[Sequence[str]], groups: Sequence[Group], *,
               prog: str, description: str) -> PipelineOptions:
  """Checks a job's command line (see the module docstring) and returns its
  PipelineOptions.

  Args:
    argv: the arguments (default: sys.argv[1:]).
    groups: the job's flags in the order --help shows them.
    prog: how the job is run, for usage and errors.
    description: the first paragraph of --help.

  Exits (SystemExit):
    0 after --help; 2 for an unknown flag, a stray value or a bad value.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  check_flags(argv, build_parser(groups, prog=prog, description=description))
  return PipelineOptions(argv)


YOUR_DATA = 'Bring your own events and model: docs/your_data.md. '
FLAG_FORMS = 'Flags take --flag VALUE or --flag=VALUE.'


def options_parser(prog: str, groups: Sequence[tuple], doc: str, *,
                   note: str = YOUR_DATA + FLAG_FORMS
                   ) -> Callable[[Optional[Sequence[str]]], PipelineOptions]:
  """A job's ``parse_options(argv)``: parse_args with the job's flag groups
  ((title, classes) pairs) and the first line of its docstring."""
  description = f'{doc.splitlines()[0]}\n\n{note}'

  def parse_options(argv: Optional[Sequence[str]] = None) -> PipelineOptions:
    """The job's PipelineOptions from a command line; --help and unknown
    flags exit (beam_jobs/cli.py)."""
    return parse_args(argv, [Group(*g) for g in groups], prog=prog,
                      description=description)

  return parse_options


def print_summary(result) -> int:
  """Prints ``result.summary`` (a beam_jobs.summary.RunSummary) if the run
  has one; exit status 0."""
  summary = getattr(result, 'summary', None)
  if summary is not None:
    print(summary.format(), flush=True)
  return 0


def run_main(argv: Optional[Sequence[str]],
             parse_options: Callable[[Optional[Sequence[str]]],
                                     PipelineOptions],
             run: Callable[[PipelineOptions], Any], *,
             errors: tuple, report: Callable[[Any], int] = print_summary
             ) -> int:
  """A job's ``main()``: logging, flags, the run, and its outcome.

  Expected failures (``errors``: bad flags, an unloadable model, an
  unreachable cluster) print ``error: ...`` with secret values masked and
  return 2; ``report(result)`` prints the outcome and returns the status.
  """
  # Logging first: Beam's option parsing installs a handler of its own when
  # there is none. The level follows once the flags are read.
  logs.configure()
  options = parse_options(argv)
  logs.configure(options.view_as(opts.LogOptions).log_level)
  try:
    result = run(options)
  except errors as e:
    print(f'error: {redact.mask_text(str(e))}', file=sys.stderr)
    return 2
  return report(result)


__all__ = ['Group', 'PASS_THROUGH', 'build_parser', 'check_flags',
           'nearest_flag', 'options_parser', 'parse_args', 'print_summary',
           'run_main']
