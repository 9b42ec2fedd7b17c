// neon-local console: plain JS, no build step. Every value from the server is put in the page as text.
"use strict";

const $ = (id) => document.getElementById(id);
const NOISE = ["iss", "iat", "nbf", "exp", "jti"];
let info = null;
let tables = [];

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch("/console/api/" + path, opts);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function show(el, ...nodes) { el.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined)); }
function errorBox(message) { return h("div", { class: "error" }, message); }

// --- tabs ------------------------------------------------------------------------------------------
const loaders = {};
function route() {
  const name = (location.hash || "#sql").slice(1);
  for (const page of document.querySelectorAll(".page")) page.classList.toggle("active", page.id === "page-" + name);
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  if (loaders[name]) loaders[name]();
}

// --- identities ------------------------------------------------------------------------------------
function fillIdentities(select, withCustom) {
  select.replaceChildren(...info.identities.map((idn, i) => h("option", { value: String(i) }, idn.label)));
  if (withCustom) select.append(h("option", { value: "custom" }, "custom claims…"));
}

function identityFrom(select) {
  if (select.value === "custom") {
    let claims;
    try { claims = JSON.parse($("custom-claims").value || "{}"); } catch (e) { throw new Error("claims are not JSON: " + e.message); }
    return { kind: "claims", role: $("custom-role").value, claims };
  }
  const idn = info.identities[Number(select.value)];
  return idn.kind === "user" ? { kind: "user", name: idn.name } : { kind: idn.kind };
}

function identityLabel(select) {
  return select.value === "custom" ? "custom " + $("custom-claims").value : select.selectedOptions[0].textContent;
}

// --- SQL editor --------------------------------------------------------------------------------------
function historyKey() { return "neon-local-history:" + identityLabel($("identity")); }

function remember(sql) {
  const list = JSON.parse(localStorage.getItem(historyKey()) || "[]").filter((s) => s !== sql);
  list.unshift(sql);
  localStorage.setItem(historyKey(), JSON.stringify(list.slice(0, 30)));
  fillHistory();
}

function fillHistory() {
  const list = JSON.parse(localStorage.getItem(historyKey()) || "[]");
  show($("history"), h("option", { value: "" }, `History (${list.length})…`), ...list.map((s) => h("option", { value: s }, s.slice(0, 80))));
}

function cellText(value) {
  if (value === null) return h("td", { class: "null" }, "NULL");
  if (value === "") return h("td", { class: "empty" });
  return h("td", {}, typeof value === "object" ? JSON.stringify(value) : String(value));
}

function resultView(answer, title, highlight) {
  const r = answer.result;
  const head = h("div", { class: "meta" }, h("b", {}, title), ` · ${answer.identity.role}`,
    answer.identity.claims && answer.identity.claims.sub ? ` · sub ${answer.identity.claims.sub}` : "", ` · ${answer.ms} ms`);
  if (answer.status !== 200) {
    return h("div", { class: "result" }, head, errorBox(errorText(r)));
  }
  const fields = r.fields || [];
  if (answer.explain) {
    return h("div", { class: "result" }, head, h("pre", { class: "plan" }, (r.rows || []).map((row) => row[0]).join("\n")));
  }
  const types = r.types || [];
  const table = h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, fields.map((f, i) => h("th", {}, f.name, h("small", {}, types[i] || f.dataTypeID))))),
    h("tbody", {}, (r.rows || []).map((row) => {
      const tr = h("tr", {}, row.map(cellText));
      if (highlight && highlight.has(JSON.stringify(row))) tr.className = highlight.className;
      return tr;
    })));
  const count = h("div", { class: "meta" }, `${r.command} · ${r.rowCount === null ? (r.rows || []).length : r.rowCount} row(s)`);
  return h("div", { class: "result" }, head, count, fields.length ? table : null);
}

function errorText(r) {
  let text = r.message || "error";
  if (r.code) text = `${r.code}: ${text}`;
  if (r.detail) text += `\nDETAIL: ${r.detail}`;
  if (r.hint) text += `\nHINT: ${r.hint}`;
  const pos = Number(r.position);
  if (pos) {
    const sql = lastSql;
    const before = sql.slice(0, pos - 1);
    const line = before.split("\n").length;
    const lineStart = before.lastIndexOf("\n") + 1;
    const lineEnd = sql.indexOf("\n", pos - 1);
    text += `\nLINE ${line}: ${sql.slice(lineStart, lineEnd < 0 ? undefined : lineEnd)}\n` + " ".repeat(`LINE ${line}: `.length + pos - 1 - lineStart) + "^";
  }
  return text;
}

