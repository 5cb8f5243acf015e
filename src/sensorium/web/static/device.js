// The device page: live tiles with sparklines, the history chart, status, logs.
"use strict";
(function () {
  const S = window.Sensorium;
  const data = S.pageData();
  const device = data.device;
  const units = data.units;
  const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3, "1y": 365 * 86400e3 };
  const MAX_POINTS = 50000;
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777"];

  // ---- tiles ----------------------------------------------------------------------------
  const tiles = {};
  const tilesEl = document.getElementById("tiles");
  function tile(key) {
    if (tiles[key]) return tiles[key];
    const el = document.createElement("article");
    el.className = "tile";
    el.dataset.key = key;
    const u = units[key];
    el.innerHTML = `<div class="label"></div><div><span class="value" data-role="value">–</span>
      <small data-role="unit"></small><span class="trend" data-role="trend" aria-hidden="true"></span></div>
      <canvas width="200" height="32" aria-hidden="true"></canvas>`;
    el.querySelector(".label").textContent = u ? u.label : key;
    el.querySelector('[data-role="unit"]').textContent = u ? " " + u.unit : "";
    tilesEl.appendChild(el);
    tiles[key] = { el, history: [] };
    return tiles[key];
  }
  function updateTile(key, ts, value) {
    const t = tile(key);
    const last = t.history.length ? t.history[t.history.length - 1][1] : null;
    t.history.push([ts, value]);
    if (t.history.length > 60) t.history.shift();
    t.el.querySelector('[data-role="value"]').textContent = S.format(key, value);
    const trend = t.el.querySelector('[data-role="trend"]');
    trend.textContent = last === null || last === value ? "" : value > last ? "▲" : "▼";
    trend.className = "trend " + (last === null || last === value ? "" : value > last ? "up" : "down");
    sparkline(t.el.querySelector("canvas"), t.history.map((p) => p[1]));
  }
  function sparkline(canvas, values) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (values.length < 2) return;
    const min = Math.min(...values), max = Math.max(...values), span = max - min || 1;
    ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--accent");
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / (values.length - 1)) * canvas.width;
      const y = canvas.height - 2 - ((v - min) / span) * (canvas.height - 4);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  }

  // ---- chart ----------------------------------------------------------------------------
  let range = { from: Date.now() - RANGES["24h"], to: null, live: true };
  let series = {};  // key -> [[ts, value], ...] (raw) or [[ts, avg, min, max, count], ...]
  let aggregated = null;  // the interval when the chart shows buckets
  let shown = new Set();
  let plot = null;
  const chartEl = document.getElementById("chart");
  const note = document.getElementById("chart-note");

  let loads = 0;
  async function load() {
    // The shown series stay until the new ones are complete (CSV, redraws); a newer load
    // that started meanwhile wins.
    const mine = ++loads;
    const next = {};
    note.textContent = "Loading…";
    // Long ranges come as buckets (avg line in a min–max band), short ones as raw readings.
    const to = range.to || Date.now();
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const q = new URLSearchParams({ from: String(Math.floor(range.from)), to: String(Math.floor(to)),
                                    interval: "auto", agg: "avg,min,max,count", tz });
    const first = await (await fetch(`/api/v1/devices/${device.id}/telemetry?` + q, { credentials: "same-origin" })).json();
    if (first.series) {
      if (mine !== loads) return;
      let buckets = 0;
      for (const [key, rows] of Object.entries(first.series)) {
        next[key] = rows.map((r) => [r.bucket, r.avg, r.min, r.max, r.count]);
        buckets += rows.length;
      }
      series = next;
      aggregated = first.interval;
      note.textContent = buckets ? `${buckets.toLocaleString()} buckets of ${aggregated} (average, with min–max band)` : "No readings in this range.";
      finish();
      return;
    }
    let cursor = null, total = 0;
    do {
      const q = new URLSearchParams({ from: String(Math.floor(range.from)), limit: "10000", order: "asc" });
      if (range.to) q.set("to", String(Math.floor(range.to)));
      if (cursor) q.set("cursor", cursor);
      const page = await (await fetch(`/api/v1/devices/${device.id}/telemetry?` + q, { credentials: "same-origin" })).json();
      for (const p of page.points) (next[p.key] ||= []).push([p.ts, p.value]);
      total += page.points.length;
      cursor = page.next_cursor;
    } while (cursor && total < MAX_POINTS);
    if (mine !== loads) return;
    series = next;
    aggregated = null;
    note.textContent = total ? `${total.toLocaleString()} readings${cursor ? " (first " + MAX_POINTS.toLocaleString() + " shown)" : ""}` : "No readings in this range.";
    finish();
  }

  function finish() {
    if (!shown.size) Object.keys(series).forEach((k) => shown.add(k));
    renderKeys();
    draw();
  }

  function renderKeys() {
    const el = document.getElementById("keys");
    el.innerHTML = "";
    Object.keys(series).sort().forEach((key) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox"; box.checked = shown.has(key);
      box.addEventListener("change", () => { box.checked ? shown.add(key) : shown.delete(key); draw(); });
      label.append(box, units[key] ? units[key].label : key);
      el.appendChild(label);
    });
  }

  function aligned() {
    const keys = Object.keys(series).filter((k) => shown.has(k)).sort();
    const times = [...new Set(keys.flatMap((k) => series[k].map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    // Raw: one column per key. Aggregated: avg, min, max per key.
    const width = aggregated ? 3 : 1;
    const columns = keys.flatMap((k) => {
      const cols = Array.from({ length: width }, () => new Array(times.length).fill(null));
      for (const row of series[k]) for (let j = 0; j < width; j++) cols[j][index.get(row[0])] = row[j + 1];
      return cols;
    });
    return { keys, data: [times.map((t) => t / 1000), ...columns] };
  }

  function draw() {
    const { keys, data: d } = aligned();
    if (plot) { plot.destroy(); plot = null; }
    if (!window.uPlot) return;
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const axis = { stroke: dark ? "#9aa3b2" : "#5f6672", grid: { stroke: dark ? "#2a2f38" : "#e2e5ea" } };
    const label = (k) => (units[k] ? `${units[k].label} (${units[k].unit})` : k);
    const lines = [], bands = [];
    keys.forEach((k, i) => {
      const color = COLORS[i % COLORS.length];
      lines.push({ label: label(k) + (aggregated ? " avg" : ""), stroke: color, width: 1.5, spanGaps: false });
      if (aggregated) {
        const base = 1 + i * 3;
        lines.push({ label: label(k) + " min", stroke: color + "55", width: 1 },
                   { label: label(k) + " max", stroke: color + "55", width: 1 });
        bands.push({ series: [base + 2, base + 1], fill: color + "22" });
      }
    });
    plot = new uPlot({
      width: chartEl.clientWidth || 600, height: 320,
      cursor: { drag: { x: true, y: false } },  // drag to zoom, double-click to reset
      scales: { x: { time: true } },
      axes: [axis, axis],
      series: [{}, ...lines],
      bands,
    }, d, chartEl);
  }

  function csv() {
    const rows = [aggregated ? "bucket,key,min,avg,max,count" : "ts,key,value"];
    for (const key of Object.keys(series).filter((k) => shown.has(k)).sort())
      for (const [ts, v, lo, hi, n] of series[key])
        rows.push(aggregated ? `${new Date(ts).toISOString()},${key},${lo},${v},${hi},${n}`
                             : `${new Date(ts).toISOString()},${key},${v}`);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([rows.join("\n") + "\n"], { type: "text/csv" }));
    a.download = `${device.id}-${new Date(range.from).toISOString().slice(0, 10)}.csv`;
    document.body.appendChild(a); a.click(); a.remove();
  }

  document.querySelectorAll("button.range").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll("button.range").forEach((x) => x.classList.toggle("active", x === b));
    range = { from: Date.now() - RANGES[b.dataset.range], to: null, live: true };
    load();
  }));
  document.getElementById("range-apply").addEventListener("click", () => {
    const f = Date.parse(document.getElementById("range-from").value);
    const t = Date.parse(document.getElementById("range-to").value);
    if (isNaN(f)) return;
    document.querySelectorAll("button.range").forEach((x) => x.classList.remove("active"));
    range = { from: f, to: isNaN(t) ? null : t, live: isNaN(t) };
    load();
  });
  document.getElementById("csv").addEventListener("click", csv);
  addEventListener("resize", () => plot && plot.setSize({ width: chartEl.clientWidth, height: 320 }));

  const WIDTHS = { "1m": 60e3, "5m": 300e3, "15m": 900e3, "1h": 3600e3, "6h": 21600e3, "1d": 86400e3 };
  // A live reading joins its bucket (the last one, or a new one) in aggregated views.
  function addToBucket(rows, ts, value) {
    const width = WIDTHS[aggregated] || 86400e3;
    const last = rows[rows.length - 1];
    if (last && ts < last[0] + width) {
      const [start, avg, lo, hi, n] = last;
      rows[rows.length - 1] = [start, (avg * n + value) / (n + 1), Math.min(lo, value), Math.max(hi, value), n + 1];
    } else {
      const start = last ? last[0] + Math.floor((ts - last[0]) / width) * width : ts - (ts % width);
      rows.push([start, value, value, value, 1]);
    }
  }

  // ---- status, history, logs ----------------------------------------------------------------
  function setStatus(event) {
    const dot = document.getElementById("status-dot");
    dot.className = "dot " + event.status; dot.setAttribute("aria-label", event.status);
    const panel = document.getElementById("status");
    panel.querySelector('[data-role="status"]').textContent = event.status;
    if (event.fw) panel.querySelector('[data-role="fw"]').textContent = event.fw;
    const info = event.info || {};
    if (info.rssi !== undefined) panel.querySelector('[data-role="rssi"]').textContent = info.rssi + " dBm";
    if (info.uptime_s !== undefined) panel.querySelector('[data-role="uptime"]').textContent = duration(info.uptime_s);
    if (info.ip) panel.querySelector('[data-role="ip"]').textContent = info.ip;
  }
  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + " d " : "") + (h ? h + " h " : "") + m + " min";
  }
  async function loadLists() {
    const [history, logs] = await Promise.all([
      fetch(`/api/v1/devices/${device.id}/status/history?limit=50`, { credentials: "same-origin" }).then((r) => r.json()),
      fetch(`/api/v1/devices/${device.id}/logs?limit=100`, { credentials: "same-origin" }).then((r) => r.json()),
    ]);
    const h = document.getElementById("online-history");
    h.innerHTML = history.length ? "" : '<li class="muted">No transitions yet.</li>';
    for (const e of history) {
      const li = document.createElement("li");
      li.textContent = `${new Date(e.ts).toLocaleString()} — ${e.online ? "online" : "offline"} (${e.reason})`;
      h.appendChild(li);
    }
    const l = document.getElementById("logs");
    if (logs.length) l.innerHTML = "";
    for (const line of logs) {
      const li = document.createElement("li");
      li.className = "level-" + line.level;
      li.textContent = `${new Date(line.ts).toLocaleTimeString()} ${line.level.toUpperCase()} ${line.message}`;
      l.appendChild(li);
    }
  }

  // ---- delete: the button stays disabled until the device's name is typed ---------------
  const deleteForm = document.getElementById("delete-form");
  const confirmInput = deleteForm.querySelector('input[name="confirm"]');
  const deleteButton = deleteForm.querySelector('button[type="submit"]');
  const syncDelete = () => { deleteButton.disabled = confirmInput.value.trim() !== device.name; };
  confirmInput.addEventListener("input", syncDelete);
  syncDelete();

  // ---- live ---------------------------------------------------------------------------------
  for (const [key, [ts, value]] of Object.entries(device.latest || {})) updateTile(key, ts, value);
  S.connect([device.id], (event) => {
    if (event.kind === "status") { setStatus(event); if (event.reason !== "snapshot") loadLists(); return; }
    if (event.snapshot) return;
    document.getElementById("last-seen").dataset.ts = String(Date.now());
    S.tickTimes();
    let added = false;
    for (const [key, [ts, value]] of Object.entries(event.values)) {
      updateTile(key, ts, value);
      if (range.live && ts >= range.from) {
        if (!series[key]) { series[key] = []; shown.add(key); renderKeys(); }
        if (aggregated) addToBucket(series[key], ts, value); else series[key].push([ts, value]);
        added = true;
      }
    }
    if (added) {
      const count = Object.values(series).reduce((n, s) => n + s.length, 0);
      note.textContent = `${count.toLocaleString()} readings`;
      draw();
    }
  });
  // A deferred script runs once the document is parsed.
  load();
  loadLists();
})();
