"""Calling a model through tfx-bsl's RunInference handler (``--model_handler
tfx_bsl``).

``TfxBslSignature`` is a models/handler.py ``Signature`` whose calls go to
the ModelHandler of ``tfx_bsl.public.beam.run_inference.CreateModelHandler``
with a ``saved_model_spec``: TFX's own in-process inference (it loads the
SavedModel into a TF1 ``Session`` and returns a ``PredictionLog`` per
example). Everything else is the SavedModelHandler's: versioned roots and
hot swap, gs:// copies, batches weighed in rows, per-row failure isolation.

Which models it serves (docs/tfx_interop.md has the measured table):
* signatures with ONE string input of serialized tf.Examples, with method
  predict (a TFX Trainer ``serving_default``), classify or regress;
* whose variables a TF1 session can restore: ``tf.Module`` exports (ours,
  models/export.py) and TF1/Estimator SavedModels. Keras 3 ``model.export()``
  directories fail to restore ("Could not find variable ...").
Anything else fails at load with a ModelLoadError saying so; the default
handler (``--model_handler savedmodel``) serves all of these kinds.

Scores: a predict output (``--model_output``, else ``score`` or the only
output; [n] or [n, 1]), the positive-class score of a two-class classify
signature (its ``classes`` label "1", else the second class), or the
regress value.
"""

from typing import Optional, Sequence

import numpy as np

from models import example_layout as el
from models.handler import (INPUT_EXAMPLES, ModelLoadError, Signature,
                            method_names)
from transforms.events import EventBatch


class TfxBslSignature(Signature):
  """A signature served by tfx-bsl's in-process SavedModel handler."""

  def __init__(self, path: str, version: int, signature: str,
               layout: el.ExampleLayout, output_key: Optional[str]):
    super().__init__(path, version, signature, layout)
    self.input_mode = INPUT_EXAMPLES
    self.method = method_names(self.local).get(signature)
    try:
      self._handler = _create_handler(self.local, signature)
      self._session = self._handler.load_model()
    except Exception as e:  # pylint: disable=broad-except
      self.close()
      raise ModelLoadError(_explain(path, signature, e)) from e
    self.output_key = output_key

  def _score(self, batches: Sequence[EventBatch]) -> np.ndarray:
    logs = self._handler.run_inference(self.examples(batches), self._session)
    return np.asarray([self._value(log) for log in logs], dtype=np.float32)

  def _value(self, log) -> float:
    kind = log.WhichOneof('log_type')
    if kind == 'classify_log':
      (classification,) = log.classify_log.response.result.classifications
      classes = classification.classes
      positive = next((c for c in classes if c.label == '1'),
                      classes[1] if len(classes) == 2 else classes[0])
      return positive.score
    if kind == 'regress_log':
      return log.regress_log.response.result.regressions[0].value
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    outputs = log.predict_log.response.outputs
    key = self.output_key or ('score' if 'score' in outputs else
                              next(iter(outputs)) if len(outputs) == 1 else
                              None)
    if key not in outputs:
      raise ModelLoadError(f'{self.path}: signature {self.signature!r} has '
                           f'outputs {sorted(outputs)}; choose one with '
                           f'--model_output')
    self.output_key = key
    return float(np.asarray(tf.make_ndarray(outputs[key])).reshape(-1)[0])

  def close(self) -> None:
    session = getattr(self, '_session', None)
    if session is not None:
      session.close()
      self._session = None
    super().close()


def _create_handler(local: str, signature: str):
  # pylint: disable-next=import-outside-toplevel
  from tfx_bsl.public.beam.run_inference import CreateModelHandler
  # pylint: disable-next=import-outside-toplevel
  from tfx_bsl.public.proto import model_spec_pb2
  return CreateModelHandler(model_spec_pb2.InferenceSpecType(
      saved_model_spec=model_spec_pb2.SavedModelSpec(
          model_path=local, signature_name=[signature])))


def _explain(path: str, signature: str, error: Exception) -> str:
  """Why tfx-bsl's handler cannot serve the model, and what to do."""
  text = str(error)
  if 'Input dtype is expected' in text or 'only 1 inputs' in text:
    why = ('its handler serves only signatures taking one string tensor of '
           'serialized tf.Examples')
  elif 'Could not find variable' in text or 'not found in checkpoint' in text:
    why = ('it loads SavedModels in a TF1 session, which cannot restore '
           'this model\'s variables (Keras 3 model.export() writes such '
           'models)')
  else:
    why = 'it failed'
  return (f'tfx-bsl cannot serve signature {signature!r} of {path}: {why} '
          f'({type(error).__name__}: {text[:300]}); serve it with '
          f'--model_handler savedmodel')

