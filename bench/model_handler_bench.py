"""The two model handlers on the same TFX-style models, in rows/s.

For each model kind that both handlers serve, models/handler.py's
SavedModelHandler is called as RunInference calls it (``run_inference`` on
a list of EventBatches, one call per --batch_rows rows), with
``model_handler='savedmodel'`` (tf.saved_model.load, the default) and
``'tfx_bsl'`` (tfx-bsl's CreateModelHandler: TF1 session, PredictionLogs):

  examples   a TFX Trainer-style serving_default: serialized tf.Examples
             in, parsed in the model, {'outputs': [B, 1]} (18 -> 1 linear)
  classify   a TF1 SavedModel's classification signature (scores [B, 2])
  regress    the same model's regression signature

and, for reference, the float-tensor signature of the same weights with the
default handler (what tfx-bsl cannot serve). The rows of every call are
checked to match between the handlers.

  python -m bench.model_handler_bench                     # 200k rows
  python -m bench.model_handler_bench --n 50000 --batch_rows 256

Results: docs/tfx_interop.md.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from models import susy
from models.handler import SavedModelHandler
from transforms.events import EventBatch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
import model_fixtures as mf  # pylint: disable=wrong-import-position


def _batches(n: int, rows: int) -> list:
  data = susy.generate(n, seed=3)
  out = []
  for s in range(0, n, rows):
    k = min(rows, n - s)
    out.append(EventBatch(
        source='bench', positions=np.arange(k), raw=[],
        ids=[f'e{i}' for i in range(s, s + k)],
        keys=[susy.DEFAULT_KEYS[i % 4] for i in range(s, s + k)],
        event_time=np.full(k, 1.79e9), features=data.features[s:s + k],
        window_values=np.zeros((k, 0), np.float32), labels=None,
        read_time=np.zeros(k)))
  return out


def _rate(handler: SavedModelHandler, batches: list, repeat: int
         ) -> tuple[float, np.ndarray]:
  model = handler.load_model()
  handler.run_inference(batches[:1], model)  # warm up
  best, scores = float('inf'), None
  for _ in range(repeat):
    t0 = time.perf_counter()
    out = [handler.run_inference([b], model)[0].scores for b in batches]
    best = min(best, time.perf_counter() - t0)
    scores = np.concatenate(out)
  return sum(len(b) for b in batches) / best, scores


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--n', type=int, default=200_000)
  parser.add_argument('--batch_rows', type=int, action='append',
                      help='rows per model call (repeatable; default 256 '
                      'and 4096)')
  parser.add_argument('--repeat', type=int, default=3)
  args = parser.parse_args(argv)
  names = list(susy.FEATURE_NAMES)
  print(f'{args.n:,} rows, best of {args.repeat}; load average '
        f'{os.getloadavg()[0]:.2f}')
  with tempfile.TemporaryDirectory() as tmp:
    paths = {'examples': mf.write_tfx_examples(os.path.join(tmp, 'ex'), names),
             'tf1': mf.write_classify_regress(os.path.join(tmp, 'tf1'), names),
             'tensor': mf.write_module_tensor(os.path.join(tmp, 'tensor'))}
    cases = [('examples', paths['examples'], 'serving_default'),
             ('classify', paths['tf1'], 'classification'),
             ('regress', paths['tf1'], 'regression')]
    for rows in args.batch_rows or [256, 4096]:
      batches = _batches(args.n, rows)
      for name, path, signature in cases:
        rates = {}
        scores = {}
        for kind in ('savedmodel', 'tfx_bsl'):
          handler = SavedModelHandler(path, names, signature=signature,
                                      model_handler=kind,
                                      max_batch_rows=rows)
          rates[kind], scores[kind] = _rate(handler, batches, args.repeat)
        np.testing.assert_allclose(scores['savedmodel'], scores['tfx_bsl'],
                                   rtol=1e-5, atol=1e-6)
        print(f'batch {rows:>5}  {name:<9} savedmodel '
              f'{rates["savedmodel"]:>11,.0f} rows/s   tfx_bsl '
              f'{rates["tfx_bsl"]:>11,.0f} rows/s   ratio '
              f'{rates["savedmodel"] / rates["tfx_bsl"]:5.2f}x')
      rate, _ = _rate(SavedModelHandler(paths['tensor'], names,
                                        max_batch_rows=rows), batches,
                      args.repeat)
      print(f'batch {rows:>5}  {"tensor":<9} savedmodel {rate:>11,.0f} '
            f'rows/s   (float [B, 18] input; tfx_bsl cannot serve it)')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
