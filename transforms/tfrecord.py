"""TFRecord framing: the project's one implementation.

A TFRecord file is a sequence of frames: the record's length (uint64, little
endian), the masked CRC32C of those 8 bytes, the record, and the masked
CRC32C of the record (both uint32, little endian). Compression (``.gz``) is
around the whole file, not per record: callers open files through Beam's
FileSystems with the compression they need.

Who frames and unframes records here: the prediction file sink
(transforms/sinks/files.py frames blobs before its shuffle), the file source
(transforms/sources.py reads TFRecord inputs record by record) and the span
writer of models/examples_io.py. Beam's ``WriteToTFRecord`` (the ingest job's
shards) and TensorFlow's readers (training, through tfx-bsl's TFXIO) frame
identically. Why this is Python and not tf.io: both need in-memory frames or
a Beam FileSystems stream, which tf.io does not offer, and the per-record cost
measured the same (bench/example_coder_bench.py, docs/tfx_interop.md).
"""

import io
import struct
from typing import Iterable, Iterator, Optional

import google_crc32c

_MASK_DELTA = 0xa282ead8
_HEADER = struct.Struct('<QI')
_CRC = struct.Struct('<I')


def masked_crc32c(data: bytes) -> int:
  """The CRC32C of ``data``, masked as TFRecord stores it."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff


def frame(record: bytes) -> bytes:
  """One TFRecord frame holding ``record``."""
  length = struct.pack('<Q', len(record))
  return b''.join((length, _CRC.pack(masked_crc32c(length)), record,
                   _CRC.pack(masked_crc32c(record))))


def frame_all(records: Iterable[bytes]) -> bytes:
  """The frames of ``records``, concatenated (a file's bytes, uncompressed)."""
  return b''.join([frame(r) for r in records])


def iter_records(f, name: str = '<stream>'
                ) -> Iterator[tuple[bytes, Optional[Exception]]]:
  """(record, None) per TFRecord of a binary stream; (record, error) for a
  record whose data fails its CRC (the framing is intact: reading goes on).

  Raises:
    IOError: a truncated file or a length header failing its CRC (the
      framing is lost), naming the file and the byte offset.
  """
  offset = 0
  while True:
    header = f.read(12)
    if not header:
      return
    if len(header) < 12:
      raise IOError(f'{name}: truncated TFRecord header at byte {offset}')
    length, length_crc = _HEADER.unpack(header)
    if length_crc != masked_crc32c(header[:8]):
      raise IOError(f'{name}: corrupt TFRecord length at byte {offset}')
    body = f.read(length + 4)
    if len(body) < length + 4:
      raise IOError(f'{name}: truncated TFRecord at byte {offset}')
    record = body[:length]
    (data_crc,) = _CRC.unpack(body[length:])
    error = None
    if data_crc != masked_crc32c(record):
      error = ValueError(f'TFRecord data CRC mismatch at byte {offset}')
    yield record, error
    offset += 16 + length


def records(data: bytes, name: str = '<bytes>') -> list[bytes]:
  """The records of a TFRecord file's (uncompressed) bytes.

  Raises:
    IOError: broken framing (see ``iter_records``).
    ValueError: a record failing its CRC.
  """
  out = []
  for record, error in iter_records(io.BytesIO(data), name):
    if error is not None:
      raise error
    out.append(record)
  return out
