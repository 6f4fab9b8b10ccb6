// The Nex dashboard page: one EventSource on /api/stream keeps every panel current,
// a second one tails the logs of the chosen workload. Every action goes through the
// confirmation dialog, then a POST carrying the X-Nex-Dashboard header.
"use strict";

const MAX_EVENTS = 200;
const MAX_LOG_LINES = 1000;
const ACTION_HEADER = "X-Nex-Dashboard";

const $ = (id) => document.getElementById(id);

// Builds an element; text always goes in as text, never as HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(state) {
  return el("span", { class: `badge badge-${state}`, "data-state": state }, state);
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

const short = (id) => (id && id.length > 12 ? id.slice(0, 12) : id || "");
const timeOf = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

// -- actions -------------------------------------------------------------------------

async function post(url, body) {
  const response = await fetch(url, { method: "POST", body, headers: { [ACTION_HEADER]: "1" } });
  let answer = null;
  try { answer = await response.json(); } catch (e) { /* not JSON: the status says enough */ }
  if (!response.ok) {
    const message = answer && answer.error ? answer.error.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return answer;
}

// Opens the confirmation dialog; `action` runs on Confirm, and the dialog stays open with
// the error if it fails.
function confirmAction(title, message, label, action) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-message").textContent = message;
  $("confirm-error").hidden = true;
  const ok = $("confirm-ok");
  ok.textContent = label;
  ok.disabled = false;
  ok.onclick = async () => {
    ok.disabled = true;
    ok.textContent = `${label}…`;
    try {
      const result = await action();
      dialog.close();
      notify(result);
    } catch (err) {
      $("confirm-error").textContent = err.message;
      $("confirm-error").hidden = false;
      ok.disabled = false;
      ok.textContent = label;
    }
  };
  dialog.showModal();
}

function notify(text) {
  if (!text) return;
  const banner = $("banner");
  banner.textContent = text;
  banner.className = "banner";
  banner.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { banner.hidden = true; }, 8000);
}

function stopWorkload(w) {
  confirmAction("Stop workload", `Stop ${w.type} ${w.lifecycle} "${w.name}" (${w.id}) on ${w.node_name || w.node_id}?`,
    "Stop", async () => {
      await post(`/api/workloads/${encodeURIComponent(w.namespace)}/${encodeURIComponent(w.id)}/stop`);
      return `Stopped ${w.name}.`;
    });
}

function lameduckNode(n) {
  confirmAction("Lame duck", `Put node "${n.name}" (${n.node_id}) in lame duck mode? It stops taking work and ` +
    "drains its workloads.", "Lame duck", async () => {
    await post(`/api/nodes/${encodeURIComponent(n.node_id)}/lameduck`);
    return `Node ${n.name} is in lame duck mode.`;
  });
}

// The name the server gives when none is typed (nex.localfiles.workload_name_for).
function defaultName(filename) {
  const stem = filename.includes(".") ? filename.slice(0, filename.lastIndexOf(".")) : filename;
  return stem.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 64) || "workload";
}

function setUpDeploy() {
  const dialog = $("deploy-dialog");
  const form = $("deploy-form");
  $("deploy-open").addEventListener("click", () => {
    $("deploy-error").hidden = true;
    dialog.showModal();
  });
  $("deploy-cancel").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const file = data.get("file");
    if (!file || !file.name) {
      $("deploy-error").textContent = "Choose a file to deploy.";
      $("deploy-error").hidden = false;
      return;
    }
    const name = data.get("name") || defaultName(file.name);
    const type = data.get("type") === "auto" ? "guessed from the file" : data.get("type");
    const trigger = (data.get("trigger") ? `, trigger "${data.get("trigger")}"` : "") +
      (data.get("argv") ? `, arguments ${data.get("argv")}` : "");
    dialog.close();
    confirmAction("Deploy", `Upload ${file.name} (${bytes(file.size)}) and deploy it as "${name}" (type ${type}` +
      `${trigger}) in namespace "${data.get("namespace")}"? The node is chosen by auction.`, "Deploy", async () => {
      const summary = await post("/api/deploy", data);
      form.reset();
      const warnings = (summary.warnings || []).map((w) => ` Warning: ${w}.`).join("");
      return `Deployed ${summary.name} (${summary.id}) on ${short(summary.node_id)}: ${summary.state}.${warnings}`;
    });
  });
}

