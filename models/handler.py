"""A RunInference ModelHandler for TensorFlow SavedModels, with hot swap.

Why not Beam's TFModelHandler* : they load with ``keras.models.load_model``,
which fails on SavedModels written by Keras 3 (docs/tfx_interop.md). This
handler loads with ``tf.saved_model.load`` and calls a named signature, so
it serves our exports (models/export.py), Keras 3 ``model.export()``
directories, plain ``tf.Module`` exports and TFX-style models alike. With
``model_handler='tfx_bsl'`` the same handler calls the model through
tfx-bsl's RunInference handler instead (models/tfx_bsl_handler.py: TF1
session, models taking serialized tf.Examples only).

Inputs, chosen from the signature's input spec (no configuration):
* one float tensor [B, F]: the schema's features as one dense tensor;
* several inputs: a dict of named tensors, one per feature name;
* one string tensor [B]: serialized tf.Example protos, the TFX Trainer's
  ``serving_default`` convention and the input of classify/regress
  signatures. The examples hold models/example_layout.py's columns without
  the label: the features, ``event_id``, ``detector``, ``event_time(_ms)``
  and, when the events carry them (score_stream scores after its windows;
  backfill before), the window columns; a model parses what it needs.
  They are encoded in batches (transforms/example_coder.py).

Outputs: ``--model_output`` if given; else by the signature's method
(read from saved_model.pb): ``scores`` of a classify signature (for two
classes, the second column: the positive class's probability),
``outputs`` of a regress signature; else ``score`` or the only output.

Elements are EventBatches (many events each); a RunInference batch is a list
of them, scored with one signature call on the concatenated rows. Each
element comes back as a ScoredBatch with one score per row and the model
version that produced it.

Model directory: either a SavedModel itself, or a TF-Serving-style root with
integer version subdirectories (``<model_dir>/<version>/``); which versions
are complete is models/versions.py's one definition. With a
versioned root the handler serves the latest complete version and checks for
a newer one every ``poll_interval_s`` seconds: a new version is loaded and
smoke-tested off to the side and swapped in between two batches; a corrupt or
incomplete one is refused (logged, counted) and the current one keeps
serving. Paths may be local or gs:// (read with Beam's FileSystems and
loaded from a local copy).

Deployments (``control``, ``--control_topic``): instead of the newest
complete version, the handler serves what a deployment record on a Kafka
control topic names (models/serving.py, models/deployments.py): a primary,
optionally a canary scoring a fraction of the keys (models/routing.py) and
optionally a shadow scoring every row beside the primary. Each ScoredBatch
then says per row which version scored it and in which role, and carries
the shadow's scores. Without ``control`` the primary is the only model.

Retry policy: a batch whose signature call fails is retried per element and
then per row, so one bad row cannot fail its neighbours; rows that still
fail are returned with an error and become dead letters downstream (primary
and canary alike). The shadow never affects the rows: its batch is scored
once, and if that fails its scores are NaN for the batch, counted in
``inference/shadow_rows_failed``, never retried per row (which would cost
the primary latency) and never dead-lettered. Loading errors raise (the
runner retries; at job start they fail the job).
"""

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from models import deployments as dep
from models import example_layout as el
from models import routing
from models import tf_import
from models import versions
from models.serving import (ControlSource, DeployedModels, ModelLoadError,
                            ServingSet)
from transforms import example_coder
from transforms.events import (CANARY_ROLE, PRIMARY_ROLE, EventBatch,
                               ScoredBatch, concat_features)

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'inference'

DEFAULT_SIGNATURE = 'serving_default'

INPUT_TENSOR = 'tensor'
INPUT_DICT = 'dict'
INPUT_EXAMPLES = 'examples'

# SignatureDef method names (TF Serving's), and what to read of each.
PREDICT = 'tensorflow/serving/predict'
CLASSIFY = 'tensorflow/serving/classify'
REGRESS = 'tensorflow/serving/regress'
# method -> (default output, column of the positive class in [n, 2] scores)
_METHOD_OUTPUTS = {CLASSIFY: ('scores', 1), REGRESS: ('outputs', None)}

