// Track Delivery page. Every value that comes from a log is put on the page with textContent or as an
// SVG text node, never as markup: subjects and remote responses are attacker-controlled.
"use strict";

(() => {
  const TYPES = ["delivered", "deferred", "bounced", "expired", "rejected", "filtered", "archived",
    "in_progress", "frozen", "cancelled"];
  const BLOCKED = ["bounced", "expired", "rejected"];
  const TYPE_LABEL = {
    delivered: "Delivered", deferred: "Deferred", bounced: "Bounced", expired: "Expired", rejected: "Rejected",
    filtered: "Filtered", archived: "Archived", in_progress: "In progress", frozen: "Frozen", cancelled: "Cancelled",
  };
  const TYPE_HELP = {
    delivered: "The mail server delivered this message successfully",
    deferred: "Could not be delivered yet; the server will try again later",
    bounced: "Could not be delivered; a bounce was sent to the sender",
    expired: "Exim gave up after retrying for too long",
    rejected: "Refused at SMTP time (RBL, ACL, filter or policy)",
    filtered: "Discarded by a filter, blackhole or spam rule",
    archived: "Saved into an email archive",
    in_progress: "Received, no outcome yet",
    frozen: "Frozen in the queue",
    cancelled: "Cancelled by an administrator",
  };
  const TYPE_COLOUR = {
    delivered: "#1f9d55", deferred: "#d98a00", bounced: "#d23c3c", expired: "#8f1d1d", rejected: "#b0306a",
    filtered: "#6b7280", archived: "#4b6cb7", in_progress: "#2b8cbe", frozen: "#5a8fa8", cancelled: "#7c5c3b",
  };
  const REASONS = ["recipient_unknown", "recipient_domain_invalid", "mailbox_inactive", "mailbox_full",
    "message_too_large", "greylisted", "rate_limited", "ip_reputation", "domain_or_content_reputation",
    "auth_failure", "policy_rejection", "relay_denied", "virus_or_attachment", "tls_failure",
    "connection_failure", "dns_failure", "remote_server_error", "protocol_error", "local_limit",
    "local_delivery_error", "retry_wait", "expired", "unknown"];

  // cPanel's columns (and a few of ours); `show` is the default visibility.
  const COLUMNS = [
    { key: "type", label: "Event", show: true, render: (e) => badge(e.type) },
    { key: "time", label: "Time", show: true, render: (e) => fmtTime(e.time) },
    { key: "sender", label: "Sender", show: true, render: (e) => (e.sender === "" ? "<>" : e.sender) },
    { key: "recipient", label: "Recipient", show: true, render: (e) => e.recipient },
    { key: "result", label: "Result", show: true, cls: "result", render: resultText },
    { key: "server", label: "Server", show: true, render: (e) => e.server },
    { key: "delivery", label: "Delivery host/IP", show: true, render: (e) => hostIp(e.remote_host, e.remote_ip) },
    { key: "route", label: "Router/Transport", show: false, render: (e) => joinNonEmpty([e.router, e.transport], " / ") },
    { key: "spam_score", label: "Spam score", show: false, cls: "num", render: (e) => (e.spam_score ?? "") },
    { key: "auth", label: "Auth", show: false, render: (e) => e.auth_id },
    { key: "subject", label: "Subject", show: false, render: (e) => e.subject },
    { key: "user", label: "User", show: false, render: (e) => e.cpanel_user },
    { key: "reason", label: "Reason", show: false, render: (e) => e.reason },
    { key: "client", label: "Sender host/IP", show: false, render: (e) => hostIp(e.client_host, e.client_ip) },
    { key: "size", label: "Size", show: false, cls: "num", render: (e) => fmtSize(e.size) },
    { key: "msgid", label: "ID", show: false, render: (e) => e.msgid },
    { key: "arrival", label: "Sent time", show: false, render: (e) => fmtTime(e.arrival_time) },
    { key: "attempt", label: "Attempt", show: false, cls: "num", render: (e) => (e.retry && e.retry.attempt) || "" },
  ];

  const PAGE_SIZE = 500;
  const SEVERITIES = ["critical", "warning", "info"];
  const SCOPE_LABEL = {
    fleet: "fleet", server: "server", provider: "provider", sender_domain: "sender domain", user: "user",
    remote_domain: "remote domain",
  };
  const ALERTS_REFRESH_MS = 30000;
  const $ = (id) => document.getElementById(id);
  const state = {
    token: null, events: [], seen: new Set(), cursor: null, lastParams: null, live: null, paged: false, overflowed: false,
    columns: loadColumns(), selected: null, alertsOpen: new Set(), alertsSeq: 0,
  };

  // ---- small DOM helpers (text only) ----
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = String(v);
        else if (k === "title") node.title = String(v);
        else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, String(v));
      }
    }
    for (const child of children) append(node, child);
    return node;
  }
  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) child.forEach((c) => append(node, c));
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function badge(type, outline) {
    const known = TYPES.includes(type) ? type : "unknown";
    return el("span", { class: `badge ${known}${outline ? " outline" : ""}`, title: TYPE_HELP[known] || "" },
      TYPE_LABEL[known] || String(type));
  }
  function joinNonEmpty(parts, sep) { return parts.filter((p) => p !== null && p !== undefined && p !== "").join(sep); }
  function hostIp(host, ip) { return joinNonEmpty([host, ip ? `[${ip}]` : ""], " "); }
  function resultText(e) {
    if (e.response) return e.response;
    if (e.type === "delivered") return "Accepted";
    if (e.type === "in_progress") return "In progress";
    return TYPE_LABEL[e.type] || "";
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  function fmtTime(epoch) {
    if (epoch === null || epoch === undefined) return "";
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtShort(epoch) {
    const d = new Date(epoch * 1000);
    const now = new Date();
    const sameDay = d.toDateString() === now.toDateString();
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return sameDay ? hm : `${d.toLocaleDateString(undefined, { weekday: "short" })} ${hm}`;
  }
  function fmtSize(bytes) {
    if (bytes === null || bytes === undefined) return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1048576) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1048576).toFixed(1)} MB`;
  }

  // ---- token ----
  function readToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem("trackdelivery.token", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    state.token = sessionStorage.getItem("trackdelivery.token");
  }
  function askToken() {
    if ($("token-dialog").open) return;
    $("token-input").value = "";
    $("token-dialog").showModal();
  }

  // ---- API ----
  async function api(path, params, opts) {
    if (!state.token) { askToken(); throw new Error("no token"); }
    const url = params ? `${path}?${params}` : path;
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json" } });
    if (resp.status === 401) { showBanner("The token was refused (missing, invalid or revoked).", true); askToken(); throw new Error("401"); }
    if (resp.status === 404) return null;
    const body = await resp.json().catch(() => null);
    if (!resp.ok) {
      if (opts && opts.quiet) throw new Error(String(resp.status));
      const detail = body && body.detail;
      const msg = Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ") : (detail || resp.statusText);
      showBanner(`Request failed (${resp.status}): ${msg}`, true);
      throw new Error(String(resp.status));
    }
    return body;
  }
  function showBanner(text, isError) {
    const b = $("message");
    b.textContent = text;
    b.className = isError ? "banner error" : "banner";
    b.hidden = !text;
  }

  // ---- filters ----
  function buildParams(extra) {
    const form = $("filters");
    const p = new URLSearchParams();
    for (const name of ["address", "recipient", "sender", "domain", "server", "user", "msgid", "ip", "reason", "text"]) {
      const v = form.elements[name].value.trim();
      if (v) p.set(name, v);
    }
    const period = $("f-period").value;
    if (period) p.set("period", period);
    else {
      for (const name of ["since", "until"]) {
        const v = form.elements[name].value;
        if (v) p.set(name, new Date(v).toISOString());
      }
    }
    const types = TYPES.filter((t) => $(`t-${t}`).checked);
    if (types.length && types.length < TYPES.length) p.set("type", types.join(","));
    if (extra) for (const [k, v] of Object.entries(extra)) p.set(k, v);
    return p;
  }
  function statsParams(p) {
    const s = new URLSearchParams(p);
    s.delete("max_results_by_type"); s.delete("limit"); s.delete("cursor");
    return s;
  }

  // Per-type mode (cPanel's max results per type) by default; paged mode walks every match newest first.
  async function search(paged) {
    const params = buildParams(paged ? { limit: PAGE_SIZE } : { max_results_by_type: $("f-max").value });
    state.lastParams = params;
    state.paged = Boolean(paged);
    $("status").textContent = "searching…";
    showBanner("");
    try {
      const [result, stats] = await Promise.all([
        api("/api/v1/deliveries", params),
        api("/api/v1/stats", statsParams(params)).catch(() => null),
      ]);
      state.events = result ? result.events : [];
      state.seen = new Set(state.events.map((e) => e.event_id));
      state.cursor = result ? result.next_cursor : null;
      state.overflowed = Boolean(result && result.overflowed);
      renderTotals(result);
      renderTable();
      renderChart(stats);
      renderTops(stats);
      updateStatus(result);
      if (state.live) startLive();
    } catch (err) {
      $("status").textContent = "";
    }
  }
  function updateStatus(result) {
    const more = state.paged ? (state.cursor ? " · more pages" : "") : "";
    $("status").textContent = `${state.events.length} shown${result && !state.paged ? ` · ${result.total} matching` : ""}${more}`;
  }

  function renderTotals(result) {
    const box = $("totals");
    clear(box);
    if (!result) return;
    for (const t of TYPES) {
      const n = result.totals[t];
      if (n) box.appendChild(el("span", null, badge(t, true), " ", n.toLocaleString()));
    }
    if (result.overflowed) {
      box.appendChild(el("span", { class: "overflow", text: "More events match than are shown (per-type cap)." }));
      box.appendChild(el("button", { type: "button", class: "ghost", id: "page-all", text: "Page through every match", onclick: () => search(true) }));
    }
  }

  // ---- table ----
  function loadColumns() {
    try {
      const saved = JSON.parse(localStorage.getItem("trackdelivery.columns") || "null");
      if (Array.isArray(saved)) return new Set(saved.filter((k) => COLUMNS.some((c) => c.key === k)));
    } catch (_) { /* ignore a corrupt preference */ }
    return new Set(COLUMNS.filter((c) => c.show).map((c) => c.key));
  }
  function renderColumnChooser() {
    const box = $("column-chooser");
    clear(box);
    for (const col of COLUMNS) {
      const input = el("input", { type: "checkbox", id: `col-${col.key}` });
      input.checked = state.columns.has(col.key);
      input.addEventListener("change", () => {
        if (input.checked) state.columns.add(col.key); else state.columns.delete(col.key);
        localStorage.setItem("trackdelivery.columns", JSON.stringify([...state.columns]));
        renderTable();
      });
      box.appendChild(el("label", null, input, ` ${col.label}`));
    }
  }
  function visibleColumns() { return COLUMNS.filter((c) => state.columns.has(c.key)); }
  function renderTable() {
    const head = $("results-head");
    clear(head);
    const cols = visibleColumns();
    cols.forEach((c) => head.appendChild(el("th", { text: c.label })));
    const body = $("results-body");
    clear(body);
    for (const e of state.events) body.appendChild(row(e, cols, false));
    if (!state.events.length) body.appendChild(el("tr", null, el("td", { colspan: cols.length, class: "muted", text: "No events match." })));
    $("more").hidden = !(state.paged && state.cursor);
  }
  function row(e, cols, fresh) {
    const tr = el("tr", { class: fresh ? "fresh" : null, "data-event": e.event_id });
    for (const c of cols) {
      const value = c.render(e);
      const td = el("td", { class: c.cls || null });
      if (value instanceof Node) td.appendChild(value);
      else {
        td.textContent = value === null || value === undefined ? "" : String(value);
        if (td.textContent.length > 40) td.title = td.textContent;
      }
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => {
      document.querySelectorAll("#results-body tr.selected").forEach((r) => r.classList.remove("selected"));
      tr.classList.add("selected");
      if (e.msgid) openMessage(e.server, e.msgid, e.recipient);
      else showEventOnly(e);
    });
    return tr;
  }
  async function loadMore() {
    // Paged mode: the next page of the same query.
    if (!state.paged || !state.cursor || !state.lastParams) return;
    const p = new URLSearchParams(state.lastParams);
    p.set("cursor", state.cursor);
    const result = await api("/api/v1/deliveries", p);
    if (!result) return;
    const cols = visibleColumns();
    for (const e of result.events) {
      if (state.seen.has(e.event_id)) continue;
      state.seen.add(e.event_id);
      state.events.push(e);
      $("results-body").appendChild(row(e, cols, false));
    }
    state.cursor = result.next_cursor;
    $("more").hidden = !state.cursor;
    updateStatus(result);
  }

  // ---- chart and top lists ----
  function renderChart(stats) {
    const box = $("chart");
    clear(box);
    const legend = $("chart-legend");
    clear(legend);
    let timeline = stats && stats.timeline;
    let note = "";
    if (!timeline || !timeline.buckets || !timeline.buckets.length) {
      timeline = timelineFromEvents(state.events);
      note = "(from the rows shown)";
    }
    $("chart-note").textContent = note;
    const buckets = timeline.buckets;
    if (!buckets.length) { box.appendChild(el("div", { class: "muted", text: "No events in this period." })); return; }
    const W = 600, H = 120, left = 30, bottom = 16;
    const maxTotal = Math.max(1, ...buckets.map((b) => TYPES.reduce((s, t) => s + (b.counts[t] || 0), 0)));
    const bw = (W - left) / buckets.length;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": "events over time by type" });
    chart.appendChild(svg("text", { x: 0, y: 10, "font-size": 9, fill: "#667085" }, maxTotal));
    chart.appendChild(svg("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#e3e6eb" }));
    buckets.forEach((b, i) => {
      let y = H - bottom;
      for (const t of TYPES) {
        const n = b.counts[t] || 0;
        if (!n) continue;
        const h = (n / maxTotal) * (H - bottom - 12);
        y -= h;
        const rect = svg("rect", { x: left + i * bw + 0.5, y, width: Math.max(1, bw - 1), height: h, fill: TYPE_COLOUR[t] });
        rect.appendChild(svg("title", {}, `${fmtTime(b.start)} · ${TYPE_LABEL[t]}: ${n}`));
        chart.appendChild(rect);
      }
    });
    const first = buckets[0].start, last = buckets[buckets.length - 1].start;
    chart.appendChild(svg("text", { x: left, y: H - 3, "font-size": 9, fill: "#667085" }, fmtShort(first)));
    chart.appendChild(svg("text", { x: W - 2, y: H - 3, "font-size": 9, fill: "#667085", "text-anchor": "end" }, fmtShort(last)));
    box.appendChild(chart);
    for (const t of TYPES) {
      if (!buckets.some((b) => b.counts[t])) continue;
      const item = el("span", { text: TYPE_LABEL[t] });
      item.style.setProperty("--swatch", TYPE_COLOUR[t]);
      legend.appendChild(item);
    }
  }
  function timelineFromEvents(events) {
    if (!events.length) return { buckets: [] };
    const times = events.map((e) => e.time);
    const lo = Math.min(...times), hi = Math.max(...times);
    const span = Math.max(60, hi - lo);
    const steps = [60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400];
    const size = steps.find((s) => span / s <= 60) || 86400;
    const start = Math.floor(lo / size) * size;
    const n = Math.floor((hi - start) / size) + 1;
    const buckets = Array.from({ length: n }, (_, i) => ({ start: start + i * size, counts: {} }));
    for (const e of events) {
      const b = buckets[Math.floor((e.time - start) / size)];
      b.counts[e.type] = (b.counts[e.type] || 0) + 1;
    }
    return { buckets };
  }
  function renderTops(stats) {
    const deferring = $("top-deferring");
    clear(deferring);
    const reasons = $("top-reasons");
    clear(reasons);
    if (!stats) return;
    for (const d of stats.top_deferring_domains || []) {
      const li = el("li", null, el("span", { class: "count", text: d.count.toLocaleString() }));
      li.appendChild(el("button", { type: "button", class: "link", text: d.domain, onclick: () => { setFilter("domain", d.domain); } }));
      deferring.appendChild(li);
    }
    for (const r of stats.top_reasons || []) {
      const li = el("li", null, el("span", { class: "count", text: r.count.toLocaleString() }),
        el("button", { type: "button", class: "link", text: r.reason, onclick: () => { setFilter("reason", r.reason); } }),
        r.hint ? el("span", { class: "hint", text: r.hint }) : null);
      reasons.appendChild(li);
    }
    if (!deferring.firstChild) deferring.appendChild(el("li", { class: "muted", text: "none" }));
    if (!reasons.firstChild) reasons.appendChild(el("li", { class: "muted", text: "none" }));
  }
  function setFilter(name, value) {
    $("filters").elements[name].value = value;
    search(false);
  }

  // ---- detail panel ----
  function retryWords(retry, expected, final) {
    if (!retry) return "";
    const parts = [];
    if (retry.attempt) parts.push(expected ? `attempt ${retry.attempt} of about ${expected}` : `attempt ${retry.attempt}`);
    if (!final && retry.next_retry) parts.push(`next try ≈ ${fmtShort(retry.next_retry)}`);
    if (!final && retry.give_up) parts.push(`gives up ${fmtShort(retry.give_up)}`);
    if (retry.first_attempt && retry.last_attempt && retry.last_attempt > retry.first_attempt) {
      parts.push(`failing for ${duration(retry.last_attempt - retry.first_attempt)}`);
    }
    return parts.join("; ");
  }
  function duration(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} days`;
  }
  function kv(pairs) {
    const dl = el("dl", { class: "kv" });
    for (const [k, v] of pairs) {
      if (v === null || v === undefined || v === "") continue;
      dl.appendChild(el("dt", { text: k }));
      dl.appendChild(el("dd", null, v instanceof Node ? v : String(v)));
    }
    return dl;
  }
  function routeDiagram(route) {
    const steps = [
      { title: "client", main: route.client_host || "local", sub: route.client_ip ? `[${route.client_ip}]` : "" },
      { title: "server", main: route.server, sub: route.msgid || "" },
      { title: "router / transport", main: route.router || "—", sub: route.transport || "" },
      { title: "remote host", main: route.remote_host || (route.transport ? "local" : "—"), sub: route.remote_ip ? `[${route.remote_ip}]` : "" },
      { title: "response", main: route.smtp_code ? `${route.smtp_code} ${route.enhanced_code || ""}` : (route.outcome || ""), sub: route.response || (route.tls ? `TLS ${route.tls}` : "") },
    ];
    const W = 640, boxW = 112, gap = (W - steps.length * boxW) / (steps.length - 1), H = 58;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "route trace" });
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
    marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#98a2b3" }));
    defs.appendChild(marker);
    root.appendChild(defs);
    steps.forEach((s, i) => {
      const x = i * (boxW + gap);
      const colour = i === steps.length - 1 ? (TYPE_COLOUR[route.outcome] || "#98a2b3") : "#c9d2e3";
      root.appendChild(svg("rect", { x: x + 0.5, y: 12.5, width: boxW - 1, height: 40, rx: 5, fill: "#fff", stroke: colour, "stroke-width": i === steps.length - 1 ? 2 : 1 }));
      root.appendChild(svg("text", { x: x + 4, y: 9, class: "sub" }, s.title));
      const main = svg("text", { x: x + 6, y: 29 }, clip(s.main, 17));
      main.appendChild(svg("title", {}, s.main));
      root.appendChild(main);
      root.appendChild(svg("text", { x: x + 6, y: 44, class: "sub" }, clip(s.sub, 20)));
      if (i < steps.length - 1) {
        root.appendChild(svg("line", { x1: x + boxW + 2, y1: 32, x2: x + boxW + gap - 2, y2: 32, stroke: "#98a2b3", "marker-end": "url(#arrow)" }));
      }
    });
    return el("div", { class: "route" }, root);
  }
  function clip(text, n) { text = text ? String(text) : ""; return text.length > n ? `${text.slice(0, n - 1)}…` : text; }

  async function openMessage(server, msgid, focusRecipient) {
    const panel = $("detail");
    panel.hidden = false;
    $("detail-title").textContent = `${msgid} on ${server}`;
    const body = $("detail-body");
    clear(body);
    body.appendChild(el("p", { class: "muted", text: "loading…" }));
    let view;
    try {
      view = await api(`/api/v1/messages/${encodeURIComponent(server)}/${encodeURIComponent(msgid)}`);
    } catch (_) { clear(body); return; }
    clear(body);
    if (!view) { body.appendChild(el("p", { class: "muted", text: "Message not found (or outside your scope)." })); return; }
    state.selected = view;
    const a = view.arrival || {};
    body.appendChild(el("h3", { text: "Arrival" }));
    body.appendChild(kv([
      ["Received", fmtTime(a.time)], ["Sender", a.sender === "" ? "<> (bounce)" : a.sender], ["Subject", a.subject],
      ["cPanel user", a.cpanel_user], ["Authenticated", a.auth_id], ["Client", hostIp(a.client_host, a.client_ip)],
      ["Protocol", a.protocol], ["Size", fmtSize(a.size)], ["Spam score", a.spam_score], ["Message-ID", a.message_id_header],
    ]));
    const links = [];
    if (view.parent_msgid) links.push(["Bounce of", messageLink(view.server, view.parent_msgid)]);
    if (view.bounce_msgid) links.push(["Bounce message", messageLink(view.server, view.bounce_msgid)]);
    if (links.length) body.appendChild(kv(links));

    body.appendChild(el("h3", { text: `Recipients (${view.recipients.length})` }));
    const ordered = [...view.recipients].sort((x, y) => (y.recipient === focusRecipient) - (x.recipient === focusRecipient));
    for (const r of ordered) body.appendChild(recipientBlock(view, r));

    body.appendChild(el("h3", { text: "Log lines" }));
    body.appendChild(el("pre", { class: "lines", text: (view.lines || []).join("\n") || "(no raw lines kept)" }));
  }
  function messageLink(server, msgid) {
    return el("button", { type: "button", class: "link", text: msgid, onclick: () => openMessage(server, msgid) });
  }
  function recipientBlock(view, r) {
    const box = el("div", { class: "recipient", "data-recipient": r.recipient || "" });
    const final = !["deferred", "in_progress", "frozen"].includes(r.state);
    box.appendChild(el("div", { class: "recipient-head" }, badge(r.state), el("strong", { text: r.recipient || "(no recipient)" }),
      r.original_recipient && r.original_recipient !== r.recipient ? el("span", { class: "muted", text: `for ${r.original_recipient}` }) : null,
      r.reason ? el("code", { class: "reason", text: r.reason }) : null));
    const words = retryWords(r.retry, r.expected_attempts, final);
    if (words) box.appendChild(el("div", { class: "retry-words", text: words }));
    if (r.hint) box.appendChild(el("div", { class: `hint reason-hint${final && r.state !== "delivered" ? " bad" : ""}` }, el("strong", { text: "Fix: " }), r.hint));
    if (r.route) box.appendChild(routeDiagram(r.route));
    const list = el("ol", { class: "timeline" });
    for (const e of r.attempts || []) {
      const li = el("li", null, el("span", { class: "when", text: fmtTime(e.time) }), badge(e.type),
        e.retry && e.retry.attempt ? el("span", { class: "muted", text: ` attempt ${e.retry.attempt}` }) : null,
        e.remote_host || e.remote_ip ? el("span", { class: "muted", text: ` via ${hostIp(e.remote_host, e.remote_ip)}` }) : null,
        el("span", { class: "resp", text: resultText(e) }));
      li.style.setProperty("--dot", TYPE_COLOUR[e.type] || "#999");
      list.appendChild(li);
    }
    box.appendChild(list);
    return box;
  }
  function showEventOnly(e) {
    // SMTP-time rejections have no message id: show the event itself.
    $("detail").hidden = false;
    $("detail-title").textContent = "Rejected at SMTP time";
    const body = $("detail-body");
    clear(body);
    body.appendChild(kv([["Time", fmtTime(e.time)], ["Server", e.server], ["Sender", e.sender], ["Recipient", e.recipient],
      ["Client", hostIp(e.client_host, e.client_ip)], ["Response", e.response], ["Reason", e.reason]]));
    if (e.hint) body.appendChild(el("div", { class: "hint reason-hint bad" }, el("strong", { text: "Fix: " }), e.hint));
  }

  // ---- alerts panel (records of the alert engine; every string in them is attacker-controlled) ----
  async function loadAlerts() {
    if (!state.token) return;
    const seq = ++state.alertsSeq; // only the newest request renders (refresh timer vs. toggle)
    const withResolved = $("alerts-resolved").checked;
    const p = new URLSearchParams({ state: withResolved ? "all" : "firing", limit: "100" });
    let answer;
    try {
      answer = await api("/api/v1/alerts", p, { quiet: true });
    } catch (err) {
      if (seq === state.alertsSeq) $("alerts-status").textContent = `could not load alerts (${err.message})`;
      return;
    }
    if (seq !== state.alertsSeq) return;
    renderAlerts(answer || { alerts: [], total: 0 }, withResolved);
    $("alerts-status").textContent = `updated ${fmtShort(Date.now() / 1000)}`;
  }
  function renderAlerts(answer, withResolved) {
    const list = $("alerts-list");
    clear(list);
    const alerts = Array.isArray(answer.alerts) ? answer.alerts : [];
    const firing = alerts.filter((a) => a.state === "firing").length;
    $("alerts-count").textContent = firing ? `(${firing} firing)` : "";
    $("alerts").classList.toggle("has-firing", firing > 0);
    if (!alerts.length) {
      list.appendChild(el("li", { class: "muted empty", text: withResolved ? "No alerts" : "No active alerts" }));
      return;
    }
    for (const a of alerts) list.appendChild(alertItem(a));
    if (answer.total > alerts.length) {
      list.appendChild(el("li", { class: "muted empty", text: `${answer.total - alerts.length} more not shown` }));
    }
  }
  function severityBadge(severity) {
    const known = SEVERITIES.includes(severity) ? severity : "unknown";
    return el("span", { class: `badge sev-${known}` }, String(severity ?? "?"));
  }
  function scopeText(scope) {
    if (!scope || typeof scope !== "object") return "";
    return Object.entries(scope).map(([k, v]) => `${SCOPE_LABEL[k] || k} ${v}`).join(" · ");
  }
  function countText(a) {
    const n = Number(a.count);
    if (!Number.isFinite(n)) return "";
    if (Number.isInteger(n)) return `${n.toLocaleString()}×`;
    return n <= 1 ? `${Math.round(n * 100)}%` : n.toFixed(1);
  }
  function alertItem(a) {
    const resolved = a.state !== "firing";
    const item = el("li", { class: `alert${resolved ? " resolved" : ""}`, "data-alert": a.id });
    const details = el("details");
    details.open = state.alertsOpen.has(a.id);
    details.addEventListener("toggle", () => {
      if (details.open) state.alertsOpen.add(a.id); else state.alertsOpen.delete(a.id);
    });
    const since = Number(a.first_seen);
    const age = Number.isFinite(since) ? duration(Math.max(0, Date.now() / 1000 - since)) : "";
    const summary = el("summary", null,
      severityBadge(a.severity),
      resolved ? el("span", { class: "badge outline state-resolved", text: "resolved" }) : null,
      el("code", { class: "alert-rule", text: a.rule }),
      el("span", { class: "alert-scope", text: scopeText(a.scope) }),
      el("span", { class: "alert-summary", text: a.summary }),
      el("span", { class: "alert-since muted", title: `first seen ${fmtTime(a.first_seen)} · last seen ${fmtTime(a.last_seen)}`,
        text: resolved && a.resolved_at ? `resolved ${fmtShort(a.resolved_at)}` : (age ? `for ${age}` : "") }),
      el("span", { class: "alert-count muted", title: "count", text: countText(a) }));
    details.appendChild(summary);
    const body = el("div", { class: "alert-body" });
    if (a.hint) body.appendChild(el("div", { class: "hint" }, el("strong", { text: "What to check: " }), String(a.hint)));
    body.appendChild(kv([["First seen", fmtTime(a.first_seen)], ["Last seen", fmtTime(a.last_seen)],
      ["Resolved", a.resolved_at ? fmtTime(a.resolved_at) : null], ["Kind", a.kind]]));
    const examples = Array.isArray(a.examples) ? a.examples : [];
    if (examples.length) {
      body.appendChild(el("h3", { text: `Examples (${examples.length})` }));
      const ul = el("ul", { class: "alert-examples" });
      for (const x of examples) ul.appendChild(alertExample(x));
      body.appendChild(ul);
    }
    details.appendChild(body);
    item.appendChild(details);
    return item;
  }
  function alertExample(x) {
    const li = el("li", { class: "alert-example" },
      el("span", { class: "when", text: fmtTime(x.time) }),
      x.type ? badge(x.type) : null,
      el("span", { class: "mono", text: ` ${x.sender === "" ? "<>" : (x.sender || "")} → ${x.recipient || ""}` }),
      x.server ? el("span", { class: "muted", text: ` on ${x.server}` }) : null);
    if (x.msgid && x.server) {
      li.appendChild(el("button", { type: "button", class: "link open-message", text: `open ${x.msgid}`,
        onclick: () => { openMessage(String(x.server), String(x.msgid), x.recipient); $("detail").scrollIntoView({ block: "nearest" }); } }));
    }
    if (x.response) li.appendChild(el("span", { class: "resp", text: x.response }));
    return li;
  }

  // ---- live mode (SSE over fetch, so the token travels in a header) ----
  async function startLive() {
    stopLive();
    const controller = new AbortController();
    state.live = controller;
    const p = buildParams();
    p.delete("period"); p.delete("since"); p.delete("until");
    $("live-status").textContent = "connecting…";
    $("live-status").className = "";
    try {
      const resp = await fetch(`/api/v1/stream?${p}`, { headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" }, signal: controller.signal });
      if (!resp.ok) throw new Error(String(resp.status));
      $("live-status").textContent = "live";
      $("live-status").className = "on";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data) onLiveEvent(JSON.parse(data));
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
      showBanner("The live stream stopped; untick and tick Live to reconnect.", true);
    }
    if (state.live === controller) { state.live = null; $("live").checked = false; $("live-status").textContent = ""; }
  }
  function stopLive() {
    if (state.live) state.live.abort();
    state.live = null;
    $("live-status").textContent = "";
    $("live-status").className = "";
  }
  function onLiveEvent(e) {
    if (!e || !e.event_id || state.seen.has(e.event_id)) return;
    state.seen.add(e.event_id);
    state.events.unshift(e);
    const body = $("results-body");
    if (body.firstChild && body.firstChild.querySelector("td[colspan]")) clear(body);
    body.insertBefore(row(e, visibleColumns(), true), body.firstChild);
    const cap = 5000;
    while (body.children.length > cap) body.removeChild(body.lastChild);
  }

  // ---- wiring ----
  function buildForm() {
    const boxes = $("type-boxes");
    for (const t of TYPES) {
      const input = el("input", { type: "checkbox", id: `t-${t}`, value: t });
      input.checked = true;
      boxes.appendChild(el("label", { title: TYPE_HELP[t] }, input, badge(t)));
    }
    const reason = $("f-reason");
    for (const r of REASONS) reason.appendChild(el("option", { value: r, text: r.replaceAll("_", " ") }));
    const syncCustom = () => document.querySelectorAll(".custom-time").forEach((n) => { n.hidden = $("f-period").value !== ""; });
    $("f-period").addEventListener("change", syncCustom);
    syncCustom();
  }
  function setTypes(list) { for (const t of TYPES) $(`t-${t}`).checked = list.includes(t); }
  function wire() {
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); search(false); });
    $("show-all").addEventListener("click", () => { setTypes(TYPES); search(false); });
    $("show-blocked").addEventListener("click", () => { setTypes(BLOCKED); search(false); });
    $("reset").addEventListener("click", () => { $("filters").reset(); setTypes(TYPES); });
    $("more").addEventListener("click", loadMore);
    $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
    $("token-button").addEventListener("click", askToken);
    $("token-form").addEventListener("submit", () => {
      const v = $("token-input").value.trim();
      if (v) { sessionStorage.setItem("trackdelivery.token", v); state.token = v; search(false); loadAlerts(); }
    });
    $("token-forget").addEventListener("click", () => { sessionStorage.removeItem("trackdelivery.token"); state.token = null; stopLive(); $("token-dialog").close(); });
    $("live").addEventListener("change", () => { if ($("live").checked) startLive(); else stopLive(); });
    $("alerts-resolved").addEventListener("change", loadAlerts);
    setInterval(() => { if (!document.hidden) loadAlerts(); }, ALERTS_REFRESH_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) loadAlerts(); });
  }

  readToken();
  buildForm();
  renderColumnChooser();
  wire();
  renderTable();
  if (state.token) { search(false); loadAlerts(); } else askToken();
})();
