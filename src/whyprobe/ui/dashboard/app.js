// whyprobe dashboard. Traced strings (comm, paths, tool names) are attacker-controlled:
// they only ever reach the page as text nodes (textContent), never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const LANE_COLORS = { cuda: "var(--cuda)", offcpu: "var(--offcpu)", io: "var(--io)", other: "var(--other)" };
const LANE_LABELS = { cuda: "CUDA", offcpu: "off-CPU", io: "I/O", other: "other" };
const F_PREEMPTED = 4;
const state = { summary: null, view: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function titled(node, text) {
  node.append(svg("title", {}, text));
  return node;
}

function fmtNs(ns) {
  const a = Math.abs(ns);
  if (a < 1e3) return `${Math.round(ns)} ns`;
  if (a < 1e6) return `${(ns / 1e3).toFixed(a < 1e4 ? 2 : 1)} µs`;
  if (a < 1e9) return `${(ns / 1e6).toFixed(a < 1e7 ? 2 : 1)} ms`;
  return `${(ns / 1e9).toFixed(a < 1e10 ? 2 : 1)} s`;
}

function fmtCount(n) {
  return Number(n).toLocaleString("en-US");
}

async function getJSON(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  const doc = await resp.json();
  if (!resp.ok) throw new Error(doc.error || `${url}: HTTP ${resp.status}`);
  return doc;
}

function fact(key, value, cls) {
  return el("span", { class: "fact" }, el("span", { class: "k" }, key), cls ? el("span", { class: `badge ${cls}` }, value) : el("b", {}, value));
}

function renderFacts(s) {
  const box = document.getElementById("facts");
  box.replaceChildren();
  box.append(
    fact("database", s.database),
    fact("format", s.flavor, "plain"),
    fact("window", fmtNs(s.window.duration_ns)),
    fact("events", fmtCount(s.events)),
    fact("processes", fmtCount(s.processes_with_events)),
    fact("threads", `${fmtCount(s.threads_total)} (${fmtCount(s.gpu_threads)} on GPU)`),
  );
  const drops = Object.entries(s.drops).filter(([, v]) => v > 0);
  if (drops.length) box.append(fact("incomplete", drops.map(([k, v]) => `${k} ${fmtCount(v)}`).join(", "), "warn"));
  else if (Object.keys(s.drops).length) box.append(fact("drops", "none", "ok"));
  for (const k of ["hostname", "gpu_model", "kernel"]) if (s.session[k]) box.append(fact(k.replace("_", " "), s.session[k]));
}

function renderFindings(doc) {
  document.getElementById("findings-note").textContent = doc.note || "";
  const box = document.getElementById("findings");
  box.replaceChildren();
  for (const f of doc.findings) {
    const sev = ["high", "medium", "low"].includes(f.severity) ? f.severity : "low";
    const card = el("article", { class: `card ${sev}` });
    card.append(
      el("div", { class: "title" },
        el("span", { class: `badge sev ${sev}` }, f.severity || "?"),
        el("span", { class: "badge" }, f.kind || "finding"),
        el("span", { class: "op" }, f.op || ""),
        f.tid ? el("span", { class: "blockers" }, `tid ${f.tid}`) : null),
      el("div", { class: "summary" }, f.summary || ""),
    );
    const stats = [];
    if (f.count) stats.push(`${fmtCount(f.count)} calls`);
    if (f.p50_ns) stats.push(`p50 ${fmtNs(f.p50_ns)}`);
    if (f.p99_ns) stats.push(`p99 ${fmtNs(f.p99_ns)}`);
    if (f.tail_ratio) stats.push(`tail ×${Number(f.tail_ratio).toFixed(1)}`);
    if (f.slow_calls) stats.push(`${fmtCount(f.slow_calls)} slow`);
    if (f.lost_ns) stats.push(`lost ${fmtNs(f.lost_ns)}`);
    if (stats.length) card.append(el("div", { class: "stats" }, stats.join(" · ")));
    const causes = Array.isArray(f.causes) ? f.causes : [];
    if (causes.length) {
      const ul = el("ul");
      for (const c of causes) {
        const li = el("li", {}, el("b", {}, c.kind || "?"), ` — ${fmtCount(c.slow_calls || 0)} slow call(s), ${fmtNs(c.explained_ns || 0)} explained`);
        const blockers = Array.isArray(c.blockers) ? c.blockers : [];
        if (blockers.length) {
          li.append(el("div", { class: "blockers" },
            "blockers: " + blockers.slice(0, 5).map((b) => `${b.comm || "?"} (pid ${b.pid}, tid ${b.tid}) ${fmtNs(b.ns || 0)}`).join("; ")));
        }
        ul.append(li);
      }
      card.append(el("h4", {}, "Causes"), ul);
    }
    const recs = Array.isArray(f.recommendations) ? f.recommendations : [];
    if (recs.length) card.append(el("h4", {}, "What to change"), el("ul", {}, ...recs.map((r) => el("li", {}, r))));
    box.append(card);
  }
}

function renderLegend(flavor) {
  const box = document.getElementById("legend");
  box.replaceChildren();
  const items = [["var(--cuda)", "CUDA call"]];
  if (flavor === "whyprobe") items.push(["var(--blocked)", "off-CPU (blocked)"], ["var(--preempted)", "off-CPU (preempted)"]);
  else items.push(["var(--offcpu)", "off-CPU"]);
  items.push(["var(--io)", "I/O & syscalls"], ["var(--other)", "process / other"]);
  for (const [color, label] of items) {
    const swatch = el("i");
    swatch.style.background = color;
    box.append(el("span", {}, swatch, label));
  }
}

function niceStep(span, target) {
  const raw = span / target;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

function eventColor(lane, flags, flavor) {
  if (lane === "offcpu" && flavor === "whyprobe") return flags & F_PREEMPTED ? "var(--preempted)" : "var(--blocked)";
  return LANE_COLORS[lane] || LANE_COLORS.other;
}

function eventTitle(op, ev, flavor) {
  const [t, d, , ret, n, flags] = ev;
  let text = `${op.name} · ${fmtNs(d)} at +${fmtNs(t)}`;
  if (op.lane === "offcpu" && flavor === "whyprobe") text += flags & F_PREEMPTED ? " · preempted" : " · blocked";
  if (ret !== 0 && op.lane === "cuda") text += ` · error ${ret}`;
  if (n > 1) text += ` · longest of ${fmtCount(n)} events in this pixel`;
  return text;
}

function renderTimeline(doc) {
  const flavor = state.summary ? state.summary.flavor : "";
  const box = document.getElementById("timeline");
  const width = Math.max(box.clientWidth, 600);
  const labelW = 230, rightPad = 12, axisH = 22, laneH = 13, rowGap = 8;
  const plotW = width - labelW - rightPad;
  let height = axisH;
  for (const th of doc.threads) height += th.lanes.length * laneH + rowGap;
  height = Math.max(height, axisH + 30);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "timeline per thread" });
  const span = doc.span_ns;
  const x = (t) => labelW + (t / span) * plotW;

  const step = niceStep(span, 8);
  for (let t = 0; t <= span; t += step) {
    root.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: axisH - 4, y2: height }));
    if (x(t) < labelW + plotW - 40) root.append(svg("text", { class: "axis", x: x(t) + 2, y: 12 }, `+${fmtNs(t)}`));
  }
  let y = axisH;
  for (const th of doc.threads) {
    const rowH = th.lanes.length * laneH;
    const g = svg("g", { class: "thread", "data-tid": String(th.tid) });
    g.append(svg("rect", { class: "rowbg", x: 0, y: y - 2, width, height: rowH + 4 }));
    const comm = th.comm || "?";
    const shortComm = comm.length > 18 ? `${comm.slice(0, 17)}…` : comm;
    const label = svg("text", { class: th.drives_gpu ? "label gpu" : "label", x: 6, y: y + 10 }, `${shortComm} · tid ${th.tid}`);
    g.append(titled(label, `${comm} (pid ${th.pid}, tid ${th.tid}): ${fmtCount(th.total)} events in range`));
    th.lanes.forEach((l, i) => g.append(svg("text", { class: "sub", x: labelW - 8, y: y + i * laneH + 9, "text-anchor": "end" }, LANE_LABELS[l])));
    for (const ev of th.events) {
      const op = doc.ops[ev[2]];
      const lane = th.lanes.indexOf(op.lane);
      const x0 = x(Math.max(ev[0], 0));
      const x1 = x(Math.min(ev[0] + ev[1], span));
      const r = svg("rect", {
        class: "ev", x: x0.toFixed(1), y: y + lane * laneH, width: Math.max(x1 - x0, 1.2).toFixed(1), height: laneH - 2,
        fill: eventColor(op.lane, ev[5], flavor),
      });
      g.append(titled(r, eventTitle(op, ev, flavor)));
    }
    root.append(g);
    y += rowH + rowGap;
  }
  attachZoom(root, doc, x, labelW, plotW, height);
  box.replaceChildren(root);
  const shown = doc.threads.reduce((a, th) => a + th.events.length, 0);
  let note = `${fmtCount(doc.events_in_range)} events in +${fmtNs(0)}…+${fmtNs(span)} of this view, ${fmtCount(shown)} drawn (longest per pixel).`;
  if (doc.threads_omitted) note += ` ${doc.threads_omitted} quieter thread(s) not shown.`;
  document.getElementById("timeline-note").textContent = note + " Drag across the timeline to zoom in; hover a bar for details.";
}

