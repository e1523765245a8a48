"use strict";
// The review page: code a note through the API, then a coder accepts, rejects and adds codes and
// exports the final set. Evidence offsets from the server count Unicode code points (Python str
// indices) while the DOM counts UTF-16 units, so every offset goes through state.units.

const $ = (id) => document.getElementById(id);

const state = {
  note: null, // {id, text} exactly as sent
  units: [0], // code point index -> UTF-16 index into note.text
  model: null,
  limits: null,
  codes: [], // {code, system, description, score, suggested, evidence, flags, source, decision}
  items: new Map(), // code -> its <li>
  selected: null,
};

const SOURCE_ORDER = { suggested: 0, candidate: 1, added: 2 };
const FLAG_HELP = {
  evidence_not_found: "the model's quote is not in the note",
  evidence_fuzzy: "the quote was found only approximately",
  evidence_missing: "the model gave no evidence",
  not_billable: "a category header, not a billable code",
  gem_approximate: "translated through an approximate GEM mapping",
};

// ------------------------------------------------------------------------------------------- api
function authHeaders(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server cannot be reached");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.message ? body.message : `HTTP ${response.status}`;
    throw new Error(response.status === 401 ? `${message} (enter the API token at the top)` : message);
  }
  return body;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function setAddMessage(text, isError = false) {
  const message = $("add-message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

// ------------------------------------------------------------------------------------------ note
function codePointUnits(text) {
  const units = [0];
  let at = 0;
  for (const ch of text) {
    at += ch.length;
    units.push(at);
  }
  return units;
}

function highlightSpans(evidence) {
  const last = state.units.length - 1;
  const spans = evidence
    .map((ev) => [Math.min(ev.start, last), Math.min(ev.end, last)])
    .filter(([start, end]) => end > start)
    .map(([start, end]) => [state.units[start], state.units[end]])
    .sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const span of spans) {
    const prev = merged[merged.length - 1];
    if (prev && span[0] <= prev[1]) prev[1] = Math.max(prev[1], span[1]);
    else merged.push([...span]);
  }
  return merged;
}

function renderNote() {
  const text = state.note.text;
  const item = state.codes.find((c) => c.code === state.selected);
  const parts = [];
  let at = 0;
  for (const [start, end] of item ? highlightSpans(item.evidence) : []) {
    if (start > at) parts.push(document.createTextNode(text.slice(at, start)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(start, end);
    mark.title = `evidence for ${item.code}`;
    parts.push(mark);
    at = end;
  }
  parts.push(document.createTextNode(text.slice(at)));
  $("note-view").replaceChildren(...parts);
}

function showNoteView(show) {
  $("code-form").hidden = show;
  $("note-view-box").hidden = !show;
}

// ----------------------------------------------------------------------------------------- codes
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scoreView(c) {
  const box = el("span", "score");
  if (c.score === null || c.score === undefined) return box;
  const bar = el("span", "bar");
  bar.setAttribute("aria-hidden", "true");
  const fill = el("span", "fill");
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, c.score)) * 100)}%`;
  const tick = el("span", "tick");
  tick.style.left = `${Math.round(Math.max(0, Math.min(1, state.model.threshold)) * 100)}%`;
  bar.append(fill, tick);
  box.append(bar, el("span", "num", c.score.toFixed(2)));
  box.title = `score ${c.score.toFixed(3)}; threshold ${state.model.threshold.toFixed(3)}`;
  return box;
}

function codeItem(c) {
  const li = el("li", "code-item");
  const select = el("button", "code-select");
  select.type = "button";
  select.setAttribute("aria-pressed", "false");
  select.append(el("span", "code", c.code), el("span", "desc", c.description || "(no description)"));
  const n = highlightSpans(c.evidence).length; // overlapping spans show as one passage
  if (c.source !== "added") {
    select.append(el("span", "evcount", n ? `${n} evidence passage${n > 1 ? "s" : ""}` : "no evidence"));
  }
  select.addEventListener("click", () => selectCode(c.code));

  const meta = el("div", "meta");
  meta.append(scoreView(c));
  for (const flag of c.flags) {
    const badge = el("span", "flag", flag.replaceAll("_", " "));
    if (FLAG_HELP[flag]) badge.title = FLAG_HELP[flag];
    meta.append(badge);
  }

  const decide = el("div", "decide");
  decide.setAttribute("role", "group");
  decide.setAttribute("aria-label", `Decision on ${c.code}`);
  if (c.source === "added") {
    const remove = el("button", "reject", "Remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${c.code}`);
    remove.addEventListener("click", () => removeAdded(c.code));
    decide.append(remove);
  } else {
    for (const [decision, label] of [["accepted", "Accept"], ["rejected", "Reject"]]) {
      const button = el("button", decision === "accepted" ? "accept" : "reject", label);
      button.type = "button";
      button.dataset.decision = decision;
      button.setAttribute("aria-label", `${label} ${c.code}`);
      button.addEventListener("click", () => setDecision(c.code, decision));
      decide.append(button);
    }
  }
  li.append(select, meta, decide);
  state.items.set(c.code, li);
  updateItem(c);
  return li;
}

