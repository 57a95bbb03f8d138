// ktrader desk: everything arrives by server-sent events (/api/stream); actions POST /api/control
// after a confirmation. Texts from the gateway are set with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
// The token: from the URL's fragment (#token=, never sent to a server) into this tab's sessionStorage
// (this origin's alone: no other port of the host sees it, as it would see a cookie), then out of the
// address bar. Every request carries it as a header (server.py: the guard).
function tokenFromAddress() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem("ktrader-web-token", given);
    history.replaceState(null, "", location.pathname);
  }
  return given;
}
const TOKEN = (tokenFromAddress(), sessionStorage.getItem("ktrader-web-token") || "");
// the URL pasted into a page already open (only its fragment changes: no new load): start again with it
window.addEventListener?.("hashchange", () => { if (tokenFromAddress()) location.reload(); });
const authorised = (headers = {}) => ({ ...headers, Authorization: `Bearer ${TOKEN}` });
const fmt = (n) => (n ?? 0).toLocaleString("en-US");
const cls = (n) => (n > 0 ? "up" : n < 0 ? "down" : "");  // Korean colours: red up, blue down
const kstDay = (d) => d.toLocaleDateString("en-CA", { timeZone: "Asia/Seoul" });  // YYYY-MM-DD in KST
// A time in KST: HH:MM:SS on the current market day (its KST date), with the date on any other day,
// so an earlier day's fill or order is never read as today's (as tools/top/app.py stamp).
const kst = (ns) => {
  const d = new Date(ns / 1e6);
  const t = d.toLocaleTimeString("en-GB", { timeZone: "Asia/Seoul", hour12: false });
  return kstDay(d) === kstDay(new Date()) ? t : `${kstDay(d)} ${t}`;
};
let status = null, market = {}, intraday = {}, equityPlot = null, pricePlot = null;

function cell(tr, text, klass) {
  const td = document.createElement("td");
  td.textContent = text;
  if (klass) td.className = klass;
  tr.appendChild(td);
  return td;
}

function fill(tbody, rows, build) {
  const body = typeof tbody === "string" ? $(tbody).tBodies[0] : tbody;
  body.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); build(tr, r); return tr; }));
}

function toast(text, err) {  // err: true (an error), "warn" (an outcome unknown), falsy
  const t = $("toast");
  t.textContent = text; t.className = err === "warn" ? "warn" : err ? "err" : ""; t.style.display = "block";
  clearTimeout(toast.timer); toast.timer = setTimeout(() => (t.style.display = "none"), err === "warn" ? 15000 : 6000);
}

// The gateway's answer to an action. outcome "unknown": sent but not answered in time (server.py _unknown):
// not refused, it may still be applied; never shown as "refused".
function answer(j) {
  if (j.ok) toast(j.message);
  else if (j.outcome === "unknown") toast("outcome unknown: " + j.error, "warn");
  else toast("refused: " + j.error, true);
}

const QUESTIONS = {
  pause: "Pause {a}: no new orders until resumed (its working orders stay)?",
  // a resume accepts what tripped the agent (server/risk.py RiskGate.accept): as the console asks it
  resume: "Resume {a}? This accepts its loss today and its drawdown as they stand (the peak restarts at its equity now) and clears its kill-switch count.",
  cancel_all: "Cancel every open order of {a}?",
  flatten: "Flatten {a}: cancel its orders and SELL all its positions{b}?",
  reload: "Reload {a}'s card from the cards folder?\n\n{c}\n\nApply these changes now?",
  halt: "KILL SWITCH: halt trading for the whole gateway and CANCEL every open order of every agent at the broker (orders held for the next session too; the gateway's own exit sells, stops and flattens, keep working)?",
  resume_all: "Resume trading for the whole gateway? This accepts the account's loss today and its drawdown as they stand (the peak restarts at the equity now) and clears the kill-switch count.",
};

async function post(body) {
  const r = await fetch("/api/control", { method: "POST", cache: "no-store",
    headers: authorised({ "Content-Type": "application/json", "X-Ktrader": "1" }), body: JSON.stringify(body) });
  if (r.status === 401) throw new Error(KEY_GONE);  // not sent: ktrader web was restarted with a new key
  return r.json();
}