// -- panels --------------------------------------------------------------------------

let fleet = { nodes: [], workloads: [], namespaces: [] };

let drawn = "";

function renderFleet(next) {
  fleet = next;
  // Tables are drawn again only when something in them changed: a redraw replaces the
  // buttons, and one under the mouse would lose its click.
  const { time, ...content } = next;
  const key = JSON.stringify(content);
  $("updated").textContent = time ? `updated ${timeOf(time)}` : "";
  if (key === drawn) return;
  drawn = key;
  $("namespaces").textContent = `namespace ${next.namespaces.join(", ")}`;
  const banner = $("banner");
  if (next.error) {
    banner.textContent = next.error;
    banner.className = "banner banner-error";
    banner.hidden = false;
  } else if (banner.classList.contains("banner-error")) {
    banner.hidden = true;
  }
  const namespaceSelect = $("deploy-namespace");
  if (namespaceSelect.options.length !== next.namespaces.length) {
    namespaceSelect.replaceChildren(...next.namespaces.map((ns) => el("option", { value: ns }, ns)));
  }
  renderNodes(next.nodes);
  renderWorkloads(next.workloads);
  renderLogChoices(next.workloads);
}

function renderNodes(nodes) {
  $("node-count").textContent = nodes.length;
  $("nodes-empty").hidden = nodes.length > 0;
  $("nodes").tBodies[0].replaceChildren(...nodes.map((n) => {
    const r = n.resources || {};
    const used = r.memory_bytes ? r.memory_bytes - r.memory_available_bytes : null;
    const sandbox = (n.tags || {})["nex.sandbox"];  // the older alias, for nodes from before nex.isolation
    const tier = (n.tags || {})["nex.isolation"] || (sandbox === "runsc" ? "gvisor" : sandbox ? "container" : "process");
    const tags = [el("span", { class: "tag isolation", title: "isolation tier (nex.isolation)" }, tier),
      ...Object.entries(n.tags || {}).filter(([k]) => !k.startsWith("nex."))
        .map(([k, v]) => el("span", { class: "tag" }, `${k}=${v}`))];
    return el("tr", { "data-node-id": n.node_id, "data-state": n.state },
      el("td", { class: "strong" }, n.name),
      el("td", { class: "mono", title: n.node_id }, short(n.node_id)),
      el("td", {}, badge(n.state)),
      el("td", { title: Object.entries(n.tags || {}).map(([k, v]) => `${k}=${v}`).join("\n") }, tags),
      el("td", { class: "num" }, n.workload_count),
      el("td", { class: "num" }, r.cpus ?? "–"),
      el("td", { class: "num" }, r.load_1m !== undefined ? r.load_1m.toFixed(2) : "–"),
      el("td", {}, meter(used, r.memory_bytes)),
      el("td", { class: "num" }, duration(n.uptime_s)),
      el("td", {}, n.state === "running"
        ? el("button", { class: "small danger-outline lameduck", onclick: () => lameduckNode(n) }, "Lame duck")
        : null));
  }));
}

function meter(used, total) {
  if (used === null || !total) return "–";
  const share = Math.min(100, Math.round((used / total) * 100));
  const fill = el("span", { class: "meter-fill" });
  fill.style.width = `${share}%`;  // through CSSOM: the page's CSP allows no inline style attribute
  return el("span", { class: "meter", title: `${bytes(used)} of ${bytes(total)} in use` },
    el("span", { class: "meter-bar" }, fill),
    ` ${bytes(used)} / ${bytes(total)}`);
}

const ENDED = new Set(["stopped", "failed"]);
const COLUMN_HELP = {
  Calls: "calls since the function started, as its node last counted them (the Functions panel counts live)",
  Errors: "failed calls since the function started, as its node last counted them",
  CPU: "CPU use between the last two refreshes, in percent of one core",
};

