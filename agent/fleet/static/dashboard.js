// emotion-agent fleet dashboard: plain JavaScript, no library, no build step.
// Views (location hash): #/ the fleet table, #/device/<fleet>/<device>, #/site/<site>,
// #/gaps. Every view polls the JSON API (agent/fleet/dashboard.py) every INTERVAL ms.
"use strict";

const INTERVAL = 2000;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = {
  neutral: "#94a3b8", happiness: "#f59e0b", surprise: "#8b5cf6", sadness: "#3b82f6",
  anger: "#ef4444", disgust: "#10b981", fear: "#6b7280",
};
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of [].concat(children === undefined ? [] : children)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function num(v, digits) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits === undefined ? 1 : digits);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

function clock(ts) {
  return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "-";
}

async function api(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function deviceLink(d) {
  return el("a", { href: `#/device/${encodeURIComponent(d.fleet)}/${encodeURIComponent(d.device_id)}` },
    d.device_id);
}

function stateBadge(d) {
  return el("span", { class: `badge ${d.online ? "online" : d.state}`, "data-state": d.state },
    d.online ? "online" : d.state);
}

// -- charts ---------------------------------------------------------------------------

function lineChart(title, series, opts) {
  const W = (opts && opts.width) || 460, H = (opts && opts.height) || 150, P = 28;
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const box = el("div", { class: "card" }, [el("h3", {}, title)]);
  const chart = svg("svg", { class: "chart", width: W, height: H, "data-title": title });
  box.append(chart);
  if (!all.length) {
    box.append(el("div", { class: "muted" }, "no data yet"));
    return box;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  let v0 = Math.min(...all.map((p) => p[1])), v1 = Math.max(...all.map((p) => p[1]));
  if (v0 === v1) { v0 -= 1; v1 += 1; }
  const x = (t) => P + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - P - 8);
  const y = (v) => H - 16 - ((v - v0) / (v1 - v0)) * (H - 26);
  chart.append(svg("line", { class: "axis", x1: P, y1: H - 16, x2: W - 8, y2: H - 16 }));
  chart.append(svg("line", { class: "axis", x1: P, y1: 6, x2: P, y2: H - 16 }));
  for (const [v, yy] of [[v1, 12], [v0, H - 18]]) {
    const label = svg("text", { x: 2, y: yy }); label.textContent = num(v, 0); chart.append(label);
  }
  const when = svg("text", { x: P, y: H - 3 }); when.textContent = clock(t0).slice(11); chart.append(when);
  const until = svg("text", { x: W - 60, y: H - 3 }); until.textContent = clock(t1).slice(11); chart.append(until);
  const legend = el("div", { class: "legend" });
  series.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    chart.append(svg("polyline", {
      class: "line", stroke: color, points: pts.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "),
    }));
    for (const p of pts.slice(-120)) {
      chart.append(svg("circle", { class: "point", cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: 1.6, fill: color }));
    }
    legend.append(el("span", {}, [el("i", { style: null }), s.name]));
    legend.lastChild.firstChild.style.background = color;
  });
  box.append(legend);
  return box;
}

function hourlyBars(title, rows) {
  const W = 620, H = 170, P = 28;
  const box = el("div", { class: "card" }, [el("h3", {}, title)]);
  const hours = [...new Set(rows.map((r) => r.hour))].sort((a, b) => a - b);
  if (!hours.length) {
    box.append(el("div", { class: "muted" }, "no events yet"));
    return box;
  }
  const labels = [...new Set(rows.map((r) => r.label))].sort();
  const totals = hours.map((h) => rows.filter((r) => r.hour === h).reduce((a, r) => a + r.n, 0));
  const max = Math.max(...totals);
  const bw = Math.max(4, Math.min(40, (W - P - 8) / hours.length - 4));
  const chart = svg("svg", { class: "chart", width: W, height: H, "data-title": title });
  hours.forEach((h, i) => {
    let top = H - 16;
    for (const label of labels) {
      const row = rows.find((r) => r.hour === h && r.label === label);
      if (!row) continue;
      const hgt = (row.n / max) * (H - 30);
      top -= hgt;
      const rect = svg("rect", {
        class: "bar", x: (P + i * (bw + 4)).toFixed(1), y: top.toFixed(1), width: bw.toFixed(1),
        height: hgt.toFixed(1), fill: COLORS[label] || "#999",
      });
      const tip = svg("title"); tip.textContent = `${clock(h).slice(0, 16)} ${label}: ${row.n}`;
      rect.append(tip);
      chart.append(rect);
    }
    if (i % Math.ceil(hours.length / 8) === 0) {
      const t = svg("text", { x: P + i * (bw + 4), y: H - 3 }); t.textContent = clock(h).slice(11, 16);
      chart.append(t);
    }
  });
  const label = svg("text", { x: 2, y: 12 }); label.textContent = String(max); chart.append(label);
  box.append(chart);
  const legend = el("div", { class: "legend" });
  for (const l of labels) {
    const swatch = el("i"); swatch.style.background = COLORS[l] || "#999";
    legend.append(el("span", {}, [swatch, l]));
  }
  box.append(legend);
  return box;
}

// -- views ----------------------------------------------------------------------------