function updateItem(c) {
  const li = state.items.get(c.code);
  if (!li) return;
  li.dataset.decision = c.decision;
  li.querySelector(".code-select").setAttribute("aria-pressed", String(state.selected === c.code));
  for (const button of li.querySelectorAll("button[data-decision]")) {
    button.setAttribute("aria-pressed", String(button.dataset.decision === c.decision));
  }
}

function fillList(list, codes, emptyText) {
  list.replaceChildren(...codes.map(codeItem));
  if (!codes.length) list.append(el("li", "empty muted", emptyText));
}

function renderCodes() {
  state.items.clear();
  const of = (source) => state.codes.filter((c) => c.source === source);
  fillList($("suggested"), of("suggested"), "No code reached the threshold.");
  fillList($("candidates"), of("candidate"), "No other candidates.");
  fillList($("added"), of("added"), "None yet.");
  $("suggested-count").textContent = `(${of("suggested").length})`;
  $("candidate-count").textContent = `(${of("candidate").length})`;
  renderSummary();
}

function renderSummary() {
  const n = finalCodes().length;
  $("final-summary").textContent = `Final code set: ${n} code${n === 1 ? "" : "s"} (accepted and added, not rejected).`;
}

function renderEdits(edits) {
  $("edits-box").hidden = !edits.length;
  $("edits").replaceChildren(
    ...edits.map((e) => {
      const li = el("li");
      li.append(el("span", "rule", e.rule), ` ${e.action} `, el("span", "code", e.codes.join(" → ")));
      if (e.reason) li.append(el("span", "muted", ` — ${e.reason}`));
      return li;
    }),
  );
}

function selectCode(code) {
  state.selected = code;
  state.codes.forEach(updateItem);
  renderNote();
  const item = state.codes.find((c) => c.code === code);
  const marks = $("note-view").querySelectorAll("mark");
  if (marks.length) {
    marks[0].scrollIntoView({ block: "center" });
    setStatus(`${code}: ${marks.length} evidence passage${marks.length > 1 ? "s" : ""} highlighted in the note.`);
  } else {
    setStatus(`${code}: no evidence in the note${item && item.source === "added" ? " (added by you)" : ""}.`);
  }
}

function setDecision(code, decision) {
  const c = state.codes.find((x) => x.code === code);
  c.decision = c.decision === decision && c.source === "candidate" ? "none" : decision;
  updateItem(c);
  renderSummary();
  setStatus(`${code} ${c.decision === "none" ? "left out" : c.decision}.`);
}

function removeAdded(code) {
  state.codes = state.codes.filter((c) => c.code !== code);
  if (state.selected === code) state.selected = null;
  renderCodes();
  renderNote();
  setAddMessage(`Removed ${code}.`);
  $("add-code").focus();
}

function finalCodes() {
  return state.codes
    .filter((c) => c.decision === "accepted")
    .sort((a, b) => SOURCE_ORDER[a.source] - SOURCE_ORDER[b.source])
    .map((c) => ({ code: c.code, system: c.system, description: c.description, source: c.source, score: c.score }));
}

