"""A read-only status page for running jobs and models, and ``--once``.

  python -m beam_jobs.status --bootstrap_servers localhost:9092 \\
      --output_topic predictions --dead_letter_topic events-dlq \\
      [--group kbi-score-stream] [--model_dir DIR] [--port 8080]
  python -m beam_jobs.status ... --once [--max_lag N] [--max_dead_letter_rate F]

It reads only what every job already writes: the output, dead-letter and
(optional) control topics, the job's consumer-group offsets and the model
directory. So it shows a local job and a Dataflow job alike, and needs no
runner, TensorFlow or Beam (a gs:// model directory loads Beam's
FileSystems).

Modules, one concern each:
  collector.py  the background threads and the snapshot they answer with
  tail.py       one consumer tailing the job topics from a recent window
  decode.py     prediction rows, dead letters, control records -> counts
  offsets.py    log ends and committed offsets (throughput, lag)
  model_dir.py  versions and metrics.json, without TensorFlow
  buckets.py    fixed time buckets and histograms (bounded memory)
  aggregate.py  the bucketed counts the collectors fill
  snapshot.py   the JSON of every panel
  server.py     aiohttp: the page, its files, /api/status
  table.py      --once's table and thresholds
  cli.py        flags; web/ holds the page (index.html, page.js, page.css)
Measurements and memory: docs/status_page.md.
"""
