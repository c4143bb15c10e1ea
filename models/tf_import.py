"""TensorFlow for serving, imported without Keras.

``import tensorflow`` (2.21) ends by importing all of Keras eagerly
(``keras.src.optimizers``, so that Keras optimizers are registered for
SavedModels that contain them): about 1.3 s of a 3.3 s import here
(docs/latency.md). Serving a SavedModel with ``tf.saved_model.load`` needs
none of it; the scoring jobs import TensorFlow through ``tensorflow()``,
which skips that one eager import. Keras stays importable: ``tf.keras`` and
``import keras`` load it when something asks, and a SavedModel that does
need Keras' registrations is loaded again after ``with_keras()``.
"""

import sys
import threading
import types

_EAGER_KERAS = 'keras.src.optimizers'
_LOCK = threading.Lock()


def tensorflow() -> types.ModuleType:
  """The ``tensorflow`` module; imported now (without its eager Keras
  import) if nothing imported it before."""
  tf = sys.modules.get('tensorflow')
  if tf is not None:
    return tf
  with _LOCK:
    blocked = _EAGER_KERAS not in sys.modules
    if blocked:
      # A None entry makes that one import fail with ImportError, which
      # tensorflow/__init__ catches and passes over.
      sys.modules[_EAGER_KERAS] = None
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
    finally:
      if blocked and sys.modules.get(_EAGER_KERAS, 0) is None:
        del sys.modules[_EAGER_KERAS]
  return tf


def with_keras() -> bool:
  """Imports what ``tensorflow()`` skipped; True if it was not imported
  yet (so that a load that failed without it is worth another try)."""
  if _EAGER_KERAS in sys.modules:
    return False
  try:
    __import__(_EAGER_KERAS)
  except ImportError:
    return False
  return True


__all__ = ['tensorflow', 'with_keras']
