"""Operate model deployments: what a running score_stream serves, and changes.

  python -m models.deploy list     --model_dir DIR [--control_topic T]
  python -m models.deploy promote  [VERSION] --model_dir DIR --data ROOT \\
                                   [--eval_span N] [--metric auc] [--margin 0.005] [--force]
  python -m models.deploy canary   VERSION --fraction 0.1 --model_dir DIR
  python -m models.deploy canary   --off
  python -m models.deploy shadow   VERSION --model_dir DIR   |  shadow --off
  python -m models.deploy rollback [--model_dir DIR]
  python -m models.deploy pin      VERSION --model_dir DIR
  python -m models.deploy history
  python -m models.deploy status   --output_topic predictions [--labels_topic L]
  python -m models.deploy guard    --output_topic predictions --metric auc \\
                                   --margin 0.05 --min_count 500 [--once]

Every command takes ``--bootstrap_servers``, ``--kafka_config``,
``--control_topic`` (default kbi-deployments) and ``--deployment`` (default
default). Changes are deployment records (models/deployments.py) published
to the compacted control topic (models/control_topic.py), created on first
use; jobs started with ``--control_topic`` follow them within one to two
seconds. ``promote`` runs the promotion gate (models/gate.py) and records its
numbers; ``status`` and ``guard`` evaluate live predictions per version
(models/live_eval.py). The lifecycle, the record format and the figures:
docs/operating_models.md.

Exit status: 0 done; 1 refused (the gate refused a promotion); 2 usage
errors, a missing or corrupt version, an unreachable cluster.
"""

import argparse
import datetime
import difflib
import logging
import math
import os
import sys
import time
from typing import Optional, Sequence

from models import deployments as dep
from models import versions as versions_lib

_LOGGER = logging.getLogger(__name__)
PROG = 'python -m models.deploy'
DEFAULT_CONTROL_TOPIC = 'kbi-deployments'


class UsageError(Exception):
  """A problem the operator can fix: message, exit status 2."""


class Refused(Exception):
  """The gate refused: message, exit status 1."""


# --- Flags -----------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  """Unknown flags exit 2 naming the nearest known flag."""

  def parse_known_args(self, args=None, namespace=None):
    parsed, unknown = super().parse_known_args(args, namespace)
    for arg in unknown:
      name = arg.split('=', 1)[0]
      if not name.startswith('-'):
        self.error(f'unexpected value {arg!r}')
      known = [s for a in self._actions for s in a.option_strings
               if s.startswith('--')]
      close = difflib.get_close_matches(name.replace('-', '_').replace(
          '__', '--', 1), known, n=1, cutoff=0.7)
      hint = f'did you mean {close[0]}?' if close else f'{self.prog} --help'
      self.error(f'unknown flag {name} ({hint})')
    return parsed, []


def _positive_float(text: str) -> float:
  value = float(text)
  if not (value > 0 and math.isfinite(value)):
    raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
  return value


def _fraction(text: str) -> float:
  value = float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f'must be in (0, 1], got {text}')
  return value


def _version(text: str) -> int:
  if not text.isdigit():
    raise argparse.ArgumentTypeError(f'a version is a number, got {text!r}')
  return int(text)


def _common(model_dir_required: bool) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(add_help=False)
  k = p.add_argument_group('Kafka and the deployment')
  k.add_argument('--bootstrap_servers',
                 default=os.environ.get('KAFKA_BOOTSTRAP_SERVERS',
                                        'localhost:9092'),
                 help='host:port[,...] of the cluster (default: '
                 '$KAFKA_BOOTSTRAP_SERVERS or localhost:9092).')
  k.add_argument('--kafka_config', action='append', default=[],
                 help='Extra librdkafka KEY=VALUE, repeatable; @FILE, '
                 '@secret:projects/P/secrets/S and KEY=@secret:... as for '
                 'the jobs (default: none).')
  k.add_argument('--control_topic', default=DEFAULT_CONTROL_TOPIC,
                 help='The deployments control topic, created compacted on '
                 'the first publish; the jobs\' --control_topic (default: '
                 f'{DEFAULT_CONTROL_TOPIC}).')
  k.add_argument('--deployment', default=dep.DEFAULT_DEPLOYMENT,
                 help='Deployment name, the record key; the jobs\' '
                 f'--deployment (default: {dep.DEFAULT_DEPLOYMENT}).')
  k.add_argument('--timeout_s', type=_positive_float, default=30.0,
                 help='Seconds per Kafka request (default: 30).')
  k.add_argument('--log_level', default='WARNING',
                 choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'),
                 help='Log level (default: WARNING).')
  m = p.add_argument_group('Models')
  m.add_argument('--model_dir', required=model_dir_required,
                 default=None,
                 help='Root of integer version directories '
                 '<model_dir>/<version>/ with metrics.json, local or gs://; '
                 'the jobs\' --model_dir' + (' (required).' if
                                             model_dir_required else
                                             ' (default: none).'))
  return p


