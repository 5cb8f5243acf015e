// The energy page: today's headline figures (live "now"), days of the month against the
// previous month, months of the year, the average day, the breakdown by meter, CSV links,
// and the forms for a site and its tariff. All figures come from /api/v1/energy.
"use strict";
(function () {
  const S = window.Sensorium;
  const data = S.pageData();
  const $ = (id) => document.getElementById(id);
  const BROWSER_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#dc2626"];
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  let sites = [];
  let scope = null;      // {kind: "site"|"device", id, site?}
  let summaries = {};    // period -> summary
  let plots = {};
  let live = null;       // closes the WebSocket
  let generation = 0;    // ignores answers of an older load
  let formFor = null;    // the scope the tariff form was filled for

  // ---- formatting (the browser's locale) ---------------------------------------------------
  const num = (digits) => new Intl.NumberFormat(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const kwh = (v) => (v === null || v === undefined ? "–" : num(2).format(v));
  const watts = (v) => (v === null || v === undefined ? "–" : num(0).format(v));
  function money(v, currency) {
    if (v === null || v === undefined || !currency) return "–";
    try { return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(v); }
    catch { return num(2).format(v) + " " + currency; }
  }
  function pct(v) {
    if (v === null || v === undefined) return "–";
    const text = num(1).format(Math.abs(v));
    const zero = Number(text.replace(/[^0-9]/g, "")) === 0;
    return (zero ? "" : v > 0 ? "+" : "−") + text + "%";
  }
  function setValue(id, text, raw) {
    const el = $(id);
    el.textContent = text;
    el.dataset.value = raw === null || raw === undefined ? "" : String(raw);
  }
  const clock = (ms, tz) => new Intl.DateTimeFormat(undefined, { timeZone: tz, hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(new Date(ms));

  // ---- local calendar in the chosen zone ---------------------------------------------------
  function localDate(ms, tz) {
    const parts = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(new Date(ms));
    const get = (t) => Number(parts.find((p) => p.type === t).value);
    return { y: get("year"), m: get("month"), d: get("day") };
  }
  const iso = (y, m, d) => `${String(y).padStart(4, "0")}-${String(m).padStart(2, "0")}-${String(d).padStart(2, "0")}`;
  function monthStart(y, m, offset) {
    const total = y * 12 + (m - 1) + offset;
    return iso(Math.floor(total / 12), (total % 12) + 1, 1);
  }

  // ---- API ----------------------------------------------------------------------------------
  function scopeParams() {
    return scope.kind === "site" ? { site: String(scope.id) } : { device: scope.id };
  }
  function url(path, params) {
    return `/api/v1/energy/${path}?` + new URLSearchParams({ ...scopeParams(), tz: tz(), ...params });
  }
  async function get(path, params) {
    const r = await fetch(url(path, params), { credentials: "same-origin" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    return body;
  }
  const tz = () => $("tz").value.trim() || BROWSER_TZ;

  function showError(id, message) {
    const el = $(id);
    el.textContent = message || "";
    el.hidden = !message;
  }

  // ---- scope --------------------------------------------------------------------------------
  async function loadSites() {
    const r = await fetch("/api/v1/energy/sites", { credentials: "same-origin" });
    if (!r.ok) throw new Error("Could not load sites");
    sites = (await r.json()).items;
    const group = $("scope-sites");
    group.innerHTML = "";
    for (const site of sites) {
      const option = document.createElement("option");
      option.value = "site:" + site.id;
      option.textContent = site.name;
      group.appendChild(option);
    }
    group.hidden = !sites.length;
  }

  function pickScope() {
    const select = $("scope");
    const wanted = location.hash.replace(/^#/, "");
    const values = Array.from(select.options).map((o) => o.value);
    if (values.includes(wanted)) select.value = wanted;
    else if (values.length) select.value = values[0];  // sites come first
    const value = values.length ? select.value : "";
    if (!value) { scope = null; return; }
    const [kind, id] = [value.slice(0, value.indexOf(":")), value.slice(value.indexOf(":") + 1)];
    scope = kind === "site" ? { kind, id: Number(id), site: sites.find((s) => s.id === Number(id)) } : { kind, id };
  }

  function describeScope() {
    const note = $("scope-note");
    if (!scope) { note.textContent = "No site yet and no device reports power or energy: create a site below."; return; }
    if (scope.kind === "device") { note.textContent = "A single device. Costs need a site with a tariff."; return; }
    const s = scope.site;
    const subs = s.submeters.map((m) => m.name).join(", ");
    note.textContent = (s.mains ? `Mains: ${s.mains.name}` : "No mains meter (the sum of its meters)") +
      (subs ? ` · sub-meters: ${subs}` : "") + (s.tariff ? "" : " · no tariff yet: costs are not shown");
  }

  // ---- figures ------------------------------------------------------------------------------
  async function load() {
    const mine = ++generation;
    pickScope();
    describeScope();
    // The minutely refresh must not undo what someone is typing in the tariff form.
    const key = scope ? scope.kind + ":" + scope.id : "";
    if (key !== formFor) { formFor = key; tariffForm(); }
    document.querySelectorAll("#today, .energy-charts, .csv-links").forEach((el) => { el.hidden = !scope; });
    if (!scope) return;
    const at = Date.now();
    const zone = tz();
    const today = localDate(at, zone);
    const thisMonth = monthStart(today.y, today.m, 0);
    const nextMonth = monthStart(today.y, today.m, 1);
    const lastMonth = monthStart(today.y, today.m, -1);
    links(thisMonth, nextMonth, today);
    showError("energy-error", "");
    try {
      const [day, month, days, prevDays, months] = await Promise.all([
        get("summary", { period: "day", at: String(at) }),
        get("summary", { period: "month", at: String(at) }),
        get("series", { interval: "1d", from: thisMonth, to: nextMonth }),
        get("series", { interval: "1d", from: lastMonth, to: thisMonth }),
        get("series", { interval: "1mo", from: iso(today.y, 1, 1), to: iso(today.y + 1, 1, 1) }),
      ]);
      if (mine !== generation) return;
      summaries = { day, month };
      headline(day, month, at, zone);
      daysChart(days, prevDays);
      monthsChart(months);
      profileChart(month);
      breakdown(document.querySelector("[data-breakdown].active").dataset.breakdown);
      subscribe(day);
    } catch (e) {
      if (mine === generation) showError("energy-error", e.message);
    }
  }

  function headline(day, month, at, zone) {
    const cur = day.current;
    setValue("now-w", day.now ? watts(day.now.w) : "–", day.now ? day.now.w : null);
    $("now-seen").textContent = day.now ? "" : "no power reading";
    if (day.now) { $("now-seen").innerHTML = 'reading <time data-ts="' + day.now.ts + '"></time>'; S.tickTimes(); }
    setValue("today-kwh", kwh(cur.kwh), cur.kwh);
    setValue("yesterday-kwh", kwh(day.previous.kwh), day.previous.kwh);
    setValue("today-cost", money(cur.cost, day.currency), cur.cost);
    $("today-cost-note").textContent = cur.cost === null ? "no tariff" :
      `energy ${money(cur.energy_cost, day.currency)} + standing ${money(cur.standing_charge, day.currency)}`;
    setValue("today-change", pct(day.change_pct), day.change_pct);
    const change = $("today-change");
    change.className = "value " + (day.change_pct > 0 ? "up" : day.change_pct < 0 ? "down" : "");
    const asOf = $("as-of");
    asOf.dataset.atMs = String(at);
    asOf.dateTime = new Date(at).toISOString();
    asOf.textContent = clock(at, zone) + " (" + zone + ")";
    $("month-kwh").textContent = kwh(month.current.kwh);
    $("month-cost").textContent = money(month.current.cost, month.currency);
    $("month-change").textContent = month.change_pct === null ? "no data last month" : pct(month.change_pct) + " vs last month by now";
    $("peak").textContent = day.peak ? `${watts(day.peak.w)} W at ${clock(day.peak.at_ms, zone)}` : "–";
    $("base-load").textContent = month.base_load_w === null ? "–" : watts(month.base_load_w) + " W";
    const missing = cur.missing.reduce((t, m) => t + (m.end_ms - m.start_ms), 0);
    $("missing-note").hidden = !missing;
    $("missing-note").textContent = missing ? `No data for ${Math.round(missing / 60000)} min today (not counted).` : "";
  }

  // The "now" value live: the latest power of the mains meter (or the device; a site
  // without one: the sum of its meters), as the API computes it.
  function subscribe(day) {
    if (live) { live(); live = null; }
    let ids;
    if (scope.kind === "device") ids = [scope.id];
    else if (scope.site.mains) ids = [scope.site.mains.device_id];
    else ids = scope.site.submeters.map((m) => m.device_id);
    if (!ids.length) return;
    const latest = {};
    live = S.connect(ids, (event) => {
      if (event.kind !== "telemetry" || !event.values.power) return;
      const [ts, w] = event.values.power;
      latest[event.device] = w;
      if (event.snapshot && day.now && ts <= day.now.ts) return;  // the summary is as new
      if (ids.every((id) => id in latest)) {
        const total = ids.reduce((t, id) => t + latest[id], 0);
        setValue("now-w", watts(total), total);
        $("now-seen").innerHTML = 'reading <time data-ts="' + ts + '"></time>';
        S.tickTimes();
      }
    });
  }

  function links(thisMonth, nextMonth, today) {
    const set = (id, path, params) => { $(id).href = url(path, params); };
    set("csv-summary-day", "summary.csv", { period: "day" });
    set("csv-summary-month", "summary.csv", { period: "month" });
    set("csv-series-hours", "series.csv", { interval: "1h" });
    set("csv-series-days", "series.csv", { interval: "1d", from: thisMonth, to: nextMonth });
    set("csv-series-months", "series.csv", { interval: "1mo", from: iso(today.y, 1, 1), to: iso(today.y + 1, 1, 1) });
  }

  // ---- charts (uPlot bars) ----------------------------------------------------------------------
  function theme() {
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    return { axis: { stroke: dark ? "#9aa3b2" : "#5f6672", grid: { stroke: dark ? "#2a2f38" : "#e2e5ea" } }, prev: dark ? "#4b5563" : "#cbd5e1" };
  }
  function bars(id, x, series, xValues, xLabel) {
    const el = $(id);
    if (plots[id]) { plots[id].destroy(); delete plots[id]; }
    if (!window.uPlot) return;
    const t = theme();
    const barPaths = (size) => uPlot.paths.bars({ size: [size, 60], align: 0 });
    plots[id] = new uPlot({
      width: el.clientWidth || 320, height: 220,
      scales: { x: { time: false, range: (u, min, max) => [min - 0.6, max + 0.6] }, y: { range: (u, min, max) => [0, Math.max(max, 0.001) * 1.1] } },
      axes: [{ ...t.axis, values: xValues, space: 24 }, { ...t.axis, size: 50, label: "kWh" }],
      legend: { show: true },
      cursor: { points: { show: false } },
      series: [{ label: xLabel, value: (u, v) => (v === null ? "" : xValues(u, [v])[0]) },
        ...series.map((s) => ({ label: s.label, stroke: s.color, fill: s.color, width: 0, paths: barPaths(s.size), points: { show: false },
          value: (u, v) => (v === null ? "–" : kwh(v) + " kWh") }))],
    }, [x, ...series.map((s) => s.values)], el);
  }
  function daysChart(days, prevDays) {
    const n = Math.max(days.rows.length, prevDays.rows.length);
    const x = Array.from({ length: n }, (_, i) => i + 1);
    const cur = x.map((d) => (days.rows[d - 1] ? days.rows[d - 1].kwh : null));
    const prev = x.map((d) => (prevDays.rows[d - 1] ? prevDays.rows[d - 1].kwh : null));
    bars("days-chart", x, [
      { label: "Previous month", color: theme().prev, values: prev, size: 0.85 },
      { label: "This month", color: COLORS[0], values: cur, size: 0.5 },
    ], (u, vals) => vals.map((v) => String(v)), "Day");
    const total = (rows) => rows.reduce((t, r) => t + r.kwh, 0);
    $("days-note").textContent = `This month: ${kwh(total(days.rows))} kWh; previous month: ${kwh(total(prevDays.rows))} kWh.`;
  }
  function monthsChart(months) {
    const x = months.rows.map((_, i) => i + 1);
    bars("months-chart", x, [{ label: "kWh", color: COLORS[1], values: months.rows.map((r) => r.kwh), size: 0.6 }],
      (u, vals) => vals.map((v) => MONTHS[v - 1] || ""), "Month");
    const total = months.rows.reduce((t, r) => t + r.kwh, 0);
    $("months-note").textContent = `This year so far: ${kwh(total)} kWh.`;
  }
  function profileChart(month) {
    const x = month.hourly_profile.map((_, i) => i);
    bars("profile-chart", x, [{ label: "Average kWh", color: COLORS[2], values: month.hourly_profile, size: 0.7 }],
      (u, vals) => vals.map((v) => String(v).padStart(2, "0") + "h"), "Hour");
  }
  addEventListener("resize", () => {
    for (const [id, plot] of Object.entries(plots)) plot.setSize({ width: $(id).clientWidth, height: 220 });
  });

  // Stacked share of each meter (and the unmetered remainder) in today's or this month's kWh.
  function breakdown(period) {
    const s = summaries[period];
    const bar = $("breakdown-bar");
    const body = $("breakdown-table").querySelector("tbody");
    bar.innerHTML = ""; body.innerHTML = "";
    if (!s) return;
    const single = s.site_id === null || s.meters.length < 2 && s.unmetered_kwh === null;
    $("breakdown-empty").hidden = !single;
    $("breakdown-table").hidden = single;
    bar.hidden = single;
    if (single) return;
    const parts = s.meters.filter((m) => m.role !== "mains").map((m) => ({ name: m.name, kwh: m.kwh, cost: m.energy_cost }));
    if (s.unmetered_kwh !== null) parts.push({ name: "Unmetered", kwh: s.unmetered_kwh, cost: s.unmetered_cost, unmetered: true });
    const total = s.current.kwh || parts.reduce((t, p) => t + Math.max(p.kwh, 0), 0);
    parts.forEach((p, i) => {
      const share = total > 0 ? Math.max(p.kwh, 0) / total * 100 : 0;
      const seg = document.createElement("span");
      seg.style.width = share + "%";
      seg.style.background = p.unmetered ? "var(--off)" : COLORS[i % COLORS.length];
      seg.title = `${p.name}: ${kwh(p.kwh)} kWh`;
      bar.appendChild(seg);
      const tr = document.createElement("tr");
      for (const text of [p.name, kwh(p.kwh), num(0).format(share) + "%", money(p.cost, s.currency)]) {
        const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      }
      const swatch = document.createElement("span");
      swatch.className = "swatch"; swatch.style.background = seg.style.background;
      tr.firstChild.prepend(swatch);
      body.appendChild(tr);
    });
  }
  document.querySelectorAll("[data-breakdown]").forEach((button) => {
    button.setAttribute("aria-pressed", String(button.classList.contains("active")));
    button.addEventListener("click", () => {
      document.querySelectorAll("[data-breakdown]").forEach((b) => {
        b.classList.toggle("active", b === button); b.setAttribute("aria-pressed", String(b === button));
      });
      breakdown(button.dataset.breakdown);
    });
  });

  // ---- forms ----------------------------------------------------------------------------------
  $("site-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const body = {
      name: form.name.value.trim(),
      mains: form.mains.value || null,
      submeters: Array.from(form.querySelectorAll('input[name="submeters"]:checked')).map((b) => b.value),
      max_gap_s: Number(form.max_gap_s.value || 900),
    };
    showError("site-form-error", "");
    try {
      const site = await S.api("POST", "/api/v1/energy/sites", body);
      form.reset();
      await loadSites();
      location.hash = "site:" + site.id;  // loads it
      $("tariff-form").querySelector('input[name="price_per_kwh"]').focus();
    } catch (err) {
      showError("site-form-error", err.message);
    }
  });

  function addWindow(w) {
    const li = $("window-template").content.firstElementChild.cloneNode(true);
    if (w) {
      li.querySelector('[name="w_name"]').value = w.name;
      li.querySelector('[name="w_start"]').value = w.start;
      li.querySelector('[name="w_end"]').value = w.end;
      li.querySelector('[name="w_days"]').value = w.days;
      li.querySelector('[name="w_price"]').value = w.price_per_kwh;
    }
    $("windows").appendChild(li);
    renumberWindows();
    return li;
  }
  function renumberWindows() {
    $("windows").querySelectorAll("li").forEach((li, i) => {
      li.querySelector("[data-remove-window]").setAttribute("aria-label", `Remove window ${i + 1}`);
    });
  }
  $("add-window").addEventListener("click", () => addWindow(null).querySelector("input").focus());
  $("windows").addEventListener("click", (e) => {
    const button = e.target.closest("[data-remove-window]");
    if (!button) return;
    button.closest("li").remove();
    renumberWindows();
    $("add-window").focus();
  });

  function tariffForm() {
    const site = scope && scope.kind === "site" ? scope.site : null;
    $("tariff-form").hidden = !site;
    $("tariff-nosite").hidden = !!site;
    $("tariff-site-name").textContent = site ? site.name : "the site";
    showError("tariff-form-error", "");
    $("tariff-saved").textContent = "";
    if (!site) return;
    const form = $("tariff-form");
    const t = site.tariff;
    form.currency.value = t ? t.currency : "EUR";
    form.price_per_kwh.value = t ? t.price_per_kwh : "";
    form.standing_charge_per_day.value = t ? t.standing_charge_per_day : 0;
    form.co2_g_per_kwh.value = t && t.co2_g_per_kwh !== null ? t.co2_g_per_kwh : "";
    $("windows").innerHTML = "";
    if (t) t.windows.forEach(addWindow);
    $("delete-tariff").hidden = !t;
  }
  const numberOr = (value, fallback) => (value.trim() === "" ? fallback : Number(value));
  $("tariff-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const body = {
      currency: form.currency.value.trim().toUpperCase(),
      price_per_kwh: numberOr(form.price_per_kwh.value, null),
      standing_charge_per_day: numberOr(form.standing_charge_per_day.value, 0),
      co2_g_per_kwh: numberOr(form.co2_g_per_kwh.value, null),
      windows: Array.from($("windows").querySelectorAll("li")).map((li) => ({
        name: li.querySelector('[name="w_name"]').value.trim(),
        start: li.querySelector('[name="w_start"]').value,
        end: li.querySelector('[name="w_end"]').value,
        days: li.querySelector('[name="w_days"]').value,
        price_per_kwh: numberOr(li.querySelector('[name="w_price"]').value, null),
      })),
    };
    showError("tariff-form-error", "");
    try {
      await S.api("PUT", `/api/v1/energy/sites/${scope.id}/tariff`, body);
      await loadSites();
      formFor = null;
      await load();
      $("tariff-saved").textContent = "Tariff saved.";
    } catch (err) {
      showError("tariff-form-error", err.message);
    }
  });
  $("delete-tariff").addEventListener("click", async () => {
    if (!confirm("Remove the tariff of this site? Costs are no longer shown.")) return;
    try {
      await S.api("DELETE", `/api/v1/energy/sites/${scope.id}/tariff`);
      await loadSites();
      formFor = null;
      await load();
    } catch (err) {
      showError("tariff-form-error", err.message);
    }
  });

  // ---- start ----------------------------------------------------------------------------------
  $("tz").value = BROWSER_TZ;
  $("tz").addEventListener("change", load);
  $("scope").addEventListener("change", () => { location.hash = $("scope").value; });
  addEventListener("hashchange", load);
  document.addEventListener("DOMContentLoaded", async () => {
    try { await loadSites(); } catch (e) { showError("energy-error", e.message); }
    load();
  });
  // Today's figures move on: refresh every minute while the page is visible.
  setInterval(() => { if (!document.hidden && scope) load(); }, 60000);
})();
