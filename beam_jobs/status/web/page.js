// The status page: polls /api/status and draws it with uPlot.
// Every value from the topics is put into the page as text (textContent),
// never as HTML: dead-letter payloads and control records are untrusted.
'use strict';

const POLL_MS = 2000;
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd',
                '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const SHOWN_DEAD_LETTERS = 8;
const PREVIEW_CHARS = 160;
const charts = {};

function cut(text, n) { return text.length > n ? `${text.slice(0, n)}…` : text; }

function color(i) { return COLORS[i % COLORS.length]; }

function fmt(x, digits = 1) {
  if (x === null || x === undefined) return '-';
  return Number(x).toLocaleString('en-US', {maximumFractionDigits: digits});
}

function fmtSeconds(x) {
  if (x === null || x === undefined) return '-';
  return x < 1 ? `${(x * 1000).toFixed(0)} ms` : `${x.toFixed(2)} s`;
}

function fmtPct(x) {
  return x === null || x === undefined ? '-' : `${(x * 100).toFixed(2)}%`;
}

function fmtTime(t) {
  return t ? new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19) : '-';
}

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function fillTable(id, rows) {
  // rows: arrays of cells; a cell is a value, or {text, attrs, code}.
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = el('tr');
    for (const c of cells) {
      const spec = (c !== null && typeof c === 'object') ? c : {text: c};
      const td = el('td', spec.code ? undefined : spec.text, spec.attrs);
      if (spec.code) td.appendChild(el('code', spec.text));
      tr.appendChild(td);
    }
    return tr;
  }));
}

// One uPlot per id, rebuilt when its series change, else given new data.
function draw(id, names, data, opts = {}) {
  const box = document.getElementById(id);
  const key = JSON.stringify([names, opts.key || '']);
  let c = charts[id];
  if (!c || c.key !== key) {
    if (c) c.plot.destroy();
    const series = [{}].concat(names.map((n, i) => Object.assign(
        {label: n, stroke: color(i), width: 1.5, spanGaps: false},
        (opts.series || [])[i] || {})));
    const plot = new uPlot({
      width: Math.max(300, box.clientWidth - 4), height: 220,
      series, scales: opts.scales || {}, axes: opts.axes,
      legend: {live: true},
    }, data, box);
    c = charts[id] = {plot, key};
  } else {
    c.plot.setData(data);
  }
}

function setK(k, text) {
  for (const e of document.querySelectorAll(`[data-k="${k}"]`)) e.textContent = text;
}

function renderSummary(doc) {
  const s = doc.summary;
  setK('in_per_s', fmt(s.in_per_s));
  setK('consumed_per_s', fmt(s.consumed_per_s));
  setK('predictions_per_s', fmt(s.predictions_per_s));
  setK('lag', fmt(s.lag, 0));
  setK('dead_letter_rate', fmtPct(s.dead_letter_rate));
  setK('latency_p50_s', fmtSeconds(s.latency_p50_s));
  setK('latency_p99_s', fmtSeconds(s.latency_p99_s));
  const serving = Object.entries(s.serving).map(([v, r]) => `v${v}: ${r.join(', ')}`);
  setK('serving', serving.join('; ') || '-');
  const t = doc.topics;
  document.getElementById('scope').textContent =
      `group ${t.group}; in: ${t.inputs.join(', ') || '-'}; predictions: ` +
      `${t.outputs.join(', ') || '-'}; dead letters: ${t.dead_letters.join(', ') || '-'}` +
      (t.control ? `; control: ${t.control}` : '') +
      `; recent = last ${s.window_s} s; buckets of ${doc.bucket_s} s`;
}

function renderThroughput(doc) {
  const th = doc.throughput;
  draw('chart-throughput', th.series.map((x) => x.name),
       [th.t].concat(th.series.map((x) => x.values)));
  fillTable('table-throughput', th.series.map((x) => [
      x.name, {text: fmt(th.latest[x.name]), attrs: {'data-rate': x.name}}]));
  fillTable('table-records', Object.entries(th.records).map(([topic, n]) => [
      topic, {text: String(n), attrs: {'data-records': topic}}]));
}

function renderLag(doc) {
  const lag = doc.lag;
  draw('chart-lag', lag.series.map((x) => x.name),
       [lag.t].concat(lag.series.map((x) => x.values)));
  fillTable('table-lag', lag.partitions.map((r) => [
      r.topic, r.partition, r.committed === null ? '-' : r.committed, r.end,
      {text: String(r.lag), attrs: {'data-lag': `${r.topic}/${r.partition}`}}]));
}

function renderDeadLetters(doc) {
  const dl = doc.dead_letters;
  const reasons = Object.keys(dl.by_reason);
  draw('chart-dead', reasons, [dl.t].concat(reasons.map((r) => dl.by_reason[r])),
       {series: reasons.map(() => ({paths: uPlot.paths.stepped({align: 1})}))});
  fillTable('table-reasons', Object.entries(dl.totals).map(([r, n]) => [
      r, {text: String(dl.window_by_reason[r] || 0), attrs: {'data-reason-recent': r}},
      {text: String(n), attrs: {'data-reason': r}}]));
  fillTable('table-recent', dl.recent.slice(0, SHOWN_DEAD_LETTERS).map((d) => [
      fmtTime(d.time), d.reason, d.stage, d.detail,
      `${d.source} @ ${d.position}`, d.event_id || '-',
      {text: cut(d.payload, PREVIEW_CHARS) + ` (${d.payload_bytes} bytes)`, code: true}]));
}