let lastSql = "";
let lastPrefix = 0;  // characters the console put before the typed statement (EXPLAIN)
function markError(answer) {
  const pos = Number(answer.result.position) - lastPrefix;
  if (answer.status === 200 || !pos) return;
  const ed = $("editor");
  const word = /^[\w."]*/.exec(lastSql.slice(lastPrefix + pos - 1))[0];
  ed.focus();
  ed.setSelectionRange(pos - 1, pos - 1 + Math.max(word.length, 1));
}

async function runSql(explain) {
  const sql = $("editor").value;
  lastPrefix = explain ? "EXPLAIN ".length : 0;
  lastSql = (explain ? "EXPLAIN " : "") + sql;
  const out = $("results");
  try {
    const left = identityFrom($("identity"));
    const compare = $("compare").checked;
    const right = compare ? identityFrom($("identity2")) : null;
    show(out, h("div", { class: "meta" }, "running…"));
    const answers = await Promise.all([api("sql", { identity: left, sql, explain }),
      ...(compare ? [api("sql", { identity: right, sql, explain })] : [])]);
    remember(sql);
    if (!compare) {
      show(out, resultView(answers[0], identityLabel($("identity"))));
    } else {
      const keys = answers.map((a) => new Set(a.status === 200 ? (a.result.rows || []).map((r) => JSON.stringify(r)) : []));
      const onlyLeft = new Set([...keys[0]].filter((k) => !keys[1].has(k)));
      const onlyRight = new Set([...keys[1]].filter((k) => !keys[0].has(k)));
      onlyLeft.className = "only-left";
      onlyRight.className = "only-right";
      show(out, h("div", { class: "meta compare-summary" }, `${onlyLeft.size} row(s) only the left sees, ${onlyRight.size} only the right`),
        h("div", { class: "pair" }, resultView(answers[0], identityLabel($("identity")), onlyLeft),
          resultView(answers[1], identityLabel($("identity2")), onlyRight)));
    }
    markError(answers[0]);
  } catch (e) {
    show(out, errorBox(e.message));
  }
}

// --- RLS overview ---------------------------------------------------------------------------------
async function loadTables() {
  tables = (await api("rls")).tables;
  for (const select of document.querySelectorAll(".table-select")) {
    const current = select.value;
    show(select, ...tables.map((t) => h("option", { value: `${t.schema}.${t.name}` }, `${t.schema}.${t.name}`)));
    if (current) select.value = current;
  }
  return tables;
}

loaders.rls = async () => {
  try {
    await loadTables();
    show($("rls"), ...tables.map(tableCard));
    if (!tables.length) show($("rls"), h("p", { class: "hint" }, "No tables yet."));
  } catch (e) { show($("rls"), errorBox(e.message)); }
};

function tableCard(t) {
  const roles = Object.keys(t.grants);
  const grants = h("table", { class: "grid" }, h("thead", {}, h("tr", {}, h("th", {}, "grants"), ["SELECT", "INSERT", "UPDATE", "DELETE"].map((p) => h("th", {}, p)))),
    h("tbody", {}, roles.map((role) => h("tr", {}, h("td", {}, role), ["SELECT", "INSERT", "UPDATE", "DELETE"].map((p) => h("td", { class: t.grants[role].includes(p) ? "allowed" : "refused" }, t.grants[role].includes(p) ? "✓" : "—"))))));
  const policies = t.policies.map((p) => h("div", { class: "policy" },
    h("div", {}, h("b", {}, p.name), " ", h("span", { class: "badge" }, p.command), h("span", { class: "badge" }, p.permissive ? "permissive" : "restrictive"), " to ", p.roles.join(", ")),
    p.using ? h("div", {}, h("span", { class: "hint" }, "USING"), h("pre", {}, p.using)) : null,
    p.with_check ? h("div", {}, h("span", { class: "hint" }, "WITH CHECK"), h("pre", {}, p.with_check)) : null,
    (p.reads.functions.length || p.reads.claims.length) ? h("div", {}, h("span", { class: "hint" }, "reads "),
      p.reads.functions.map((f) => h("span", { class: "chip" }, f)), p.reads.claims.map((c) => h("span", { class: "chip" }, `claim ${c}`))) : null));
  return h("div", { class: "card", "data-table": `${t.schema}.${t.name}` },
    h("h3", {}, `${t.schema}.${t.name}`),
    h("div", {}, h("span", { class: "badge " + (t.rls ? "on" : "off") }, t.rls ? "RLS enabled" : "RLS disabled"),
      t.forced ? h("span", { class: "badge on" }, "forced") : null, h("span", { class: "hint" }, ` owner ${t.owner} · ${t.policies.length} polic${t.policies.length === 1 ? "y" : "ies"}`)),
    policies.length ? policies : h("p", { class: "hint" }, "No policies."), grants);
}

// --- policy editor ------------------------------------------------------------------------------------
let templates = [];
loaders.policies = async () => {
  try {
    await loadTables();
    if (!templates.length) {
      templates = (await api("templates")).templates;
      show($("pol-template"), ...templates.map((t) => h("option", { value: t.name }, t.label)));
      templateParams();
    }
    await previewPolicy();
  } catch (e) { $("pol-status").textContent = e.message; }
};

function templateParams() {
  const t = templates.find((x) => x.name === $("pol-template").value);
  show($("pol-params"), ...Object.entries(t.params).map(([k, v]) => h("label", {}, k + " ", h("input", { "data-param": k, value: v, oninput: previewPolicy }))));
}

async function previewPolicy() {
  if (!$("pol-template").value || !$("pol-table").value) return;  // still loading
  const params = {};
  for (const input of $("pol-params").querySelectorAll("input")) params[input.dataset.param] = input.value;
  try {
    const { sql } = await api("policy/preview", { table: $("pol-table").value, template: $("pol-template").value, params });
    $("pol-sql").value = sql;
    $("pol-status").textContent = "";
  } catch (e) { $("pol-status").textContent = e.message; $("pol-status").className = "status bad"; }
}

async function applyPolicy() {
  try {
    await api("owner-sql", { sql: $("pol-sql").value });
    $("pol-status").textContent = "Applied. The RLS and Matrix pages show the change.";
    $("pol-status").className = "status ok";
  } catch (e) { $("pol-status").textContent = e.message; $("pol-status").className = "status bad"; }
}

async function writeMigration() {
  try {
    const { path } = await api("policy/migration", { name: $("pol-name").value, sql: $("pol-sql").value });
    $("pol-status").textContent = "Wrote " + path;
    $("pol-status").className = "status ok";
  } catch (e) { $("pol-status").textContent = e.message; $("pol-status").className = "status bad"; }
}

// --- matrix ---------------------------------------------------------------------------------------------
loaders.matrix = async () => { try { await loadTables(); } catch (e) { show($("matrix"), errorBox(e.message)); } };

async function runMatrix() {
  let newRow = null;
  const text = $("mx-row").value.trim();
  try {
    if (text) newRow = JSON.parse(text);
  } catch (e) { show($("matrix"), errorBox("the new row is not JSON: " + e.message)); return; }
  show($("matrix"), h("div", { class: "meta" }, "measuring…"));
  try {
    const m = await api("matrix", { table: $("mx-table").value, new_row: newRow });
    const table = h("table", { class: "grid", id: "matrix-grid" },
      h("thead", {}, h("tr", {}, h("th", {}, `${m.table} (${m.total_rows} rows)`), m.commands.map((c) => h("th", {}, c.toUpperCase())))),
      h("tbody", {}, m.rows.map((row) => h("tr", { "data-identity": row.identity.label }, h("td", {}, row.identity.label, h("small", { class: "hint" }, ` ${row.identity.role}`)),
        m.commands.map((c) => matrixCell(row.cells[c], c))))));
    show($("matrix"), table);
  } catch (e) { show($("matrix"), errorBox(e.message)); }
}

function matrixCell(cell, command) {
  if (cell.state === "allowed" && cell.sample && cell.sample.length) {  // which rows: the first few, as Postgres prints them
    return h("td", { class: "allowed", "data-command": command, title: cell.statement },
      h("details", {}, h("summary", {}, `${cell.rows} row(s)`), h("pre", { class: "sample" }, cell.sample.join("\n"))));
  }
  if (cell.state === "allowed") {
    return h("td", { class: "allowed", "data-command": command, title: cell.statement }, command === "insert" ? "allowed" : `${cell.rows} row(s)`);
  }
  if (cell.state === "refused") {
    return h("td", { class: "refused", "data-command": command }, h("details", {}, h("summary", {}, "refused"), h("pre", {}, cell.why || cell.error)));
  }
  return h("td", { class: "errcell", "data-command": command }, cell.error);
}

// --- advisor ------------------------------------------------------------------------------------------
loaders.advisor = async () => {
  show($("advisor"), h("div", { class: "meta" }, "checking…"));
  try {
    const { findings } = await api("lints");
    const counts = {};
    for (const f of findings) counts[f.level] = (counts[f.level] || 0) + 1;
    $("adv-summary").textContent = findings.length ? Object.entries(counts).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ") : "No lints: nothing to fix.";
    show($("advisor"), ...findings.map((f) => h("div", { class: "card finding", "data-lint": f.name },
      h("div", {}, h("span", { class: "badge " + f.level }, f.level), h("b", {}, f.name), " ", h("code", {}, f.object)),
      h("div", {}, f.detail), h("p", { class: "hint" }, f.why), h("pre", {}, f.fix),
      f.fix.startsWith("--") ? null : h("button", { class: "apply-fix", onclick: () => applyFix(f) }, "Apply fix"))));
  } catch (e) { show($("advisor"), errorBox(e.message)); }
};

async function applyFix(f) {
  try { await api("owner-sql", { sql: f.fix }); } catch (e) { $("adv-summary").textContent = e.message; return; }
  loaders.advisor();
}

// --- tokens -------------------------------------------------------------------------------------------
async function mint() {
  const out = $("tk-out");
  try {
    const claims = JSON.parse($("tk-claims").value || "{}");
    const body = { user: $("tk-user").value || null, sub: $("tk-sub").value || null, claims, lifetime: Number($("tk-lifetime").value),
      alg: $("tk-alg").value, expired: $("tk-expired").checked };
    const t = await api("tokens/mint", body);
    show(out, h("pre", { id: "tk-token" }, t.token), h("pre", {}, JSON.stringify(t.claims, null, 2)),
      copyButton("Copy token", t.token), copyButton("Copy Authorization header", t.authorization),
      copyButton("Copy connection string", t.connection_string), copyButton("Copy curl", t.curl),
      h("button", { class: "copy", onclick: () => { $("tk-paste").value = t.token; decode(); } }, "Verify it →"));
  } catch (e) { show(out, errorBox(e.message)); }
}

function copyButton(label, text) {
  return h("button", { class: "copy", onclick: async (ev) => {
    try { await navigator.clipboard.writeText(text); ev.target.textContent = "Copied"; } catch { ev.target.textContent = "Copy refused by the browser"; }
  } }, label);
}

async function decode() {
  const out = $("tk-verdict");
  try {
    const v = await api("tokens/decode", { token: $("tk-paste").value, role: $("tk-role").value });
    show(out, h("p", { class: v.valid ? "ok verdict" : "bad verdict" }, v.valid ? `Valid for role ${v.role}: key ${v.kid} of provider ${v.provider}` : `Refused: ${v.error}`),
      v.detail ? h("p", { class: "hint" }, v.detail) : null,
      v.header ? h("pre", {}, "header " + JSON.stringify(v.header, null, 2)) : null,
      v.claims ? h("pre", {}, "claims " + JSON.stringify(v.claims, null, 2)) : null);
  } catch (e) { show(out, errorBox(e.message)); }
}

// --- request log ------------------------------------------------------------------------------------
const logEntries = [];
function logRow(e) {
  // A Data API request (it has a method) shows its query string, and a TCP or WebSocket entry is a whole
  // session: neither is SQL to run again.
  const sql = !e.method && e.path !== "tcp" && e.path !== "ws";
  const tr = h("tr", { title: e.statement, class: sql ? "rerun" : "", onclick: sql ? () => rerun(e) : null },
    h("td", {}, new Date(e.time * 1000).toLocaleTimeString()), h("td", {}, e.method ? `${e.method} ${e.path}` : e.path),
    h("td", {}, e.role || ""), h("td", {}, e.sub || ""), h("td", { class: "stmt" }, e.statement), h("td", {}, e.duration_ms ?? ""),
    h("td", {}, e.rows ?? ""), h("td", { class: e.status >= 400 ? "bad" : "" }, e.status ?? ""), h("td", { class: e.error ? "bad" : "" }, e.error || ""));
  tr.dataset.who = `${e.sub || ""} ${e.role || ""}`.toLowerCase();
  return tr;
}

function filterLog() {
  const q = $("log-filter").value.trim().toLowerCase();
  for (const tr of $("log").tBodies[0].rows) tr.classList.toggle("hidden", q !== "" && !tr.dataset.who.includes(q));
}

function rerun(e) {
  $("editor").value = e.statement;
  if (e.role === info.owner) {
    $("identity").value = String(info.identities.findIndex((i) => i.kind === "owner"));
  } else {
    const claims = Object.fromEntries(Object.entries(e.claims || {}).filter(([k]) => !NOISE.includes(k)));
    $("identity").value = "custom";
    $("custom-role").value = e.role;
    $("custom-claims").value = JSON.stringify(claims);
  }
  $("identity").dispatchEvent(new Event("change"));
  location.hash = "#sql";
}

function startLog() {
  const source = new EventSource("/console/api/log/stream");
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    logEntries.push(e);
    const body = $("log").tBodies[0];
    body.prepend(logRow(e));
    while (body.rows.length > 500) body.deleteRow(-1);
    filterLog();
  };
}

