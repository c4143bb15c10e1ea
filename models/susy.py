"""SUSY-like events: a deterministic stand-in for the UCI SUSY data set.

The real set (Baldi, Sadowski, Whiteson 2014; 5M rows) cannot be downloaded
here, so this module simulates events with the same shape: a label (1 =
signal, a supersymmetric chargino pair; 0 = background, a W boson pair), 8
low-level kinematic features of two leptons and the missing energy, and 10
high-level features derived from them.

How an event is made (the physics is flavoured, not exact):

* low level, drawn per class: lepton transverse momenta from Gamma laws
  scaled by a shared per-event energy scale (signal is harder), missing
  energy (signal is larger: two invisible neutralinos), pseudorapidities
  (signal more central), azimuths (each uniform, so nearly
  class-independent on its own; the class shows in their differences);
* high level, derived: transverse masses, razor variables, ratios and angle
  differences computed from the low-level values plus ~2% noise, so they
  carry the same information in a form a small model uses more easily, as
  in the real set.

Class overlap is tuned so a small MLP reaches ~79% accuracy (the
TensorFlow-IO Kafka tutorial reports ~78% on 100k real rows); see
bench/train_accuracy.py.

Determinism: rows are generated in chunks of ``CHUNK_ROWS``, each from its
own RNG seeded by ``(seed, chunk index)``, so row ``i`` of a stream depends
only on ``seed``, ``i``, ``signal_fraction`` and its drift value:
``generate(n, seed=s, start_index=k)`` equals rows ``k..k+n`` of any longer
generation. ``CHUNK_ROWS`` and the order of draws are therefore part of the
data's definition: changing them changes every data set.

Also here: event dicts for Kafka (``to_events``), the real SUSY CSV format
(``load_susy_csv``, ``write_susy_csv``) and a CLI::

  python -m models.susy write-csv --n 100000 --seed 0 --out susy.csv.gz
  python -m models.susy write-jsonl --n 1000 --seed 0 --out events.jsonl
  python -m models.susy produce --bootstrap_servers 127.0.0.1:9092 \\
      --topic events --rate 2000 --n 100000 --malformed_fraction 0.01
"""

import argparse
import dataclasses
import gzip
import io
import logging
import os
import sys
import time
from typing import (IO, Any, Callable, Iterable, Iterator, NamedTuple,
                    Optional, Sequence, Union)

import numpy as np

from transforms import schema as schema_lib

_LOGGER = logging.getLogger(__name__)

FEATURE_NAMES = schema_lib.SUSY_FEATURE_NAMES
LOW_LEVEL = FEATURE_NAMES[:8]
HIGH_LEVEL = FEATURE_NAMES[8:]
NUM_FEATURES = len(FEATURE_NAMES)
LABEL = 'label'

# Rows per independently seeded RNG chunk. Part of the data's definition.
CHUNK_ROWS = 4096

DEFAULT_KEYS = ('det-0', 'det-1', 'det-2', 'det-3')
# 2023-11-14T22:13:20Z: a fixed default so event files are reproducible.
DEFAULT_START_TIME = 1_700_000_000.0
DEFAULT_RATE = 1000.0

# A drift value in [0, 1], or a function from absolute row indices (int64
# array) to drift values (float array of the same shape).
Drift = Union[float, Callable[[np.ndarray], np.ndarray]]


class SusyData(NamedTuple):
  """A block of events: ``features`` float32 [n, 18], ``labels`` int64 [n]."""
  features: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class _ClassParams:
  """Per-class shape of the low-level distributions (index 0 = background)."""
  # Per-event energy scale: Gamma(shape) draw times this mean.
  energy_scale: tuple = (1.0, 1.0)
  # Mean lepton pT above the trigger threshold, in units of the scale.
  lepton_pt: tuple = (0.45, 0.75)
  # Standard deviation of lepton pseudorapidity.
  eta_sigma: tuple = (1.40, 0.80)
  # Spread of the lepton-lepton azimuth difference around back-to-back.
  dphi_ll_sigma: tuple = (1.50, 1.10)
  # Mean missing energy, in units of the scale (drifts).
  met: tuple = (0.45, 0.95)
  # Spread of the MET azimuth around "opposite the dilepton system" (drifts).
  met_phi_sigma: tuple = (1.10, 0.70)


