#!/usr/bin/env bash
# A full deployment cycle against a running score_stream on an embedded broker:
# train a baseline and serve it -> train two candidates -> the gate refuses the
# worse one -> canary the other on 20% of keys -> live metrics per version ->
# shadow the refused one on live data -> promote the canary (gated) -> roll back. Every CLI call is
# echoed with its output; the job's log is in $WORK/job.log.
#
#   scripts/deploy_demo.sh                    # noida broker, ~4-6 min on 2 cores
#   DEMO_RATE=1000 scripts/deploy_demo.sh     # events/s (default 500)
#   DEMO_WORK=/tmp/d scripts/deploy_demo.sh   # keep the work dir there
#
# The lifecycle and what each step records: docs/operating_models.md.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
export TF_CPP_MIN_LOG_LEVEL=2
RATE=${DEMO_RATE:-500}
WORK=${DEMO_WORK:-$(mktemp -d /tmp/kbi-deploy-demo-XXXXXX)}
mkdir -p "$WORK"
MODELS=$WORK/models
DATA=$WORK/spans
STATE=$WORK/broker.json
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PIDS=()

cleanup() {
  # SIGTERM: a background command of a script ignores SIGINT (no job
  # control); score_stream drains on SIGTERM, the producer below on either.
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 60); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  $PY -m beam_jobs.local_broker --state_file "$STATE" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