// --- limits -----------------------------------------------------------------------------------------
loaders.limits = async () => {
  try {
    const s = await api("limits");
    const a = s.allowlist;
    const modes = Object.entries(a.modes).map(([role, mode]) => `${role}=${mode}`).join(", ");
    $("lim-summary").textContent = `allow-list ${a.mode} for JWT roles${modes ? ` (${modes})` : ""} · ` +
      `${a.fingerprints.approved} approved fingerprint(s), ${a.fingerprints.refused} refused lately · ` +
      `rate limits: ${s.rate_limit} per protocol, ${s.rate_limit_identity} per identity · ${a.file}`;
    show($("lim-paths").tBodies[0], ...Object.entries(s.paths).map(([name, p]) => h("tr", { "data-path": name },
      h("td", {}, p.label), ...["rate_limited", "refused", "warned", "learned", "allowed"].map((k) => h("td", { class: k }, p[k])))));
    show($("lim-recent").tBodies[0], ...a.recent_refusals.slice().reverse().map((r) => h("tr", {},
      h("td", {}, r.at), h("td", {}, s.paths[r.path] ? s.paths[r.path].label : r.path), h("td", {}, r.role), h("td", {}, r.mode),
      h("td", {}, h("code", {}, r.fingerprint)), h("td", { class: "stmt" }, r.sql))));
  } catch (e) { $("lim-summary").textContent = e.message; }
};
setInterval(() => { if (location.hash === "#limits" && document.visibilityState === "visible") loaders.limits(); }, 2000);

