// The device page's control UI: declared controls that set desired state (pending →
// confirmed when the device reports), one-shot commands with their live history, and the
// editor that declares controls. API: docs/control.md.
"use strict";
(function () {
  const S = window.Sensorium;
  const device = S.pageData().device;
  const base = `/api/v1/devices/${encodeURIComponent(device.id)}`;
  const CONFIRM_WITHIN_MS = 15000;  // a change the device has not applied by then is flagged
  const CONFIRMED_SHOWN_MS = 4000;
  const HISTORY = 20;
  const RANK = { queued: 0, sent: 1, succeeded: 2, failed: 2, expired: 2 };
  const $ = (id) => document.getElementById(id);

  // ---- API ------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, code, field, status) {
      super(message);
      this.code = code; this.field = field; this.status = status;
    }
  }
  function csrf() {
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("sensorium_csrf="));
    return cookie ? decodeURIComponent(cookie.slice("sensorium_csrf=".length))
                  : document.querySelector('meta[name="csrf-token"]').content;
  }
  async function call(method, path, body) {
    let r;
    try {
      r = await fetch(base + path, {
        method, credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf(), "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError("The server cannot be reached.", "network", null, 0);
    }
    let doc = null;
    if (r.status !== 204) { try { doc = await r.json(); } catch { doc = null; } }
    if (!r.ok) {
      const e = (doc && doc.error) || {};
      throw new ApiError(e.message || `The server answered ${r.status}.`, e.code, e.field, r.status);
    }
    return doc;
  }
  function showError(el, message) {
    el.textContent = message || "";
    el.hidden = !message;
  }

  // ---- helpers --------------------------------------------------------------------------
  const ms = (t) => (t === null || t === undefined || t === "" ? 0 : typeof t === "number" ? t : Date.parse(t) || 0);
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const compact = (v) => (v === undefined ? "—" : JSON.stringify(v));
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k in node && typeof v !== "string") node[k] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  function timeEl(t) {
    const node = el("time", { "data-ts": String(ms(t)) });
    node.textContent = S.ago(ms(t));
    node.title = new Date(ms(t)).toLocaleString();
    return node;
  }
  function duration(from, to) {
    const d = ms(to) - ms(from);
    return d < 1000 ? `${d} ms` : d < 120e3 ? `${(d / 1000).toFixed(1)} s` : `${Math.round(d / 60e3)} min`;
  }

  // ---- desired state: controls ----------------------------------------------------------
  let state = null;  // the newest GET …/state document seen
  let builtFor = null;  // the control declaration the panel was built for (JSON)
  const widgets = new Map();  // key -> {control, row, input, output, badge, reported}
  // Per key, a change being carried to the device: phase sending | pending | unconfirmed |
  // confirmed | failed, the value, and the timer that moves it on.
  const tracked = new Map();

  // Responses and live events can cross: never go back to an older document.
  function newer(doc) {
    if (!state) return true;
    if (doc.desired_version !== state.desired_version) return doc.desired_version > state.desired_version;
    return ms(doc.reported_at) >= ms(state.reported_at);
  }
  function applyState(doc) {
    if (!doc || !newer(doc)) return;
    state = { desired: {}, reported: {}, pending: [], ...doc, controls: declared(doc.controls) };
    render();
  }
  function render() {
    if (JSON.stringify(state.controls) !== builtFor) buildControls();
    reconcile();
    renderValues();
    renderStateTable();
    renderDefs();
  }
  // The same declaration arrives with and without null members (PUT answer, state event).
  const declared = (list) => (list || []).map((c) =>
    Object.fromEntries(Object.entries(c).filter(([, v]) => v !== null && v !== undefined)));
  const valueKeys = () => state.controls.filter((c) => c.kind !== "button").map((c) => c.key);

  function reconcile() {
    for (const key of valueKeys()) {
      const t = tracked.get(key);
      if (t && (t.phase === "sending" || t.phase === "failed")) continue;
      if (state.pending.includes(key)) {
        // Someone (this page earlier, another tab, the API) set it and the device has not
        // caught up: the 15 s count from when the desired document changed.
        if (!t || t.phase === "confirmed" || !same(t.value, state.desired[key]))
          startPending(key, state.desired[key], ms(state.desired_at) || Date.now());
      } else if (t && (t.phase === "pending" || t.phase === "unconfirmed")) {
        if (same(t.value, state.desired[key])) confirmed(key); else untrack(key);
      }
    }
    for (const key of [...tracked.keys()]) if (!valueKeys().includes(key)) untrack(key);
  }
  function track(key, entry) {
    const old = tracked.get(key);
    if (old) clearTimeout(old.timer);
    tracked.set(key, entry);
  }
  function untrack(key) {
    const old = tracked.get(key);
    if (old) clearTimeout(old.timer);
    tracked.delete(key);
  }
  function startPending(key, value, since) {
    const entry = { phase: "pending", value };
    entry.timer = setTimeout(() => {
      if (tracked.get(key) !== entry) return;
      entry.phase = "unconfirmed";
      renderValues();
    }, Math.max(0, since + CONFIRM_WITHIN_MS - Date.now()));
    track(key, entry);
  }
  function confirmed(key) {
    const entry = { phase: "confirmed", value: state.desired[key] };
    entry.timer = setTimeout(() => {
      if (tracked.get(key) !== entry) return;
      tracked.delete(key);
      renderValues();
    }, CONFIRMED_SHOWN_MS);
    track(key, entry);
  }

  async function setDesired(key, value) {
    const entry = { phase: "sending", value };
    track(key, entry);
    renderValues();
    let doc;
    try {
      doc = await call("PUT", "/state/desired", { [key]: value });
    } catch (e) {
      if (tracked.get(key) !== entry) return;
      entry.phase = "failed";
      entry.error = e.message;
      renderValues();
      return;
    }
    if (tracked.get(key) !== entry) return;  // changed again meanwhile: the later one counts
    applyState(doc);
    if (tracked.get(key) !== entry) return;
    if (state.pending.includes(key)) startPending(key, value, Date.now());
    else if (same(state.desired[key], value)) confirmed(key);
    else untrack(key);
    renderValues();
  }

  function buildControls() {
    builtFor = JSON.stringify(state.controls);
    const list = $("control-list");
    list.removeAttribute("aria-busy");
    list.replaceChildren();
    widgets.clear();
    if (!state.controls.length) {
      list.append(el("p", { class: "muted small" }, "No controls declared yet. ",
        el("a", { href: "#control-form", text: "Add one in Settings" }), "."));
      return;
    }
    for (const control of state.controls) list.append(buildControl(control));
  }

  function buildControl(c) {
    const label = c.label || c.key;
    const id = `control-${c.key}`;
    const w = { control: c };
    w.badge = el("span", { class: "sync", "data-role": "sync", "aria-live": "polite" });
    w.reported = el("span", { class: "muted small", "data-role": "reported" });
    if (c.kind === "switch") {
      w.input = el("input", { type: "checkbox", role: "switch", id, class: "switch" });
      w.input.addEventListener("change", () => setDesired(c.key, w.input.checked));
      w.row = el("div", { class: "control", "data-key": c.key, "data-kind": c.kind },
        el("label", { for: id, class: "control-label", text: label }), w.input, w.badge, w.reported);
    } else if (c.kind === "slider") {
      const attrs = { type: "range", id, min: c.min ?? 0, max: c.max ?? 100, step: c.step ?? 1 };
      w.input = el("input", attrs);
      w.output = el("output", { for: id, class: "slider-value" });
      w.input.addEventListener("input", () => { w.output.textContent = w.input.value; });
      w.input.addEventListener("change", () => setDesired(c.key, Number(w.input.value)));
      w.row = el("div", { class: "control", "data-key": c.key, "data-kind": c.kind },
        el("label", { for: id, class: "control-label", text: label }),
        el("div", { class: "slider" }, w.input, w.output), w.badge, w.reported);
    } else if (c.kind === "select") {
      w.input = el("select", { id });
      w.input.append(el("option", { value: "", text: "—", disabled: true }));
      for (const o of c.options || []) w.input.append(el("option", { value: String(o), text: String(o) }));
      w.input.addEventListener("change", () => {
        const option = (c.options || []).find((o) => String(o) === w.input.value);
        setDesired(c.key, option === undefined ? w.input.value : option);
      });
      w.row = el("div", { class: "control", "data-key": c.key, "data-kind": c.kind },
        el("label", { for: id, class: "control-label", text: label }), w.input, w.badge, w.reported);
    } else {
      // A button sends a command; its badge follows that command's status.
      w.input = el("button", { type: "button", class: "small secondary", id, text: label });
      w.input.addEventListener("click", async () => {
        w.commandId = null;
        w.badge.textContent = "sending…"; w.badge.className = "sync sending";
        try {
          const command = await call("POST", "/commands", { name: c.command || c.key, params: c.params || {} });
          w.commandId = command.id;
          upsertCommand(command);
        } catch (e) {
          w.badge.textContent = e.message; w.badge.className = "sync failed";
        }
      });
      w.row = el("div", { class: "control", "data-key": c.key, "data-kind": c.kind },
        el("span", { class: "control-label", text: label }), w.input, w.badge);
    }
    widgets.set(c.key, w);
    return w.row;
  }

  const SYNC_TEXT = { sending: "sending…", pending: "pending", confirmed: "confirmed",
                      unconfirmed: "not confirmed", failed: "not saved" };
  function renderValues() {
    if (!state) return;
    for (const [key, w] of widgets) {
      const c = w.control;
      if (c.kind === "button") continue;
      const t = tracked.get(key);
      // While a change is on its way the control keeps showing it, not the older document.
      const value = t && t.phase !== "confirmed" ? t.value : key in state.desired ? state.desired[key] : state.reported[key];
      if (c.kind === "switch") w.input.checked = value === true;
      else if (c.kind === "slider") {
        if (!w.input.matches(":active") && typeof value === "number") w.input.value = String(value);
        w.output.textContent = w.input.value;
      } else if (c.kind === "select") {
        w.input.value = value === undefined ? "" : String(value);
        if (w.input.selectedIndex < 0) w.input.value = "";
      }
      const phase = t ? t.phase : "";
      w.row.dataset.sync = phase;
      w.badge.className = "sync " + phase;
      w.badge.replaceChildren();
      w.badge.title = phase === "failed" ? t.error : "";
      if (phase) {
        w.badge.append(SYNC_TEXT[phase]);
        if (phase === "failed" || phase === "unconfirmed") {
          w.badge.append(" ", el("button", {
            type: "button", class: "small secondary retry", text: "Retry",
            "aria-label": `Retry setting ${c.label || key}`,
            onclick: () => setDesired(key, t.value),
          }));
        }
      }
      if (phase === "failed") w.badge.append(el("span", { class: "error small", text: " " + t.error }));
      w.reported.textContent = "device: " + (key in state.reported ? shown(c, state.reported[key]) : "—");
    }
  }
  const shown = (c, v) => (c.kind === "switch" && typeof v === "boolean" ? (v ? "on" : "off") : typeof v === "string" ? v : compact(v));

  function renderStateTable() {
    const declared = new Set(valueKeys());
    const keys = [...new Set([...Object.keys(state.desired), ...Object.keys(state.reported)])]
      .filter((k) => !declared.has(k)).sort();
    const body = $("state-table").querySelector("tbody");
    body.replaceChildren(...keys.map((k) => el("tr", { "data-key": k },
      el("th", { scope: "row" }, el("code", { text: k })),
      el("td", { text: compact(state.desired[k]) }),
      el("td", {}, compact(state.reported[k]),
        state.pending.includes(k) ? el("span", { class: "sync pending", text: "pending" }) : null))));
    $("state-table").hidden = !keys.length;
    $("state-empty").hidden = Boolean(keys.length);
  }

  // ---- commands -------------------------------------------------------------------------
  const commands = new Map();  // id -> command as the owner sees it
  function mergeCommand(c) {
    const old = commands.get(c.id);
    if (old && (RANK[old.status] ?? 0) > (RANK[c.status] ?? 0)) return;  // a late, older view
    commands.set(c.id, c);
  }
  function upsertCommand(c) {
    mergeCommand(c);
    renderCommands();
  }
  function renderCommands() {
    const newest = [...commands.values()]
      .sort((a, b) => ms(b.created_at) - ms(a.created_at) || (a.id < b.id ? 1 : -1))
      .slice(0, HISTORY);
    const list = $("command-list");
    list.replaceChildren(...newest.map(commandItem));
    if (!newest.length) list.append(el("li", { class: "muted", text: "No commands sent yet." }));
    for (const w of widgets.values()) {
      const c = w.commandId && commands.get(w.commandId);
      if (c) { w.badge.textContent = c.status; w.badge.className = "sync status-" + c.status; }
    }
  }
  function commandItem(c) {
    const params = c.params && Object.keys(c.params).length ? el("code", { class: "params", text: compact(c.params) }) : null;
    const times = el("div", { class: "muted small" }, "sent ", timeEl(c.created_at));
    if (c.done_at) times.append(` · ${c.status} after ${duration(c.created_at, c.done_at)}`);
    else if (c.expires_at && RANK[c.status] < 2) times.append(" · expires ", new Date(ms(c.expires_at)).toLocaleTimeString());
    return el("li", { class: "command", "data-id": c.id, "data-status": c.status },
      el("div", { class: "command-head" },
        el("strong", { text: c.name }), params,
        el("span", { class: `badge status-${c.status}`, "data-role": "status", text: c.status })),
      times, commandOutcome(c));
  }
  function commandOutcome(c) {
    const parts = [];
    if (c.error) parts.push(el("p", { class: "error small", text: c.error }));
    const r = c.result;
    if (r && c.name === "wifi_scan" && Array.isArray(r.networks)) parts.push(networks(r.networks));
    else if (r && Object.keys(r).length) parts.push(el("code", { class: "result", "data-role": "result", text: compact(r) }));
    return parts.length ? el("div", { class: "command-outcome" }, ...parts) : null;
  }
  function networks(list) {
    // MicroPython's WLAN.scan() rows are (ssid, bssid, channel, rssi, security, hidden);
    // firmware may send them as such tuples or as objects.
    const rows = list.map((n) => Array.isArray(n)
      ? { ssid: n[0], channel: n[2], rssi: n[3], security: n[4] }
      : { ssid: n.ssid, channel: n.channel ?? n.ch, rssi: n.rssi, security: n.security ?? n.auth ?? n.authmode })
      .sort((a, b) => (b.rssi ?? -999) - (a.rssi ?? -999));
    if (!rows.length) return el("p", { class: "muted small", text: "No networks found." });
    return el("table", { class: "networks", "data-role": "result" },
      el("thead", {}, el("tr", {}, ...["Network", "Signal", "Channel", "Security"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...rows.map((n) => el("tr", {},
        el("td", { text: n.ssid ? String(n.ssid) : "(hidden)" }),
        el("td", { text: n.rssi === undefined ? "—" : `${n.rssi} dBm` }),
        el("td", { text: n.channel === undefined ? "—" : String(n.channel) }),
        el("td", { text: n.security === undefined ? "—" : String(n.security) })))));
  }
  async function sendCommand(name, params) {
    showError($("commands-error"), "");
    try {
      upsertCommand(await call("POST", "/commands", { name, params }));
    } catch (e) {
      showError($("commands-error"), `${name}: ${e.message}`);
    }
  }
  document.querySelectorAll("#commands [data-command]").forEach((b) => b.addEventListener("click", () => {
    if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
    sendCommand(b.dataset.command, {});
  }));
  $("interval-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = e.target.elements.interval_s;
    if (!input.reportValidity()) return;
    sendCommand("set_interval", { interval_s: Number(input.value) });
  });

  // ---- the controls editor --------------------------------------------------------------
  const form = $("control-form");
  const formError = $("control-form-error");
  function showKindFields() {
    const kind = form.elements.kind.value;
    form.querySelectorAll("[data-kind]").forEach((g) => { g.hidden = g.dataset.kind !== kind; });
  }
  form.elements.kind.addEventListener("change", showKindFields);
  showKindFields();

  function renderDefs() {
    const list = $("control-defs");
    list.replaceChildren(...state.controls.map((c) => el("li", { "data-key": c.key },
      el("span", {}, el("strong", { text: c.label || c.key }), " ", el("span", { class: "muted small", text: describe(c) })),
      el("button", { type: "button", class: "small secondary", text: "Remove",
                     "aria-label": `Remove control ${c.label || c.key}`, onclick: () => removeControl(c.key) }))));
    if (!state.controls.length) list.append(el("li", { class: "muted small", text: "None yet." }));
  }
  function describe(c) {
    if (c.kind === "slider") return `slider · ${c.key} · ${c.min ?? 0}–${c.max ?? 100} step ${c.step ?? 1}`;
    if (c.kind === "select") return `select · ${c.key} · ${(c.options || []).join(", ")}`;
    if (c.kind === "button") return `button · command ${c.command || c.key}${c.params ? " " + compact(c.params) : ""}`;
    return `${c.kind} · ${c.key}`;
  }

  function markInvalid(field) {
    form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
    if (!field) return;
    // API fields look like "3.min" or "key": the last part names the input.
    const name = String(field).split(/[.[\]]/).filter(Boolean).pop();
    const input = /^\d+$/.test(name) ? null : form.elements.namedItem(name);
    if (input && input.focus) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }
  function formControl() {
    const f = form.elements;
    const control = { key: f.key.value.trim(), kind: f.kind.value };
    if (f.label.value.trim()) control.label = f.label.value.trim();
    if (!control.key) throw new ApiError("Enter a key.", "missing_field", "key");
    const number = (name) => {
      const raw = f[name].value.trim();
      if (raw === "") return undefined;
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new ApiError(`${name} must be a number.`, "invalid_value", name);
      return n;
    };
    if (control.kind === "slider") {
      for (const name of ["min", "max", "step"]) { const n = number(name); if (n !== undefined) control[name] = n; }
    } else if (control.kind === "select") {
      control.options = f.options.value.split(",").map((o) => o.trim()).filter(Boolean);
    } else if (control.kind === "button") {
      if (f.command.value.trim()) control.command = f.command.value.trim();
      if (f.params.value.trim()) {
        try { control.params = JSON.parse(f.params.value); }
        catch { throw new ApiError("Parameters must be JSON, like {\"times\": 3}.", "invalid_value", "params"); }
      }
    }
    return control;
  }
  async function saveControls(list) {
    const saved = await call("PUT", "/controls", list);
    const controls = Array.isArray(saved) ? saved : saved && Array.isArray(saved.controls) ? saved.controls : list;
    // The live state event follows; show the new declaration without waiting for it.
    state = { ...state, controls: declared(controls) };
    render();
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    showError(formError, "");
    markInvalid(null);
    let control;
    try { control = formControl(); }
    catch (err) { showError(formError, err.message); markInvalid(err.field); return; }
    const existing = state ? state.controls : [];
    const at = existing.findIndex((c) => c.key === control.key);
    const list = at < 0 ? [...existing, control] : existing.map((c, i) => (i === at ? control : c));
    const submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    try {
      await saveControls(list);
      const kind = form.elements.kind.value;
      form.reset();
      form.elements.kind.value = kind;
      showKindFields();
    } catch (err) {
      // "3.min: …" about the control being added is about the form: say it without the index.
      const index = /^\[?(\d+)\]?/.exec(String(err.field || ""));
      const mine = !index || Number(index[1]) === (at < 0 ? list.length - 1 : at);
      const message = mine && index
        ? err.message.replace(/^\[?\d+\]?\.?/, "").replace(/^:\s*/, "").replace(/^Value error, /, "")
        : err.message;
      showError(formError, message.charAt(0).toUpperCase() + message.slice(1));
      markInvalid(mine ? err.field : null);
    } finally {
      submit.disabled = false;
    }
  });
  async function removeControl(key) {
    showError(formError, "");
    try { await saveControls(state.controls.filter((c) => c.key !== key)); }
    catch (err) { showError(formError, err.message); }
  }

  // ---- loading and live updates ---------------------------------------------------------
  async function loadState() {
    try {
      applyState(await call("GET", "/state"));
      showError($("controls-error"), "");
    } catch (e) {
      showError($("controls-error"), "Could not load the device's state: " + e.message);
    }
  }
  async function loadCommands() {
    try {
      const page = await call("GET", `/commands?limit=${HISTORY}`);
      const items = Array.isArray(page) ? page : (page && page.items) || [];
      items.forEach(mergeCommand);
      renderCommands();
    } catch (e) {
      showError($("commands-error"), "Could not load recent commands: " + e.message);
    }
  }
  function loadAll() { loadState(); loadCommands(); }

  // This device's event stream: state and command events, as they happen. After every
  // (re)connect the documents are fetched again, so nothing missed in a gap stays missing.
  const stream = new EventSource(`${base}/events`);
  stream.addEventListener("open", loadAll);
  stream.addEventListener("state", (m) => { const e = JSON.parse(m.data); applyState(e.state); });
  stream.addEventListener("command", (m) => { const e = JSON.parse(m.data); if (e.command) upsertCommand(e.command); });
  addEventListener("pagehide", () => stream.close());
  loadAll();
})();