offsets() {  # records on a topic (the sum of its end offsets)
  $PY -c "import sys; from transforms.kafka import admin; print(sum(admin.end_offsets({'bootstrap.servers': sys.argv[1]}, sys.argv[2]).values()))" "$BROKER" "$1"
}
step() { printf '\n=== %s  (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
# TensorFlow's start-up chatter, not part of what the commands say.
NOISE='^(I0000|W0000|E0000|WARNING: All log messages|To enable the following|WARNING:tensorflow|  size: 1|}$|\. Setting to DenseTensor|.*Sparse.*Setting to DenseTensor|dim \{|Instructions for updating|Use .tf\.data\.Dataset\.map)|INFO (absl|tensorflow|models\.examples_io):|parse_example_dataset'
run() {  # echo a command as typed, then run it; a refusal does not stop us
  printf '$ %s\n' "$*" | sed "s#$WORK#\$WORK#g; s#$PY#python#; s#127.0.0.1:$PORT#\$BROKER#g"
  set +e
  "$@" 2>&1 | grep -Ev "$NOISE" | sed "s#$WORK#\$WORK#g; s#127.0.0.1:$PORT#\$BROKER#g"
  local status=${PIPESTATUS[0]}
  set -e
  echo "[exit $status]"
}
deploy() {  # python -m models.deploy COMMAND ... on this broker's control topic
  run $PY -m models.deploy "$@" --bootstrap_servers "$BROKER"
}

step "Embedded broker (noida) and topics"
$PY -m beam_jobs.local_broker --state_file "$STATE" start --port "$PORT" >/dev/null 2>&1
BROKER=127.0.0.1:$PORT
for t in events predictions events-dlq; do
  $PY -m beam_jobs.local_broker --state_file "$STATE" create-topic "$t" --partitions 4 >/dev/null
done
echo "broker $BROKER; work dir $WORK"
STATUS_FLAGS=(--output_topic predictions --window_s 15)

step "Training data: span 0 (train 40k, eval 20k SUSY-like rows)"
$PY - "$DATA" 2>/dev/null <<'EOF'
import sys
from models import examples_io, susy
examples_io.write_span(sys.argv[1], 0, {'train': susy.generate(40_000, seed=1),
                                        'eval': susy.generate(20_000, seed=2)})
print('wrote', examples_io.span_dir(sys.argv[1], 0).replace(sys.argv[1], '$WORK/spans'))
EOF

step "Train the baseline and serve it (first deployment: no baseline to gate against)"
run $PY -m models.train --data "$DATA" --model_dir "$MODELS" --config mlp_small --epochs 3 --verbose 0
deploy promote 1 --model_dir "$MODELS" --data "$DATA" --actor demo --reason 'first model'

step "The scoring job follows the control topic; events at $RATE/s"
echo '$ python -m beam_jobs.score_stream --bootstrap_servers $BROKER --input_topic events --output_topic predictions --dead_letter_topic events-dlq --consumer_group demo --start earliest --model_dir $WORK/models --control_topic kbi-deployments --window_size_s 10 &'
$PY -m beam_jobs.score_stream --bootstrap_servers "$BROKER" --input_topic events \
  --output_topic predictions --dead_letter_topic events-dlq --consumer_group demo \
  --start earliest --model_dir "$MODELS" --control_topic kbi-deployments \
  --window_size_s 10 >"$WORK/job.log" 2>&1 &
PIDS+=($!)
# 64 detectors (the key the canary routes by and the windows group by),
# labelled SUSY-like events at event time = now; SIGTERM (or SIGINT) stops it after a flush.
$PY - "$BROKER" "$RATE" >"$WORK/producer.log" 2>&1 <<'EOF' &
import signal, sys, time
from confluent_kafka import Producer
from models import susy
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
rate = float(sys.argv[2])
producer = Producer({'bootstrap.servers': sys.argv[1], 'linger.ms': 20})
start, n = time.time(), 0
for e in susy.iter_encoded_events(10_000_000, seed=7, start_time=start, rate=rate,
                                  keys=[f'det-{i}' for i in range(64)]):
  if stop:
    break
  wait = e.timestamp_ms / 1000 - time.time()
  if wait > 0:
    producer.poll(0)
    time.sleep(wait)
  producer.produce('events', key=e.key, value=e.value, timestamp=e.timestamp_ms)
  n += 1
print('produced', n, 'unflushed', producer.flush(30))
EOF
PIDS+=($!)
for _ in $(seq 120); do  # until predictions flow
  [ "$(offsets predictions)" -gt 0 ] && break
  sleep 2
done
sleep 10

step "Train two candidates (exported as versions 2 = logreg and 3 = mlp_wide; nothing serves them yet)"
run $PY -m models.train --data "$DATA" --model_dir "$MODELS" --config logreg,mlp_wide --epochs 3 --seed 5 --verbose 0
deploy list --model_dir "$MODELS"

step "Gate: candidate 2 (logreg) against the serving primary 1 on the same eval span"
deploy promote 2 --model_dir "$MODELS" --data "$DATA" --actor demo

step "Canary: candidate 3 (mlp_wide) on 20% of keys (stable key hash)"
deploy canary 3 --fraction 0.2 --model_dir "$MODELS" --actor demo --reason 'try mlp_wide'
sleep 40

step "Live metrics per version (labels joined to predictions by event id)"
deploy status "${STATUS_FLAGS[@]}"

step "Shadow candidate 2 beside the primary on live data (its score in shadow_score)"
deploy shadow 2 --model_dir "$MODELS" --actor demo
sleep 20
deploy status "${STATUS_FLAGS[@]}"
printf '$ (one prediction row off the topic)\n'
$PY - "$BROKER" <<'EOF'
import sys, orjson
from confluent_kafka import Consumer, TopicPartition
from transforms.kafka import admin
ends = admin.end_offsets({'bootstrap.servers': sys.argv[1]}, 'predictions')
c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': 'demo-peek'})
c.assign([TopicPartition('predictions', 0, max(ends[0] - 1, 0))])
m = c.consume(1, 10)[0]
row = orjson.loads(m.value())
print({k: row[k] for k in row if not k.startswith('f_') and k not in ('features',)})
c.close()
EOF

step "Promote the canary (3; gated against primary 1 on the same eval span)"
deploy promote --model_dir "$MODELS" --data "$DATA" --actor demo --reason 'canary healthy'
sleep 25
deploy status "${STATUS_FLAGS[@]}"

step "Rollback: back to the serving set of the record before the promotion"
deploy rollback --model_dir "$MODELS" --actor demo --reason 'demo rollback'
sleep 20
deploy status "${STATUS_FLAGS[@]}"

step "The audit log (the control topic's history of this deployment)"
deploy history
deploy list --model_dir "$MODELS"

step "Every event scored exactly once across the switches"
kill -TERM "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
for _ in $(seq 60); do  # until the job has caught up with the last event
  [ $(( $(offsets predictions) + $(offsets events-dlq) )) -ge "$(offsets events)" ] && break
  sleep 2
done
$PY - "$BROKER" <<'EOF'
import collections, sys, orjson
from confluent_kafka import Consumer, TopicPartition
from transforms.kafka import admin
cfg = {'bootstrap.servers': sys.argv[1]}
def read(topic):
  ends = admin.end_offsets(cfg, topic)
  c = Consumer(dict(cfg, **{'group.id': 'demo-count'}))
  c.assign([TopicPartition(topic, p, 0) for p in ends])
  out, left = [], sum(ends.values())
  while left > 0:
    for m in c.consume(10000, 2):
      if m.error() is None:
        out.append(m.value()); left -= 1
  c.close()
  return out
events = read('events')
rows = [orjson.loads(v) for v in read('predictions')]
dead = len(read('events-dlq'))
ids = collections.Counter(r['event_id'] for r in rows)
roles = collections.Counter((r['model_version'], r['model_role']) for r in rows)
print(f'events produced {len(events)}; predictions {len(rows)}; dead letters {dead}; '
      f'distinct ids {len(ids)}; scored twice {sum(1 for c in ids.values() if c > 1)}; '
      f'missing {len(events) - dead - len(ids)}')
print('rows by (version, role):', dict(sorted(roles.items())))
EOF
