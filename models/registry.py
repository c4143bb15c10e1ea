"""Named model configs: builders of compiled Keras 3 binary classifiers.

A builder takes ``(num_features, **hparams)`` and returns a compiled model
mapping float32 features [B, num_features] to the probability of signal,
shape [B, 1]. Builders with a ``Normalization`` layer take the training
features as ``adapt_data`` (an array or a ``tf.data.Dataset`` of feature
batches) so the model standardizes its own inputs: the exported SavedModel
then scores raw features, with no preprocessing to keep in sync.

Add your own::

  from models import registry

  @registry.register('my_mlp')
  def my_mlp(num_features, *, adapt_data=None, **hparams):
    ...
    return model

  model = registry.build('my_mlp', 18, adapt_data=train_features)

Every model is compiled with binary cross-entropy and the metrics
``accuracy`` and ``auc`` (names the training CLI relies on).
"""

import logging
from typing import Any, Callable, Optional, Sequence

import keras

_LOGGER = logging.getLogger(__name__)

Builder = Callable[..., keras.Model]

DEFAULT_CONFIG = 'mlp_small'

_BUILDERS: dict[str, Builder] = {}


def register(name: str, *, replace: bool = False) -> Callable[[Builder],
                                                              Builder]:
  """Decorator registering a model builder under ``name``.

  Args:
    name: the config name (as in ``--config``).
    replace: allow replacing an existing builder; otherwise a duplicate name
      raises, so two modules cannot silently shadow each other.

  Returns:
    The decorator; it returns the builder unchanged.
  """

  def decorator(fn: Builder) -> Builder:
    if name in _BUILDERS and not replace:
      raise ValueError(f'model config {name!r} is already registered')
    _BUILDERS[name] = fn
    return fn

  return decorator


def get(name: str) -> Builder:
  """The builder registered as ``name``; KeyError lists the known names."""
  try:
    return _BUILDERS[name]
  except KeyError:
    raise KeyError(f'unknown model config {name!r}; known: {names()}') \
        from None


def names() -> list[str]:
  """Registered config names, sorted."""
  return sorted(_BUILDERS)


def build(name: str, num_features: int, **hparams: Any) -> keras.Model:
  """Builds the model of config ``name`` (``get(name)(num_features, ...)``)."""
  return get(name)(num_features, **hparams)


def _normalization(num_features: int, adapt_data) -> keras.layers.Layer:
  if adapt_data is None:
    # Without data the layer would refuse to run; identity statistics keep
    # the model usable (e.g. for a smoke test) and the log says so.
    _LOGGER.warning('Normalization not adapted: no adapt_data given')
    return keras.layers.Normalization(
        axis=-1, mean=[0.0] * num_features, variance=[1.0] * num_features,
        name='normalize')
  norm = keras.layers.Normalization(axis=-1, name='normalize')
  norm.adapt(adapt_data)
  return norm


def _compile(model: keras.Model, learning_rate: float) -> keras.Model:
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
      loss=keras.losses.BinaryCrossentropy(),
      metrics=[keras.metrics.BinaryAccuracy(name='accuracy'),
               keras.metrics.AUC(name='auc')])
  return model


def _mlp(name: str, num_features: int, adapt_data,
         layers: Sequence[tuple[int, float]], learning_rate: float
         ) -> keras.Model:
  """Normalization -> [Dense(relu) -> Dropout]* -> Dense(1, sigmoid)."""
  inputs = keras.Input(shape=(num_features,), dtype='float32',
                       name='features')
  x = _normalization(num_features, adapt_data)(inputs)
  for i, (units, dropout) in enumerate(layers):
    x = keras.layers.Dense(units, activation='relu', name=f'dense_{i}')(x)
    if dropout:
      x = keras.layers.Dropout(dropout, name=f'dropout_{i}')(x)
  outputs = keras.layers.Dense(1, activation='sigmoid', name='score')(x)
  return _compile(keras.Model(inputs, outputs, name=name), learning_rate)


@register('mlp_small')
def mlp_small(num_features: int, *, adapt_data=None,
              learning_rate: float = 1e-3) -> keras.Model:
  """The TensorFlow-IO Kafka tutorial's MLP, plus input normalization.

  Dense(128) -> Dropout(0.2) -> Dense(256) -> Dropout(0.4) -> Dense(128)
  -> Dropout(0.4) -> Dense(1, sigmoid); Adam, binary cross-entropy.
  """
  return _mlp('mlp_small', num_features, adapt_data,
              [(128, 0.2), (256, 0.4), (128, 0.4)], learning_rate)


@register('mlp_wide')
def mlp_wide(num_features: int, *, adapt_data=None,
             learning_rate: float = 1e-3, units: int = 512,
             dropout: float = 0.3) -> keras.Model:
  """Two wide hidden layers: fewer steps of composition, more capacity."""
  return _mlp('mlp_wide', num_features, adapt_data,
              [(units, dropout), (units, dropout)], learning_rate)


@register('logreg')
def logreg(num_features: int, *, adapt_data=None,
           learning_rate: float = 1e-2) -> keras.Model:
  """Logistic regression: normalization and one sigmoid unit (a baseline)."""
  return _mlp('logreg', num_features, adapt_data, [], learning_rate)


def describe(name: Optional[str] = None) -> str:
  """One line per config: its name and the first line of its docstring."""
  lines = []
  for config in ([name] if name else names()):
    doc = (get(config).__doc__ or '').strip().splitlines()
    lines.append(f'{config}: {doc[0] if doc else ""}')
  return '\n'.join(lines)
