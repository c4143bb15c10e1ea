"""Versioned SavedModel export: the contract between training and scoring.

Layout (TF Serving's)::

  <model_dir>/<version>/          integer versions, 1, 2, ...
      saved_model.pb, variables/  a tf.Module SavedModel (not keras export)
      assets.extra/model.keras    the Keras model, to warm-start a retrain
      model_meta.json             feature names, config, signatures
      metrics.json                eval metrics; written last

Signatures (both return ``{"score": float32 [B]}``, the probability of
signal):

* ``serving_default``: ``features`` float32 [B, len(feature_names)], columns
  in ``feature_names`` order;
* ``serve_examples``: ``examples`` string [B], serialized ``tf.Example``
  protos with one float feature per name (a float_list of length 1); a
  missing feature fails the call.

The SavedModel also holds ``feature_names`` (a string variable), so a loaded
model describes its own input columns. It holds plain ``tf.Variable``s only
(no Keras 3 variables), so both ``tf.saved_model.load`` and TF1-session
loaders such as tfx-bsl's can load it.

Completeness: on local disk a version is written into
``<model_dir>/.tmp-<version>-<random>/`` and renamed into place as the last
step, so it appears complete or not at all. Object stores (``gs://``) have
no atomic directory rename, so there the version is written in place with
``metrics.json`` last: **a version is complete when metrics.json exists**
(next to saved_model.pb and variables/). Readers use models/versions.py's
``list_versions`` / ``latest_version``, which only return complete versions
(the one definition of "complete"), on either kind of
storage. All file operations go through ``tf.io.gfile``.
"""

import datetime
import errno
import functools
import json
import logging
import os
import posixpath
import subprocess
import tempfile
import uuid
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from models.versions import METRICS_FILE, version_dir

_LOGGER = logging.getLogger(__name__)

SERVING_DEFAULT = 'serving_default'
SERVE_EXAMPLES = 'serve_examples'
FEATURES_INPUT = 'features'
EXAMPLES_INPUT = 'examples'
SCORE_OUTPUT = 'score'
META_FILE = 'model_meta.json'
# The trained Keras model too, for warm-starting a retrain (TF Serving
# ignores assets.extra/).
KERAS_FILE = 'assets.extra/model.keras'
_TMP_PREFIX = '.tmp-'
_REQUIRED_METRICS = ('accuracy', 'auc', 'loss', 'examples')
# Tolerance of the export self-check between the two signatures.
_SIGNATURE_ATOL = 1e-5
# Automatic versions tried before giving up when concurrent exporters race.
_MAX_VERSION_RACES = 100


def _join(*parts: str) -> str:
  # posixpath keeps gs:// paths intact on any OS.
  return posixpath.join(*parts)


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def _local_path(path: str) -> str:
  return path[len('file://'):] if path.startswith('file://') else path


def _integer_dirs(model_dir: str) -> list[int]:
  """All integer-named entries of ``model_dir``, complete or not (a new
  version number must not reuse one of an export that failed)."""
  if not tf.io.gfile.isdir(model_dir):
    return []
  versions = []
  for name in tf.io.gfile.listdir(model_dir):
    name = name.rstrip('/')  # object stores list directories as 'name/'
    if name.isdigit():
      versions.append(int(name))
  return sorted(versions)