// --------------------------------------------------------------------------------------- actions
async function codeNote(event) {
  event.preventDefault();
  const text = $("note-text").value;
  if (!text.trim()) {
    setStatus("Paste a note or open a .txt file first.", true);
    $("note-text").focus();
    return;
  }
  const chars = codePointUnits(text).length - 1;
  if (state.limits && chars > state.limits.max_note_chars) {
    setStatus(`The note has ${chars.toLocaleString()} characters; this server takes at most ` +
      `${state.limits.max_note_chars.toLocaleString()}.`, true);
    return;
  }
  const id = $("note-id").value.trim() || "note";
  $("code-button").disabled = true;
  setStatus("Coding…");
  try {
    const body = await api("v1/code", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ id, text }),
    });
    const result = body.results[0];
    state.model = body.model;
    state.note = { id: result.id, text };
    state.units = codePointUnits(text);
    state.selected = null;
    const coded = new Set(result.codes.map((c) => c.code));
    const keptAdded = state.codes.filter((c) => c.source === "added" && !coded.has(c.code)); // survive a re-code
    state.codes = result.codes.map((c) => ({
      ...c,
      source: c.suggested ? "suggested" : "candidate",
      decision: c.suggested ? "accepted" : "none",
    })).concat(keptAdded);
    renderCodes();
    renderEdits(result.edits);
    renderNote();
    $("note-caption").textContent = `${result.id} · ${chars.toLocaleString()} characters`;
    $("results").hidden = false;
    showNoteView(true);
    const n = state.codes.filter((c) => c.suggested).length;
    setStatus(`Coded: ${n} suggested code${n === 1 ? "" : "s"}, threshold ${result.threshold.toFixed(3)}.`);
  } catch (err) {
    setStatus(`Coding failed: ${err.message}`, true);
  } finally {
    $("code-button").disabled = false;
  }
}

async function addCode(event) {
  event.preventDefault();
  const raw = $("add-code").value.trim();
  if (!raw) {
    setAddMessage("Type a code to add, e.g. E11.9.", true);
    return;
  }
  let record;
  try {
    record = await api(`v1/codes/${encodeURIComponent(raw)}`, { headers: authHeaders() });
  } catch (err) {
    setAddMessage(`Not added: ${err.message}`, true);
    return;
  }
  const existing = state.codes.find((c) => c.code === record.code);
  if (existing) {
    existing.decision = "accepted";
    updateItem(existing);
    renderSummary();
    setAddMessage(`${record.code} is already listed; it is accepted.`);
  } else {
    state.codes.push({
      code: record.code, system: record.system, description: record.description, score: null,
      suggested: false, evidence: [], flags: record.billable ? [] : ["not_billable"], source: "added",
      decision: "accepted",
    });
    renderCodes();
    setAddMessage(`Added ${record.code}: ${record.description || "(no description)"}.`);
  }
  $("add-code").value = "";
}

function csvField(value) {
  const s = value === null || value === undefined ? "" : String(value);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function download(name, type, content) {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const link = el("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function fileStem() {
  return (state.note.id || "note").replace(/[^\w.-]+/g, "_");
}

function exportJson() {
  const doc = { note_id: state.note.id, model: state.model.coder, codes: finalCodes() };
  download(`${fileStem()}-codes.json`, "application/json", JSON.stringify(doc, null, 2) + "\n");
}

function exportCsv() {
  const columns = ["code", "system", "description", "source", "score"];
  const rows = finalCodes().map((c) => columns.map((k) => csvField(c[k])).join(","));
  download(`${fileStem()}-codes.csv`, "text/csv", [columns.join(","), ...rows].join("\r\n") + "\r\n");
}

async function openFile() {
  const file = $("note-file").files[0];
  if (!file) return;
  $("note-text").value = await file.text();
  $("note-id").value = file.name.replace(/\.[^.]*$/, "") || "note";
  showNoteView(false);
  setStatus(`Opened ${file.name}; press Code note.`);
}

async function init() {
  $("code-form").addEventListener("submit", codeNote);
  $("note-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("code-form").requestSubmit();
  });
  $("note-file").addEventListener("change", openFile);
  $("edit-button").addEventListener("click", () => {
    showNoteView(false);
    setStatus("Edit the note, then code it again.");
    $("note-text").focus();
  });
  $("add-form").addEventListener("submit", addCode);
  $("export-json").addEventListener("click", exportJson);
  $("export-csv").addEventListener("click", exportCsv);
  try {
    const health = await api("healthz");
    const m = health.model;
    state.model = m;
    state.limits = health.limits;
    $("model-info").textContent =
      `${m.coder} model · ${m.labels.toLocaleString()} codes (${m.systems.join(", ")}) · threshold ${m.threshold.toFixed(3)}`;
    $("token-box").hidden = !health.auth_required;
  } catch (err) {
    $("model-info").textContent = `Server not reachable: ${err.message}`;
  }
  document.body.dataset.ready = "true";
}

init();