async function fleetView(view) {
  const data = await api("/api/devices");
  const rows = data.devices;
  const online = rows.filter((d) => d.online).length;
  const head = ["device", "fleet", "site", "status", "fps", "latency p50 ms", "max temp °C",
    "power mode", "throttling", "outbox", "last event", "last seen", "events", "missing", "version"];
  const table = el("table", { id: "devices" }, [el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h))))]);
  const body = el("tbody");
  for (const d of rows) {
    body.append(el("tr", { class: "device", "data-device": `${d.fleet}/${d.device_id}`, "data-state": d.state }, [
      el("td", {}, deviceLink(d)),
      el("td", {}, d.fleet),
      el("td", {}, d.site ? el("a", { href: `#/site/${encodeURIComponent(d.site)}` }, d.site) : "-"),
      el("td", {}, stateBadge(d)),
      el("td", { class: "num" }, num(d.fps)),
      el("td", { class: "num" }, num(d.latency_ms_p50)),
      el("td", { class: "num" }, num(d.temp_max_c)),
      el("td", {}, d.power_mode || "-"),
      el("td", { class: d.throttled ? "warn" : "" }, d.throttled === null ? "-" : d.throttled ? "throttled" : "no"),
      el("td", { class: "num" }, d.outbox_depth === null || d.outbox_depth === undefined ? "-" : d.outbox_depth),
      el("td", {}, d.last_label ? `${d.last_label} (${age(data.now - d.last_event_ts)})` : "-"),
      el("td", {}, age(d.last_seen_age_s)),
      el("td", { class: "num" }, d.events),
      el("td", { class: "num" + (d.missing ? " warn" : "") }, d.missing),
      el("td", {}, d.version || "-"),
    ]));
  }
  table.append(body);
  view.replaceChildren(el("p", {}, `${rows.length} devices, ${online} online, ${rows.length - online} offline`), table);
}

async function deviceView(view, fleet, device) {
  const data = await api(`/api/device?fleet=${encodeURIComponent(fleet)}&device=${encodeURIComponent(device)}`);
  const d = data.device;
  const t = data.telemetry;
  const series = (key) => t.map((r) => [r.ts, r[key]]);
  const info = el("div", { class: "card" }, [
    el("h3", {}, [`${d.fleet}/${d.device_id} `, stateBadge(d)]),
    el("div", {}, `site ${d.site || "-"}, version ${d.version || "-"}, power mode ${d.power_mode || "-"}, ` +
      `${d.events} events (last seq ${d.max_seq === null ? "-" : d.max_seq}), ${d.missing} missing, ` +
      `${d.duplicates} duplicates ignored, last seen ${age(d.last_seen_age_s)}`),
  ]);
  const charts = el("div", { class: "cards" }, [
    lineChart("frames per second", [{ name: "fps", points: series("fps") }]),
    lineChart("latency (ms)", [
      { name: "p50", points: series("latency_ms_p50") }, { name: "p95", points: series("latency_ms_p95") }]),
    lineChart("temperatures (°C)", [
      { name: "CPU", points: series("cpu_temp_c") }, { name: "GPU", points: series("gpu_temp_c") }]),
    hourlyBars("emotions per hour", data.emotions_per_hour),
  ]);
  const events = el("table", {}, [el("tr", {}, ["seq", "time", "type", "label", "confidence"].map((h) => el("th", {}, h)))]);
  for (const e of data.events) {
    events.append(el("tr", {}, [el("td", { class: "num" }, e.seq), el("td", {}, clock(e.ts)), el("td", {}, e.type),
      el("td", {}, e.label || "-"), el("td", { class: "num" }, num(e.confidence, 2))]));
  }
  const gaps = data.gaps.length
    ? el("ul", {}, data.gaps.map((g) => el("li", {}, `seq ${g.first_missing}-${g.last_missing} missing since ${clock(g.detected)}`)))
    : el("p", { class: "muted" }, "no missing events");
  view.replaceChildren(info, charts, el("h3", {}, "latest events"), events, el("h3", {}, "missing events"), gaps);
}

async function siteView(view, site) {
  const data = await api(`/api/site?site=${encodeURIComponent(site)}`);
  view.replaceChildren(el("h2", {}, `site ${site}`), hourlyBars("emotions per hour (last 24 h, UTC)", data.emotions_per_hour));
}

async function gapsView(view) {
  const data = await api("/api/gaps");
  const table = el("table", { id: "gaps" }, [el("tr", {}, ["device", "missing seqs", "count", "detected"].map((h) => el("th", {}, h)))]);
  for (const g of data.gaps) {
    table.append(el("tr", {}, [
      el("td", {}, deviceLink(g)), el("td", {}, `${g.first_missing}-${g.last_missing}`),
      el("td", { class: "num" }, g.missing), el("td", {}, clock(g.detected))]));
  }
  view.replaceChildren(
    el("p", {}, `${data.missing} events missing. A gap is an event not (yet) delivered: lost, ` +
      "or still on its way (a late one closes it)."), table);
}

async function refresh() {
  const view = document.getElementById("view");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    const summary = await api("/api/summary");
    document.getElementById("summary").textContent =
      `${summary.counts.devices} devices, ${summary.counts.events} events stored`;
    const sites = document.getElementById("sites");
    sites.replaceChildren(...summary.sites.map((s) => el("a", { href: `#/site/${encodeURIComponent(s)}` }, s)));
    if (parts[0] === "device" && parts.length >= 3) await deviceView(view, parts[1], parts[2]);
    else if (parts[0] === "site" && parts[1]) await siteView(view, parts[1]);
    else if (parts[0] === "gaps") await gapsView(view);
    else await fleetView(view);
    document.getElementById("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + "Z";
    document.body.dataset.ready = "1";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
}

document.getElementById("interval").textContent = String(INTERVAL / 1000);
window.addEventListener("hashchange", refresh);
refresh();
setInterval(refresh, INTERVAL);