def _record_flags() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(add_help=False)
  r = p.add_argument_group('The record')
  r.add_argument('--reason', default='',
                 help='Why, written into the record (default: empty).')
  r.add_argument('--actor', default=None,
                 help='Who, written into the record (default: user@host).')
  return p


def _model_flags() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(add_help=False)
  m = p.add_argument_group('How the job calls the model (to check that a '
                           'version loads; the jobs\' flags)')
  m.add_argument('--schema', default='susy',
                 help='Event schema: a built-in name or a JSON file; its '
                 'features are the model inputs (default: susy).')
  m.add_argument('--model_signature', default='serving_default',
                 help='Signature to call (default: serving_default).')
  m.add_argument('--model_output', default=None,
                 help='Signature output holding the score (default: '
                 '"score", or the only output).')
  m.add_argument('--model_handler', default='savedmodel',
                 choices=('savedmodel', 'tfx_bsl'),
                 help='What calls the model (default: savedmodel).')
  return p


def _live_flags(p: argparse.ArgumentParser) -> None:
  from models import live_eval  # pylint: disable=import-outside-toplevel
  g = p.add_argument_group('Live predictions and labels')
  g.add_argument('--output_topic', required=True,
                 help='The job\'s prediction topic (required).')
  g.add_argument('--labels_topic', default=None,
                 help='Topic of late labels, JSON {"event_id": ..., "label": '
                 '0|1} (default: none: the rows\' label column).')
  g.add_argument('--horizon_s', type=_positive_float,
                 default=live_eval.DEFAULT_HORIZON_S,
                 help='A label counts when it arrived within this many '
                 'seconds of its event\'s time (default: '
                 f'{live_eval.DEFAULT_HORIZON_S:.0f}).')
  g.add_argument('--window_s', type=_positive_float, default=3600.0,
                 help='Predictions scored in the last this many seconds '
                 '(default: 3600).')
  g.add_argument('--max_records', type=int,
                 default=live_eval.DEFAULT_MAX_RECORDS,
                 help='At most this many latest records per partition '
                 f'(default: {live_eval.DEFAULT_MAX_RECORDS}).')