// --- start ------------------------------------------------------------------------------------------
async function start() {
  info = await api("info");
  $("dbname").textContent = `${info.database} · ${info.sql_url}`;
  fillIdentities($("identity"), true);
  fillIdentities($("identity2"), false);
  const users = info.identities.filter((i) => i.kind === "user");
  $("identity").value = String(info.identities.indexOf(users[0] || info.identities[0]));
  $("identity2").value = String(info.identities.indexOf(users[1] || info.identities[0]));
  for (const select of document.querySelectorAll("select.role")) show(select, ...info.jwt_roles.map((r) => h("option", {}, r)));
  show($("tk-user"), h("option", { value: "" }, "—"), ...users.map((u) => h("option", { value: u.name }, u.name)));
  $("tk-user").value = users.length ? users[0].name : "";
  fillHistory();

  $("identity").addEventListener("change", () => { $("identity-custom").classList.toggle("hidden", $("identity").value !== "custom"); fillHistory(); });
  $("compare").addEventListener("change", () => $("identity2").classList.toggle("hidden", !$("compare").checked));
  $("history").addEventListener("change", () => { if ($("history").value) $("editor").value = $("history").value; $("history").value = ""; });
  $("run").addEventListener("click", () => runSql(false));
  $("explain").addEventListener("click", () => runSql(true));
  $("editor").addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); runSql(ev.shiftKey); }
  });
  $("rls-refresh").addEventListener("click", loaders.rls);
  $("pol-template").addEventListener("change", () => { templateParams(); previewPolicy(); });
  $("pol-table").addEventListener("change", previewPolicy);
  $("pol-apply").addEventListener("click", applyPolicy);
  $("pol-migration").addEventListener("click", writeMigration);
  $("mx-run").addEventListener("click", runMatrix);
  $("adv-run").addEventListener("click", loaders.advisor);
  $("tk-mint").addEventListener("click", mint);
  $("tk-decode").addEventListener("click", decode);
  $("log-filter").addEventListener("input", filterLog);
  $("lim-refresh").addEventListener("click", loaders.limits);
  window.addEventListener("hashchange", route);
  startLog();
  route();
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", () => start().catch((e) => document.querySelector("main").prepend(errorBox(e.message))));
