// Alerts in the dashboard: the live alert stream (nav badge and toasts on every page), the
// alerts list, a device's open alerts, the rules list, the rule editor with its backtest,
// and the notification channels.
"use strict";
(function () {
  const S = window.Sensorium;

  // ---- helpers --------------------------------------------------------------------------
  function csrf() {
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("sensorium_csrf="));
    return cookie ? decodeURIComponent(cookie.slice("sensorium_csrf=".length))
                  : document.querySelector('meta[name="csrf-token"]').content;
  }
  class ApiError extends Error {
    constructor(message, code, field, status) { super(message); this.code = code; this.field = field; this.status = status; }
  }
  async function call(method, path, body) {
    let r;
    try {
      r = await fetch(path, {
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
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  function showError(node, message) {
    node.textContent = message || "";
    node.hidden = !message;
  }
  function timeEl(iso) {
    const ms = Date.parse(iso);
    return el("time", { "data-ts": String(ms), datetime: iso, title: new Date(ms).toLocaleString(),
                        text: S.ago(ms) });
  }
  const num = (v) => (v === null || v === undefined ? "" : S.format("", v));
  const STATE_LABEL = { active: "Active", acknowledged: "Acknowledged", cleared: "Cleared" };
  function span(ms) {
    const s = Math.round(ms / 1000);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  // ---- the live stream: badge and toasts on every page ----------------------------------
  function setBadge(n) {
    const badge = document.getElementById("alert-badge");
    if (!badge) return;
    badge.dataset.count = String(n);
    badge.querySelector('[data-role="n"]').textContent = String(n);
    badge.hidden = n === 0;
  }

  function toast(alert) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const value = alert.value === null ? "" : ` (${num(alert.value)})`;
    const item = el("div", { class: `toast sev-${alert.severity}`, "data-alert": String(alert.id) },
      el("span", { class: `badge sev-${alert.severity}`, text: alert.severity }),
      el("p", {},
        el("strong", { text: alert.rule_name }), ` on ${alert.device_name}${value}`),
      el("a", { href: "/alerts", text: "View alerts" }),
      el("button", { type: "button", class: "link", "aria-label": `Dismiss ${alert.rule_name}`,
                     text: "Dismiss", onclick: () => item.remove() }));
    box.prepend(item);
    while (box.children.length > 4) box.lastElementChild.remove();
    // Stays while hovered or focused; gone by itself after a while otherwise.
    const expire = () => setTimeout(() => {
      if (item.matches(":hover, :focus-within")) expire(); else item.remove();
    }, 15000);
    expire();
  }

  function stream() {
    if (!document.getElementById("alert-badge")) return;
    const source = new EventSource("/api/v1/alerts/events");
    source.addEventListener("count", (m) => setBadge(JSON.parse(m.data).active));
    source.addEventListener("alert", (m) => {
      const data = JSON.parse(m.data);
      setBadge(data.active);
      if (data.alert.state === "active") toast(data.alert);
      document.dispatchEvent(new CustomEvent("sensorium:alert", { detail: data.alert }));
    });
    // Leaving the page closes it on purpose; the browser reconnects after other errors.
    window.addEventListener("pagehide", () => source.close());
  }

  // ---- an alert in a list ---------------------------------------------------------------
  function alertItem(a, { device = true } = {}) {
    const times = el("p", { class: "small muted" }, "Fired ", timeEl(a.fired_at));
    if (a.value !== null) times.append(` at ${num(a.value)}`);
    if (a.acked_at) times.append(" · acknowledged ", timeEl(a.acked_at));
    if (a.cleared_at) {
      times.append(" · cleared ", timeEl(a.cleared_at));
      if (a.clear_value !== null) times.append(` at ${num(a.clear_value)}`);
    }
    const head = el("div", { class: "alert-head" },
      el("span", { class: `badge sev-${a.severity}`, text: a.severity }),
      el("strong", { text: a.rule_name }),
      device ? el("span", { class: "muted" }, "on ", el("a", { href: `/devices/${a.device_id}`, text: a.device_name })) : null,
      el("span", { class: `badge state-${a.state}`, "data-role": "state", text: STATE_LABEL[a.state] || a.state }));
    const item = el("li", { class: `alert-item state-${a.state}`, "data-alert": String(a.id), "data-state": a.state },
      head, times);
    if (a.ack_note) item.append(el("p", { class: "small", "data-role": "note" }, "Note: ", el("q", { text: a.ack_note })));
    if (a.state === "active") {
      const error = el("p", { class: "error", role: "alert", hidden: true });
      const form = el("form", { class: "row ack-form" },
        el("label", {}, "Note (optional)",
          el("input", { name: "note", maxlength: "1000", autocomplete: "off", placeholder: "window opened" })),
        el("button", { type: "submit", class: "small", "aria-label": `Acknowledge ${a.rule_name} on ${a.device_name}`, text: "Acknowledge" }));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const button = form.querySelector("button");
        button.disabled = true;
        try {
          const done = await call("POST", `/api/v1/alerts/${a.id}/ack`, { note: form.elements.namedItem("note").value });
          item.replaceWith(alertItem(done, { device }));
        } catch (err) {
          button.disabled = false;
          showError(error, err.message);
        }
      });
      item.append(form, error);
    }
    return item;
  }

  function liveList(list, empty, { matches, device = true, dropCleared = false }) {
    const update = () => { if (empty) empty.hidden = list.children.length > 0; };
    document.addEventListener("sensorium:alert", (e) => {
      const a = e.detail;
      const old = list.querySelector(`[data-alert="${a.id}"]`);
      if (old) {
        // Keep a shown alert in place (updated) even if it no longer matches the filter:
        // an acknowledged one does not vanish under the user's pointer.
        if (dropCleared && a.state === "cleared") old.remove();
        else old.replaceWith(alertItem(a, { device }));
      } else if (matches(a)) {
        list.prepend(alertItem(a, { device }));
      }
      update();
    });
    update();
  }

  function alertsPage() {
    const data = S.pageData();
    const f = data.filters;
    const list = document.getElementById("alert-list");
    data.alerts.forEach((a) => list.append(alertItem(a)));
    const form = document.querySelector("form.filters");
    form.addEventListener("change", () => form.requestSubmit());
    liveList(list, document.getElementById("alerts-empty"), {
      matches: (a) => (!f.state || (f.state === "open" ? a.state !== "cleared" : a.state === f.state))
        && (!f.severity || a.severity === f.severity) && (!f.device || a.device_id === f.device),
    });
  }

  function deviceAlerts() {
    const section = document.getElementById("device-alerts");
    if (!section) return;
    const list = section.querySelector('[data-role="alerts"]');
    const items = JSON.parse(document.getElementById("device-alerts-data").textContent);
    items.forEach((a) => list.append(alertItem(a, { device: false })));
    liveList(list, section.querySelector('[data-role="empty"]'), {
      device: false,
      dropCleared: true,
      matches: (a) => a.device_id === section.dataset.device && a.state !== "cleared",
    });
  }

  // ---- rules ----------------------------------------------------------------------------
  function rulesPage() {
    const error = document.getElementById("rules-error");
    document.getElementById("rule-list").addEventListener("change", async (e) => {
      const box = e.target.closest('[data-action="enable"]');
      if (!box) return;
      const li = box.closest("[data-rule]");
      try {
        showError(error, "");
        const rule = await call("PATCH", `/api/v1/alert-rules/${li.dataset.rule}`, { enabled: box.checked });
        li.querySelector('[data-role="enabled"]').textContent = rule.enabled ? "Enabled" : "Disabled";
      } catch (err) {
        box.checked = !box.checked;
        showError(error, err.message);
      }
    });
    document.getElementById("rule-list").addEventListener("click", async (e) => {
      const button = e.target.closest('[data-action="delete"]');
      if (!button) return;
      if (!confirm(`Delete the rule "${button.dataset.name}" and its alerts?`)) return;
      const li = button.closest("[data-rule]");
      try {
        await call("DELETE", `/api/v1/alert-rules/${li.dataset.rule}`);
        li.remove();
      } catch (err) { showError(error, err.message); }
    });
  }

  const HYSTERESIS = [">", ">=", "<", "<="];
  const RANGE = ["inside", "outside"];

  function ruleEditor() {
    const rule = S.pageData().rule;
    const form = document.getElementById("rule-form");
    const field = (name) => form.elements.namedItem(name);
    const checked = (name) => [...form.querySelectorAll(`input[name="${name}"]:checked`)].map((c) => c.value);
    const error = document.getElementById("rule-error");

    if (rule) {
      field("name").value = rule.name;
      field("kind").value = rule.kind;
      field("severity").value = rule.severity;
      form.querySelector(`input[name="scope"][value="${rule.scope}"]`).checked = true;
      if (rule.scope === "device" && rule.devices.length) field("device").value = rule.devices[0];
      form.querySelectorAll('input[name="devices"]').forEach((c) => { c.checked = rule.devices.includes(c.value); });
      field("key").value = rule.key || "";
      if (rule.operator) field("operator").value = rule.operator;
      for (const name of ["threshold", "low", "high", "clear_threshold"]) field(name).value = rule[name] ?? "";
      const unit = rule.duration_s && rule.duration_s % 3600 === 0 ? 3600 : rule.duration_s % 60 === 0 ? 60 : 1;
      field("duration_unit").value = String(unit);
      field("duration").value = String(rule.duration_s / unit);
      form.querySelectorAll('input[name="channels"]').forEach((c) => { c.checked = rule.channels.includes(Number(c.value)); });
      field("enabled").checked = rule.enabled;
    }

    function sync() {
      const kind = field("kind").value;
      const scope = checked("scope")[0];
      const op = field("operator").value;
      form.querySelectorAll("[data-kind]").forEach((n) => { n.hidden = n.dataset.kind !== kind; });
      form.querySelectorAll("[data-scope]").forEach((n) => { n.hidden = n.dataset.scope !== scope; });
      form.querySelectorAll('[data-op="single"]').forEach((n) => { n.hidden = RANGE.includes(op); });
      form.querySelectorAll('[data-op="range"]').forEach((n) => { n.hidden = !RANGE.includes(op); });
      form.querySelectorAll('[data-op="hysteresis"]').forEach((n) => { n.hidden = !HYSTERESIS.includes(op); });
    }

    function spec() {
      const kind = field("kind").value;
      const op = field("operator").value;
      const scope = checked("scope")[0];
      const value = (name) => (field(name).value === "" ? null : Number(field(name).value));
      const threshold = kind === "threshold";
      return {
        name: field("name").value.trim(),
        kind, scope,
        devices: scope === "device" ? (field("device").value ? [field("device").value] : [])
          : scope === "list" ? checked("devices") : [],
        key: threshold ? field("key").value.trim() || null : null,
        operator: threshold ? op : null,
        threshold: threshold && !RANGE.includes(op) ? value("threshold") : null,
        low: threshold && RANGE.includes(op) ? value("low") : null,
        high: threshold && RANGE.includes(op) ? value("high") : null,
        clear_threshold: threshold && HYSTERESIS.includes(op) ? value("clear_threshold") : null,
        duration_s: Math.round(Number(field("duration").value || 0) * Number(field("duration_unit").value)),
        severity: field("severity").value,
        enabled: field("enabled").checked,
        channels: checked("channels").map(Number),
      };
    }

    function markInvalid(name) {
      form.querySelectorAll('[aria-invalid="true"]').forEach((n) => n.removeAttribute("aria-invalid"));
      if (!name) return;
      const base = name.split(".")[0];
      const target = base === "devices" ? (checked("scope")[0] === "device" ? field("device") : null)
        : base === "duration_s" ? field("duration") : form.querySelector(`[name="${base}"]`);
      if (target && target.setAttribute) target.setAttribute("aria-invalid", "true");
    }

    // ---- backtest, as the user edits ----
    const box = document.getElementById("backtest-result");
    const message = box.querySelector('[data-role="message"]');
    const counts = box.querySelector('[data-role="counts"]');
    const fires = box.querySelector('[data-role="fires"]');
    const firesTitle = box.querySelector('[data-role="fires-title"]');
    const source = box.querySelector('[data-role="source"]');
    let seq = 0;
    let timer = null;

    function say(text) {
      message.textContent = text;
      message.hidden = !text;
    }
    function blank() {
      counts.hidden = true;
      counts.querySelectorAll("dd").forEach((dd) => { dd.textContent = "—"; });
      fires.replaceChildren();
      firesTitle.hidden = true;
      source.textContent = "";
    }
    function times(n) { return n === 0 ? "never" : n === 1 ? "1 time" : `${n} times`; }

    function show(day, week) {
      say("");
      counts.hidden = false;
      counts.querySelector('[data-period="24h"]').textContent = times(day.count);
      counts.querySelector('[data-period="7d"]').textContent = times(week.count);
      fires.replaceChildren(...week.fires.slice(0, 10).map((f) => {
        const at = Date.parse(f.at);
        const end = f.cleared_at ? `cleared after ${span(Date.parse(f.cleared_at) - at)}` : "still open";
        return el("li", {}, el("time", { datetime: f.at, text: new Date(at).toLocaleString() }),
          ` · ${f.device_name} · ${end}`);
      }));
      firesTitle.hidden = week.count === 0;
      if (week.count > 10) fires.append(el("li", { class: "muted", text: `and ${week.count - 10} more` }));
      const s = week.sources;
      const parts = [];
      if (s.day_buckets) parts.push(`${s.day_buckets} day`);
      if (s.hour_buckets) parts.push(`${s.hour_buckets} hour`);
      if (s.minute_buckets) parts.push(`${s.minute_buckets} minute`);
      const from = [];
      if (parts.length) from.push(`${parts.join(", ")} rollup buckets`);
      if (s.raw_points) from.push(`${s.raw_points} raw points`);
      let text = week.source === "none" ? "No stored readings of this key in the last 7 days."
        : `Replayed from ${from.join(" and ")}${week.devices < week.devices_total ? ` (first ${week.devices} of ${week.devices_total} devices)` : ""}.`;
      if (!week.exact) text += " Not exact: retention dropped some raw points.";
      source.textContent = text;
    }

    async function backtest() {
      const my = ++seq;
      const s = spec();
      if (s.kind !== "threshold") {
        blank();
        say("Backtests cover threshold rules: device status history is not kept.");
        return;
      }
      const range = RANGE.includes(s.operator);
      if (!s.key || (range ? s.low === null || s.high === null : s.threshold === null)) {
        // Still being filled in: no request, and no error for what is not typed yet.
        blank();
        say(range ? "Fill in the key and the range to see how often it would have fired."
                  : "Fill in the key and the threshold to see how often it would have fired.");
        return;
      }
      box.setAttribute("aria-busy", "true");
      try {
        const body = { ...s, name: s.name || "backtest" };
        const [day, week] = await Promise.all(["24h", "7d"].map(
          (period) => call("POST", "/api/v1/alert-rules/backtest", { ...body, period })));
        if (my !== seq) return;  // a newer edit's answer is on its way
        markInvalid(null);
        show(day, week);
      } catch (err) {
        if (my !== seq) return;
        blank();
        say(err.message);
        markInvalid(err.field);
      } finally {
        if (my === seq) box.setAttribute("aria-busy", "false");
      }
    }
    function later() {
      sync();
      clearTimeout(timer);
      timer = setTimeout(backtest, 300);
    }
    form.addEventListener("input", later);
    form.addEventListener("change", later);

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      showError(error, "");
      const s = spec();
      try {
        if (rule) await call("PATCH", `/api/v1/alert-rules/${rule.id}`, s);
        else await call("POST", "/api/v1/alert-rules", s);
        location.href = "/alerts/rules";
      } catch (err) {
        showError(error, err.message);
        markInvalid(err.field);
      }
    });

    sync();
    if (rule) backtest();
  }

  // ---- channels -------------------------------------------------------------------------
  function deliveryLog(items) {
    if (!items.length) return el("p", { class: "muted small", text: "Nothing sent yet." });
    return el("table", { class: "state-table" },
      el("thead", {}, el("tr", {}, ...["When", "Event", "Status", "Attempts", "Error"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...items.map((d) => el("tr", { "data-status": d.status },
        el("td", {}, timeEl(d.created_at)), el("td", { text: d.event }),
        el("td", {}, el("span", { class: `badge delivery-${d.status}`, text: d.status })),
        el("td", { text: String(d.attempts) }), el("td", { text: d.last_error || "" })))));
  }

  function secretBox(secret) {
    const code = el("code", { text: secret });
    return el("div", {},
      el("p", { class: "small", text: "The new signing secret, shown only now:" }),
      el("div", { class: "secret" }, code,
        el("button", { type: "button", class: "small", text: "Copy", onclick: async (e) => {
          try { await navigator.clipboard.writeText(secret); e.target.textContent = "Copied"; }
          catch { e.target.textContent = "Select and copy"; }
        } })));
  }

  function channelsPage() {
    const form = document.getElementById("channel-form");
    const field = (name) => form.elements.namedItem(name);
    const formError = document.getElementById("channel-form-error");
    const error = document.getElementById("channels-error");
    const sync = () => {
      const kind = form.querySelector('input[name="kind"]:checked').value;
      form.querySelectorAll("[data-kind]").forEach((n) => { n.hidden = n.dataset.kind !== kind; });
    };
    form.addEventListener("change", sync);
    sync();
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      showError(formError, "");
      form.querySelectorAll('[aria-invalid="true"]').forEach((n) => n.removeAttribute("aria-invalid"));
      const kind = form.querySelector('input[name="kind"]:checked').value;
      const body = { name: field("name").value.trim(), kind };
      if (kind === "webhook") body.url = field("url").value.trim();
      else body.email = field("email").value.trim();
      try {
        const channel = await call("POST", "/api/v1/notification-channels", body);
        if (!channel.secret) { location.reload(); return; }
        form.hidden = true;
        document.getElementById("secret-value").textContent = channel.secret;
        document.getElementById("new-secret").hidden = false;
      } catch (err) {
        showError(formError, err.message);
        const target = err.field && form.querySelector(`[name="${err.field}"]`);
        if (target) target.setAttribute("aria-invalid", "true");
      }
    });

    const list = document.getElementById("channel-list");
    list.addEventListener("change", async (e) => {
      const toggle = e.target.closest('[data-action="enable"]');
      if (!toggle) return;
      const li = toggle.closest("[data-channel]");
      try {
        showError(error, "");
        const channel = await call("PATCH", `/api/v1/notification-channels/${li.dataset.channel}`, { enabled: toggle.checked });
        li.querySelector('[data-role="enabled"]').textContent = channel.enabled ? "Enabled" : "Disabled";
      } catch (err) { toggle.checked = !toggle.checked; showError(error, err.message); }
    });
    list.addEventListener("click", async (e) => {
      const button = e.target.closest("button[data-action]");
      if (!button) return;
      const li = button.closest("[data-channel]");
      const path = `/api/v1/notification-channels/${li.dataset.channel}`;
      showError(error, "");
      try {
        if (button.dataset.action === "log") {
          const log = li.querySelector('[data-role="log"]');
          const open = button.getAttribute("aria-expanded") === "true";
          if (!open) log.replaceChildren(deliveryLog((await call("GET", `${path}/deliveries`)).items));
          log.hidden = open;
          button.setAttribute("aria-expanded", String(!open));
        } else if (button.dataset.action === "rotate") {
          if (!confirm("Make a new signing secret? The old one stops working at once.")) return;
          const channel = await call("POST", `${path}/secret`);
          li.querySelector('[data-role="secret"]').replaceChildren(secretBox(channel.secret));
        } else if (button.dataset.action === "delete") {
          if (!confirm(`Delete the channel "${button.dataset.name}" and its delivery log?`)) return;
          await call("DELETE", path);
          li.remove();
          document.getElementById("channels-empty").hidden = list.children.length > 0;
        }
      } catch (err) { showError(error, err.message); }
    });
  }

  document.addEventListener("DOMContentLoaded", () => { stream(); deviceAlerts(); });

  // The helpers are shared with the other pages' scripts (ota.js).
  Object.assign(S, { alertsPage, rulesPage, ruleEditor, channelsPage, setBadge,
                     call, csrf, el, showError, timeEl, ApiError });
})();