def build_parser() -> argparse.ArgumentParser:
  from models import gate  # pylint: disable=import-outside-toplevel
  parser = _Parser(prog=PROG, allow_abbrev=False,
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   description=__doc__.split('\n\n', 1)[0],
                   epilog=__doc__.split('\n\n', 1)[1])
  sub = parser.add_subparsers(dest='command', required=True,
                              metavar='COMMAND', parser_class=_Parser)
  common = _common(model_dir_required=True)
  common_optional = _common(model_dir_required=False)
  record, model = _record_flags(), _model_flags()

  def add(name, help_text, parents):
    return sub.add_parser(name, help=help_text, description=help_text,
                          parents=parents, allow_abbrev=False)

  add('list', 'Versions with their metrics.json, what serves in every '
      'deployment of the control topic, and since when.', [common])
  add('history', 'The records of the deployment, oldest first: the audit '
      'log.', [common_optional])
  p = add('promote', 'Make VERSION the primary if the gate passes: it '
          'evaluates VERSION and the serving primary on the same eval span '
          'and refuses a worse candidate (exit 1) unless --force; the '
          'numbers go into the record. Ends a canary.',
          [common, record, model])
  p.add_argument('version', type=_version, nargs='?', default=None,
                 help='The candidate version (default: the canary).')
  g = p.add_argument_group('The gate')
  g.add_argument('--data', default=None,
                 help='Data root with span-<N>/ directories (ingest_examples '
                 'output) whose eval split the gate evaluates on (required '
                 'unless --force).')
  g.add_argument('--eval_span', type=int, action='append', default=None,
                 help='Span to evaluate on, repeatable (default: the newest '
                 'span under --data).')
  g.add_argument('--metric', choices=sorted(gate.METRICS),
                 default=gate.DEFAULT_METRIC,
                 help='auc or accuracy (higher is better) or loss (lower is '
                 f'better) (default: {gate.DEFAULT_METRIC}).')
  g.add_argument('--margin', type=float, default=gate.DEFAULT_MARGIN,
                 help='Refuse a candidate worse than the serving version by '
                 f'more than this (default: {gate.DEFAULT_MARGIN}).')
  g.add_argument('--force', action='store_true',
                 help='Promote even if refused (recorded as forced) or '
                 'without --data (default: off).')
  p = add('canary', 'Score a fraction of the keys with VERSION (the same '
          'key always with the same version); --off ends the canary.',
          [common_optional, record, model])
  p.add_argument('version', type=_version, nargs='?', default=None,
                 help='The canary version.')
  p.add_argument('--fraction', type=_fraction, default=None,
                 help='Share of keys, in (0, 1], e.g. 0.1 (required with '
                 'VERSION).')
  p.add_argument('--off', action='store_true',
                 help='End the canary (default: off).')
  p = add('shadow', 'Score every event with VERSION too, its score written '
          'beside the primary\'s (never served); --off ends it.',
          [common_optional, record, model])
  p.add_argument('version', type=_version, nargs='?', default=None,
                 help='The shadow version.')
  p.add_argument('--off', action='store_true',
                 help='End the shadow (default: off).')
  add('rollback', 'Serve what the record before the current one served '
      '(one step back; a second rollback undoes the first).',
      [common_optional, record])
  p = add('pin', 'Serve exactly VERSION, no canary, no shadow, without the '
          'gate (an operator\'s override, recorded as a pin).',
          [common, record, model])
  p.add_argument('version', type=_version, help='The version to serve.')
  p = add('status', 'Live evaluation per version and role: predictions '
          'joined with labels, AUC, accuracy, log loss, score histogram.',
          [common_optional])
  _live_flags(p)
  p = add('guard', 'Roll a canary back when its live metric falls below '
          'the primary\'s by --margin (both with --min_count labelled '
          'predictions since the canary started); loops unless --once.',
          [common_optional])
  _live_flags(p)
  g = p.add_argument_group('The guardrail')
  g.add_argument('--metric', choices=sorted(gate.METRICS), default='auc',
                 help='Live metric compared (default: auc).')
  g.add_argument('--margin', type=float, default=0.05,
                 help='Roll back when the canary is worse than the primary '
                 'by more than this (default: 0.05).')
  g.add_argument('--min_count', type=int, default=500,
                 help='Labelled predictions each of canary and primary '
                 'need before a verdict (default: 500).')
  g.add_argument('--interval_s', type=_positive_float, default=30.0,
                 help='Seconds between checks (default: 30).')
  g.add_argument('--once', action='store_true',
                 help='Check once and exit (default: loop).')
  return parser


# --- Helpers ---------------------------------------------------------------


def _client_config(args) -> dict:
  from transforms.kafka import config_refs  # pylint: disable=import-outside-toplevel
  try:
    return config_refs.resolve(dict(
        config_refs.parse_entries(args.kafka_config),
        **{'bootstrap.servers': args.bootstrap_servers}))
  except ValueError as e:
    raise UsageError(f'--kafka_config: {e}') from e


def _control(args):
  from models import control_topic  # pylint: disable=import-outside-toplevel
  return control_topic.ControlTopic(_client_config(args), args.control_topic,
                                    timeout_s=args.timeout_s)


def _actor(args) -> str:
  return args.actor or dep.default_actor()


def _layout(args):
  from models import example_layout as el  # pylint: disable=import-outside-toplevel
  from transforms import schema as schema_lib  # pylint: disable=import-outside-toplevel
  try:
    schema = schema_lib.resolve(args.schema)
  except ValueError as e:
    raise UsageError(f'--schema: {e}') from e
  return el.ExampleLayout(tuple(schema.features),
                          tuple(schema.window_features))