_PARAMS = _ClassParams()
# Gamma shapes: fixed, so drift and class change only scales and the same
# standard draws are reused (rows stay comparable across drift values).
_SCALE_SHAPE = 6.0
_PT_SHAPE = 1.6
_MET_SHAPE = 2.2
_PT_THRESHOLD = 0.25
_ETA_MAX = 2.5
_HIGH_LEVEL_NOISE = 0.02


def drift_ramp(start_index: int, end_index: int) -> Callable[[np.ndarray],
                                                             np.ndarray]:
  """A drift function rising linearly from 0 at one row index to 1 at another.

  Args:
    start_index: last row index with drift 0.
    end_index: first row index with drift 1 (> start_index).

  Returns:
    A function usable as ``generate(..., drift=...)``.
  """
  if end_index <= start_index:
    raise ValueError('end_index must be greater than start_index')
  span = float(end_index - start_index)

  def drift(index: np.ndarray) -> np.ndarray:
    return np.clip((index - start_index) / span, 0.0, 1.0)

  return drift


def _rng(seed: int, stream: int, chunk: int) -> np.random.Generator:
  # spawn_key gives statistically independent streams per (purpose, chunk).
  return np.random.Generator(np.random.PCG64(
      np.random.SeedSequence(seed, spawn_key=(stream, chunk))))


def _raw_chunk(seed: int, chunk: int) -> dict:
  """All random draws of one chunk, always in the same order and size."""
  rng = _rng(seed, 0, chunk)
  c = CHUNK_ROWS
  return {
      'u_label': rng.random(c),
      'g_scale': rng.standard_gamma(_SCALE_SHAPE, c),
      'g_pt': rng.standard_gamma(_PT_SHAPE, (c, 2)),
      'z_eta': rng.standard_normal((c, 2)),
      'u_phi': rng.random(c),
      'z_dphi_ll': rng.standard_normal(c),
      'g_met': rng.standard_gamma(_MET_SHAPE, c),
      'z_met_phi': rng.standard_normal(c),
      'z_noise': rng.standard_normal((c, len(HIGH_LEVEL))),
  }


def _wrap(angle: np.ndarray) -> np.ndarray:
  """Wraps angles to [-pi, pi)."""
  return (angle + np.pi) % (2 * np.pi) - np.pi


def _by_class(pair: tuple, labels: np.ndarray,
              drift: Optional[np.ndarray] = None) -> np.ndarray:
  """Per-row parameter; with drift, the classes' values trade places."""
  own = np.where(labels == 1, pair[1], pair[0])
  if drift is None:
    return own
  other = np.where(labels == 1, pair[0], pair[1])
  return (1.0 - drift) * own + drift * other


def _low_level(raw: dict, labels: np.ndarray, drift: np.ndarray) -> dict:
  p = _PARAMS
  scale = _by_class(p.energy_scale, labels) * raw['g_scale'] / _SCALE_SHAPE
  pt = (_PT_THRESHOLD + scale[:, None] * _by_class(p.lepton_pt, labels)[:, None]
        * raw['g_pt'] / _PT_SHAPE)
  # Leading lepton first, as in the real set.
  pt = np.sort(pt, axis=1)[:, ::-1]
  eta = np.clip(_by_class(p.eta_sigma, labels)[:, None] * raw['z_eta'],
                -_ETA_MAX, _ETA_MAX)
  phi1 = _wrap(2 * np.pi * raw['u_phi'])
  phi2 = _wrap(phi1 + np.pi
               + _by_class(p.dphi_ll_sigma, labels, drift) * raw['z_dphi_ll'])
  met = scale * _by_class(p.met, labels, drift) * raw['g_met'] / _MET_SHAPE
  px = pt[:, 0] * np.cos(phi1) + pt[:, 1] * np.cos(phi2)
  py = pt[:, 0] * np.sin(phi1) + pt[:, 1] * np.sin(phi2)
  # Missing energy points roughly against the visible system.
  met_phi = _wrap(np.arctan2(py, px) + np.pi
                  + _by_class(p.met_phi_sigma, labels, drift)
                  * raw['z_met_phi'])
  return {
      'lepton_1_pT': pt[:, 0], 'lepton_1_eta': eta[:, 0],
      'lepton_1_phi': phi1,
      'lepton_2_pT': pt[:, 1], 'lepton_2_eta': eta[:, 1],
      'lepton_2_phi': phi2,
      'missing_energy_magnitude': met, 'missing_energy_phi': met_phi,
  }