// Nodes keep ended workloads for a while; they are listed only when asked for.
function renderWorkloads(all) {
  const ended = all.filter((w) => ENDED.has(w.state)).length;
  const workloads = $("show-ended").checked ? all : all.filter((w) => !ENDED.has(w.state));
  $("ended-count").textContent = ended;
  $("workload-count").textContent = all.length - ended;
  $("workloads-empty").hidden = workloads.length > 0;
  const byNamespace = new Map();
  for (const w of workloads) {
    if (!byNamespace.has(w.namespace)) byNamespace.set(w.namespace, []);
    byNamespace.get(w.namespace).push(w);
  }
  const groups = [...byNamespace.entries()].map(([ns, list]) => el("div", { class: "group", "data-namespace": ns },
    el("h3", {}, `namespace ${ns} `, el("span", { class: "count" }, list.length)),
    el("table", { class: "workloads" },
      el("thead", {}, el("tr", {}, ["Name", "ID", "State", "Type", "Node", "Triggers", "Calls", "Errors", "CPU",
        "Memory", "Up since", ""].map((h) => el("th", { title: COLUMN_HELP[h] }, h)))),
      el("tbody", {}, list.map(workloadRow)))));
  $("workloads").replaceChildren(...groups);
}

function workloadRow(w) {
  const usage = w.usage || {};
  const running = w.state === "running" || w.state === "starting";
  return el("tr", { "data-workload-id": w.id, "data-name": w.name, "data-state": w.state },
    el("td", { class: "strong" }, w.name, w.app ? el("span", { class: "tag" }, `app ${w.app.name}`) : null),
    el("td", { class: "mono", title: w.id }, short(w.id)),
    el("td", {}, badge(w.state), w.health && w.health.healthy === false ? el("span", { class: "badge badge-failed" }, "unhealthy") : null),
    el("td", {}, `${w.type} ${w.lifecycle}`),
    el("td", { title: w.node_id }, w.node_name || short(w.node_id)),
    el("td", { class: "mono" }, (w.triggers || []).map((t) => t.subject).join(", ")),
    el("td", { class: "num calls" }, w.invocations ?? "–"),
    el("td", { class: "num" }, w.errors ?? "–"),
    el("td", { class: "num" }, w.cpu_percent !== null && w.cpu_percent !== undefined ? `${w.cpu_percent}%` : "–"),
    el("td", { class: "num" }, bytes(usage.memory_bytes)),
    el("td", {}, timeOf(w.started_at)),
    el("td", { class: "actions" },
      el("button", { class: "small logs", onclick: () => chooseLogs(w.namespace, w.id) }, "Logs"),
      running ? el("button", { class: "small danger-outline stop", onclick: () => stopWorkload(w) }, "Stop") : null));
}

// The names that more than one of ``items`` carries: those rows show their ids too.
function repeatedNames(items) {
  const seen = new Map();
  for (const item of items) seen.set(item.name, (seen.get(item.name) || 0) + 1);
  return new Set([...seen].filter(([, n]) => n > 1).map(([name]) => name));
}

function renderRates(rates) {
  $("rates-empty").hidden = rates.length > 0;
  if (rates.length) $("rates-window").textContent = `last ${rates[0].window_s}s`;
  const repeated = repeatedNames(rates);
  $("rates").tBodies[0].replaceChildren(...rates.map((r) => el("tr", { "data-workload-id": r.workload_id },
    el("td", { class: "strong", title: r.workload_id }, r.name || short(r.workload_id),
      r.name && repeated.has(r.name) ? el("span", { class: "mono muted id" }, ` ${short(r.workload_id)}`) : null),
    el("td", { class: "num calls" }, r.calls),
    el("td", { class: "num" }, r.calls_per_s.toFixed(2)),
    el("td", { class: "num" }, r.errors_per_s.toFixed(2)),
    el("td", { class: `num ${r.error_ratio > 0 ? "bad" : ""}` }, `${(r.error_ratio * 100).toFixed(1)}%`),
    el("td", { class: "num" }, r.p50_ms == null ? "–" : `${ms(r.p50_ms)} / ${ms(r.p99_ms)}`))));
}