def _loader(args, layout):
  from models.handler import VersionLoader  # pylint: disable=import-outside-toplevel
  return VersionLoader(args.model_dir, signature=args.model_signature,
                       layout=layout, output_key=args.model_output,
                       model_handler=args.model_handler)


def _check_loads(args, version: int) -> None:
  """UsageError unless ``version`` is complete and loads as the job would
  load it (so a corrupt version is refused here, not by the job)."""
  from models.handler import ModelLoadError  # pylint: disable=import-outside-toplevel
  _check_complete(args, version)
  try:
    _loader(args, _layout(args))(version).close()
  except ModelLoadError as e:
    raise UsageError(f'version {version} does not load: {e}') from e


def _check_complete(args, version: int) -> None:
  if not args.model_dir:
    raise UsageError('--model_dir is required to check a version')
  try:
    dep.check_version(args.model_dir, version)
  except dep.DeploymentError as e:
    raise UsageError(str(e)) from e


def _current(control, args, *, required: bool = True
             ) -> Optional[dep.Deployment]:
  current = control.latest(args.deployment)
  if current is None and required:
    raise UsageError(
        f'deployment {args.deployment!r} has no record on control topic '
        f'{args.control_topic}: start it with `{PROG} pin VERSION` or '
        f'`{PROG} promote VERSION`')
  return current


def _publish(control, args, record: dep.Deployment) -> int:
  if args.model_dir:
    try:
      dep.check_versions(record, args.model_dir)
    except dep.DeploymentError as e:
      raise UsageError(str(e)) from e
  written = control.publish(record)
  print(f'deployment {record.deployment}: {record.describe()} '
        f'({record.action}; control topic {control.topic} offset '
        f'{written.offset})')
  return 0


def _stamp(args, **fields) -> dict:
  return dict(fields, updated_at=dep.now_iso(), actor=_actor(args),
              reason=args.reason)


def _since(records, role: str) -> dict:
  """{version: time it last took ``role``} over a deployment's records
  (its current uninterrupted run in that role)."""
  current, since = None, None
  for r in records:
    if r.record is None:
      continue
    version = getattr(r.record, 'primary' if role == dep.PRIMARY else role)
    if version != current:
      current, since = version, _time_of(r)
  return {} if current is None else {current: since}


def _time_of(r) -> float:
  if r.timestamp > 0:
    return r.timestamp
  try:
    return datetime.datetime.fromisoformat(r.record.updated_at).timestamp()
  except (TypeError, ValueError):
    return math.nan


def _when(t: float) -> str:
  if t is None or not math.isfinite(t):
    return '?'
  return dep.now_iso(t)[:19].replace('T', ' ') + 'Z'


def _fmt(x, digits=4) -> str:
  if isinstance(x, (int, float)) and not isinstance(x, bool) and (
      math.isfinite(x)):
    return f'{x:.{digits}f}' if isinstance(x, float) else str(x)
  return '-'


def _table(header, rows) -> str:
  widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
  return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(r, widths))
                   .rstrip() for r in [header] + list(rows))


# --- Commands --------------------------------------------------------------


def cmd_list(args) -> int:
  control = _control(args)
  records = control.records()
  by_name: dict = {}
  for r in records:
    by_name.setdefault(r.key, []).append(r)
  roles: dict = {}   # version -> ['default:primary since ...']
  print(f'control topic {args.control_topic} at {args.bootstrap_servers}: '
        f'{len(by_name)} deployment(s), {len(records)} record(s)')
  for name, history in sorted(by_name.items()):
    latest = next((r for r in reversed(history)
                   if r.record is not None or r.error is None), None)
    if latest is None or latest.record is None:
      print(f'  {name}: no serving record')
      continue
    rec = latest.record
    print(f'  {name}: {rec.describe()} (last change: {rec.action} by '
          f'{rec.actor or "?"} at {_when(_time_of(latest))}'
          + (f': {rec.reason}' if rec.reason else '') + ')')
    for role in dep.ROLES:
      for version, since in _since(history, role).items():
        if version is None:
          continue
        label = f'{name}:{role}'
        if role == dep.CANARY_ROLE:
          label += f' {rec.canary_fraction:.0%}'
        roles.setdefault(version, []).append(f'{label} since {_when(since)}')
  rows = []
  complete = set(versions_lib.list_versions(args.model_dir))
  for version in reversed(versions_lib.list_version_dirs(args.model_dir)):
    path = versions_lib.version_dir(args.model_dir, version)
    if version not in complete:
      rows.append((version, 'incomplete', '', '', '', '', '', '',
                   ', '.join(roles.get(version, []))))
      continue
    try:
      m = versions_lib.read_metrics(path)
      if not isinstance(m, dict):
        raise ValueError('not a JSON object')
    except (OSError, ValueError) as e:
      rows.append((version, f'metrics.json unreadable: {e}'[:60], '', '', '',
                   '', '', '', ', '.join(roles.get(version, []))))
      continue
    rows.append((version, 'complete', m.get('config', ''), _fmt(m.get('auc')),
                 _fmt(m.get('loss')), _fmt(m.get('accuracy')),
                 m.get('examples', ''), str(m.get('created', ''))[:19],
                 ', '.join(roles.get(version, []))))
  missing = sorted(set(roles) - {r[0] for r in rows})
  for version in missing:
    rows.append((version, 'MISSING from --model_dir', '', '', '', '', '', '',
                 ', '.join(roles[version])))
  print(f'\nversions in {args.model_dir}:')
  print(_table(('version', 'state', 'config', 'auc', 'loss', 'accuracy',
                'eval_n', 'created', 'serving'), rows))
  return 0


