// Firmware updates in the dashboard: the images with their upload (XMLHttpRequest, for its
// progress events), the rollout form, the rollouts list and a rollout's page (live over the
// rollout streams, GET /api/v1/rollouts/events and /rollouts/{id}/events), and a device's
// firmware history (live over the device's event stream).
"use strict";
(function () {
  const S = window.Sensorium;
  const { call, el, showError, timeEl } = S;

  const STATE_LABEL = {
    PENDING: "Pending", ASSIGNED: "Assigned", DOWNLOADING: "Downloading", DOWNLOADED: "Downloaded",
    VERIFIED: "Verified", UPDATING: "Updating", UPDATED: "Updated", FAILED: "Failed", CANCELLED: "Cancelled",
  };
  const STATES = Object.keys(STATE_LABEL);
  const IN_FLIGHT = ["ASSIGNED", "DOWNLOADING", "DOWNLOADED", "VERIFIED", "UPDATING"];
  const ROLLOUT_LABEL = { running: "Running", paused: "Paused", completed: "Completed", cancelled: "Cancelled" };
  const ACTIVE = ["running", "paused"];

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(2)} MiB`;
  }
  function duration(s) {
    if (s % 86400 === 0) return `${s / 86400} d`;
    if (s % 3600 === 0) return `${s / 3600} h`;
    if (s % 60 === 0) return `${s / 60} min`;
    return `${s} s`;
  }
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  // A bar: its width follows the value (with a CSS transition, so it visibly moves).
  function bar(label) {
    return el("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": "0",
                       "aria-valuemax": "100", "aria-valuenow": "0" }, el("span", {}));
  }
  function setBar(node, percent, text) {
    const p = Math.max(0, Math.min(100, percent));
    node.setAttribute("aria-valuenow", String(Math.round(p)));
    node.setAttribute("aria-valuetext", text);
    node.firstElementChild.style.width = `${p}%`;
  }

  // How far a device's update is, as the bar shows it: the download's progress while
  // downloading, full once the image is on the device.
  function jobPercent(job) {
    if (job.state === "DOWNLOADING") return 100 * (job.progress || 0);
    if (["DOWNLOADED", "VERIFIED", "UPDATING", "UPDATED"].includes(job.state)) return 100;
    if (job.state === "FAILED" || job.state === "CANCELLED") return 100 * (job.progress || 0);
    return 0;
  }
  function jobText(job) {
    const label = STATE_LABEL[job.state] || job.state;
    return job.state === "DOWNLOADING" ? `${label} ${Math.round(100 * (job.progress || 0))} %` : label;
  }

  function errorOf(err, form) {
    form.querySelectorAll('[aria-invalid="true"]').forEach((n) => n.removeAttribute("aria-invalid"));
    const name = err && err.field ? err.field.split(".")[0] : null;
    const target = name && form.querySelector(`[name="${name}"]`);
    if (target) target.setAttribute("aria-invalid", "true");
    return target;
  }

  // ---- rollout summaries ------------------------------------------------------------------
  function total(counts) { return Object.values(counts).reduce((a, b) => a + b, 0); }
  function inFlight(counts) { return IN_FLIGHT.reduce((a, s) => a + (counts[s] || 0), 0); }

  function progressLine(counts) {
    const n = total(counts);
    const parts = [`${counts.UPDATED || 0} of ${n} updated`];
    if (counts.FAILED) parts.push(`${counts.FAILED} failed`);
    if (inFlight(counts)) parts.push(`${inFlight(counts)} in progress`);
    if (counts.PENDING) parts.push(`${counts.PENDING} waiting`);
    if (counts.CANCELLED) parts.push(`${counts.CANCELLED} cancelled`);
    return parts.join(" · ");
  }

  // The overall bar: updated, failed, cancelled, in progress; what is left is waiting.
  function stack(counts) {
    const n = Math.max(1, total(counts));
    const finished = (counts.UPDATED || 0) + (counts.FAILED || 0) + (counts.CANCELLED || 0);
    const node = el("div", { class: "stack ota-stack", role: "progressbar", "aria-label": "Finished devices",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(100 * finished / n)),
      "aria-valuetext": progressLine(counts) });
    for (const [key, cls] of [["UPDATED", "seg-updated"], ["FAILED", "seg-failed"], ["CANCELLED", "seg-cancelled"]]) {
      if (counts[key]) node.append(el("span", { class: cls, style: `width: ${100 * counts[key] / n}%`, title: `${STATE_LABEL[key]}: ${counts[key]}` }));
    }
    const flying = inFlight(counts);
    if (flying) node.append(el("span", { class: "seg-flight", style: `width: ${100 * flying / n}%`, title: `In progress: ${flying}` }));
    return node;
  }

  function strategyText(r) {
    if (r.strategy === "all") return "All at once";
    return `Batches of ${plural(r.batch_size, "device", "devices")}${r.batch_wait_s ? `, ${duration(r.batch_wait_s)} apart` : ""}`;
  }
  function targetText(t) {
    if (t.devices) return plural(t.devices.length, "chosen device", "chosen devices");
    const f = t.filter || {};
    const parts = [];
    if (f.name_contains) parts.push(`name contains “${f.name_contains}”`);
    if (f.location !== undefined) parts.push(f.location ? `at ${f.location}` : "no location");
    if (f.firmware_version) parts.push(`running ${f.firmware_version}`);
    return parts.length ? `Devices with ${parts.join(", ")}` : "All devices";
  }
  function stateBadge(state) {
    return el("span", { class: `badge rollout-${state}`, "data-role": "rollout-state", text: ROLLOUT_LABEL[state] || state });
  }

  // ---- the firmware page ------------------------------------------------------------------
  function imageCard(img) {
    const active = img.used_by.find((r) => ACTIVE.includes(r.state));
    const used = img.used_by.length
      ? img.used_by.flatMap((r, i) => [i ? ", " : "", el("a", { href: `/rollouts/${r.id}`, text: `#${r.id}` }), ` (${r.state})`])
      : ["no rollout yet"];
    const note = active ? el("p", { class: "small muted", id: `in-use-${img.id}`,
      text: `Rollout #${active.id} is ${active.state} with this image: cancel it to delete the image.` }) : null;
    return el("li", { class: "image", "data-image": String(img.id), "data-version": img.version },
      el("div", { class: "rule-head" },
        el("span", { class: "badge version", text: img.version }),
        el("a", { href: `/firmware/${img.id}` }, el("strong", { text: img.title }))),
      el("dl", { class: "facts" },
        el("div", {}, el("dt", { text: "Size" }), el("dd", { text: bytes(img.size) })),
        el("div", {}, el("dt", { text: "SHA-256" }), el("dd", {}, el("code", { title: img.sha256, text: img.sha256.slice(0, 12) + "…" }))),
        el("div", {}, el("dt", { text: "Signed by" }), el("dd", { text: img.signed_by === "server" ? "this server" : "uploaded signature" })),
        el("div", {}, el("dt", { text: "Uploaded" }), el("dd", {}, timeEl(img.created_at))),
        el("div", { class: "wide-fact" }, el("dt", { text: "Used by" }), el("dd", { "data-role": "used-by" }, ...used))),
      el("div", { class: "row rule-actions" },
        el("a", { class: "button small", href: `/rollouts/new?firmware=${img.id}`, text: "Roll out" }),
        el("a", { class: "button small secondary", href: `/api/v1/firmware/${img.id}/image`, text: "Download" }),
        el("button", { type: "button", class: "small danger", "data-action": "delete", disabled: Boolean(active),
                       "aria-describedby": active ? `in-use-${img.id}` : null,
                       "aria-label": `Delete ${img.title} ${img.version}`, text: "Delete" })),
      note);
  }

  async function deleteImage(id, label) {
    if (!confirm(`Delete ${label}? Its file is removed; finished rollouts keep their history.`)) return false;
    await call("DELETE", `/api/v1/firmware/${id}`);
    return true;
  }

  function firmwarePage() {
    const list = document.getElementById("image-list");
    const images = S.pageData().images;
    const count = () => {
      document.getElementById("image-count").textContent = `(${list.children.length})`;
      document.getElementById("images-empty").hidden = list.children.length > 0;
    };
    images.forEach((img) => list.append(imageCard(img)));
    const listError = document.getElementById("images-error");
    list.addEventListener("click", async (e) => {
      const button = e.target.closest('[data-action="delete"]');
      if (!button) return;
      const li = button.closest("[data-image]");
      showError(listError, "");
      try {
        if (await deleteImage(li.dataset.image, button.getAttribute("aria-label").slice(7))) { li.remove(); count(); }
      } catch (err) { showError(listError, err.message); }
    });
    uploadForm((img) => {
      list.prepend(imageCard({ ...img, used_by: [] }));
      count();
    });
  }

  function uploadForm(onDone) {
    const form = document.getElementById("upload-form");
    const box = document.getElementById("upload-progress");
    const meter = box.querySelector(".bar");
    const text = box.querySelector('[data-role="text"]');
    const error = document.getElementById("upload-error");
    const done = document.getElementById("upload-done");
    const submit = form.querySelector('button[type="submit"]');
    const stop = document.getElementById("upload-cancel");
    let xhr = null;
    stop.addEventListener("click", () => xhr && xhr.abort());
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      showError(error, "");
      done.hidden = true;
      errorOf(null, form);
      const file = form.elements.namedItem("file").files[0];
      if (!file) {
        showError(error, "Choose the image file to upload.");
        errorOf({ field: "file" }, form);
        return;
      }
      const data = new FormData(form);
      if (!String(data.get("signature") || "").trim()) data.delete("signature");
      const request = new XMLHttpRequest();
      xhr = request;
      request.open("POST", "/api/v1/firmware");
      request.setRequestHeader("X-CSRF-Token", S.csrf());
      request.responseType = "json";
      box.hidden = false;
      box.dataset.state = "uploading";
      setBar(meter, 0, "0 %");
      text.textContent = `Uploading ${file.name}…`;
      submit.disabled = true;
      stop.hidden = false;
      const finish = () => { submit.disabled = false; stop.hidden = true; xhr = null; };
      request.upload.addEventListener("progress", (p) => {
        if (!p.lengthComputable) return;
        const percent = (100 * p.loaded) / p.total;
        setBar(meter, percent, `${Math.round(percent)} %`);
        text.textContent = `${Math.round(percent)} % · ${bytes(p.loaded)} of ${bytes(p.total)}`;
      });
      request.upload.addEventListener("load", () => {
        setBar(meter, 100, "100 %");
        text.textContent = "Sent; the server checks the image…";
      });
      request.addEventListener("load", () => {
        const answer = request.response;
        finish();
        if (request.status === 201 && answer) {
          box.dataset.state = "done";
          setBar(meter, 100, "100 %");
          text.textContent = `Done · ${bytes(answer.size)}`;
          done.textContent = `Uploaded ${answer.title} ${answer.version} (SHA-256 ${answer.sha256.slice(0, 12)}…).`;
          done.hidden = false;
          form.reset();
          onDone(answer);
          return;
        }
        box.dataset.state = "failed";
        const err = (answer && answer.error) || {};
        text.textContent = "Not uploaded.";
        showError(error, err.message || `The server answered ${request.status}.`);
        const target = errorOf(err, form);
        if (target && target.name === "signature") target.closest("details").open = true;
      });
      request.addEventListener("error", () => {
        finish();
        box.dataset.state = "failed";
        text.textContent = "Not uploaded.";
        showError(error, "The upload broke off: the server cannot be reached or closed the connection.");
      });
      request.addEventListener("abort", () => {
        finish();
        box.dataset.state = "failed";
        text.textContent = "Upload stopped.";
      });
      request.send(data);
    });
  }

  function firmwareImagePage() {
    const button = document.querySelector('[data-action="delete"]');
    const error = document.getElementById("image-error");
    if (!button || button.disabled) return;
    button.addEventListener("click", async () => {
      showError(error, "");
      try {
        if (await deleteImage(button.dataset.image, button.dataset.label)) location.href = "/firmware";
      } catch (err) { showError(error, err.message); }
    });
  }

  // ---- the rollout form -------------------------------------------------------------------
  const ANY = "__any__";

  function rolloutForm() {
    const data = S.pageData();
    const form = document.getElementById("rollout-form");
    const field = (name) => form.elements.namedItem(name);
    const radio = (name) => (form.querySelector(`input[name="${name}"]:checked`) || {}).value;
    const count = document.getElementById("target-count");
    const version = () => {
      const img = data.images.find((i) => String(i.id) === field("firmware_id").value);
      return img ? img.version : null;
    };
    const picked = () => [...form.querySelectorAll('input[name="devices"]:checked')].map((c) => c.value);

    function filter() {
      const f = {};
      const name = field("name_contains").value.trim();
      if (name) f.name_contains = name;
      if (field("location").value !== ANY) f.location = field("location").value;
      if (field("firmware_version").value !== ANY) f.firmware_version = field("firmware_version").value;
      return f;
    }
    // The devices the server will resolve the targets to (the same rules: a case-blind
    // name match, exact location and version), so the count is right before submitting.
    function matching() {
      if (radio("target") === "devices") {
        const chosen = new Set(picked());
        return data.devices.filter((d) => chosen.has(d.id));
      }
      const f = filter();
      return data.devices.filter((d) =>
        (!f.name_contains || d.name.toLowerCase().includes(f.name_contains.toLowerCase()))
        && (f.location === undefined || d.location === f.location)
        && (f.firmware_version === undefined || d.fw === f.firmware_version));
    }
    function sync() {
      const target = radio("target");
      form.querySelectorAll("[data-target]").forEach((n) => { n.hidden = n.dataset.target !== target; });
      const strategy = radio("strategy");
      form.querySelectorAll("[data-strategy]").forEach((n) => { n.hidden = n.dataset.strategy !== strategy; });
      const unit = radio("batch_unit");
      field("batch").max = unit === "percent" ? "100" : "100000";
      document.getElementById("batch-unit-label").textContent = unit === "percent" ? "% of the devices" : "devices";
      const found = matching();
      const v = version();
      const current = v ? found.filter((d) => d.fw === v).length : 0;
      const update = found.length - current;
      const what = target === "devices" ? `${found.length} selected` : `${plural(found.length, "device matches", "devices match")}`;
      count.dataset.count = String(found.length);
      count.dataset.update = String(update);
      count.textContent = current
        ? `${what} · ${update} to update (${current} already run ${v})`
        : `${what} · ${update} to update`;
    }
    form.addEventListener("input", sync);
    form.addEventListener("change", sync);
    document.getElementById("select-all").addEventListener("click", () => {
      form.querySelectorAll('input[name="devices"]').forEach((c) => { c.checked = true; });
      sync();
    });
    document.getElementById("select-none").addEventListener("click", () => {
      form.querySelectorAll('input[name="devices"]').forEach((c) => { c.checked = false; });
      sync();
    });

    function body() {
      const b = { firmware_id: Number(field("firmware_id").value), strategy: radio("strategy") };
      if (radio("target") === "devices") b.devices = picked();
      else b.filter = filter();
      if (b.strategy === "gradual") {
        const n = field("batch").value === "" ? null : Number(field("batch").value);
        if (radio("batch_unit") === "percent") b.batch_percent = n; else b.batch_size = n;
        b.batch_wait_s = Math.round(Number(field("batch_wait").value || 0) * 60);
      }
      b.abort_failure_percent = Number(field("abort_failure_percent").value || 0);
      b.device_timeout_s = Math.round(Number(field("device_timeout").value || 0) * 60);
      return b;
    }
    // Where each field's error is shown, next to what the user fills in.
    const SECTION = { firmware_id: "firmware", devices: "target", filter: "target", strategy: "strategy",
                      batch_size: "strategy", batch_percent: "strategy", batch_wait_s: "strategy",
                      abort_failure_percent: "limits", device_timeout_s: "limits" };
    const INPUT = { batch_size: "batch", batch_percent: "batch", batch_wait_s: "batch_wait",
                    device_timeout_s: "device_timeout", devices: null, filter: null };
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      form.querySelectorAll("[data-error]").forEach((n) => showError(n, ""));
      form.querySelectorAll('[aria-invalid="true"]').forEach((n) => n.removeAttribute("aria-invalid"));
      const button = form.querySelector('button[type="submit"]');
      button.disabled = true;
      try {
        const made = await call("POST", "/api/v1/rollouts", body());
        location.href = `/rollouts/${made.id}`;
      } catch (err) {
        button.disabled = false;
        const base = err.field ? err.field.split(".")[0] : null;
        const slot = form.querySelector(`[data-error="${SECTION[base] || "form"}"]`);
        showError(slot, err.message);
        const name = base in INPUT ? INPUT[base] : base;
        const input = name && form.querySelector(`[name="${name}"]`);
        if (input) input.setAttribute("aria-invalid", "true");
        (input || slot).scrollIntoView({ block: "nearest" });
      }
    });
    sync();
  }

  // ---- the rollouts list ------------------------------------------------------------------
  function rolloutCard(r, titles) {
    const title = titles[r.firmware_id];
    return el("li", { class: "card rollout-card", "data-rollout": String(r.id), "data-state": r.state },
      el("div", { class: "rule-head" },
        el("a", { href: `/rollouts/${r.id}` }, el("strong", { text: `Rollout #${r.id} · ${r.version}` })),
        title ? el("span", { class: "muted", text: title }) : null,
        stateBadge(r.state)),
      stack(r.counts),
      el("p", { class: "small", "data-role": "progress", text: progressLine(r.counts) }),
      r.pause_reason ? el("p", { class: "small warn", text: r.pause_reason }) : null,
      el("p", { class: "small muted" }, `${targetText(r.target)} · ${strategyText(r)} · started `, timeEl(r.created_at)));
  }

  function liveStatus(source, node) {
    if (!node) return;
    source.addEventListener("open", () => { node.textContent = "Live"; node.dataset.state = "live"; });
    source.addEventListener("error", () => {
      const closed = source.readyState === EventSource.CLOSED;
      node.textContent = closed ? "Disconnected: reload the page" : "Reconnecting…";
      node.dataset.state = closed ? "closed" : "reconnecting";
    });
    // Leaving the page closes it on purpose; the browser reconnects after other errors.
    window.addEventListener("pagehide", () => source.close());
  }

  function rolloutsPage() {
    const { rollouts, titles } = S.pageData();
    const list = document.getElementById("rollout-list");
    const empty = document.getElementById("rollouts-empty");
    const render = (items) => {
      list.replaceChildren(...items.map((r) => rolloutCard(r, titles)));
      empty.hidden = items.length > 0;
    };
    render(rollouts);
    const source = new EventSource("/api/v1/rollouts/events");
    source.addEventListener("rollouts", (m) => render(JSON.parse(m.data).items));
    source.addEventListener("rollout", (m) => {
      const r = JSON.parse(m.data);
      const old = list.querySelector(`[data-rollout="${r.id}"]`);
      if (old) old.replaceWith(rolloutCard(r, titles)); else { list.prepend(rolloutCard(r, titles)); empty.hidden = true; }
    });
    liveStatus(source, document.getElementById("live"));
  }

  // ---- a rollout's page -------------------------------------------------------------------
  function rolloutPage() {
    const data = S.pageData();
    const names = data.names;
    let rollout = data.rollout;
    const jobs = new Map();  // device id → its job, as last heard
    const rows = new Map();  // device id → its row's parts
    const list = document.getElementById("job-list");
    const error = document.getElementById("rollout-error");

    function row(deviceId) {
      const name = names[deviceId] || deviceId;
      const parts = {
        state: el("span", { class: "badge", "data-role": "state" }),
        bar: bar(`Update of ${name}`),
        percent: el("span", { class: "small percent", "data-role": "percent" }),
        details: el("p", { class: "small muted", "data-role": "details" }),
        error: el("p", { class: "error small", "data-role": "error", hidden: true }),
        retry: el("button", { type: "button", class: "small", "data-action": "retry", "aria-label": `Retry ${name}`, text: "Retry", hidden: true }),
      };
      parts.li = el("li", { class: "job", "data-device": deviceId },
        el("div", { class: "job-head" },
          el("a", { href: `/devices/${deviceId}` }, el("strong", { text: name })),
          el("code", { class: "small muted", text: deviceId }), parts.state),
        el("div", { class: "job-bar" }, parts.bar, parts.percent),
        parts.details, parts.error, parts.retry);
      rows.set(deviceId, parts);
      return parts;
    }

    function showJob(job) {
      jobs.set(job.device_id, job);
      const parts = rows.get(job.device_id) || row(job.device_id);
      if (!parts.li.isConnected) list.append(parts.li);
      parts.li.dataset.state = job.state;
      parts.state.className = `badge job-${job.state}`;
      parts.state.textContent = STATE_LABEL[job.state] || job.state;
      const percent = jobPercent(job);
      setBar(parts.bar, percent, jobText(job));
      parts.bar.dataset.state = job.state;
      parts.percent.textContent = job.state === "PENDING" ? `batch ${job.batch}` : `${Math.round(percent)} %`;
      const bits = [];
      if (job.from_version) bits.push([`from ${job.from_version}`]);
      if (rollout.strategy === "gradual") bits.push([`batch ${job.batch}`]);
      if (job.attempts > 1) bits.push([`attempt ${job.attempts}`]);
      if (job.assigned_at) bits.push(["assigned ", timeEl(job.assigned_at)]);
      if (job.finished_at) bits.push(["finished ", timeEl(job.finished_at)]);
      else if (job.assigned_at && job.updated_at !== job.assigned_at) bits.push(["last report ", timeEl(job.updated_at)]);
      parts.details.replaceChildren(...bits.flatMap((b, i) => (i ? [" · ", ...b] : b)));
      showError(parts.error, job.state === "FAILED" || job.error ? job.error || "" : "");
      parts.retry.hidden = !(job.state === "FAILED" && rollout.state !== "cancelled");
    }

    function localCounts() {
      const counts = {};
      for (const job of jobs.values()) counts[job.state] = (counts[job.state] || 0) + 1;
      return counts;
    }

    function showSummary(r) {
      rollout = { ...rollout, ...r };
      document.getElementById("rollout-state").replaceChildren(stateBadge(rollout.state));
      const reason = document.getElementById("pause-reason");
      reason.textContent = rollout.pause_reason || "";
      reason.hidden = !rollout.pause_reason;
      document.querySelectorAll("#rollout-actions [data-action]").forEach((b) => {
        const a = b.dataset.action;
        b.hidden = !((a === "pause" && rollout.state === "running") || (a === "resume" && rollout.state === "paused")
          || (a === "cancel" && ACTIVE.includes(rollout.state)));
      });
      showCounts(rollout.counts);
      const facts = document.getElementById("facts");
      const set = (key, ...value) => facts.querySelector(`[data-fact="${key}"]`).replaceChildren(...value);
      set("target", targetText(rollout.target));
      set("strategy", strategyText(rollout));
      set("batch", rollout.strategy === "gradual" ? `${rollout.current_batch} of ${Math.max(...[...jobs.values()].map((j) => j.batch), 1)}` : "—");
      set("next", ...(rollout.next_batch_at && rollout.state === "running" ? [timeEl(rollout.next_batch_at)] : ["—"]));
      set("abort", `above ${rollout.abort_failure_percent} % failed`);
      set("failure", rollout.failure_percent === null ? "—" : `${Math.round(rollout.failure_percent)} %`);
      set("timeout", duration(rollout.device_timeout_s));
      set("started", timeEl(rollout.created_at));
      set("finished", ...(rollout.finished_at ? [timeEl(rollout.finished_at)] : ["—"]));
      for (const job of jobs.values()) rows.get(job.device_id).retry.hidden = !(job.state === "FAILED" && rollout.state !== "cancelled");
    }

    function showCounts(counts) {
      document.querySelectorAll("#state-counts [data-count]").forEach((n) => {
        const value = counts[n.dataset.count] || 0;
        n.querySelector("dd").textContent = String(value);
        n.classList.toggle("zero", value === 0);
      });
      document.getElementById("overall").replaceChildren(stack(counts));
      document.getElementById("overall-text").textContent = progressLine(counts);
    }

    function showAll(detail) {
      const { jobs: all, ...summary } = detail;
      rollout = { ...rollout, ...summary };
      // A device deleted since takes its job with it.
      const present = new Set(all.map((j) => j.device_id));
      for (const [id, parts] of rows) {
        if (!present.has(id)) { parts.li.remove(); rows.delete(id); jobs.delete(id); }
      }
      all.forEach(showJob);
      showSummary(summary);
    }

    list.addEventListener("click", async (e) => {
      const button = e.target.closest('[data-action="retry"]');
      if (!button) return;
      const deviceId = button.closest("[data-device]").dataset.device;
      button.disabled = true;
      showError(error, "");
      try {
        showJob(await call("POST", `/api/v1/rollouts/${rollout.id}/devices/${deviceId}/retry`));
        showCounts(localCounts());
      } catch (err) { showError(error, err.message); } finally { button.disabled = false; }
    });
    document.getElementById("rollout-actions").addEventListener("click", async (e) => {
      const button = e.target.closest("[data-action]");
      if (!button) return;
      const action = button.dataset.action;
      if (action === "cancel" && !confirm("Cancel this rollout? Devices not finished are told to stop.")) return;
      showError(error, "");
      button.disabled = true;
      try {
        await call("POST", `/api/v1/rollouts/${rollout.id}/${action}`);
        showAll(await call("GET", `/api/v1/rollouts/${rollout.id}`));
      } catch (err) { showError(error, err.message); } finally { button.disabled = false; }
    });

    showAll(rollout);
    const source = new EventSource(`/api/v1/rollouts/${rollout.id}/events`);
    source.addEventListener("rollout", (m) => showAll(JSON.parse(m.data)));
    source.addEventListener("job", (m) => {
      showJob(JSON.parse(m.data).job);
      showCounts(localCounts());  // at once; the server's counts follow in "summary"
    });
    source.addEventListener("summary", (m) => showSummary(JSON.parse(m.data)));
    liveStatus(source, document.getElementById("live"));
  }

  // ---- a device's firmware history --------------------------------------------------------
  function deviceFirmware() {
    const section = document.getElementById("device-firmware");
    if (!section) return;
    const deviceId = section.dataset.device;
    const list = section.querySelector('[data-role="history"]');
    const empty = section.querySelector('[data-role="empty"]');
    const current = section.querySelector('[data-role="current"]');
    let history = JSON.parse(document.getElementById("device-firmware-data").textContent);

    function item(job) {
      const meter = bar(`Update to ${job.version}`);
      setBar(meter, jobPercent(job), jobText(job));
      meter.dataset.state = job.state;
      const when = job.finished_at || job.updated_at || job.assigned_at;
      return el("li", { class: "fw-item", "data-rollout": String(job.rollout_id), "data-state": job.state },
        el("div", { class: "job-head" },
          el("strong", { text: job.version }),
          el("a", { href: `/rollouts/${job.rollout_id}`, text: `rollout #${job.rollout_id}` }),
          el("span", { class: `badge job-${job.state}`, "data-role": "state", text: STATE_LABEL[job.state] || job.state })),
        IN_FLIGHT.includes(job.state) ? el("div", { class: "job-bar" }, meter, el("span", { class: "small percent", text: `${Math.round(jobPercent(job))} %` })) : null,
        el("p", { class: "small muted" }, job.from_version ? `from ${job.from_version} · ` : "",
          job.finished_at ? "finished " : "last report ", timeEl(when)),
        job.error ? el("p", { class: "error small", "data-role": "error", text: job.error }) : null);
    }
    function render() {
      list.replaceChildren(...history.map(item));
      empty.hidden = history.length > 0;
    }
    const reported = (job) => Date.parse(job.updated_at || job.assigned_at || "") || 0;
    async function reload() {
      try {
        const fresh = (await call("GET", `/api/v1/devices/${deviceId}/ota/jobs`)).items;
        // A live event that overtook this request is newer than what it brought: keep it.
        history = fresh.map((job) => {
          const known = history.find((h) => h.rollout_id === job.rollout_id);
          return known && reported(known) > reported(job) ? known : job;
        });
        render();
      } catch { /* the stream retries */ }
    }
    render();
    const source = new EventSource(`/api/v1/devices/${deviceId}/events`);
    // Every open, the first one too: what changed between the page's render and the
    // subscription (or while the stream was down) is only in a fresh read.
    source.addEventListener("open", reload);
    source.addEventListener("ota", (m) => {
      const job = JSON.parse(m.data).job;
      const known = history.find((h) => h.rollout_id === job.rollout_id);
      if (!known) { reload(); return; }
      Object.assign(known, job);
      if (job.state === "UPDATED") current.textContent = known.version;
      render();
    });
    source.addEventListener("status", (m) => {
      const status = JSON.parse(m.data);
      if (status.fw) current.textContent = status.fw;
    });
    window.addEventListener("pagehide", () => source.close());
  }

  document.addEventListener("DOMContentLoaded", deviceFirmware);

  Object.assign(S, { firmwarePage, firmwareImagePage, rolloutForm, rolloutsPage, rolloutPage });
})();
