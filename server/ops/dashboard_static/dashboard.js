// The dashboard's only script (served from /admin/static; the page's CSP allows nothing else).
// Every two seconds it reads /admin/data and redraws the tables and the charts. Text from the
// gateway goes in with textContent, never as HTML.
"use strict";

const csrf = document.querySelector("meta[name=csrf]").content;

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fill(id, rows, draw) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  for (const item of rows) draw(body.insertRow(), item);
}

function seconds(s) {
  return s > 0 ? `${Math.ceil(s)} s` : "";
}

// A line chart of one series, drawn as SVG: the whole charting library.
function chart(id, values) {
  const svg = document.getElementById(id);
  const w = svg.clientWidth || 300, h = svg.clientHeight || 90, pad = 14;
  const top = Math.max(1, ...values);
  const step = values.length > 1 ? (w - 2 * pad) / (values.length - 1) : 0;
  const points = values.map((v, i) =>
    `${(pad + i * step).toFixed(1)},${(h - pad - (v / top) * (h - 2 * pad)).toFixed(1)}`);
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", 11);
  label.textContent = `max ${Math.round(top)}, now ${Math.round(values.at(-1) || 0)}`;
  svg.replaceChildren(line, label);
}

async function setKey(id, action) {
  const answer = await fetch(`/admin/keys/${id}/${action}`, {
    method: "POST", headers: {"X-CSRF-Token": csrf},
  });
  if (!answer.ok) alert(`${action} failed: ${answer.status}`);
  await refresh();
}

function limits(key) {
  const parts = [];
  if (key.rpm) parts.push(`${key.rpm} rpm`);
  if (key.tpm) parts.push(`${key.tpm} tpm`);
  if (key.tpd) parts.push(`${key.tpd} tpd`);
  return parts.join(", ") || "none";
}

async function refresh() {
  const answer = await fetch("/admin/data");
  if (answer.status === 401) { location.reload(); return; }
  const data = await answer.json();
  const s = data.pool.summary;
  document.getElementById("pool-summary").textContent =
    `${s.active} active, ${s.cooling} cooling, ${s.dead} dead, ${s.pending} pending`;
  fill("pool", data.pool.tokens, (row, t) => {
    cell(row, t.masked);
    cell(row, t.state, `state-${t.state}`);
    cell(row, t.failures);
    cell(row, seconds(t.cooldown_left));
    cell(row, t.leases);
    cell(row, t.uses);
    cell(row, t.reason);
    row.dataset.token = t.id;
  });
  document.getElementById("captcha").textContent = data.captcha;
  fill("keys", data.keys, (row, k) => {
    const state = k.disabled ? "disabled" : "enabled";
    cell(row, k.id);
    cell(row, k.name);
    cell(row, limits(k));
    cell(row, state, `state-${state}`);
    cell(row, k.today.requests || 0);
    cell(row, (k.today.input_tokens || 0) + (k.today.output_tokens || 0));
    cell(row, k.today.errors || 0);
    const button = document.createElement("button");
    button.textContent = k.disabled ? "Enable" : "Disable";
    button.addEventListener("click", () => setKey(k.id, k.disabled ? "enable" : "disable"));
    row.insertCell().append(button);
    row.dataset.key = k.id;
  });
  fill("instances", data.instances, (row, i) => {
    cell(row, i.host);
    cell(row, i.pid);
    cell(row, i.version);
    cell(row, i.inflight);
  });
  chart("chart-requests", data.series.requests);
  chart("chart-errors", data.series.errors);
  chart("chart-ttfb", data.series.ttfb_ms);
  document.getElementById("updated").textContent =
    `updated ${new Date(data.now * 1000).toLocaleTimeString()}`;
}

refresh();
setInterval(refresh, 2000);