function renderLatency(doc) {
  const lat = doc.latency;
  const names = ['prediction p50', 'prediction p90', 'prediction p99',
                 'read p50', 'read p99'];
  const data = [lat.t, lat.scored.per_bucket.p50, lat.scored.per_bucket.p90,
                lat.scored.per_bucket.p99, lat.read.per_bucket.p50,
                lat.read.per_bucket.p99];
  draw('chart-latency', names, data, {
      scales: {y: {distr: 3}},
      series: [{}, {}, {}, {dash: [4, 4]}, {dash: [4, 4]}],
      axes: [{}, {values: (u, v) => v.map(fmtSeconds), size: 70}]});
  fillTable('table-latency', [['scored', 'event -> prediction'], ['read', 'event -> read']].map(
      ([k, label]) => [label].concat(['p50', 'p90', 'p99'].map((q) => (
          {text: fmtSeconds(lat[k].window[q]), attrs: {'data-latency': `${k}_${q}`}})))
          .concat([lat[k].count])));
}

function metric(m, k, d = 4) {
  const v = m[k];
  return typeof v === 'number' ? fmt(v, d) : (v === undefined ? '-' : String(v));
}

function renderModels(doc) {
  const rows = doc.models.versions.map((r) => {
    const live = r.live || [];
    const sum = (k) => live.reduce((a, x) => a + (x[k] || 0), 0);
    const first = (k) => (live.find((x) => x[k] !== null) || {})[k];
    const v = r.version === null ? '?' : r.version;
    return [
        {text: `v${v}`, attrs: {'data-version': v}},
        r.complete === null ? '-' : (r.complete ? 'yes' : 'no'),
        metric(r.metrics, 'accuracy'), metric(r.metrics, 'auc'),
        metric(r.metrics, 'loss'), metric(r.metrics, 'examples', 0),
        metric(r.metrics, 'created'), r.serving.join(', ') || '-',
        {text: String(sum('predictions')), attrs: {'data-predictions': v}},
        {text: String(sum('window_predictions')), attrs: {'data-recent-predictions': v}},
        fmt(first('accuracy'), 4), fmt(first('auc'), 4), sum('labelled')];
  });
  fillTable('table-models', rows);
  fillTable('table-deployments', Object.entries(doc.models.deployments).map(
      ([name, e]) => [name, {text: JSON.stringify(e.record), code: true}]));
}

function renderScores(doc) {
  const sc = doc.scores;
  const names = Object.keys(sc.series);
  const drift = [], driftNames = [], driftOpts = [];
  names.forEach((n, i) => {
    const pb = sc.series[n].per_bucket;
    for (const [q, dash] of [['p50', null], ['p10', [3, 3]], ['p90', [3, 3]]]) {
      driftNames.push(`${n} ${q}`);
      drift.push(pb[q]);
      driftOpts.push(Object.assign({stroke: color(i), width: q === 'p50' ? 2 : 1},
                                   dash ? {dash} : {}));
    }
  });
  draw('chart-drift', driftNames, [sc.t].concat(drift),
       {series: driftOpts, scales: {y: {range: [0, 1]}}});
  const centers = sc.edges.slice(1).map((e, i) => (e + sc.edges[i]) / 2);
  const hist = [], histNames = [], histOpts = [];
  names.forEach((n, i) => {
    histNames.push(`${n} recent`, `${n} all`);
    hist.push(sc.series[n].hist_window, sc.series[n].hist_all);
    histOpts.push({stroke: color(i), width: 2, paths: uPlot.paths.stepped({align: 0})},
                  {stroke: color(i), width: 1, dash: [4, 4], paths: uPlot.paths.stepped({align: 0})});
  });
  draw('chart-hist', histNames, [centers].concat(hist),
       {series: histOpts, scales: {x: {time: false}}, key: 'hist'});
  const quality = [], qNames = [], qOpts = [];
  names.forEach((n, i) => {
    qNames.push(`${n} accuracy`, `${n} AUC`);
    quality.push(sc.series[n].accuracy, sc.series[n].auc);
    qOpts.push({stroke: color(i), width: 2}, {stroke: color(i), width: 1, dash: [4, 4]});
  });
  draw('chart-quality', qNames, [sc.t].concat(quality),
       {series: qOpts, scales: {y: {range: [0, 1]}}});
}

function renderCollector(doc) {
  const c = doc.collector;
  const mb = c.rss_bytes ? (c.rss_bytes / 1048576).toFixed(0) : '-';
  document.getElementById('collector').textContent =
      `collector: ${c.records_read} records read, ${c.skipped} skipped, ` +
      `${c.unreadable} unreadable, ${c.behind} behind; RSS ${mb} MB; ` +
      `last snapshot ${c.snapshot_s === null ? '-' : (c.snapshot_s * 1000).toFixed(1)} ms; ` +
      `${c.buckets} buckets of ${c.bucket_s} s, offsets every ${c.poll_s} s`;
}

async function refresh() {
  try {
    const response = await fetch('/api/status', {cache: 'no-store'});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const doc = await response.json();
    for (const render of [renderSummary, renderThroughput, renderLag,
                          renderDeadLetters, renderLatency, renderModels,
                          renderScores, renderCollector]) {
      render(doc);
    }
    document.getElementById('updated').textContent = fmtTime(doc.now);
    document.getElementById('error').textContent = '';
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  } catch (e) {
    document.getElementById('error').textContent = `refresh failed: ${e}`;
  }
}

refresh();
setInterval(refresh, POLL_MS);