function attachZoom(root, doc, x, labelW, plotW, height) {
  let startX = null;
  const sel = svg("rect", { class: "sel", x: 0, y: 0, width: 0, height, visibility: "hidden" });
  root.append(sel);
  const px = (evt) => Math.min(Math.max(evt.clientX - root.getBoundingClientRect().left, labelW), labelW + plotW);
  root.addEventListener("mousedown", (evt) => {
    startX = px(evt);
    sel.setAttribute("visibility", "visible");
  });
  root.addEventListener("mousemove", (evt) => {
    if (startX === null) return;
    const cur = px(evt);
    sel.setAttribute("x", Math.min(startX, cur));
    sel.setAttribute("width", Math.abs(cur - startX));
  });
  root.addEventListener("mouseup", (evt) => {
    if (startX === null) return;
    const a = Math.min(startX, px(evt)), b = Math.max(startX, px(evt));
    startX = null;
    sel.setAttribute("visibility", "hidden");
    if (b - a < 4) return;
    const toNs = (p) => BigInt(Math.round(((p - labelW) / plotW) * doc.span_ns));
    const origin = BigInt(doc.origin_ns);
    loadTimeline(origin + toNs(a), origin + toNs(b)).catch((err) => {
      document.getElementById("timeline-note").textContent = `Could not load the timeline: ${err.message}`;
    });
  });
}

