"""One flag spelling for every command: ``--model_dir``, as Beam spells its.

The jobs' flags are Beam pipeline options, which use underscores. The
helper scripts (run_local.sh's demo, the broker manager) spell theirs the
same way; ``underscore_spellings`` keeps the hyphen spellings they had
before (``--model-dir``) working without listing them in --help.
"""

import argparse
from typing import Sequence


def flag_names(parser: argparse.ArgumentParser) -> list[str]:
  """Every --flag a parser knows, those of its subcommands included."""
  names = []
  for action in parser._actions:  # pylint: disable=protected-access
    names += [s for s in action.option_strings if s.startswith('--')]
    subcommands = getattr(action, 'choices', None)
    if isinstance(subcommands, dict):  # a subparsers action
      for sub in subcommands.values():
        names += flag_names(sub)
  return names


def underscore_spellings(argv: Sequence[str],
                         parser: argparse.ArgumentParser) -> list[str]:
  """``--model-dir`` -> ``--model_dir`` where only the latter is a flag of
  ``parser`` (or of one of its subcommands)."""
  known = set(flag_names(parser))
  out = []
  for arg in argv:
    name, sep, value = arg.partition('=')
    if name.startswith('--') and name not in known:
      underscored = '--' + name[2:].replace('-', '_')
      if underscored in known:
        arg = f'{underscored}{sep}{value}'
    out.append(arg)
  return out


__all__ = ['flag_names', 'underscore_spellings']