def _high_level(low: dict, noise: np.ndarray) -> dict:
  """Derived features: deterministic functions of the low level (+ noise)."""
  pt1, pt2 = low['lepton_1_pT'], low['lepton_2_pT']
  eta1, eta2 = low['lepton_1_eta'], low['lepton_2_eta']
  phi1, phi2 = low['lepton_1_phi'], low['lepton_2_phi']
  met, met_phi = low['missing_energy_magnitude'], low['missing_energy_phi']
  # Massless four-vectors.
  px1, py1 = pt1 * np.cos(phi1), pt1 * np.sin(phi1)
  px2, py2 = pt2 * np.cos(phi2), pt2 * np.sin(phi2)
  pz1, pz2 = pt1 * np.sinh(eta1), pt2 * np.sinh(eta2)
  e1, e2 = pt1 * np.cosh(eta1), pt2 * np.cosh(eta2)
  mx, my = met * np.cos(met_phi), met * np.sin(met_phi)
  llx, lly = px1 + px2, py1 + py2
  phi_ll = np.arctan2(lly, llx)

  dphi1 = np.abs(_wrap(phi1 - met_phi))
  dphi2 = np.abs(_wrap(phi2 - met_phi))
  dphi_min = np.minimum(dphi1, dphi2)
  met_rel = np.where(dphi_min >= np.pi / 2, met, met * np.sin(dphi_min))
  axial_met = -met * np.cos(_wrap(met_phi - phi_ll))
  m_r = np.sqrt(np.maximum((e1 + e2)**2 - (pz1 + pz2)**2, 1e-6))
  m_tr = np.sqrt(np.maximum(met * (pt1 + pt2) - (mx * llx + my * lly), 0.0)
                 / 2.0)
  ratio = m_tr / m_r
  # Stransverse-mass flavour: the smaller of the two lepton-MET masses.
  mt1 = np.sqrt(2.0 * pt1 * met * (1.0 - np.cos(dphi1)))
  mt2 = np.sqrt(2.0 * pt2 * met * (1.0 - np.cos(dphi2)))
  mt2_min = np.minimum(mt1, mt2)
  # Invariant mass of leptons + MET (MET taken massless with pz = 0).
  etot = e1 + e2 + met
  ptot2 = (llx + mx)**2 + (lly + my)**2 + (pz1 + pz2)**2
  s_r = np.sqrt(np.maximum(etot**2 - ptot2, 0.0))
  gamma_r = (e1 + e2) / m_r
  m_delta_r = s_r / (np.sqrt(2.0) * gamma_r)
  dphi_r_b = np.abs(_wrap(phi_ll - met_phi))
  cos_theta_r1 = np.tanh((eta1 - eta2) / 2.0)

  values = [met_rel, axial_met, m_r, m_tr, ratio, mt2_min, s_r, m_delta_r,
            dphi_r_b, cos_theta_r1]
  out = {}
  for j, (name, value) in enumerate(zip(HIGH_LEVEL, values)):
    if name in ('dPhi_r_b', 'cos_theta_r1', 'axial_MET'):
      # Signed or bounded quantities: absolute noise, then keep in range.
      value = value + _HIGH_LEVEL_NOISE * noise[:, j]
      if name == 'dPhi_r_b':
        value = np.clip(value, 0.0, np.pi)
      elif name == 'cos_theta_r1':
        value = np.clip(value, -1.0, 1.0)
    else:
      value = value * (1.0 + _HIGH_LEVEL_NOISE * noise[:, j])
    out[name] = value
  return out


def _drift_values(drift: Drift, index: np.ndarray) -> np.ndarray:
  if callable(drift):
    values = np.asarray(drift(index), dtype=np.float64)
    if values.shape != index.shape:
      raise ValueError(f'drift function returned shape {values.shape}, '
                       f'expected {index.shape}')
  else:
    values = np.full(index.shape, float(drift))
  if not np.all((values >= 0.0) & (values <= 1.0)):
    raise ValueError('drift values must lie in [0, 1]')
  return values