async function loadTimeline(start, end) {
  const box = document.getElementById("timeline");
  const plotW = Math.max(box.clientWidth, 600) - 240;
  const params = new URLSearchParams({ limit: String(Math.min(20000, Math.round(plotW * 2))) });
  if (start !== undefined) {
    params.set("start", start.toString());
    params.set("end", end.toString());
  }
  const doc = await getJSON(`/api/timeline?${params}`);
  state.view = doc;
  document.getElementById("reset-zoom").disabled = start === undefined;
  renderTimeline(doc);
}

function renderHistograms(doc) {
  const box = document.getElementById("histograms");
  box.replaceChildren();
  // Instant events (every duration 0: fork, exit, ...) have no latency to plot.
  const instant = doc.histograms.filter((h) => h.max_ns === 0);
  document.getElementById("histograms-note").textContent = instant.length
    ? `Instant events (no duration): ${instant.map((h) => `${h.name} ×${fmtCount(h.count)}`).join(", ")}.` : "";
  const hists = doc.histograms.filter((h) => h.max_ns > 0);
  if (!hists.length) return;
  // One log2 axis shared by every op, so bars line up across charts and ops compare at a glance.
  const k = (ns) => Math.round(Math.log2(ns));
  const kMin = Math.min(...hists.map((h) => k(h.buckets[0].lo_ns)));
  const kMax = Math.max(...hists.map((h) => k(h.buckets[h.buckets.length - 1].hi_ns)));
  const W = 280, H = 84, base = 64, pad = 4;
  const bw = (W - 2 * pad) / Math.max(kMax - kMin, 1);
  for (const h of hists) {
    const chart = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${h.name} latency histogram` });
    for (const [ns, label] of [[1e3, "1 µs"], [1e6, "1 ms"], [1e9, "1 s"]]) {
      const kx = pad + (Math.log2(ns) - kMin) * bw;
      if (kx < pad || kx > W - pad) continue;
      chart.append(svg("line", { x1: kx, x2: kx, y1: 4, y2: base, stroke: "#eef0f4" }));
      chart.append(svg("text", { x: kx, y: H - 6, "text-anchor": "middle" }, label));
    }
    const maxCount = Math.max(...h.buckets.map((b) => b.count), 1);
    for (const b of h.buckets) {
      const bh = b.count ? Math.max(2, (b.count / maxCount) * (base - 8)) : 0;
      const r = svg("rect", {
        x: (pad + (k(b.lo_ns) - kMin) * bw + 0.5).toFixed(1), y: (base - bh).toFixed(1), width: Math.max(bw - 1, 1).toFixed(1), height: bh.toFixed(1),
        rx: 1.5, fill: LANE_COLORS[h.lane] || LANE_COLORS.other,
      });
      chart.append(titled(r, `${fmtNs(b.lo_ns)} – ${fmtNs(b.hi_ns)}: ${fmtCount(b.count)}`));
    }
    chart.append(svg("line", { x1: 0, x2: W, y1: base + 0.5, y2: base + 0.5, stroke: "#d0d5dd" }));
    box.append(el("div", { class: "hist" },
      el("div", { class: "name" }, h.name),
      el("div", { class: "meta" }, `${fmtCount(h.count)} · p50 ${fmtNs(h.p50_ns)} · p99 ${fmtNs(h.p99_ns)} · max ${fmtNs(h.max_ns)}`),
      chart));
  }
}

function listCell(items, total) {
  const td = el("td");
  if (!total) return td;
  const shown = items.slice(0, 3).join(", ");
  td.append(el("div", { class: "list", title: items.join("\n") }, shown, total > 3 ? ` +${total - 3} more` : ""));
  return td;
}

function renderToolCalls(doc) {
  document.getElementById("tools-note").textContent = doc.total > doc.tool_calls.length
    ? `${fmtCount(doc.total)} tool calls; the ${fmtCount(doc.tool_calls.length)} newest shown.` : doc.note || "";
  const table = document.getElementById("tool-calls");
  table.replaceChildren();
  if (!doc.tool_calls.length) return;
  const head = ["at", "tool", "server pid", "duration", "status", "CPU user", "CPU sys", "syscalls", "files", "endpoints", "children", "CUDA calls"];
  table.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const c of doc.tool_calls) {
    body.append(el("tr", {},
      el("td", { class: "num" }, `+${fmtNs(c.offset_ns)}`),
      el("td", {}, el("b", {}, c.tool_name)),
      el("td", { class: "num" }, c.server_pid),
      el("td", { class: "num" }, fmtNs(c.duration)),
      el("td", { class: c.is_error ? "err" : "" }, c.is_error ? "error" : "ok"),
      el("td", { class: "num" }, fmtNs(c.cpu_user_ns)),
      el("td", { class: "num" }, fmtNs(c.cpu_sys_ns)),
      el("td", { class: "num" }, `${fmtCount(c.syscalls)} (${fmtNs(c.syscall_ns)})`),
      listCell(c.files, c.files_total),
      listCell(c.endpoints, c.endpoints_total),
      listCell(c.children, c.children_total),
      el("td", { class: "num" }, fmtCount(c.cuda_calls)),
    ));
  }
  table.append(body);
}

// Each section loads on its own: one failing endpoint leaves the others readable.
async function section(url, render, noteId) {
  try {
    render(await getJSON(url));
  } catch (err) {
    document.getElementById(noteId).textContent = `Could not load ${url}: ${err.message}`;
  }
}

async function main() {
  document.getElementById("reset-zoom").addEventListener("click", () =>
    loadTimeline().catch((err) => { document.getElementById("timeline-note").textContent = `Could not load the timeline: ${err.message}`; }));
  await section("/api/summary", (doc) => {
    state.summary = doc;
    renderFacts(doc);
    renderLegend(doc.flavor);
  }, "facts");
  await Promise.all([
    section("/api/findings", renderFindings, "findings-note"),
    section("/api/histograms", renderHistograms, "histograms-note"),
    section("/api/tool_calls", renderToolCalls, "tools-note"),
    loadTimeline().catch((err) => { document.getElementById("timeline-note").textContent = `Could not load the timeline: ${err.message}`; }),
  ]);
  document.body.dataset.ready = "1";
}

main();
