// Shared dashboard behaviour: live connection, relative times, copy buttons, fleet page.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const units = () => (pageData().units || {});
  const pageData = () => {
    const el = document.getElementById("page-data");
    return el ? JSON.parse(el.textContent) : {};
  };

  function format(key, value) {
    const unit = units()[key];
    if (typeof value !== "number") return String(value);
    return unit ? value.toFixed(unit.digits) : String(Math.round(value * 1000) / 1000);
  }

  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function tickTimes() {
    document.querySelectorAll("time[data-ts]").forEach((el) => {
      const raw = el.dataset.ts;
      if (!raw) return;
      const ms = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw);
      if (!isNaN(ms)) { el.textContent = ago(ms); el.title = new Date(ms).toLocaleString(); }
    });
  }

  // One WebSocket per page, authenticated by the session cookie; reconnects with backoff
  // and resubscribes (the server answers each subscription with a fresh snapshot).
  function connect(devices, onEvent) {
    let delay = 500;
    let socket;
    const open = () => {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      socket = new WebSocket(proto + "//" + location.host + "/api/v1/ws");
      socket.onopen = () => {
        delay = 500;
        socket.send(JSON.stringify({ op: "subscribe", devices: devices }));
      };
      socket.onmessage = (m) => {
        const event = JSON.parse(m.data);
        if (event.kind === "telemetry" || event.kind === "status") onEvent(event);
      };
      socket.onclose = () => { setTimeout(open, delay); delay = Math.min(delay * 2, 10000); };
    };
    open();
    return () => socket && socket.close();
  }

  async function api(method, url, body) {
    const r = await fetch(url, {
      method, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf(), "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!r.ok) throw new Error((await r.json()).error.message);
    return r.status === 204 ? null : r.json();
  }

  function fleetPage() {
    const data = pageData();
    const filter = document.getElementById("filter");
    const statusFilter = document.getElementById("status-filter");
    const apply = () => {
      const q = filter.value.trim().toLowerCase();
      const st = statusFilter.value;
      document.querySelectorAll("#fleet > li").forEach((li) => {
        li.hidden = (q && !li.dataset.search.includes(q)) || (st && li.dataset.status !== st);
      });
    };
    filter.addEventListener("input", apply);
    statusFilter.addEventListener("change", apply);
    connect(data.devices, (event) => {
      const card = document.querySelector(`li[data-device="${event.device}"]`);
      if (!card) return;
      if (event.kind === "status") {
        card.dataset.status = event.status;
        const dot = card.querySelector('[data-role="dot"]');
        dot.className = "dot " + event.status; dot.title = event.status;
        dot.setAttribute("aria-label", event.status);
        return;
      }
      const list = card.querySelector('[data-role="values"]');
      let newest = 0;
      for (const [key, [ts, value]] of Object.entries(event.values)) {
        newest = Math.max(newest, ts);
        let row = list.querySelector(`[data-key="${CSS.escape(key)}"]`);
        if (!row) {
          row = document.createElement("div");
          row.dataset.key = key;
          const u = units()[key];
          row.innerHTML = `<dt></dt><dd><span data-role="value"></span> <small></small></dd>`;
          row.querySelector("dt").textContent = u ? u.label : key;
          row.querySelector("small").textContent = u ? u.unit : "";
          list.appendChild(row);
        }
        row.querySelector('[data-role="value"]').textContent = format(key, value);
      }
      if (!event.snapshot) card.querySelector('[data-role="seen"]').dataset.ts = String(Date.now());
      tickTimes();
    });
  }

  document.addEventListener("click", async (e) => {
    const button = e.target.closest("[data-copy]");
    if (!button) return;
    const text = document.querySelector(button.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
    catch { button.textContent = "Select and copy"; }
  });

  document.addEventListener("DOMContentLoaded", () => { tickTimes(); setInterval(tickTimes, 1000); });

  window.Sensorium = {
    connect, api, format, ago, pageData, tickTimes, fleetPage,
    rotate: async (id) => (await api("POST", `/api/v1/devices/${id}/token/rotate`)).token,
    revoke: async (id) => { await api("POST", `/api/v1/devices/${id}/token/revoke`); location.reload(); },
  };
})();