def cmd_history(args) -> int:
  history = _control(args).history(args.deployment)
  if not history:
    print(f'deployment {args.deployment!r}: no records on '
          f'{args.control_topic}')
    return 0
  for r in history:
    if r.record is None:
      print(f'offset {r.offset:>5}  {_when(r.timestamp)}  '
            + (f'UNREADABLE: {r.error}' if r.error else 'tombstone'))
      continue
    rec = r.record
    gate_text = ''
    if rec.gate:
      gate_text = (f'  gate: {rec.gate.get("decision")} '
                   f'({rec.gate.get("reason", "")})')
    print(f'offset {r.offset:>5}  {_when(_time_of(r))}  {rec.action:<14} '
          f'{rec.describe():<40} by {rec.actor or "?"}'
          + (f': {rec.reason}' if rec.reason else '') + gate_text)
  return 0


def cmd_promote(args) -> int:
  from models import gate  # pylint: disable=import-outside-toplevel
  from models import examples_io  # pylint: disable=import-outside-toplevel
  from models.handler import ModelLoadError  # pylint: disable=import-outside-toplevel
  control = _control(args)
  current = _current(control, args, required=False)
  version = args.version
  if version is None:
    if current is None or current.canary is None:
      raise UsageError('promote needs a VERSION (there is no canary to '
                       'promote)')
    version = current.canary
  _check_complete(args, version)
  if current is not None and version == current.primary:
    raise UsageError(f'version {version} is already the primary of '
                     f'{args.deployment!r}')
  serving = current.primary if current is not None else None
  layout = _layout(args)
  if args.data is None:
    if not args.force:
      raise UsageError('promote needs --data ROOT (the spans the gate '
                       'evaluates on), or --force to promote without the '
                       'gate')
    _check_loads(args, version)
    result = {'metric': args.metric, 'margin': args.margin,
              'decision': gate.FORCED, 'candidate': {'version': version},
              'serving': ({'version': serving} if serving is not None
                          else None),
              'reason': 'not evaluated (--force without --data)'}
  else:
    try:
      spans = examples_io.resolve_spans(args.data, args.eval_span)
    except FileNotFoundError as e:
      raise UsageError(f'--data/--eval_span: {e}') from e
    if not args.eval_span:
      spans = spans[-1:]
    try:
      outcome = gate.run_gate(
          _loader(args, layout), layout, candidate=version, serving=serving,
          data_root=args.data, spans=spans, metric=args.metric,
          margin=args.margin, force=args.force)
    except ModelLoadError as e:
      raise UsageError(f'cannot evaluate: {e}') from e
    except ValueError as e:
      raise UsageError(str(e)) from e
    cand, serv = outcome.candidate, outcome.serving
    print(f'gate on the eval split of span(s) {outcome.span} '
          f'({outcome.examples} examples), metric {outcome.metric}, margin '
          f'{outcome.margin}:')
    rows = [('candidate', cand['version'], _fmt(cand['auc']),
             _fmt(cand['loss']), _fmt(cand['accuracy']))]
    if serv:
      rows.append(('serving', serv['version'], _fmt(serv['auc']),
                   _fmt(serv['loss']), _fmt(serv['accuracy'])))
    print('  ' + _table(('', 'version', 'auc', 'loss', 'accuracy'),
                        rows).replace('\n', '\n  '))
    print(f'  decision: {outcome.decision} ({outcome.reason})')
    if not outcome.passed:
      raise Refused(f'version {version} refused by the gate; not promoted '
                    f'(--force overrides, and is recorded)')
    result = outcome.to_dict()
  fields = _stamp(args, primary=version, canary=None, canary_fraction=0.0,
                  action=dep.PROMOTE, gate=result)
  if current is None:
    record = dep.Deployment(deployment=args.deployment, **fields)
  else:
    fields['shadow'] = None if current.shadow == version else current.shadow
    record = current.successor(**fields)
  return _publish(control, args, record)


