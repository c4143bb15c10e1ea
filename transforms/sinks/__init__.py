"""Sinks for prediction rows and dead letters: windowed files and BigQuery.

* ``WritePredictionFiles``: one file set per window and pane, JSONL, Parquet
  or TFRecord, local or ``gs://``, each file written to a temporary name and
  renamed when complete.
* ``WriteDeadLetterFiles``: dead letters as JSONL files.
* ``WritePredictionsToBigQuery``: streaming inserts or file loads, rows
  BigQuery rejects come back as dead letters.
"""

from transforms.sinks.bigquery import (BIGQUERY_INSERT_ERROR,
                                       BIGQUERY_INVALID_ROW, SINK_STAGE,
                                       WritePredictionsToBigQuery,
                                       bigquery_schema)
from transforms.sinks.files import (FILE_FORMATS, WriteDeadLetterFiles,
                                    WritePredictionFiles, WrittenFile,
                                    arrow_schema, early_firing_trigger,
                                    read_row_file)

__all__ = [
    'BIGQUERY_INSERT_ERROR', 'BIGQUERY_INVALID_ROW', 'FILE_FORMATS',
    'SINK_STAGE', 'WriteDeadLetterFiles', 'WritePredictionFiles',
    'WritePredictionsToBigQuery', 'WrittenFile', 'arrow_schema',
    'bigquery_schema', 'early_firing_trigger', 'read_row_file',
]