def generate(n: int, *, seed: int = 0, signal_fraction: float = 0.46,
             drift: Drift = 0.0, start_index: int = 0) -> SusyData:
  """Generates ``n`` SUSY-like events, rows ``start_index..start_index+n``.

  Args:
    n: number of rows.
    seed: non-negative data set seed.
    signal_fraction: probability that a row is signal (label 1). The real
      set has ~46% signal.
    drift: concept drift, 0 = the reference boundary. As drift goes to 1 the
      classes trade their missing-energy and azimuth-correlation
      distributions (signal's larger MET and tighter angles become
      background's), while lepton momenta and pseudorapidities keep their
      meaning: a model trained at drift 0 degrades at drift 1, one retrained
      on drifted data recovers; at 0.5 those features carry no information.
      A float applies to every row; a function of the absolute row index
      array (e.g. ``drift_ramp``) drifts a stream over time.
    start_index: absolute index of the first row, to continue a stream in
      chunks deterministically.

  Returns:
    SusyData with float32 features [n, 18] and int64 labels [n].
  """
  if n < 0 or start_index < 0:
    raise ValueError('n and start_index must be >= 0')
  if seed < 0:
    raise ValueError('seed must be >= 0')
  if not 0.0 <= signal_fraction <= 1.0:
    raise ValueError('signal_fraction must lie in [0, 1]')
  features = np.empty((n, NUM_FEATURES), dtype=np.float32)
  labels = np.empty((n,), dtype=np.int64)
  stop = start_index + n
  row = start_index
  while row < stop:
    chunk = row // CHUNK_ROWS
    lo = row - chunk * CHUNK_ROWS
    hi = min(CHUNK_ROWS, stop - chunk * CHUNK_ROWS)
    raw = {k: v[lo:hi] for k, v in _raw_chunk(seed, chunk).items()}
    index = np.arange(row, row + hi - lo, dtype=np.int64)
    chunk_labels = (raw['u_label'] < signal_fraction).astype(np.int64)
    low = _low_level(raw, chunk_labels, _drift_values(drift, index))
    high = _high_level(low, raw['z_noise'])
    out = slice(row - start_index, row - start_index + hi - lo)
    for j, name in enumerate(FEATURE_NAMES):
      features[out, j] = low[name] if j < len(LOW_LEVEL) else high[name]
    labels[out] = chunk_labels
    row += hi - lo
  return SusyData(features, labels)


def iter_chunks(n: int, *, chunk_rows: int = CHUNK_ROWS, start_index: int = 0,
                **kwargs) -> Iterator[tuple[int, SusyData]]:
  """Yields ``(start_index, SusyData)`` blocks covering rows of a stream.

  Same rows as one ``generate(n, start_index=start_index, **kwargs)`` call,
  without holding them all in memory.
  """
  row, stop = start_index, start_index + n
  while row < stop:
    size = min(chunk_rows, stop - row)
    yield row, generate(size, start_index=row, **kwargs)
    row += size


# ---------------------------------------------------------------- events


def _json_floats(values: np.ndarray) -> np.ndarray:
  """float32 -> float64 values with short decimal reprs (9 significant digits).

  Nine significant digits always round-trip a float32, so
  ``np.float32(event[name]) == features[i, j]`` exactly, while the JSON stays
  ~40% shorter than printing the float32's exact binary value.
  """
  x = values.astype(np.float64)
  out = x.copy()
  with np.errstate(divide='ignore', invalid='ignore'):
    decimals = 8.0 - np.floor(np.log10(np.abs(x)))
  # Zero, non-finite, huge or subnormal values keep their exact value.
  ok = np.isfinite(decimals) & (decimals >= 0) & (decimals <= 22)
  power = np.power(10.0, np.where(ok, decimals, 0.0))
  out[ok] = np.rint(x[ok] * power[ok]) / power[ok]
  return out