# --model_handler values: which runtime calls the model.
SAVEDMODEL = 'savedmodel'
TFX_BSL = 'tfx_bsl'
MODEL_HANDLERS = (SAVEDMODEL, TFX_BSL)


def _local_copy(path: str) -> tuple[str, Optional[str]]:
  """A local directory with the SavedModel at ``path`` (copied if remote).

  Returns:
    (local path, temp dir to delete later or None).
  """
  if '://' not in path:
    return path, None
  tmp = tempfile.mkdtemp(prefix='kbi-model-')
  matches = FileSystems.match([versions.join(path, '**')])[0].metadata_list
  if not matches:
    raise ModelLoadError(f'no files under {path}')
  prefix = path.rstrip('/') + '/'
  for meta in matches:
    rel = meta.path[len(prefix):] if meta.path.startswith(prefix) else (
        os.path.basename(meta.path))
    target = os.path.join(tmp, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with FileSystems.open(meta.path) as src, open(target, 'wb') as dst:
      shutil.copyfileobj(src, dst)
  return tmp, tmp


def method_names(local: str) -> dict:
  """Signature name -> method name (predict, classify, regress), read from
  saved_model.pb: a loaded SavedModel does not say (empty if unreadable)."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
  try:
    with open(os.path.join(local, 'saved_model.pb'), 'rb') as f:
      saved = saved_model_pb2.SavedModel.FromString(f.read())
  except (OSError, ValueError):
    return {}
  out = {}
  for meta_graph in saved.meta_graphs:
    if 'serve' in meta_graph.meta_info_def.tags:
      out.update({name: sig.method_name
                  for name, sig in meta_graph.signature_def.items()})
  return out


def smoke_batch(layout: el.ExampleLayout, rows: int = 2) -> EventBatch:
  """Zero-valued events of every column of ``layout`` (a test call)."""
  return feature_batch(layout, np.zeros((rows, len(layout.features)),
                                        np.float32), source='smoke-test')


def feature_batch(layout: el.ExampleLayout, features: np.ndarray, *,
                  source: str = 'features') -> EventBatch:
  """Events holding ``features`` [n, F] (the schema's feature order) and
  zeros elsewhere: how to call a model on feature rows without a stream
  (the smoke test, the promotion gate's evaluation)."""
  rows = len(features)
  zeros = np.zeros(rows)
  width = len(layout.window_features or ())
  return EventBatch(
      source=source, positions=np.arange(rows), raw=[b''] * rows,
      ids=[f'{source}-{i}' for i in range(rows)], keys=[''] * rows,
      event_time=zeros, features=np.asarray(features, np.float32),
      window_values=np.zeros((rows, width), np.float32), labels=None,
      read_time=zeros, window=(0.0, 1.0), win_count=np.ones(rows, np.int64),
      win_mean=np.zeros((rows, width), np.float32),
      win_std=np.zeros((rows, width), np.float32))


class Signature:
  """A loaded model signature: what every kind of handler shares.

  Subclasses load the model and implement ``_score(batches)``; this class
  holds the local copy, the examples encoding (for signatures that take
  serialized tf.Examples) and the checks on the scores.
  """

  def __init__(self, path: str, version: int, signature: str,
               layout: el.ExampleLayout):
    self.path = path
    self.version = version
    self.signature = signature
    self.layout = layout
    self.feature_names = list(layout.features)
    self.input_mode = INPUT_TENSOR
    self.output_key: Optional[str] = None
    self._encoder = example_coder.Encoder()
    self._tmp = None
    self.local, self._tmp = _local_copy(path)

  def examples(self, batches: Sequence[EventBatch]) -> list[bytes]:
    """Serialized tf.Examples of the rows: models/example_layout.py's
    columns without the label (window columns when the events have them),
    the examples TFX's Trainer serves on."""
    out: list = []
    for b in batches:
      out += self._encoder.encode(self.layout.event_batch(b))
    return out

  def __call__(self, batches: Sequence[EventBatch]) -> np.ndarray:
    """Scores the rows of ``batches`` -> [n] or [n, k] float32."""
    scores = np.asarray(self._score(batches))
    if scores.ndim == 2 and scores.shape[1] == 1:
      scores = scores[:, 0]
    rows = int(sum(len(b) for b in batches))
    if len(scores) != rows:
      raise ValueError(f'model returned {len(scores)} scores for {rows} rows')
    return scores.astype(np.float32, copy=False)

  def _score(self, batches: Sequence[EventBatch]) -> np.ndarray:
    raise NotImplementedError

  def smoke_test(self) -> None:
    """Scores two zero rows; raises ModelLoadError if that fails."""
    try:
      scores = self([smoke_batch(self.layout)])
    except Exception as e:  # pylint: disable=broad-except
      raise ModelLoadError(f'{self.path}: test call of signature '
                           f'{self.signature!r} failed: {e}') from e
    if not np.all(np.isfinite(scores)):
      raise ModelLoadError(f'{self.path}: test call returned non-finite '
                           f'scores {scores!r}')

  def close(self) -> None:
    if self._tmp:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None


class LoadedSignature(Signature):
  """A signature loaded with ``tf.saved_model.load``, and how to feed it."""

  def __init__(self, path: str, version: int, signature: str,
               layout: el.ExampleLayout, output_key: Optional[str]):
    tf = tf_import.tensorflow()
    super().__init__(path, version, signature, layout)
    try:
      try:
        self._module = tf.saved_model.load(self.local)
      except Exception:  # pylint: disable=broad-except
        if not tf_import.with_keras():
          raise
        # Objects that only Keras' registrations restore.
        self._module = tf.saved_model.load(self.local)
    except Exception as e:  # pylint: disable=broad-except
      self.close()
      raise ModelLoadError(f'cannot load SavedModel at {path}: {e}') from e
    signatures = getattr(self._module, 'signatures', {})
    if signature not in signatures:
      self.close()
      raise ModelLoadError(
          f'SavedModel at {path} has no signature {signature!r}; it has '
          f'{sorted(signatures)} (set --model_signature)')
    self._fn = signatures[signature]
    self.method = method_names(self.local).get(signature, PREDICT)
    _, inputs = self._fn.structured_input_signature
    self._inputs = dict(inputs)
    try:
      self.input_mode, self._input_name = self._input_mode()
      self.output_key, self._column = self._output(output_key)
    except ModelLoadError:
      self.close()
      raise

  def _input_mode(self) -> tuple[str, Optional[str]]:
    import tensorflow as tf
    specs = self._inputs
    if len(specs) == 1:
      name, spec = next(iter(specs.items()))
      if spec.dtype == tf.string:
        return INPUT_EXAMPLES, name
      width = spec.shape[-1] if spec.shape.rank == 2 else None
      if width is not None and width != len(self.feature_names):
        raise ModelLoadError(
            f'signature {self.signature!r} of {self.path} takes {width} '
            f'features; the features of --schema are '
            f'{len(self.feature_names)} (docs/your_data.md)')
      return INPUT_TENSOR, name
    missing = set(self.feature_names) - set(specs)
    if missing:
      raise ModelLoadError(
          f'signature {self.signature!r} of {self.path} takes named inputs '
          f'{sorted(specs)}; none for the --schema features '
          f'{sorted(missing)[:5]}: name the inputs after the features, or '
          f'choose another signature with --model_signature '
          f'(docs/your_data.md)')
    return INPUT_DICT, None

  def _output(self, output_key: Optional[str]) -> tuple[str, Optional[int]]:
    """The output to read and, for a binary classifier's [n, 2] scores,
    the column of the positive class."""
    outputs = self._fn.structured_outputs
    default, column = _METHOD_OUTPUTS.get(self.method, (None, None))
    if output_key is None:
      if default in outputs:
        output_key = default
      elif 'score' in outputs:
        output_key = 'score'
      elif len(outputs) == 1:
        output_key = next(iter(outputs))
      else:
        raise ModelLoadError(
            f'signature {self.signature!r} of {self.path} has outputs '
            f'{sorted(outputs)}; choose one with --model_output')
    if output_key not in outputs:
      raise ModelLoadError(f'signature {self.signature!r} of {self.path} has '
                           f'no output {output_key!r} (--model_output); it '
                           f'has {sorted(outputs)}')
    shape = outputs[output_key].shape
    if column is not None and not (shape.rank == 2 and shape[-1] == 2):
      column = None
    return output_key, column

  def _score(self, batches: Sequence[EventBatch]) -> np.ndarray:
    import tensorflow as tf
    if self.input_mode == INPUT_EXAMPLES:
      out = self._fn(**{self._input_name: tf.constant(self.examples(batches))})
    else:
      features = concat_features(batches)
      if self.input_mode == INPUT_TENSOR:
        out = self._fn(**{self._input_name: tf.constant(features)})
      else:
        feed = {}
        for i, name in enumerate(self.feature_names):
          spec = self._inputs[name]
          col = features[:, i]
          if spec.shape.rank == 2:
            col = col[:, None]
          feed[name] = tf.constant(col, dtype=spec.dtype)
        out = self._fn(**feed)
    scores = out[self.output_key].numpy()
    return scores if self._column is None else scores[:, self._column]


def _smoke_tested(loaded: 'Signature') -> 'Signature':
  """``loaded`` once its smoke test passes; closed, and ModelLoadError
  raised, when it fails."""
  try:
    loaded.smoke_test()
  except ModelLoadError:
    loaded.close()
    raise
  return loaded


class VersionLoader:
  """Loads and smoke-tests one version of a versioned model directory (for
  DeployedModels; picklable settings, nothing loaded until called)."""

  def __init__(self, model_dir: str, *, signature: str,
               layout: el.ExampleLayout, output_key: Optional[str],
               model_handler: str = SAVEDMODEL):
    self._dir = model_dir
    self._signature = signature
    self._layout = layout
    self._output_key = output_key
    self._loader = signature_loader(model_handler)

  def __call__(self, version: int) -> 'Signature':
    """Raises ModelLoadError when ``version`` is not complete (models/
    versions.py), does not load or fails its smoke test."""
    path = versions.version_dir(self._dir, version)
    if not versions.is_complete_version(path):
      raise ModelLoadError(f'{path} is not a complete version (missing, or '
                           f'its export did not finish)')
    return _smoke_tested(self._loader(path, version, self._signature,
                                      self._layout, self._output_key))


class VersionedModel:
  """The model a process serves, and its hot swap (thread-safe)."""

  def __init__(self, model_dir: str, *, signature: str,
               layout: el.ExampleLayout, output_key: Optional[str],
               poll_interval_s: float, pinned_version: Optional[int] = None,
               model_handler: str = SAVEDMODEL):
    self._dir = model_dir
    self._signature = signature
    self._layout = layout
    self._output_key = output_key
    self._loader = signature_loader(model_handler)
    self._poll_interval_s = poll_interval_s
    self._pinned = pinned_version
    self._lock = threading.Lock()
    self._refused: set[int] = set()
    self._last_poll = time.monotonic()
    # Before the first load: a version refused then is counted too.
    self.swaps = Metrics.counter(_NAMESPACE, 'model_swaps')
    self.refusals = Metrics.counter(_NAMESPACE, 'model_versions_refused')
    self.versioned = not versions.is_saved_model(model_dir)
    self.current = self._load_initial()
    self._set = ServingSet(primary=self.current)

  def serving(self) -> ServingSet:
    """The set to score the next batch with: the current version, after a
    hot swap if one is due."""
    self.maybe_refresh()
    if self._set.primary is not self.current:
      self._set = ServingSet(primary=self.current)
    return self._set

  def _load(self, version: int) -> Signature:
    path = (versions.version_dir(self._dir, version) if self.versioned else
            self._dir)
    return _smoke_tested(self._loader(path, version, self._signature,
                                      self._layout, self._output_key))

  def _load_initial(self) -> Signature:
    if not self.versioned:
      name = os.path.basename(self._dir.rstrip('/'))
      return self._load(int(name) if name.isdigit() else 0)
    complete = versions.list_versions(self._dir)
    if self._pinned is not None:
      if self._pinned not in complete:
        raise ModelLoadError(f'model version {self._pinned} is not a complete '
                             f'version under {self._dir} (have {complete})')
      return self._load(self._pinned)
    if not complete:
      raise ModelLoadError(
          f'no SavedModel at {self._dir}: neither saved_model.pb nor complete '
          f'version directories (<n>/saved_model.pb, variables/ and '
          f'metrics.json)')
    errors = []
    for version in reversed(complete):
      try:
        return self._load(version)
      except ModelLoadError as e:
        errors.append(str(e))
        self._refused.add(version)
        self.refusals.inc()
        _LOGGER.error('refusing model version %d: %s', version, e)
    raise ModelLoadError('no loadable model version: ' + '; '.join(errors))

  def maybe_refresh(self) -> None:
    """Swaps in a newer complete version, at most every poll interval."""
    if not self.versioned or self._pinned is not None:
      return
    now = time.monotonic()
    if now - self._last_poll < self._poll_interval_s:
      return
    self._last_poll = now
    candidates = [v for v in versions.list_versions(self._dir)
                  if v > self.current.version and v not in self._refused]
    if not candidates:
      return
    version = candidates[-1]
    try:
      loaded = self._load(version)
    except ModelLoadError as e:
      self._refused.add(version)
      self.refusals.inc()
      _LOGGER.error('refusing model version %d (still serving %d): %s',
                    version, self.current.version, e)
      return
    with self._lock:
      old, self.current = self.current, loaded
    self.swaps.inc()
    _LOGGER.info('model swap: version %d -> %d (%s)', old.version,
                 loaded.version, loaded.path)
    old.close()

  def close(self) -> None:
    """Closes the served version (tests; process end)."""
    self.current.close()


def signature_loader(model_handler: str):
  """The Signature class of a --model_handler value."""
  if model_handler == SAVEDMODEL:
    return LoadedSignature
  if model_handler == TFX_BSL:
    from models import tfx_bsl_handler  # pylint: disable=import-outside-toplevel
    return tfx_bsl_handler.TfxBslSignature
  raise ValueError(f'--model_handler {model_handler!r}: use one of '
                   f'{MODEL_HANDLERS}')


_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


class SavedModelHandler(ModelHandler[EventBatch, ScoredBatch, VersionedModel]):
  """Scores EventBatches with a SavedModel signature (module docstring)."""

  def __init__(self, model_dir: str, feature_names: Sequence[str], *,
               window_features: Sequence[str] = (),
               signature: str = DEFAULT_SIGNATURE,
               output_key: Optional[str] = None,
               poll_interval_s: float = 10.0,
               pinned_version: Optional[int] = None,
               min_batch_rows: int = 1,
               max_batch_rows: int = 4096,
               model_handler: str = SAVEDMODEL,
               control: Optional[ControlSource] = None):
    """Configures the handler.

    Args:
      model_dir: a SavedModel, or a root of integer version directories.
      feature_names: the model's input columns, in order (the schema's
        features).
      window_features: the schema's window features (their columns go into
        examples for signatures that take serialized tf.Examples).
      signature: signature to call.
      output_key: output to read; default per signature method (module
        docstring), else 'score' or the only output.
      poll_interval_s: how often to look for a newer version.
      pinned_version: serve exactly this version (no hot swap).
      min_batch_rows, max_batch_rows: rows per signature call. RunInference
        (BatchElements, weighing each EventBatch by its rows) gathers whole
        EventBatches into batches of this many rows, adapting within the
        bounds; one EventBatch larger than the maximum goes alone.
      model_handler: savedmodel (``tf.saved_model.load``, every kind) or
        tfx_bsl (tfx-bsl's RunInference handler; models taking serialized
        tf.Examples only, see models/tfx_bsl_handler.py).
      control: serve what the deployment records of this control topic
        name (models/serving.py) instead of the newest complete version;
        ``model_dir`` must then be a root of versions and
        ``pinned_version`` None.
    """
    signature_loader(model_handler)  # rejects unknown values now
    if max_batch_rows < 1 or min_batch_rows < 1:
      raise ValueError('batch sizes must be >= 1')
    if min_batch_rows > max_batch_rows:
      raise ValueError(f'min_batch_rows {min_batch_rows} > max_batch_rows '
                       f'{max_batch_rows}')
    if control is not None and pinned_version is not None:
      raise ValueError('a pinned version and a control topic exclude each '
                       'other: pin with python -m models.deploy pin')
    super().__init__(min_batch_size=min_batch_rows,
                     max_batch_size=max_batch_rows, element_size_fn=len)
    self._model_dir = model_dir
    self._layout = el.ExampleLayout(tuple(feature_names),
                                    tuple(window_features))
    self._model_handler = model_handler
    self._signature = signature
    self._output_key = output_key
    self._poll_interval_s = poll_interval_s
    self._pinned = pinned_version
    self._control = control
    # A record given by RunInference's side input (update_model_path).
    self._side_input_record: Optional[str] = None
    self._rows = Metrics.distribution(_NAMESPACE, 'batch_rows')
    self._failed_rows = Metrics.counter(_NAMESPACE, 'rows_failed')
    self._latency = Metrics.distribution(_NAMESPACE, 'signature_call_ms')
    self._shadow_failed = Metrics.counter(_NAMESPACE, 'shadow_rows_failed')
    self._shadow_latency = Metrics.distribution(_NAMESPACE,
                                                'shadow_call_ms')

  @property
  def control(self) -> Optional[ControlSource]:
    """The control topic followed, or None (``--model_dir`` watch)."""
    return self._control

  def _settings_key(self) -> tuple:
    return (self._model_dir, self._signature, self._layout,
            self._output_key, self._poll_interval_s, self._pinned,
            self._model_handler, self._control, self._side_input_record)

  def _new_model(self):
    if self._control is None:
      return VersionedModel(self._model_dir, signature=self._signature,
                            layout=self._layout,
                            output_key=self._output_key,
                            poll_interval_s=self._poll_interval_s,
                            pinned_version=self._pinned,
                            model_handler=self._model_handler)
    load = VersionLoader(self._model_dir, signature=self._signature,
                         layout=self._layout, output_key=self._output_key,
                         model_handler=self._model_handler)
    record = None
    if self._side_input_record:
      try:
        record = dep.decode(self._side_input_record.encode('utf-8'))
      except dep.DeploymentError as e:
        raise ModelLoadError(f'side input record: {e}') from e
    return DeployedModels(
        self._control, load, record=record,
        swaps=Metrics.counter(_NAMESPACE, 'model_swaps'),
        refusals=Metrics.counter(_NAMESPACE, 'model_versions_refused'))

  def load_model(self):
    """The process's model for these settings, loaded once.

    RunInference shares models through apache_beam.utils.shared, which keeps
    only the most recently acquired object of the whole process alive; on a
    runner that builds a fresh DoFn per bundle (the bundle-based
    DirectRunner) the model was then reloaded every bundle or so. A strong
    per-process cache keeps one model (and its hot swap, or its control
    topic follower) per handler configuration.
    """
    key = self._settings_key()
    with _MODELS_LOCK:
      model = _MODELS.get(key)
      if model is None:
        model = _MODELS[key] = self._new_model()
      return model

  def update_model_path(self, model_path: Optional[str] = None):
    """RunInference's side-input hook (``model_metadata_pcoll``): with a
    control source, ``model_path`` is a deployment record's JSON, served
    by the next ``load_model`` (bench/deployment_mechanism.py measures this
    path against the follower)."""
    if self._control is not None and model_path:
      self._side_input_record = model_path

  def validate(self, keep: bool = False) -> str:
    """Loads the model once (at job start): fails fast with a clear error.

    Args:
      keep: keep what was loaded as the process's model for these settings
        (``load_model``), when the pipeline's steps run in this process
        (a local engine): the job then loads the model once, not twice.

    Returns:
      A description (path, version, signature, input mode) for the logs.
    """
    # A fresh load, not the process cache: a model cached before may be
    # stale (its directory replaced), and validation is about the disk.
    model = self._new_model()
    loaded = model.current
    text = (f'{loaded.path} (version {loaded.version}, signature '
            f'{loaded.signature!r}, {loaded.input_mode} input, output '
            f'{loaded.output_key!r}, {self._model_handler} handler)')
    if isinstance(model, DeployedModels):
      record = model.serving().record
      text = (f'deployment {self._control.deployment!r} of control topic '
              f'{self._control.topic}: {record.describe()}; primary {text}')
    if keep:
      with _MODELS_LOCK:
        kept = _MODELS.setdefault(self._settings_key(), model) is model
      if kept:
        return text
    if isinstance(model, DeployedModels):
      model.close()
    else:
      loaded.close()
    return text

  def run_inference(self, batch: Sequence[EventBatch], model,
                    inference_args: Optional[dict[str, Any]] = None
                   ) -> Iterable[ScoredBatch]:
    serving = model.serving()
    rows = int(sum(len(b) for b in batch))
    self._rows.update(rows)
    if serving.canary is None:
      scored = self._score(serving.primary, batch)
      out = [ScoredBatch(b, scores, serving.primary.version, t, errors)
             for b, (scores, errors, t) in zip(batch, scored)]
    else:
      out = self._score_with_canary(serving, batch)
    if serving.shadow is not None:
      self._add_shadow(serving.shadow, batch, out)
    return out

  def _score(self, loaded: Signature, batch: Sequence[EventBatch]
            ) -> list[tuple[np.ndarray, Optional[list], float]]:
    """(scores, row errors or None, scored time) per element; a failing
    call is retried per element, then per row."""
    if not batch:
      return []
    t0 = time.perf_counter()
    try:
      scores = loaded(batch)
    except Exception as e:  # pylint: disable=broad-except
      _LOGGER.warning('batch of %d rows failed on version %d (%s); retrying '
                      'per element', int(sum(len(b) for b in batch)),
                      loaded.version, e)
      return [self._score_isolated(b, loaded) for b in batch]
    self._latency.update(int((time.perf_counter() - t0) * 1000))
    now = time.time()
    out = []
    start = 0
    for b in batch:
      out.append((scores[start:start + len(b)], None, now))
      start += len(b)
    return out

  def _score_isolated(self, b: EventBatch, loaded: Signature
                     ) -> tuple[np.ndarray, Optional[list], float]:
    try:
      return loaded([b]), None, time.time()
    except Exception:  # pylint: disable=broad-except
      pass
    scores = np.full(len(b), np.nan, dtype=np.float32)
    errors: list = [None] * len(b)
    for i in range(len(b)):
      try:
        scores[i] = loaded([b.take([i])])[0]
      except Exception as e:  # pylint: disable=broad-except
        errors[i] = f'{type(e).__name__}: {e}'[:500]
        self._failed_rows.inc()
    return scores, errors if any(errors) else None, time.time()

  def _score_with_canary(self, serving: ServingSet,
                         batch: Sequence[EventBatch]) -> list[ScoredBatch]:
    """Rows routed by key (models/routing.py): the canary's to the canary,
    the rest to the primary; each element comes back whole, with per-row
    versions and roles where it was split."""
    primary, canary = serving.primary, serving.canary
    masks = [routing.canary_mask(b.keys, b.ids, serving.canary_fraction)
             for b in batch]
    parts = {PRIMARY_ROLE: [], CANARY_ROLE: []}   # (element, rows or None)
    inputs = {PRIMARY_ROLE: [], CANARY_ROLE: []}
    for i, (b, m) in enumerate(zip(batch, masks)):
      if not m.any():
        parts[PRIMARY_ROLE].append((i, None))
        inputs[PRIMARY_ROLE].append(b)
      elif m.all():
        parts[CANARY_ROLE].append((i, None))
        inputs[CANARY_ROLE].append(b)
      else:
        for role, rows in ((PRIMARY_ROLE, np.flatnonzero(~m)),
                           (CANARY_ROLE, np.flatnonzero(m))):
          parts[role].append((i, rows))
          inputs[role].append(b.take(rows))
    results = {PRIMARY_ROLE: self._score(primary, inputs[PRIMARY_ROLE]),
               CANARY_ROLE: self._score(canary, inputs[CANARY_ROLE])}
    version = {PRIMARY_ROLE: primary.version, CANARY_ROLE: canary.version}
    whole: dict = {}
    split: dict = {}
    for role in (PRIMARY_ROLE, CANARY_ROLE):
      for (i, rows), result in zip(parts[role], results[role]):
        if rows is None:
          whole[i] = (role, result)
        else:
          split.setdefault(i, []).append((role, rows, result))
    out = []
    for i, b in enumerate(batch):
      if i in whole:
        role, (scores, errors, t) = whole[i]
        out.append(ScoredBatch(b, scores, version[role], t, errors,
                               role=role))
        continue
      n = len(b)
      scores = np.empty(n, np.float32)
      versions_ = np.empty(n, np.int64)
      roles = np.empty(n, object)
      errors: list = [None] * n
      scored_time = 0.0
      for role, rows, (part_scores, part_errors, t) in split[i]:
        scores[rows] = part_scores
        versions_[rows] = version[role]
        roles[rows] = role
        scored_time = max(scored_time, t)
        if part_errors:
          for j, e in zip(rows, part_errors):
            errors[j] = e
      out.append(ScoredBatch(b, scores, primary.version, scored_time,
                             errors if any(errors) else None,
                             versions=versions_, roles=roles))
    return out

  def _add_shadow(self, shadow: Signature, batch: Sequence[EventBatch],
                  out: list[ScoredBatch]) -> None:
    """Scores every row with the shadow in one call (module docstring:
    a failure costs the shadow's scores, never the rows)."""
    rows = int(sum(len(b) for b in batch))
    t0 = time.perf_counter()
    try:
      scores = np.asarray(shadow(batch), np.float32)
      if scores.ndim > 1:
        scores = scores[:, 0]
    except Exception as e:  # pylint: disable=broad-except
      _LOGGER.warning('shadow version %d failed on a batch of %d rows (%s); '
                      'its scores are null, the rows are not affected',
                      shadow.version, rows, e)
      self._shadow_failed.inc(rows)
      scores = np.full(rows, np.nan, np.float32)
    self._shadow_latency.update(int((time.perf_counter() - t0) * 1000))
    start = 0
    for scored in out:
      n = len(scored.batch)
      scored.shadow_version = shadow.version
      scored.shadow_scores = scores[start:start + n]
      start += n

  def get_num_bytes(self, batch: Sequence[EventBatch]) -> int:
    # The default pickles the batch: far too slow for big numpy batches.
    return int(sum(b.features.nbytes for b in batch))

  def get_metrics_namespace(self) -> str:
    return _NAMESPACE


def release_models() -> None:
  """Closes every model this process holds and stops their control topic
  followers (tests, and a local run's end)."""
  with _MODELS_LOCK:
    models = list(_MODELS.values())
    _MODELS.clear()
  for model in models:
    close = getattr(model, 'close', None)
    if close is not None:
      close()