def read_model_meta(path: str) -> dict:
  """model_meta.json of a version directory."""
  with tf.io.gfile.GFile(_join(os.fspath(path), META_FILE), 'r') as f:
    return json.loads(f.read())


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """``git describe`` of this checkout, else the installed package version."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(
        ['git', '-C', root, 'describe', '--always', '--dirty', '--tags'],
        capture_output=True, text=True, timeout=10, check=True)
    if out.stdout.strip():
      return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    return 'kafka-beam-inference==' + metadata.version('kafka-beam-inference')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


def _write_json(path: str, payload: Mapping) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(_jsonable(payload), indent=2, sort_keys=True) + '\n')


def scoring_module(model: Any,
                   feature_names: Sequence[str]) -> tf.Module:
  """Wraps a trained Keras model in a tf.Module with the two signatures.

  The module holds a copy of the model's weights as plain ``tf.Variable``s
  and runs the Keras graph through ``model.stateless_call`` on them, so the
  SavedModel contains no Keras 3 variables: TF1-session loaders (tfx-bsl's
  RunInference) cannot restore those ("Could not find variable ..."), while
  plain variables load everywhere. The Keras model itself is not saved here
  (see ``KERAS_FILE``). The class is made per call because the input
  signatures depend on the number and names of the features.
  """
  names = [str(n) for n in feature_names]
  if not names or len(set(names)) != len(names):
    raise ValueError('feature_names must be non-empty and unique')
  num = len(names)
  parse_spec = {n: tf.io.FixedLenFeature([1], tf.float32) for n in names}

  def plain_copy(variables):
    return [tf.Variable(v.value, trainable=False,
                        name=v.path.replace('/', '_')) for v in variables]

  class ScoringModule(tf.Module):
    """Weights, feature names and the serving functions of a model."""

    def __init__(self):
      super().__init__(name='scoring')
      self.weights = plain_copy(model.trainable_variables)
      self.state = plain_copy(model.non_trainable_variables)
      self.feature_names = tf.Variable(names, dtype=tf.string,
                                       trainable=False, name='feature_names')

    def _score(self, features):
      # training=False: dropout off. Output [B, 1] (or [B]) -> [B].
      scores, _ = model.stateless_call(
          [v.read_value() for v in self.weights],
          [v.read_value() for v in self.state], features, training=False)
      return tf.reshape(tf.cast(scores, tf.float32), [-1])

    @tf.function(input_signature=[
        tf.TensorSpec([None, num], tf.float32, name=FEATURES_INPUT)])
    def score_features(self, features):
      return {SCORE_OUTPUT: self._score(features)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def score_examples(self, examples):
      parsed = tf.io.parse_example(examples, parse_spec)
      features = tf.concat([parsed[n] for n in names], axis=1)
      return {SCORE_OUTPUT: self._score(features)}

  return ScoringModule()


def _save_keras(model: Any, target: str) -> None:
  # Keras writes .keras files to local paths; copy for object stores.
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, 'model.keras')
    model.save(local)
    tf.io.gfile.makedirs(posixpath.dirname(_join(target, KERAS_FILE)))
    tf.io.gfile.copy(local, _join(target, KERAS_FILE), overwrite=True)


def load_keras_model(path: str) -> Any:
  """The Keras model saved with a version (to continue training it)."""
  import keras  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, 'model.keras')
    tf.io.gfile.copy(_join(os.fspath(path), KERAS_FILE), local)
    return keras.models.load_model(local)


def _signature_meta(module: tf.Module) -> dict:
  """Input/output names, dtypes and shapes, read from the real functions."""

  def describe(fn) -> dict:
    concrete = fn.get_concrete_function()
    args, kwargs = concrete.structured_input_signature
    specs = dict(kwargs, **{s.name: s for s in args})
    outputs = concrete.structured_outputs
    return {
        'inputs': {k: {'dtype': s.dtype.name, 'shape': s.shape.as_list()}
                   for k, s in specs.items()},
        'outputs': {k: {'dtype': t.dtype.name, 'shape': t.shape.as_list()}
                    for k, t in outputs.items()},
    }

  return {SERVING_DEFAULT: describe(module.score_features),
          SERVE_EXAMPLES: describe(module.score_examples)}


def _example_bytes(rows: np.ndarray, names: Sequence[str]) -> list[bytes]:
  # pylint: disable-next=import-outside-toplevel
  from transforms import example_coder
  return example_coder.Encoder().encode(example_coder.float_features(
      names, np.asarray(rows, np.float32)))


def verify_saved_model(path: str, feature_names: Sequence[str],
                       probe: Optional[np.ndarray] = None) -> None:
  """Loads a SavedModel and checks both signatures on a probe batch.

  Raises:
    ValueError: a signature is missing, returns the wrong shape, a
      non-finite or out-of-range score, or the two signatures disagree.
  """
  names = list(feature_names)
  if probe is None:
    probe = np.random.default_rng(0).normal(size=(8, len(names)))
  probe = np.asarray(probe, dtype=np.float32)
  loaded = tf.saved_model.load(path)
  for name in (SERVING_DEFAULT, SERVE_EXAMPLES):
    if name not in loaded.signatures:
      raise ValueError(f'{path}: signature {name!r} missing')
  dense = loaded.signatures[SERVING_DEFAULT](
      **{FEATURES_INPUT: tf.constant(probe)})[SCORE_OUTPUT].numpy()
  parsed = loaded.signatures[SERVE_EXAMPLES](
      **{EXAMPLES_INPUT: tf.constant(_example_bytes(probe, names))}
  )[SCORE_OUTPUT].numpy()
  if dense.shape != (len(probe),) or parsed.shape != (len(probe),):
    raise ValueError(f'{path}: score shapes {dense.shape} / {parsed.shape}, '
                     f'expected ({len(probe)},)')
  if not (np.all(np.isfinite(dense)) and np.all((dense >= 0) & (dense <= 1))):
    raise ValueError(f'{path}: scores are not probabilities: {dense}')
  if not np.allclose(dense, parsed, atol=_SIGNATURE_ATOL, rtol=0):
    raise ValueError(f'{path}: the signatures disagree: {dense} vs {parsed}')


def export_model(model: Any, model_dir: Union[str, os.PathLike], *,
                 feature_names: Sequence[str], metrics: Mapping[str, Any],
                 version: Optional[int] = None,
                 span: Union[int, Sequence[int], None] = None,
                 config_name: str = 'unknown', verify: bool = True,
                 probe: Optional[np.ndarray] = None) -> str:
  """Exports ``model`` as a new complete version under ``model_dir``.

  Args:
    model: a trained Keras model: float32 [B, len(feature_names)] ->
      probability of signal, [B, 1] or [B].
    model_dir: local path or gs:// URI of the model base directory.
    feature_names: input columns, in the order the model expects.
    metrics: eval results; must hold ``accuracy``, ``auc``, ``loss`` and
      ``examples`` (eval count); ``train_examples`` and any extra keys are
      written as given.
    version: integer version; None = highest existing (complete or not) + 1,
      starting at 1.
    span: the training data span(s); a sequence is recorded as ``spans``
      with its maximum as ``span``.
    config_name: registry config name, recorded in both JSON files.
    verify: load the SavedModel and check both signatures on a probe batch
      before the version becomes visible.
    probe: float rows for that check (default: 8 random normal rows).

  Returns:
    The path of the new version directory.

  Raises:
    FileExistsError: an explicit ``version`` already exists.
    ValueError: missing metrics, bad feature names or a failed verify.
  """
  model_dir = os.fspath(model_dir)
  missing = [k for k in _REQUIRED_METRICS if k not in metrics]
  if missing:
    raise ValueError(f'metrics lack {missing}')
  names = [str(n) for n in feature_names]
  module = scoring_module(model, names)
  created = _now()
  spans = None
  if span is not None and not isinstance(span, (int, np.integer)):
    spans = sorted(int(s) for s in span)
    span = spans[-1] if spans else None
  meta = {
      'feature_names': names,
      'config': config_name,
      'signatures': _signature_meta(module),
      'created': created,
  }
  metrics_doc = {
      'train_examples': None,
      **dict(metrics),
      'span': span,
      'config': config_name,
      'code_version': code_version(),
      'created': created,
  }
  if spans is not None:
    metrics_doc['spans'] = spans

  tf.io.gfile.makedirs(model_dir)
  if version is not None and tf.io.gfile.exists(version_dir(model_dir,
                                                            version)):
    raise FileExistsError(version_dir(model_dir, version))
  auto = version is None
  if auto:
    version = (_integer_dirs(model_dir) or [0])[-1] + 1

  def write(target: str) -> None:
    tf.saved_model.save(module, target, signatures={
        SERVING_DEFAULT: module.score_features,
        SERVE_EXAMPLES: module.score_examples,
    })
    if verify:
      verify_saved_model(target, names, probe)
    _save_keras(model, target)
    _write_json(_join(target, META_FILE), meta)
    # Last: its presence marks the version complete (see module docstring).
    _write_json(_join(target, METRICS_FILE), metrics_doc)

  if not _is_local(model_dir):
    final = version_dir(model_dir, version)
    write(final)
    _LOGGER.info('Exported %s (config %s) to %s', version, config_name, final)
    return final

  local_dir = _local_path(model_dir)
  tmp = os.path.join(local_dir,
                     f'{_TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}')
  try:
    write(tmp)
    for _ in range(_MAX_VERSION_RACES):
      final = os.path.join(local_dir, str(version))
      try:
        if os.path.exists(final):
          raise FileExistsError(errno.EEXIST, 'version exists', final)
        os.rename(tmp, final)
        break
      except OSError as e:
        # Another exporter took this number between our listing and the
        # rename: an explicit version is an error, an automatic one moves on.
        if auto and e.errno in (errno.EEXIST, errno.ENOTEMPTY):
          version += 1
          continue
        raise
    else:
      raise FileExistsError(f'no free version under {local_dir} after '
                            f'{_MAX_VERSION_RACES} attempts')
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
    raise
  _LOGGER.info('Exported version %d (config %s) to %s', version, config_name,
               final)
  return final