def cmd_canary(args) -> int:
  control = _control(args)
  current = _current(control, args)
  if args.off:
    if args.version is not None or args.fraction is not None:
      raise UsageError('canary --off takes no VERSION or --fraction')
    if current.canary is None:
      raise UsageError(f'{args.deployment!r} has no canary')
    return _publish(control, args, current.successor(**_stamp(
        args, canary=None, canary_fraction=0.0, action=dep.CANARY)))
  if args.version is None or args.fraction is None:
    raise UsageError('canary needs VERSION and --fraction F (or --off)')
  if args.version == current.primary:
    raise UsageError(f'version {args.version} is the primary')
  if args.version == current.shadow:
    raise UsageError(f'version {args.version} is the shadow: end it first '
                     f'(shadow --off)')
  _check_loads(args, args.version)
  return _publish(control, args, current.successor(**_stamp(
      args, canary=args.version, canary_fraction=args.fraction,
      action=dep.CANARY)))


def cmd_shadow(args) -> int:
  control = _control(args)
  current = _current(control, args)
  if args.off:
    if args.version is not None:
      raise UsageError('shadow --off takes no VERSION')
    if current.shadow is None:
      raise UsageError(f'{args.deployment!r} has no shadow')
    return _publish(control, args, current.successor(**_stamp(
        args, shadow=None, action=dep.SHADOW)))
  if args.version is None:
    raise UsageError('shadow needs VERSION (or --off)')
  if args.version == current.primary:
    raise UsageError(f'version {args.version} is the primary')
  if args.version == current.canary:
    raise UsageError(f'version {args.version} is the canary: end it first '
                     f'(canary --off)')
  _check_loads(args, args.version)
  return _publish(control, args, current.successor(**_stamp(
      args, shadow=args.version, action=dep.SHADOW)))


def cmd_rollback(args) -> int:
  control = _control(args)
  current = _current(control, args)
  if not current.previous:
    raise UsageError(f'{args.deployment!r} has no previous record to roll '
                     f'back to')
  try:
    before = dep.from_dict(dict(current.previous,
                                deployment=current.deployment))
  except dep.DeploymentError as e:
    raise UsageError(f'the previous record is unreadable: {e}') from e
  # No model load here: a rollback must be quick, and the versions it
  # returns to served before (the jobs refuse one that does not load).
  return _publish(control, args, current.successor(**_stamp(
      args, primary=before.primary, canary=before.canary,
      canary_fraction=before.canary_fraction, shadow=before.shadow,
      action=dep.ROLLBACK)))


def cmd_pin(args) -> int:
  control = _control(args)
  current = _current(control, args, required=False)
  _check_loads(args, args.version)
  fields = _stamp(args, primary=args.version, canary=None,
                  canary_fraction=0.0, shadow=None, action=dep.PIN)
  record = (dep.Deployment(deployment=args.deployment, **fields)
            if current is None else current.successor(**fields))
  return _publish(control, args, record)


def _evaluate(args, since: float):
  from models import live_eval  # pylint: disable=import-outside-toplevel
  return live_eval.evaluate(
      _client_config(args), args.output_topic, since=since,
      labels_topic=args.labels_topic, horizon_s=args.horizon_s,
      max_records=args.max_records, timeout_s=max(args.timeout_s, 60))