async function act(action, agent, all) {
  const a = (status?.agents || []).find((x) => x.id === agent);
  const behalf = a && a.state !== "online" ? " (it is offline: the gateway acts on its behalf)" : "";
  let q = QUESTIONS[all ? "resume_all" : action].replace("{a}", agent).replace("{b}", behalf);
  const extra = {};
  if (action === "reload") {
    // confirmed on what changes (old → new), not on a field name: a raised budget is not a routine click
    try {
      const p = await post({ action, agent, preview: true });
      if (!p.ok) { answer(p); return; }
      if (p.message.endsWith("the card is unchanged")) { toast(p.message); return; }
      q = q.replace("{c}", p.message);
      extra.expect = p.message;  // applied only if the card file still says this
    } catch (e) { toast("not sent: " + e, true); return; }
  }
  if (!window.confirm(q)) return;
  try {
    const j = await post({ action, agent, all: !!all, ...extra });
    answer(j);
  } catch (e) { toast("not sent: " + e, true); }
}

// An agent's own trading state, and the gateway's when that stops it more: an agent resumed while
// the gateway is halted trades nothing (as tools/top/grid.py trading_label).
// common/views.py trading_word: a HALTED that is a pause (open orders work on) reads "paused"
function tradingWord(state, paused) { return paused && state === "halted" ? "paused" : state; }

function tradingLabel(a, st) {
  const own = tradingWord(a.trading_state, a.paused), gw = tradingWord(st.trading_state, st.paused);
  return st.trading_state === "active" || st.trading_state === a.trading_state || a.trading_state === "halted"
    ? own : `${own}, gateway ${gw}`;
}

function netPnl(a) { return a.realized_pnl - a.fees + a.unrealized_pnl; }

