"use strict";
const SVG = "http://www.w3.org/2000/svg";
const COLORS = {valid: "#2e7d5b", repaired: "#d08a1e", rejected: "#c2413b", bar: "#3b6fd4", light: "#9db7ea"};
const lagHistory = [];
const fmt = (n) => (n === null || n === undefined) ? "-" : Number(n).toLocaleString("en-US");
const pct = (part, whole) => whole ? (100 * part / whole).toFixed(1) + "%" : "-";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;  // data is always text, never markup
  return node;
}

function bars(id, entries, total) {
  const list = $(id);
  list.replaceChildren();
  if (!entries.length) { list.append(el("li", {class: "empty"}, "no data yet")); return; }
  const top = Math.max(...entries.map((e) => e[1]));
  for (const [name, count] of entries) {
    const li = el("li", {title: name + ": " + fmt(count)});
    const track = el("div", {class: "track"});
    const fill = el("div", {class: "fill"});
    fill.style.width = (top ? 100 * count / top : 0) + "%";
    if (name === "valid") fill.style.background = COLORS.valid;
    else if (!name.startsWith("repaired") && id === "outcomes") fill.style.background = COLORS.rejected;
    track.append(fill);
    li.append(el("span", {class: "name"}, name), track, el("span", {class: "num"}, total ? pct(count, total) : fmt(count)));
    list.append(li);
  }
}

function shares(windows, field, id) {
  const sum = new Map(); let other = 0, total = 0;
  for (const w of windows) {
    for (const [name, count] of Object.entries(w[field].counts)) { sum.set(name, (sum.get(name) || 0) + count); total += count; }
    other += w[field].other; total += w[field].other;
  }
  const entries = [...sum.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8);
  const shown = entries.reduce((s, e) => s + e[1], 0);
  if (total - shown > 0) entries.push(["(all others)", total - shown]);
  bars(id, entries, total);
}

function columnChart(id, series, height, stacked) {
  // series: [{label, parts: [[value, color], ...]}], oldest first
  const box = $(id); box.replaceChildren();
  if (!series.length) { box.append(el("p", {class: "empty"}, "no closed window yet: the first closes one window plus grace after the first login")); return; }
  const width = 720, pad = 30, barGap = 2;
  const max = Math.max(1, ...series.map((s) => stacked ? s.parts.reduce((a, p) => a + p[0], 0) : Math.max(...s.parts.map((p) => p[0]))));
  const svg = el("svg:svg", {viewBox: `0 0 ${width} ${height + 22}`, role: "img"});
  const step = (width - pad) / series.length;
  svg.append(el("svg:text", {x: 0, y: 10}, fmt(+max.toPrecision(3))), el("svg:text", {x: 0, y: height}, "0"));
  series.forEach((s, i) => {
    let y = height;
    const x = pad + i * step;
    s.parts.forEach(([value, color], j) => {
      const h = height * value / max;
      const w = stacked ? step - barGap : (step - barGap) / s.parts.length;
      const rect = el("svg:rect", {x: stacked ? x : x + j * w, y: stacked ? y - h : height - h, width: Math.max(w, 1), height: h, fill: color});
      rect.append(el("svg:title", {}, s.label + ": " + fmt(value)));
      svg.append(rect);
      if (stacked) y -= h;
    });
    if (series.length <= 16 || i % Math.ceil(series.length / 12) === 0) svg.append(el("svg:text", {x: x, y: height + 16}, s.label));
  });
  box.append(svg);
}

function lineChart(id, values, height) {
  const box = $(id); box.replaceChildren();
  if (values.length < 2) { box.append(el("p", {class: "empty"}, "collecting...")); return; }
  const width = 720, pad = 30, max = Math.max(1, ...values);
  const points = values.map((v, i) => `${pad + i * (width - pad) / (values.length - 1)},${height - height * v / max}`).join(" ");
  const svg = el("svg:svg", {viewBox: `0 0 ${width} ${height + 4}`, role: "img"});
  svg.append(el("svg:text", {x: 0, y: 10}, fmt(max)), el("svg:text", {x: 0, y: height}, "0"),
             el("svg:polyline", {points: points, fill: "none", stroke: COLORS.bar, "stroke-width": 2}));
  box.append(svg);
}