def to_events(data: SusyData, *, start_index: int = 0,
              start_time: float = DEFAULT_START_TIME,
              rate: float = DEFAULT_RATE,
              keys: Sequence[str] = DEFAULT_KEYS) -> list[dict]:
  """Turns rows into event dicts, as produced to Kafka.

  Row ``i`` of ``data`` is stream index ``start_index + i`` and becomes::

    {"event_id": "e<index>", "event_time": start_time + index / rate,
     "detector": keys[index % len(keys)], "label": 0|1, <18 features>}

  Times and ids use the absolute index, so events of consecutive chunks
  line up exactly with those of one long conversion. Feature values
  round-trip to the float32 features exactly (``np.float32(v)``).

  Args:
    data: rows from ``generate``.
    start_index: stream index of the first row.
    start_time: event time (epoch seconds) of stream index 0.
    rate: events per second of event time.
    keys: detector names, chosen round-robin by index.

  Returns:
    A list of event dicts.
  """
  if rate <= 0:
    raise ValueError('rate must be > 0')
  if not keys:
    raise ValueError('keys must not be empty')
  rows = _json_floats(data.features).tolist()
  labels = data.labels.tolist()
  names = FEATURE_NAMES
  nkeys = len(keys)
  events = []
  for i, (row, label) in enumerate(zip(rows, labels)):
    index = start_index + i
    event = {
        'event_id': f'e{index}',
        'event_time': start_time + index / rate,
        'detector': keys[index % nkeys],
        'label': label,
    }
    event.update(zip(names, row))
    events.append(event)
  return events


# ---------------------------------------------------------- malformed events

MALFORMED_KINDS = ('not_json', 'missing_feature', 'wrong_type', 'nan',
                   'truncated')