def cmd_status(args) -> int:
  from models import live_eval  # pylint: disable=import-outside-toplevel
  control = _control(args)
  current = _current(control, args, required=False)
  now = time.time()
  series, notes = _evaluate(args, now - args.window_s)
  print(f'deployment {args.deployment}: '
        + (current.describe() if current else 'no record'))
  print(f'predictions on {args.output_topic} scored in the last '
        f'{args.window_s:.0f} s ({notes["records"]} records read'
        + (f', {notes["not_predictions"]} not predictions'
           if notes['not_predictions'] else '')
        + (f'; labels from {args.labels_topic} within {args.horizon_s:.0f} s'
           f', {notes["late_labels"]} later' if args.labels_topic else
           '; labels from the rows') + '):')
  if not series:
    print('  none')
    return 0
  print(live_eval.format_table(series))
  return 0


def _canary_since(control, args, current: dep.Deployment) -> float:
  return _since(control.history(args.deployment), dep.CANARY_ROLE).get(
      current.canary, math.nan)


def guard_once(args, control) -> Optional[dep.Deployment]:
  """One guardrail check; returns the rollback record it published, or
  None."""
  from models import gate  # pylint: disable=import-outside-toplevel
  current = _current(control, args, required=False)
  if current is None or current.canary is None:
    print(f'guard: {args.deployment!r} has no canary; nothing to check')
    return None
  started = _canary_since(control, args, current)
  since = max(started if math.isfinite(started) else 0.0,
              time.time() - args.window_s)
  series, _ = _evaluate(args, since)
  find = lambda v, role: next(  # pylint: disable=unnecessary-lambda-assignment
      (s for s in series if s.version == v and s.role == role), None)
  canary = find(current.canary, dep.CANARY_ROLE)
  primary = find(current.primary, dep.PRIMARY)
  counts = (canary.labelled if canary else 0, primary.labelled if primary
            else 0)
  if min(counts) < args.min_count:
    print(f'guard: canary {current.canary} {counts[0]} / primary '
          f'{current.primary} {counts[1]} labelled predictions since '
          f'{_when(since)}; waiting for {args.min_count} each')
    return None
  c_value, p_value = canary.metric(args.metric), primary.metric(args.metric)
  decision, reason = gate.decide(args.metric, args.margin, c_value, p_value)
  summary = (f'canary {current.canary} {args.metric} {_fmt(c_value)} '
             f'({canary.labelled} labelled) vs primary {current.primary} '
             f'{_fmt(p_value)} ({primary.labelled} labelled), margin '
             f'{args.margin}')
  if decision != gate.REFUSE:
    print(f'guard: {summary}: canary kept')
    return None
  record = current.successor(
      canary=None, canary_fraction=0.0, action=dep.GUARD_ROLLBACK,
      updated_at=dep.now_iso(), actor=f'guard@{dep.default_actor()}',
      reason=f'canary {current.canary} underperformed live: {reason}',
      gate={'metric': args.metric, 'margin': args.margin,
            'decision': 'rollback', 'since': dep.now_iso(since),
            'canary': {'version': current.canary, 'value': c_value,
                       'labelled': canary.labelled,
                       'predictions': canary.predictions},
            'primary': {'version': current.primary, 'value': p_value,
                        'labelled': primary.labelled,
                        'predictions': primary.predictions}})
  written = control.publish(record)
  print(f'guard: {summary}: canary rolled back '
        f'(control topic offset {written.offset})')
  return record


def cmd_guard(args) -> int:
  if args.min_count < 1:
    raise UsageError('--min_count must be >= 1')
  control = _control(args)
  while True:
    guard_once(args, control)
    if args.once:
      return 0
    time.sleep(args.interval_s)


COMMANDS = {'list': cmd_list, 'history': cmd_history, 'promote': cmd_promote,
            'canary': cmd_canary, 'shadow': cmd_shadow,
            'rollback': cmd_rollback, 'pin': cmd_pin, 'status': cmd_status,
            'guard': cmd_guard}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (module docstring)."""
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=args.log_level,
                      format='%(asctime)s %(levelname)s %(name)s: '
                      '%(message)s')
  from transforms.kafka import admin  # pylint: disable=import-outside-toplevel
  try:
    return COMMANDS[args.command](args)
  except Refused as e:
    print(f'refused: {e}', file=sys.stderr)
    return 1
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (admin.KafkaUnavailableError, admin.TopicNotFoundError,
          RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == '__main__':
  sys.exit(main())