function alertsTable(alerts) {
  const box = $("alerts"); box.replaceChildren();
  $("alert-count").textContent = fmt(alerts.length);
  if (!alerts.length) { box.append(el("p", {class: "empty"}, "no alert")); return; }
  const table = el("table"); const head = el("tr");
  for (const h of ["detected", "rule", "subject", "evidence", "threshold", "window", "logins from", "to"]) head.append(el("th", {}, h));
  table.append(head);
  for (const a of alerts.slice(0, 20)) {
    const [what, count] = Object.entries(a.evidence)[0];
    const row = el("tr");
    const rule = el("td"); rule.append(el("span", {class: "rule"}, a.rule));
    row.append(el("td", {}, a.detected_at.replace("T", " ").replace("Z", "")), rule,
               el("td", {class: "hash", title: a.subject_kind + " " + a.subject_hash}, a.subject_kind.replace("_hash", "") + " " + a.subject_hash.slice(0, 12) + "…"),
               el("td", {}, fmt(count) + " " + what.replace("_", " ")), el("td", {}, fmt(a.threshold)),
               el("td", {}, (a.window_s >= 3600 ? a.window_s / 3600 + " h" : a.window_s >= 60 ? a.window_s / 60 + " min" : a.window_s + " s")),
               el("td", {}, a.first_seen.slice(11, 19)), el("td", {}, a.last_seen.slice(11, 19)));
    table.append(row);
  }
  box.append(table);
}

function render(data, alerts) {
  const group = data.group, mine = data.this_instance, totals = group.totals;
  const windows = group.closed_windows.slice().reverse().slice(-60);  // oldest first, the last hour at most
  $("instance").textContent = mine.instance || "-";
  if (mine.insights_topic) $("insights-topic").textContent = mine.insights_topic;
  $("group-logins").textContent = fmt(totals.logins);
  $("group-windows").textContent = fmt(totals.windows) + " windows, " + fmt(totals.messages) + " messages";
  $("group-users").textContent = fmt(totals.distinct_users);
  $("group-rejected").textContent = fmt(totals.rejected);
  $("group-rejected-share").textContent = pct(totals.rejected, totals.messages) + " of messages";
  const running = mine.running_totals;
  $("instance-processed").textContent = fmt(running.processed);
  $("instance-rate").textContent = fmt(Math.round(running.throughput_msg_s)) + " msg/s since start, up " + Math.round(running.uptime_s) + " s";
  $("instance-lag").textContent = fmt(running.consumer_lag);
  $("window-size").textContent = mine.window_size_s ? `(${mine.window_size_s} s windows, grace ${mine.window_grace_s} s; ${fmt(mine.open_windows.length)} open here)` : "";
  columnChart("chart-logins", windows.map((w) => ({label: w.window_start.slice(11, 16),
    parts: [[w.logins - w.repaired, COLORS.valid], [w.repaired, COLORS.repaired], [w.messages - w.logins, COLORS.rejected]]})), 170, true);
  const reasons = new Map([["valid", 0], ["repaired (of valid)", 0]]);
  for (const w of windows) {
    reasons.set("valid", reasons.get("valid") + w.logins); reasons.set("repaired (of valid)", reasons.get("repaired (of valid)") + w.repaired);
    for (const [reason, count] of Object.entries(w.rejected)) reasons.set(reason, (reasons.get(reason) || 0) + count);
  }
  bars("outcomes", [...reasons.entries()].filter((e) => e[1] > 0 || e[0] === "valid"), totals.messages);
  shares(windows, "device_types", "device-types");
  shares(windows, "locales", "locales");
  shares(windows, "app_versions", "app-versions");
  columnChart("chart-delay", windows.map((w) => ({label: w.window_start.slice(11, 16),
    parts: [[w.event_delay_s.p50 || 0, COLORS.bar], [w.event_delay_s.p95 || 0, COLORS.light]]})), 120, false);
  if (running.consumer_lag !== null) { lagHistory.push(running.consumer_lag); if (lagHistory.length > 300) lagHistory.shift(); }
  lineChart("chart-lag", lagHistory, 120);
  alertsTable(alerts.alerts);
  const status = $("status");
  status.className = "";
  status.textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const [data, alerts] = await Promise.all(["/api/insights", "/api/alerts"].map((path) =>
      fetch(path, {cache: "no-store"}).then((r) => { if (!r.ok) throw new Error(path + " " + r.status); return r.json(); })));
    render(data, alerts);
  } catch (error) {
    $("status").className = "stale";
    $("status").textContent = "not updating: " + error.message;
  }
}
refresh();
setInterval(refresh, 2000);