function ms(value) {
  return value == null ? "–" : value < 10 ? value.toFixed(2) : value.toFixed(0);
}

function eventItem(e) {
  const kind = e.type.endsWith("failed") || e.type.includes("rejected") ? "bad"
    : e.type.endsWith("started") ? "good" : "";
  const details = Object.entries(e.data || {}).filter(([k]) => k !== "namespace")
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  return el("li", { class: `event ${kind}`, "data-type": e.type },
    el("span", { class: "time" }, timeOf(e.time)),
    el("span", { class: "etype" }, e.type),
    el("span", { class: "muted" }, e.namespace),
    el("span", { class: "details" }, details));
}

// Every event received, newest last; the list shows them, heartbeats only when asked: a
// node's heartbeat every few seconds would push everything else out of sight.
let events = [];
const NOISE = new Set(["heartbeat"]);

function shown(e) {
  return $("show-heartbeats").checked || !NOISE.has(e.type);
}

function renderEvents(received) {
  events = received.slice(-MAX_EVENTS * 4);
  const visible = events.filter(shown);
  $("events").replaceChildren(...visible.slice(-MAX_EVENTS).reverse().map(eventItem));
  $("heartbeat-count").textContent = events.filter((e) => NOISE.has(e.type)).length;
}

function addEvent(e) {
  events.push(e);
  if (events.length > MAX_EVENTS * 4) events.shift();
  if (NOISE.has(e.type)) $("heartbeat-count").textContent = events.filter((x) => NOISE.has(x.type)).length;
  if (!shown(e)) return;
  const list = $("events");
  list.prepend(eventItem(e));
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// -- log tail ------------------------------------------------------------------------

let logSource = null;

function renderLogChoices(workloads) {
  const select = $("log-workload");
  const chosen = select.value;
  const options = workloads.map((w) => el("option", { value: `${w.namespace}/${w.id}` }, `${w.name} (${short(w.id)}) – ${w.state}`));
  if (chosen && !workloads.some((w) => `${w.namespace}/${w.id}` === chosen)) {
    const [, id] = chosen.split("/");
    options.push(el("option", { value: chosen }, `${short(id)} – gone`));
  }
  select.replaceChildren(el("option", { value: "" }, "choose a workload…"), ...options);
  select.value = chosen;
}

function chooseLogs(namespace, id) {
  const select = $("log-workload");
  select.value = `${namespace}/${id}`;
  tailLogs(select.value);
  $("logs-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function tailLogs(value) {
  if (logSource) logSource.close();
  logSource = null;
  const pre = $("log-lines");
  pre.replaceChildren();
  pre.dataset.workload = value;
  if (!value) return;
  const [namespace, id] = value.split("/");
  logSource = new EventSource(`/api/logs/${encodeURIComponent(namespace)}/${encodeURIComponent(id)}`);
  logSource.addEventListener("line", (message) => {
    const line = JSON.parse(message.data);
    pre.append(el("span", { class: `line ${line.stream}`, title: line.time }, line.text + "\n"));
    while (pre.childElementCount > MAX_LOG_LINES) pre.firstElementChild.remove();
    if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
  });
  logSource.addEventListener("failure", (message) => {
    const failure = JSON.parse(message.data);
    pre.append(el("span", { class: "line failure" }, `${failure.message}\n`));
    logSource.close();
  });
}

// -- the live stream -----------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/stream");
  const status = $("connection");
  source.onopen = () => { status.textContent = "live"; status.className = "badge badge-running"; };
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "badge badge-stopping"; };
  source.addEventListener("fleet", (m) => renderFleet(JSON.parse(m.data)));
  source.addEventListener("events", (m) => renderEvents(JSON.parse(m.data)));
  source.addEventListener("event", (m) => addEvent(JSON.parse(m.data)));
  source.addEventListener("rates", (m) => renderRates(JSON.parse(m.data)));
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDeploy();
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
  $("log-workload").addEventListener("change", (e) => tailLogs(e.target.value));
  $("show-ended").addEventListener("change", () => renderWorkloads(fleet.workloads));
  $("show-heartbeats").addEventListener("change", () => renderEvents(events));
  connect();
});