// How old figures are, for the stale marks ("12s old", "3m 5s old"); null: never fetched.
function age(s) {
  if (s == null) return "never fetched";
  s = Math.round(s);
  return s < 60 ? `${s}s old` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s old` : `${Math.floor(s / 3600)}h ${Math.floor(s / 60) % 60}m old`;
}

// StatusReply.notify (server/notifier.py Notifier.status): the totals; per channel "ch|<name>|<field>" and
// "ch|<name>|error|<last error>" (seconds since it); the heartbeat's "hb|<field>" (the same as `ktrader status`)
function notifierLines(n) {
  const chans = {}, hb = {};
  for (const [k, v] of Object.entries(n || {})) {
    if (k.startsWith("ch|")) { const i = k.indexOf("|", 3); (chans[k.slice(3, i)] ??= {})[k.slice(i + 1)] = v; }
    else if (k.startsWith("hb|")) hb[k.slice(3)] = v;
  }
  const dur = (s) => s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;
  const state = (f) => (f.failing_s ?? -1) < 0 ? "OK"
    : `FAILING since ${kst(Date.now() * 1e6 - f.failing_s * 1e9)} KST (${dur(f.failing_s)})`;
  const err = (f) => {
    const e = Object.entries(f).filter(([k]) => k.startsWith("error|")).sort((a, b) => a[1] - b[1])[0];
    return e ? `  last error ${e[0].slice(6)}${f.config_error ? " (a configuration problem: fix [notify])" : ""} ${dur(e[1])} ago` : "";
  };
  const lines = [n.channels
    ? `notifier: ${n.channels} channels  sent ${n.sent ?? 0}  failed tries ${n.failed ?? 0}  suppressed ${n.suppressed ?? 0}  rate-limited ${n.limited ?? 0}  dropped ${n.dropped ?? 0}  given up ${n.given_up ?? 0}`
    : "notifier: no channel configured ([notify] in the gateway config): alerts stay on screen"];
  for (const name of Object.keys(chans).sort()) {
    const f = chans[name];
    lines.push(`notifier: ${name}  ${state(f)}  delivered ${f.delivered ?? 0}  queued ${f.queued ?? 0}  retrying ${f.retrying ?? 0}  given up ${f.given_up ?? 0}${err(f)}`);
  }
  if (Object.keys(hb).length) lines.push(`notifier: heartbeat every ${dur(hb.every_s ?? 0)}  ${state(hb)}  pings ${hb.pings ?? 0}  failed ${hb.failed ?? 0}${err(hb)}`);
  else if (n.channels) lines.push("notifier: no heartbeat ([notify] heartbeat_url): a dead gateway tells no one");
  return lines;
}

function setLive(text, klass) { $("live").textContent = text; $("live").className = klass; }

function renderStatus(st) {
  // error with figures: the gateway stopped answering and these are its last ones (age_s old).
  // They stay on screen for the operator, dimmed and labelled stale, never passed off as live.
  const stale = !!st.error;
  if (stale && !st.agents) { setLive(st.error, "up"); return; }  // no status ever: nothing to show yet
  document.body.classList.toggle("stale-status", stale);
  if (stale) setLive(`STALE (${age(st.age_s)}) gateway unreachable: ${st.error}`, "badge hot");
  else setLive("live", "online");
  status = st;
  $("phase").textContent = (st.market_phase || "?").replaceAll("_", " ");
  $("session").textContent = st.session_state;
  $("session").className = st.session_state === "ready" ? "online" : "up";
  $("trading").textContent = tradingWord(st.trading_state, st.paused);
  $("alerts").textContent = "alerts " + st.alerts_today;
  $("alerts").className = "badge" + (st.alerts_today ? " hot" : "");
  // totals of the live agents: a shadow agent's books are virtual, not the account's
  const tot = { pnl: 0, r: 0, u: 0, v: 0, o: 0, n: 0 };
  fill("agents", st.agents, (tr, a) => {
    tr.dataset.agent = a.id;
    const p = a.performance, net = netPnl(a), shadow = a.mode === "shadow";
    if (!shadow) {
      tot.n += 1; tot.pnl += net; tot.r += a.realized_pnl; tot.u += a.unrealized_pnl; tot.v += a.position_value; tot.o += a.open_orders;
    }
    const trading = tradingLabel(a, st);
    if (shadow) tr.className = "shadow";  // virtual books: dimmed, and left out of the totals
    cell(tr, a.id); cell(tr, a.state, a.state);
    cell(tr, trading, trading === tradingWord(a.trading_state, a.paused) ? "" : "up").dataset.col = "trading";
    cell(tr, fmt(net), "n " + cls(net)); cell(tr, fmt(a.realized_pnl), "n " + cls(a.realized_pnl));
    cell(tr, fmt(a.unrealized_pnl), "n " + cls(a.unrealized_pnl)); cell(tr, fmt(a.position_value), "n");
    cell(tr, a.open_orders, "n");
    cell(tr, a.mode).dataset.col = "mode";
    const f = a.last_fill;
    cell(tr, f ? `${kst(f.ts_ns)} ${f.side === "buy" ? "B" : "S"}${f.qty}@${fmt(f.price)}` : "-");
    cell(tr, fmt(p.drawdown), "n"); cell(tr, p.sharpe.toFixed(2), "n");
    cell(tr, p.wins + p.losses ? Math.round(p.win_rate * 100) + "%" : "-", "n"); cell(tr, p.turnover.toFixed(2), "n");
    const td = cell(tr, "");
    for (const [label, action] of [["pause", "pause"], ["resume", "resume"], ["cancel all", "cancel_all"], ["flatten", "flatten"], ["reload", "reload"]]) {
      const b = document.createElement("button");
      b.textContent = label; b.dataset.action = action; b.dataset.agent = a.id;
      if (action === "flatten") b.className = "danger";
      b.onclick = () => act(action, a.id, false);
      td.appendChild(b);
    }
    if (stale) return;  // a dead gateway's P&L is not a new point on the equity curve
    const now = Date.now() / 1000;  // this page's intraday equity samples, per agent
    (intraday[a.id] = intraday[a.id] || []).push([now, net]);
    if (intraday[a.id].length > 3600) intraday[a.id].shift();
  });
  const foot = $("agents").tFoot;
  const tr = document.createElement("tr");
  cell(tr, tot.n === st.agents.length ? `TOTAL (${tot.n})` : `TOTAL (${tot.n} live)`); cell(tr, ""); cell(tr, "");
  cell(tr, fmt(tot.pnl), "n " + cls(tot.pnl)); cell(tr, fmt(tot.r), "n " + cls(tot.r)); cell(tr, fmt(tot.u), "n " + cls(tot.u));
  cell(tr, fmt(tot.v), "n"); cell(tr, tot.o, "n");
  foot.replaceChildren(tr);
  fill("account", st.account, (tr, p) => {
    cell(tr, p.code); cell(tr, st.names[p.code] || ""); cell(tr, fmt(p.qty), "n"); cell(tr, fmt(p.avg_price), "n");
    cell(tr, fmt(p.mark), "n"); cell(tr, fmt(p.unrealized_pnl), "n " + cls(p.unrealized_pnl)); cell(tr, fmt(p.realized_pnl), "n " + cls(p.realized_pnl));
  });
  fill("positions", st.agents.flatMap((a) => a.positions.filter((p) => p.qty).map((p) => [a.mode === "shadow" ? `${a.id} (shadow)` : a.id, p])), (tr, [id, p]) => {
    cell(tr, id); cell(tr, `${p.code} ${st.names[p.code] || ""}`); cell(tr, fmt(p.qty), "n"); cell(tr, fmt(p.avg_price), "n");
    cell(tr, fmt(p.mark), "n"); cell(tr, fmt(p.unrealized_pnl), "n " + cls(p.unrealized_pnl));
  });
  const h = st.health, c = st.counters;
  $("health").textContent = [
    `broker ${st.broker}  session ${st.session_state}  reconciliation ${st.synced ? (st.reconciled_whole ? "synced" : "synced (open orders only so far)") : "NOT synced"}, ${st.reconcile_alerts} differences`,
    `stock master ${st.stock_master || "none (codes not checked; every code counts as a KOSPI stock)"}`,
    `REST ${h.rest_limit_per_s}/s  calls ${h.rest_calls}  queued ${h.rest_waiting}  penalties ${h.rest_penalties}`,
    `registrations ${Object.keys(h.registrations).length}/${h.max_registrations}  ws last message ${h.ws_last_message_age_s}s ago`,
    `market data published ${fmt(c.pub_sent)}  dropped ${fmt(c.pub_dropped)}`,
    ...notifierLines(st.notify),
  ].join("\n");
  $("alert-list").replaceChildren(...st.alerts.slice().reverse().map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
  syncSelect($("equity-agent"), st.agents.map((a) => a.id));
  syncSelect($("price-code"), [...new Set(st.agents.flatMap((a) => a.codes))].sort());
  drawEquity();
}

function syncSelect(sel, values) {
  const cur = sel.value;
  if ([...sel.options].map((o) => o.value).join() === values.join()) return;
  sel.replaceChildren(...values.map((v) => { const o = document.createElement("option"); o.value = o.textContent = v; return o; }));
  if (values.includes(cur)) sel.value = cur;
}

function chart(el, plot, data, label) {
  const width = Math.max(300, el.clientWidth || 500);
  if (!plot || plot.width !== width) {
    plot?.destroy();
    // times read in KST, as the rest of the page, whatever the browser's zone
    return new uPlot({ width, height: 200, series: [{}, { label, stroke: "#e8a33d", width: 1.5 }],
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Asia/Seoul"),
      axes: [{ stroke: "#99a" }, { stroke: "#99a" }], legend: { show: false } }, data, el);
  }
  plot.setData(data);
  return plot;
}

function drawEquity() {
  const id = $("equity-agent").value;
  const a = (status?.agents || []).find((x) => x.id === id);
  if (!a) return;
  // days from the store, then this page's intraday samples of today
  // each day at 00:00 KST (a day at 00:00 UTC was drawn on the evening before in a browser west of it)
  const days = a.performance.curve.slice(0, -1).map(([d, v]) => [Date.UTC(+d.slice(0, 4), +d.slice(4, 6) - 1, +d.slice(6, 8)) / 1000 - 9 * 3600, v]);
  const pts = days.concat(intraday[id] || []);
  equityPlot = chart($("equity-chart"), equityPlot, [pts.map((p) => p[0]), pts.map((p) => p[1])], id);
}

function drawPrice() {
  const code = $("price-code").value, m = market[code];
  if (!m) return;
  $("price-last").textContent = `${fmt(m.last)} (${m.change > 0 ? "+" : ""}${fmt(m.change)})`;
  $("price-last").className = cls(m.change);
  const h = m.history;
  pricePlot = chart($("price-chart"), pricePlot, [h.map((_, i) => i), h], code);
}

function renderMarket(m) {
  market = m;
  fill("market", Object.keys(m).sort(), (tr, code) => {
    const r = m[code];
    tr.dataset.code = code;
    cell(tr, code); cell(tr, status?.names?.[code] || ""); cell(tr, fmt(r.last), "n last");
    cell(tr, (r.change > 0 ? "+" : "") + fmt(r.change), "n " + cls(r.change)); cell(tr, fmt(r.volume), "n"); cell(tr, r.ticks, "n ticks");
  });
  drawPrice();
}

function renderOrders(o) {
  // error: the orders query failed; these are the last orders and fills fetched, marked stale
  document.body.classList.toggle("stale-orders", !!o.error);
  for (const el of document.querySelectorAll(".orders-stale")) el.textContent = o.error ? `STALE (${age(o.age_s)}): ${o.error}` : "";
  // what the blotter's limit left out (server.py _orders_json; absent: not said)
  $("fills-n").textContent = `${o.fills.length}` + (o.fills_cut ? " (the newest only: older ones not listed)" : "");
  $("orders-cut").textContent = o.truncated ? `${fmt(o.truncated)} older finished orders not listed (the limit)` : "";
  // a shadow agent's orders and fills are virtual: marked, never read as the account's
  const shadow = new Set((status?.agents || []).filter((a) => a.mode === "shadow").map((a) => a.id));
  const mark = (coid) => shadow.has(coid.split("-").slice(0, -2).join("-")) ? `${coid} (shadow)` : coid;
  fill("fills", o.fills, (tr, f) => {
    tr.dataset.fill = f.fill_id;
    cell(tr, kst(f.ts_ns)); cell(tr, mark(f.client_order_id)); cell(tr, f.code); cell(tr, f.side, f.side === "buy" ? "up" : "down");
    cell(tr, fmt(f.qty), "n"); cell(tr, fmt(f.price), "n");
  });
  fill("orders", o.orders, (tr, x) => {
    cell(tr, kst(x.updated_ns)); cell(tr, mark(x.client_order_id)); cell(tr, x.code); cell(tr, x.side, x.side === "buy" ? "up" : "down");
    cell(tr, fmt(x.qty), "n"); cell(tr, fmt(x.price), "n"); cell(tr, x.state); cell(tr, fmt(x.filled_qty), "n");
    cell(tr, `${x.reason_code} ${x.reason}`.trim().slice(0, 60));
  });
}

function renderEvents(lines) {
  const ul = $("events");
  for (const t of lines) { const li = document.createElement("li"); li.textContent = t; ul.prepend(li); }
  while (ul.children.length > 200) ul.lastChild.remove();
}

// The stream itself lost (ktrader web stopped or restarted, the network): every figure on the page is as
// old as the stream's last message. All of it is dimmed and that age shown, counting each second, until a
// status comes again (renderStatus then says what it is). lost: the reason shown, null while the stream is up.
const KEY_GONE = "this page's key is no longer valid: open the URL ktrader web printed";
const NO_KEY = "token required: open the URL ktrader web printed (it carries #token=…)";
let lastMessageAt = null, lost = null, lostTimer = null, checkingKey = false;

function showLost() {
  const a = age(lastMessageAt == null ? null : (Date.now() - lastMessageAt) / 1000);
  setLive(`STALE: last message ${a}; ${lost}`, "badge hot");
  for (const el of document.querySelectorAll(".orders-stale")) el.textContent = `STALE (last message ${a})`;
}

function streamLost(why) {
  lost = why;
  document.body.classList.add("stale-status", "stale-orders");
  showLost();
  lostTimer ??= setInterval(showLost, 1000);
}

function streamBack() {
  clearInterval(lostTimer);
  lostTimer = lost = null;
  failures = 0;
}

// false: ktrader web answers 401 (it was restarted with a new key); null: it does not answer at all;
// true: the key is still good.
async function keyValid() {
  try {
    const r = await fetch("/api/ping", { headers: authorised(), cache: "no-store", signal: AbortSignal.timeout(5000) });
    return r.status !== 401;
  } catch (e) { return null; }
}

const STREAM_RETRY_MS = 1000;  // as soon as a lost stream is tried again (server.py STREAM_RETRY_MS)
const STREAM_RETRY_MAX_MS = 15000;  // failing again and again: tried less often, up to this
const STREAM_SILENT_MS = 40000;  // the server sends a keep-alive every 15 s: this long without one, it is lost
let failures = 0;  // stream attempts failed in a row (a status coming through resets it: streamBack)

async function onStreamError(retryMs = STREAM_RETRY_MS) {
  streamLost("the stream from ktrader web is lost: reconnecting…");
  if (checkingKey) return;
  checkingKey = true;
  const valid = await keyValid();
  checkingKey = false;
  if (valid === false) { streamLost(KEY_GONE); return; }  // retrying cannot help
  if (valid === null) streamLost("ktrader web does not answer: reconnecting…");
  failures += 1;
  setTimeout(connect, Math.min(STREAM_RETRY_MAX_MS, Math.max(retryMs, STREAM_RETRY_MS * 2 ** (failures - 1))));
}

// One server-sent event ("event: name", "data: line"s; comments and retry ignored) to its renderer.
function dispatch(frame, renderers) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  const render = renderers[event];
  if (!render || !data.length) return;
  lastMessageAt = Date.now();
  if (event === "status") streamBack();
  try { render(JSON.parse(data.join("\n"))); }
  catch (e) { console.error(`ktrader desk: ${event}`, e); }  // one bad message does not cost the stream
}

// The stream read with fetch, not EventSource: EventSource cannot send the token's header.
async function connect() {
  // (a key a header cannot carry, e.g. one mistyped into the address bar: every request would fail unsent)
  if (!/^[\x21-\x7e]+$/.test(TOKEN)) { streamLost(NO_KEY); return; }
  const renderers = { status: renderStatus, orders: renderOrders, market: renderMarket, events: renderEvents };
  const abort = new AbortController();
  let silent = setTimeout(() => abort.abort(), STREAM_SILENT_MS), retryMs = STREAM_RETRY_MS;
  try {
    const r = await fetch("/api/stream", { headers: authorised(), cache: "no-store", signal: abort.signal });
    if (r.status === 401) { clearTimeout(silent); streamLost(KEY_GONE); return; }
    if (r.status === 503) retryMs = 5000;  // too many pages open: not at once again
    if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
    // "live" only once a fresh status arrives (renderStatus): an open stream may carry stale figures
    if (!lost) setLive("connected…", "dim");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      clearTimeout(silent);
      silent = setTimeout(() => abort.abort(), STREAM_SILENT_MS);
      buffer += value;
      // line ends as LF (a CR, or a CR LF, ends a line too; a CR at a chunk's end waits: its LF may follow)
      const held = buffer.endsWith("\r") ? "\r" : "";
      buffer = buffer.slice(0, buffer.length - held.length).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(frame, renderers);
      }
      buffer += held;
    }
  } catch (e) { /* lost: below */ }
  clearTimeout(silent);
  onStreamError(retryMs);
}

$("halt").onclick = () => act("halt", "", false);
$("resume-all").onclick = () => act("resume", "", true);
$("equity-agent").onchange = drawEquity;
$("price-code").onchange = drawPrice;
setInterval(() => { $("clock").textContent = new Date().toLocaleTimeString("en-GB", { timeZone: "Asia/Seoul", hour12: false }) + " KST"; }, 1000);
connect();
