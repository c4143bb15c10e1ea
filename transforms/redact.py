"""Masking secret values in text and command lines before they are shown.

Kafka client settings travel as ``KEY=VALUE`` strings (``--kafka_config
sasl.password=...``); anything that echoes them (a printed command, a dry
run, an error about a malformed entry, a log line) must not show the value
of a key that looks secret. A key looks secret when it contains
``password``, ``secret`` or ``token``, starts with ``sasl.`` or
``ssl.key``, or ends with ``jaas.config``; its value becomes ``***``.

Deliberately broad: masking ``sasl.username`` costs a little clarity,
missing a password costs a credential. Light to import (only ``re``): the
shell scripts call ``python -m transforms.redact`` to print commands.
"""

import re
import shlex
import sys
from typing import Iterable, Optional, Sequence, Union

MASK = '***'

# What a secret-looking key is (matched against the whole key).
_SECRET_KEY = (r'[\w.-]*(?:password|secret|token)[\w.-]*'
               r'|sasl\.[\w.-]+|ssl\.key[\w.-]*|[\w.-]*jaas\.config')
_SECRET_KEY_RE = re.compile(rf'^(?:{_SECRET_KEY})$', re.IGNORECASE)

# KEY=VALUE, KEY: VALUE, "KEY": "VALUE" (dict and JSON reprs) in free text.
# The value ends at whitespace, a comma, a semicolon or a closing bracket,
# or spans a quoted string.
_IN_TEXT_RE = re.compile(
    rf'(?P<key>(?<![\w.@/-])["\']?(?:{_SECRET_KEY})["\']?)'
    r'(?P<sep>\s*[=:]\s*)'
    r'(?P<value>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[^\s,;\'")\]}]+)',
    re.IGNORECASE)

# One command-line argument: [--flag=]KEY=VALUE or KEY:VALUE (the value runs
# to the end of the argument: a JAAS config holds spaces).
_ARG_RE = re.compile(r'^(?P<prefix>--[\w.-]+=)?(?P<key>[^=:\s]+)'
                     r'(?P<sep>\s*[=:]\s*|\s+)(?P<value>.*)$', re.DOTALL)


def is_secret_key(key: str) -> bool:
  """Whether a setting's name looks like it holds a secret."""
  return bool(_SECRET_KEY_RE.match(key.strip().strip('"\'')))


def _mask_value(match: re.Match) -> str:
  key, sep, value = match.group('key', 'sep', 'value')
  if _is_reference(value):
    return match.group(0)
  if len(value) >= 2 and value[0] == value[-1] and value[0] in '"\'':
    return f'{key}{sep}{value[0]}{MASK}{value[0]}'
  # A colon right after the value ends a message part ("KEY=...: why").
  return f'{key}{sep}{MASK}{":" if value.endswith(":") else ""}'


def _is_reference(value: str) -> bool:
  # @FILE, @gs://..., @secret:projects/...: where a value is, not the value.
  return value.strip('"\'').startswith('@')


def mask_text(text: str) -> str:
  """``text`` with the value of every secret-looking ``KEY=VALUE`` masked."""
  return _IN_TEXT_RE.sub(_mask_value, text)


def mask_arg(arg: str) -> str:
  """One command-line argument with a secret value masked.

  ``--kafka_config=sasl.password=x`` -> ``--kafka_config=sasl.password=***``;
  ``sasl.jaas.config=... password="x";`` -> ``sasl.jaas.config=***`` (the
  whole value: it may hold spaces). Other arguments go through mask_text.
  """
  match = _ARG_RE.match(arg)
  if (match and is_secret_key(match.group('key')) and
      not _is_reference(match.group('value'))):
    return (f'{match.group("prefix") or ""}{match.group("key")}'
            f'{match.group("sep")}{MASK}')
  return mask_text(arg)


def mask_args(args: Sequence[str]) -> list[str]:
  """Command-line arguments with secret values masked.

  Also masks the value that follows a flag whose own name looks secret
  (``--sasl_password VALUE``).
  """
  out = []
  hide_next = False
  for arg in args:
    if hide_next and not arg.startswith('--'):
      out.append(arg if _is_reference(arg) else MASK)
      hide_next = False
      continue
    hide_next = (arg.startswith('--') and '=' not in arg and
                 is_secret_key(arg[2:]))
    if hide_next:
      out.append(arg)
      continue
    out.append(mask_arg(arg))
  return out


def mask_secrets(text_or_args: Union[str, Iterable[str]]
                ) -> Union[str, list[str]]:
  """A string through mask_text, a sequence of arguments through mask_args."""
  if isinstance(text_or_args, str):
    return mask_text(text_or_args)
  return mask_args(list(text_or_args))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m transforms.redact ARG...``: prints the arguments as one
  shell-quoted command line, secret values masked (for run_dataflow.sh)."""
  args = sys.argv[1:] if argv is None else list(argv)
  if args in (['-h'], ['--help']):
    print('usage: python -m transforms.redact ARG...\n\nPrints the '
          'arguments as one shell-quoted command line with secret-looking '
          'values (sasl.password=..., *.jaas.config=...) masked.')
    return 0
  print(' '.join(shlex.quote(a) for a in mask_args(args)))
  return 0


__all__ = ['MASK', 'is_secret_key', 'mask_arg', 'mask_args', 'mask_secrets',
           'mask_text']

if __name__ == '__main__':
  sys.exit(main())