def plan_malformed(n: int, *, seed: int = 0, fraction: float = 0.0,
                   start_index: int = 0) -> dict[int, str]:
  """Which stream indices get a malformed message, and of which kind.

  Deterministic per index (an RNG per chunk, separate from the data's), so a
  test can compute the expected dead letters without reading the producer's
  log. Kinds are drawn uniformly from ``MALFORMED_KINDS``.

  Returns:
    ``{stream index: kind}`` for indices in ``[start_index, start_index+n)``.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError('fraction must lie in [0, 1]')
  plan = {}
  if fraction == 0.0:
    return plan
  row, stop = start_index, start_index + n
  while row < stop:
    chunk = row // CHUNK_ROWS
    lo = row - chunk * CHUNK_ROWS
    hi = min(CHUNK_ROWS, stop - chunk * CHUNK_ROWS)
    rng = _rng(seed, 1, chunk)
    hit = rng.random(CHUNK_ROWS) < fraction
    kind = rng.integers(0, len(MALFORMED_KINDS), CHUNK_ROWS)
    for offset in np.flatnonzero(hit[lo:hi]):
      plan[row + int(offset)] = MALFORMED_KINDS[kind[lo + offset]]
    row += hi - lo
  return plan


def malform(event: dict, kind: str) -> bytes:
  """Serialized bytes of ``event`` broken in the way ``kind`` names.

  * ``not_json``: bytes that are no JSON at all (not even UTF-8);
  * ``missing_feature``: one feature key absent;
  * ``wrong_type``: one feature is a non-numeric string;
  * ``nan``: one feature is ``"NaN"`` as a string or a bare ``NaN`` token
    (what Python's json module writes for a float nan; orjson rejects it);
  * ``truncated``: valid JSON cut off in the middle.
  None of them contains a newline, so they fit in JSON-lines files.
  """
  import orjson  # pylint: disable=import-outside-toplevel
  index = int(event['event_id'][1:]) if event['event_id'][1:].isdigit() else 0
  name = FEATURE_NAMES[index % NUM_FEATURES]
  if kind == 'not_json':
    return b'\xff\xfe garbage ' + event['event_id'].encode() + b' \x00\x01'
  if kind == 'missing_feature':
    broken = dict(event)
    del broken[name]
    return orjson.dumps(broken)
  if kind == 'wrong_type':
    return orjson.dumps(dict(event, **{name: 'not-a-number'}))
  if kind == 'nan':
    if index % 2:
      return orjson.dumps(dict(event, **{name: 'NaN'}))
    # orjson cannot write NaN: write a placeholder and swap the token in.
    marker = 123456789.125
    text = orjson.dumps(dict(event, **{name: marker}))
    return text.replace(b'123456789.125', b'NaN', 1)
  if kind == 'truncated':
    text = orjson.dumps(event)
    return text[:max(1, len(text) // 2)]
  raise ValueError(f'unknown malformed kind {kind!r}')


class EncodedEvent(NamedTuple):
  """One message: stream index, key, value and malformed kind (or None)."""
  index: int
  key: bytes
  value: bytes
  timestamp_ms: int
  malformed: Optional[str]


def iter_encoded_events(n: int, *, seed: int = 0, drift: Drift = 0.0,
                        signal_fraction: float = 0.46, start_index: int = 0,
                        start_time: float = DEFAULT_START_TIME,
                        rate: float = DEFAULT_RATE,
                        keys: Sequence[str] = DEFAULT_KEYS,
                        malformed_fraction: float = 0.0,
                        chunk_rows: int = CHUNK_ROWS
                        ) -> Iterator[EncodedEvent]:
  """Yields events as Kafka messages (orjson bytes), generated in chunks.

  Key = event_id; the timestamp is the event time in ms. Indices in
  ``plan_malformed(...)`` get ``malform``-ed values instead.
  """
  import orjson  # pylint: disable=import-outside-toplevel
  plan = plan_malformed(n, seed=seed, fraction=malformed_fraction,
                        start_index=start_index)
  dumps = orjson.dumps
  for first, data in iter_chunks(n, chunk_rows=chunk_rows,
                                 start_index=start_index, seed=seed,
                                 drift=drift,
                                 signal_fraction=signal_fraction):
    events = to_events(data, start_index=first, start_time=start_time,
                       rate=rate, keys=keys)
    for offset, event in enumerate(events):
      index = first + offset
      kind = plan.get(index)
      value = dumps(event) if kind is None else malform(event, kind)
      yield EncodedEvent(index, event['event_id'].encode(), value,
                         int(round(event['event_time'] * 1000)), kind)


# ----------------------------------------------------------------- CSV files


def _open_binary(path_or_file, mode: str):
  """(file object, whether to close it) for a path, gs:// path or file."""
  if not isinstance(path_or_file, (str, os.PathLike)):
    return path_or_file, False
  path = os.fspath(path_or_file)
  if '://' in path:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    raw = tf.io.gfile.GFile(path, mode)
  else:
    raw = open(path, mode)  # pylint: disable=consider-using-with
  if path.endswith('.gz'):
    return gzip.GzipFile(fileobj=raw, mode=mode), True
  return raw, True


def _empty() -> SusyData:
  return SusyData(np.zeros((0, NUM_FEATURES), np.float32),
                  np.zeros((0,), np.int64))


def load_susy_csv(path_or_file: Union[str, os.PathLike, IO]) -> SusyData:
  """Loads the real UCI SUSY format (also what ``write_susy_csv`` writes).

  19 comma-separated float columns, no header: the label (e.g.
  ``1.000000000000000000e+00``) then the 18 features in ``FEATURE_NAMES``
  order. Accepts a local or gs:// path (``.gz`` decompressed) or a binary or
  text file object (gzip detected by its magic bytes).

  Raises:
    ValueError: a row without exactly 19 columns, or a label not 0/1.
  """
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  from pyarrow import csv as pa_csv  # pylint: disable=import-outside-toplevel
  columns = ['label'] + list(FEATURE_NAMES)
  options = dict(
      read_options=pa_csv.ReadOptions(column_names=columns),
      convert_options=pa_csv.ConvertOptions(
          column_types={c: pa.float64() for c in columns}))
  if isinstance(path_or_file, (str, os.PathLike)) and '://' not in str(
      path_or_file):
    # Local files: pyarrow reads (and gunzips by extension) in parallel
    # without holding the text in memory; the real file is 2.4 GB of text.
    source = os.fspath(path_or_file)
    if os.path.getsize(source) == 0:
      return _empty()
  else:
    handle, close = _open_binary(path_or_file, 'rb')
    try:
      content = handle.read()
    finally:
      if close:
        handle.close()
    if isinstance(content, str):
      content = content.encode('utf-8')
    if content[:2] == b'\x1f\x8b':
      content = gzip.decompress(content)
    if not content.strip():
      return _empty()
    source = pa.BufferReader(content)
  try:
    table = pa_csv.read_csv(source, **options)
  except pa.ArrowInvalid as e:
    raise ValueError(f'not a SUSY CSV (19 float columns, no header): {e}') \
        from e
  label = table.column('label').to_numpy()
  if not np.all((label == 0.0) | (label == 1.0)):
    raise ValueError('SUSY labels must be 0 or 1')
  features = np.stack(
      [table.column(c).to_numpy() for c in FEATURE_NAMES],
      axis=1).astype(np.float32)
  return SusyData(features, label.astype(np.int64))


def write_susy_csv(data: SusyData, path: Union[str, os.PathLike]) -> None:
  """Writes ``data`` in the real SUSY format; ``.gz`` paths are gzipped.

  Values are printed with ``%.18e`` like the UCI file; the float32 features
  round-trip exactly through ``load_susy_csv``.
  """
  table = np.column_stack([data.labels.astype(np.float64),
                           data.features.astype(np.float64)])
  handle, close = _open_binary(path, 'wb')
  try:
    text = io.TextIOWrapper(handle, encoding='ascii', newline='\n')
    np.savetxt(text, table, fmt='%.18e', delimiter=',')
    text.flush()
    text.detach()
  finally:
    if close:
      handle.close()


# ----------------------------------------------------------------------- CLI


def produce(bootstrap_servers: str, topic: str, *, n: int, rate: float,
            seed: int = 0, drift: Drift = 0.0, start_index: int = 0,
            start_time: Optional[float] = None,
            malformed_fraction: float = 0.0,
            producer_config: Optional[dict] = None,
            on_malformed: Optional[Callable[[EncodedEvent], None]] = None
            ) -> dict:
  """Produces ``n`` events to Kafka at ``rate`` events/s (0 = unthrottled).

  Event times follow the produce schedule: the ``i``-th event produced has
  event time ``start_time + i / rate`` (``start_time`` defaults to now; with
  rate 0 times are spaced at ``DEFAULT_RATE``), which is also the record
  timestamp. Keys are event ids; which events are malformed is
  ``plan_malformed(n, seed=seed, fraction=malformed_fraction,
  start_index=start_index)``, and ``on_malformed`` sees each of them.

  Returns:
    As ``produce_events``.
  """
  if start_time is None:
    start_time = time.time()
  time_rate = rate if rate > 0 else DEFAULT_RATE
  events = iter_encoded_events(
      n, seed=seed, drift=drift, start_index=start_index,
      start_time=start_time - start_index / time_rate, rate=time_rate,
      malformed_fraction=malformed_fraction)
  return produce_events(
      events, topic, rate=rate, on_malformed=on_malformed,
      producer_config={'bootstrap.servers': bootstrap_servers,
                       **(producer_config or {})})


def produce_events(events: Iterable, topic: str, *, producer_config: dict,
                   rate: float = 0.0,
                   on_malformed: Optional[Callable[[Any], None]] = None
                   ) -> dict:
  """Produces encoded events to Kafka at ``rate`` events/s (0 = unthrottled).

  Events are anything with ``key``, ``value``, ``timestamp_ms`` and
  ``malformed`` (EncodedEvent, examples/payments/events.Event). Records are
  batched (linger.ms) and a full local queue is drained by polling rather
  than failing.

  Returns:
    ``{"produced", "malformed", "failed", "seconds"}``; ``failed`` counts
    delivery reports with an error.
  """
  # pylint: disable-next=import-outside-toplevel
  from confluent_kafka import Producer
  config = {'linger.ms': 20, 'compression.type': 'lz4',
            'queue.buffering.max.messages': 500_000}
  config.update(producer_config)
  producer = Producer(config)
  failed = [0]

  def on_delivery(err, unused_msg):
    if err is not None:
      failed[0] += 1

  produced = malformed = 0
  started = time.monotonic()
  for event in events:
    if rate > 0:
      # Steady schedule: never ahead of index / rate seconds since start.
      ahead = (produced / rate) - (time.monotonic() - started)
      if ahead > 0.002:
        producer.poll(0)
        time.sleep(ahead)
    while True:
      try:
        producer.produce(topic, value=event.value, key=event.key,
                         timestamp=event.timestamp_ms, on_delivery=on_delivery)
        break
      except BufferError:
        producer.poll(0.05)  # local queue full: let deliveries drain
    produced += 1
    if event.malformed is not None:
      malformed += 1
      if on_malformed is not None:
        on_malformed(event)
    if produced % 1000 == 0:
      producer.poll(0)
  remaining = producer.flush(60)
  failed[0] += remaining
  return {'produced': produced, 'malformed': malformed, 'failed': failed[0],
          'seconds': time.monotonic() - started}


class _MalformedLog:
  """Context manager giving a callable that logs {event_id, kind} lines."""

  def __init__(self, path: Optional[str]):
    self._path = path
    self._handle = None

  def __enter__(self) -> Callable[[EncodedEvent], None]:
    if self._path:
      # pylint: disable-next=consider-using-with
      self._handle = open(self._path, 'wb')
    return self._log

  def __exit__(self, *unused_exc):
    if self._handle is not None:
      self._handle.close()

  def _log(self, event: EncodedEvent) -> None:
    if self._handle is not None:
      import orjson  # pylint: disable=import-outside-toplevel
      self._handle.write(orjson.dumps({'event_id': event.key.decode(),
                                       'kind': event.malformed}) + b'\n')


def _write_jsonl(args) -> int:
  count = malformed = 0
  with open(args.out, 'wb') as out, _MalformedLog(args.malformed_out) as log:
    for event in iter_encoded_events(
        args.n, seed=args.seed, drift=args.drift, start_index=args.start_index,
        start_time=args.start_time, rate=args.rate,
        malformed_fraction=args.malformed_fraction):
      out.write(event.value)
      out.write(b'\n')
      count += 1
      if event.malformed:
        malformed += 1
        log(event)
  print(f'wrote {count} events ({malformed} malformed) to {args.out}')
  return 0


def _build_parser() -> argparse.ArgumentParser:
  # Flags spelled as the jobs spell them (--start_time); the hyphen
  # spellings of earlier versions are accepted too.
  parser = argparse.ArgumentParser(
      prog='python -m models.susy',
      description='SUSY-like events: CSV files, JSON-lines files, Kafka.')
  sub = parser.add_subparsers(dest='command', required=True)

  def common(p):
    p.add_argument('--n', type=int, required=True, help='number of events')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--drift', type=float, default=0.0,
                   help='concept drift in [0, 1] (0 = reference boundary)')
    p.add_argument('--start_index', '--start-index', type=int, default=0,
                   help='stream index of the first event')

  p = sub.add_parser('write-csv', help='real UCI SUSY format (.gz allowed)')
  common(p)
  p.add_argument('--out', required=True)

  p = sub.add_parser('write-jsonl', help='event dicts, one JSON per line')
  common(p)
  p.add_argument('--out', required=True)
  p.add_argument('--start_time', '--start-time', type=float,
                 default=DEFAULT_START_TIME,
                 help='event time (epoch s) of stream index 0')
  p.add_argument('--rate', type=float, default=DEFAULT_RATE,
                 help='events per second of event time')
  p.add_argument('--malformed_fraction', '--malformed-fraction', type=float,
                 default=0.0)
  p.add_argument('--malformed_out', '--malformed-out',
                 help='JSON-lines file of {event_id, kind} per bad event')

  p = sub.add_parser('produce', help='produce event JSON to Kafka')
  common(p)
  p.add_argument('--bootstrap_servers', '--bootstrap-servers', required=True)
  p.add_argument('--topic', required=True)
  p.add_argument('--rate', type=float, required=True,
                 help='events per second; 0 = as fast as possible')
  p.add_argument('--start_time', '--start-time', type=float, default=None,
                 help='event time of the first event (default: now)')
  p.add_argument('--malformed_fraction', '--malformed-fraction', type=float,
                 default=0.0)
  p.add_argument('--malformed_out', '--malformed-out',
                 help='JSON-lines file of {event_id, kind} per bad event')
  p.add_argument('--producer_config', '--producer-config', action='append',
                 default=[],
                 metavar='KEY=VALUE', help='extra librdkafka settings')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit code."""
  args = _build_parser().parse_args(argv)
  if args.command == 'write-csv':
    data = generate(args.n, seed=args.seed, drift=args.drift,
                    start_index=args.start_index)
    write_susy_csv(data, args.out)
    print(f'wrote {len(data)} rows ({int(data.labels.sum())} signal) '
          f'to {args.out}')
    return 0
  if args.command == 'write-jsonl':
    return _write_jsonl(args)
  extra = dict(kv.split('=', 1) for kv in args.producer_config)
  with _MalformedLog(args.malformed_out) as log:
    stats = produce(args.bootstrap_servers, args.topic, n=args.n,
                    rate=args.rate, seed=args.seed, drift=args.drift,
                    start_index=args.start_index, start_time=args.start_time,
                    malformed_fraction=args.malformed_fraction,
                    producer_config=extra, on_malformed=log)
  seconds = stats['seconds']
  print(f"produced={stats['produced']} malformed={stats['malformed']} "
        f"failed={stats['failed']} topic={args.topic} seconds={seconds:.2f} "
        f"rate={stats['produced'] / max(seconds, 1e-9):.0f}/s")
  return 0 if stats['failed'] == 0 else 1


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO)
  sys.exit(main())
