-- GET /: the worker's live dashboard, one self-contained page (no external
-- scripts, styles or fonts: the machine may be offline). It polls
-- /dashboard.json every 2 s. With a token, open /#token=TOKEN: the fragment
-- never leaves the browser, and the page sends it as Authorization: Bearer.
return [==[<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fstream-lua</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f8f9fb; --accent: #2563eb; --in: #16a34a; --bad: #dc2626; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 1em; padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 18px; margin: 0; }
  .pill { padding: 1px 8px; border-radius: 10px; font-size: 12px; background: #eef2ff; color: var(--accent); }
  .pill.bad { background: #fef2f2; color: var(--bad); }
  .muted { color: var(--muted); }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; padding: 16px 20px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; min-width: 0; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 14px; margin: 0 0 8px; }
  table { width: 100%; border-collapse: collapse; font-size: 13px; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { color: var(--muted); font-weight: 500; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  canvas { width: 100%; height: 220px; display: block; }
  .legend span { margin-right: 1em; }
  .sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
  .err { color: var(--bad); white-space: pre-wrap; word-break: break-word; }
</style>
</head>
<body>
<header>
  <h1 id="app">fstream-lua</h1>
  <span id="status" class="pill">…</span>
  <span class="muted" id="meta"></span>
</header>
<main>
  <section class="wide">
    <h2>Throughput (events/s, last 5 minutes)</h2>
    <canvas id="chart" width="1200" height="220"></canvas>
    <div class="legend muted"><span><i class="sw" style="background:var(--accent)"></i>processed</span><span><i class="sw" style="background:var(--in)"></i>fetched</span><span id="rate"></span></div>
  </section>
  <section><h2>Partitions</h2><table id="partitions"></table></section>
  <section><h2>Agents</h2><table id="agents"></table></section>
  <section><h2>Tables</h2><table id="tables"></table></section>
  <section><h2>Recent errors and dead letters</h2><table id="errors"></table></section>
  <section><h2>Reloads</h2><table id="reloads"></table></section>
</main>
<script>
"use strict";
const token = (location.hash.match(/token=([^&]+)/) || [])[1];
const headers = token ? { Authorization: "Bearer " + decodeURIComponent(token) } : {};
let last = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fill(id, head, rows, empty) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const tr = el("tr");
  head.forEach(h => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  if (rows.length === 0) {
    const r = el("tr"), td = el("td", empty, "muted");
    td.colSpan = head.length;
    r.appendChild(td);
    t.appendChild(r);
  }
  rows.forEach(cells => {
    const r = el("tr");
    cells.forEach(c => {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); r.appendChild(td); }
      else r.appendChild(el("td", c, typeof c === "number" ? "num" : ""));
    });
    t.appendChild(r);
  });
}
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }

// Events per second between consecutive samples.
function rates(samples, field) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    if (dt > 0) out.push({ t: samples[i].t, v: Math.max(0, (samples[i][field] - samples[i - 1][field]) / dt) });
  }
  return out;
}

function draw(samples) {
  const c = document.getElementById("chart");
  const w = c.width = c.clientWidth * (window.devicePixelRatio || 1);
  const h = c.height = 220 * (window.devicePixelRatio || 1);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const series = [[rates(samples, "events_in"), "#16a34a"], [rates(samples, "processed"), "#2563eb"]];
  // The last 5 minutes, or what there is of them (a worker that just started).
  const now = samples.length ? samples[samples.length - 1].t : 0;
  const t0 = samples.length ? Math.max(now - 300, samples[0].t) : now - 300, span = Math.max(now - t0, 1);
  let max = 1;
  series.forEach(([s]) => s.forEach(p => { if (p.v > max) max = p.v; }));
  const pad = 40 * (window.devicePixelRatio || 1);
  g.strokeStyle = "#e4e7ec"; g.fillStyle = "#667085"; g.font = (11 * (window.devicePixelRatio || 1)) + "px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - 14 - (h - 24) * i / 4;
    g.beginPath(); g.moveTo(pad, y); g.lineTo(w, y); g.stroke();
    g.fillText(String(Math.round(max * i / 4)), 2, y + 4);
  }
  series.forEach(([s, color]) => {
    g.strokeStyle = color; g.lineWidth = 2 * (window.devicePixelRatio || 1);
    g.beginPath();
    s.forEach((p, i) => {
      const x = pad + (w - pad) * (p.t - t0) / span, y = h - 14 - (h - 24) * p.v / max;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  });
  const pr = rates(samples, "processed");
  document.getElementById("rate").textContent = pr.length ? "now: " + Math.round(pr[pr.length - 1].v) + " events/s" : "";
  c.dataset.max = String(max);
}

function render(d) {
  last = d;
  document.title = d.app + " — fstream-lua";
  document.getElementById("app").textContent = d.app;
  const st = document.getElementById("status");
  st.textContent = d.status;
  st.className = "pill" + (d.ready ? "" : " bad");
  document.getElementById("meta").textContent = "pid " + d.pid + " · " + when(d.time);
  draw(d.samples);
  fill("partitions", ["topic", "partition", "state", "fetched", "committed", "lag"],
    d.partitions.map(p => [p.topic, p.partition, p.state, p.events_in, p.committed, p.lag === undefined ? "–" : p.lag]),
    "no partitions assigned");
  fill("agents", ["agent", "state", "in hand", "processed", "errors", "dead letters"],
    d.agents.map(a => {
      const busy = a.instances.filter(i => i.state === "processing");
      const hand = busy.map(i => i.event.topic + "[" + i.event.partition + "]@" + i.event.offset).join(", ");
      return [a.name, busy.length ? "processing" : (a.running > 0 ? "waiting" : "stopped"), hand, a.processed, a.errors, a.dead_letters];
    }), "no agents");
  fill("tables", ["table", "keys", "partitions here", "kind"],
    d.tables.map(t => [t.name, t.keys, t.held + " of " + t.partitions, t.window ? t.window + " window" : (t.global ? "global" : "table")]),
    "no tables");
  fill("errors", ["time", "agent", "policy", "error"],
    d.errors.slice().reverse().map(e => [when(e.time), e.agent, e.policy === "dlq" || e.policy === "retry" ? e.policy + " (dead letter)" : e.policy, el("span", e.message, "err")]),
    "none");
  fill("reloads", ["time", "result", "pause"],
    d.reloads.slice().reverse().map(r => [when(r.time), r.ok ? "reloaded" : el("span", "refused: " + r.message, "err"), r.ok ? Math.round(r.pause_seconds * 1000) + " ms" : ""]),
    "none since start");
}

async function poll() {
  try {
    const r = await fetch("dashboard.json", { headers, cache: "no-store" });
    if (r.ok) render(await r.json());
    else document.getElementById("status").textContent = "HTTP " + r.status;
  } catch (e) {
    const st = document.getElementById("status");
    st.textContent = "unreachable";
    st.className = "pill bad";
  }
}
window.addEventListener("resize", () => { if (last) draw(last.samples); });
poll();
setInterval(poll, 2000);
</script>
</body>
</html>
]==]
