// The agents' callback page: log in, see the list, claim, call, record the result.
// Talks to the /callbacks API with the session cookie; every text from the
// server is put in with textContent, never as HTML.
"use strict";

const REFRESH_MS = 4000;
const state = { me: null, role: null, current: null, timer: null, busy: false, shown: null };
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: { error: "the server cannot be reached: " + err.message } };
  }
  let data = {};
  try {
    data = await response.json();
  } catch (err) {
    data = { error: "the server sent an answer this page cannot read (" + response.status + ")" };
  }
  if (response.status === 401 && state.me !== null) {
    showLogin("Your session has ended: log in again.");
  }
  return { ok: response.ok, status: response.status, data };
}

function say(text) {
  $("status").textContent = text;
  $("problem").textContent = "";
}

function complain(text) {
  $("problem").textContent = text;
}

// every refusal is {"error": "...", "detail": [{"field", "message"}]}: the short message, then each field
// the short message does not already name
function problemText(data, fallback) {
  if (!data || typeof data.error !== "string") return fallback;
  const more = (Array.isArray(data.detail) ? data.detail : [])
    .filter((d) => d && typeof d.message === "string" && !data.error.includes(d.message))
    .map((d) => d.field + ": " + d.message);
  return more.length ? data.error + " (" + more.join("; ") + ")" : data.error;
}

function when(iso) {
  if (!iso) return "-";
  return new Date(iso).toLocaleString();
}

function showLogin(message) {
  state.me = null;
  state.current = null;
  state.shown = null;
  if (state.timer !== null) {
    clearInterval(state.timer);
    state.timer = null;
  }
  $("whoami").hidden = true;
  $("list-section").hidden = true;
  $("work-section").hidden = true;
  $("login-section").hidden = false;
  if (message) complain(message);
  $("login-agent").focus();
}

function showList(me, role) {
  state.me = me;
  state.role = role;
  $("agent-name").textContent = me;
  $("agent-role").textContent = role;
  $("whoami").hidden = false;
  $("login-section").hidden = true;
  $("list-section").hidden = false;
  $("reassign-box").hidden = role !== "supervisor";
  refresh();
  if (state.timer === null) state.timer = setInterval(refresh, REFRESH_MS);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function actionButton(label, name, handler) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.setAttribute("aria-label", name);
  button.addEventListener("click", handler);
  return button;
}

function canOpen(cb) {
  const held = cb.state === "offered" || cb.state === "in_progress";
  return (held && cb.claimed_by === state.me) || state.role === "supervisor";
}

function renderList(callbacks) {
  // redraw only when something changed: a redraw would take the keyboard focus off a button
  const signature = JSON.stringify(callbacks);
  if (signature === state.shown) return;
  state.shown = signature;
  const body = $("callback-rows");
  body.replaceChildren();
  for (const cb of callbacks) {
    const row = document.createElement("tr");
    row.dataset.id = String(cb.id);
    row.dataset.state = cb.state;
    if (cb.claimed_by === state.me) row.className = "mine";
    const head = document.createElement("th");
    head.scope = "row";
    head.textContent = String(cb.id) + (cb.kind === "follow_up" ? " (follow-up)" : "");
    row.appendChild(head);
    cell(row, cb.number);
    cell(row, cb.queue);
    cell(row, cb.state.replace("_", " "));
    cell(row, when(cb.arrived_at));
    cell(row, when(cb.promised_by));
    cell(row, cb.claimed_by || "-");
    cell(row, String(cb.attempts));
    cell(row, cb.has_message ? "yes" : "no");
    const actions = cell(row, "");
    if (cb.state === "due" && !cb.claimed_by) {
      actions.appendChild(actionButton("Claim", "Claim callback " + cb.id, () => claim(cb.id)));
    }
    if (canOpen(cb)) {
      actions.appendChild(actionButton("Open", "Open callback " + cb.id, () => openWork(cb)));
    } else if (cb.state === "booked") {
      actions.appendChild(document.createTextNode("due " + when(cb.not_before)));
    }
    body.appendChild(row);
  }
  $("empty").hidden = callbacks.length > 0;
}

async function refresh() {
  if (state.me === null) return;
  const result = await api("GET", "/callbacks");
  if (!result.ok) {
    if (result.status !== 401) complain(problemText(result.data, "the list could not be loaded"));
    return;
  }
  renderList(result.data.callbacks);
  $("updated").textContent = new Date().toLocaleTimeString();
  if (state.current !== null) {
    const fresh = result.data.callbacks.find((cb) => cb.id === state.current.id);
    if (fresh) showDetails(fresh);
  }
}

function showDetails(cb) {
  state.current = cb;
  $("work-id").textContent = String(cb.id);
  $("work-number").textContent = cb.number;
  $("work-queue").textContent = cb.queue;
  $("work-kind").textContent = cb.kind === "follow_up" ? "follow-up call (ask how it went)" : "callback";
  $("work-state").textContent = cb.state.replace("_", " ");
  $("work-arrived").textContent = when(cb.arrived_at);
  $("work-promised").textContent = when(cb.promised_by);
  $("work-claimed-by").textContent = cb.claimed_by || "nobody";
  $("work-lease").textContent = when(cb.lease_until);
  $("work-attempts").textContent = String(cb.attempts);
  $("work-notes-saved").textContent = cb.notes || "-";
}

function openWork(cb) {
  const changed = state.current === null || state.current.id !== cb.id;
  showDetails(cb);
  if (changed) {
    $("notes").value = "";
    $("follow-up").checked = false;
    const audio = $("message");
    audio.pause();
    if (cb.has_message) {
      audio.src = "/callbacks/" + cb.id + "/message";
      $("message-box").hidden = false;
    } else {
      audio.removeAttribute("src");
      $("message-box").hidden = true;
    }
  }
  $("work-section").hidden = false;
  $("work-heading").scrollIntoView({ block: "nearest" });
}

function closeWork() {
  state.current = null;
  $("message").pause();
  $("work-section").hidden = true;
}

async function act(path, body, done) {
  if (state.busy) return null;
  state.busy = true;
  try {
    const result = await api("POST", path, body);
    if (!result.ok) {
      complain(problemText(result.data, "that did not work (" + result.status + ")"));
      return null;
    }
    say(done);
    return result.data;
  } finally {
    state.busy = false;
    refresh();
  }
}

async function claim(id) {
  const data = await act("/callbacks/" + id + "/claim", undefined, "You hold callback " + id + ".");
  if (data) openWork(data.callback);
}

function currentPath(action) {
  return "/callbacks/" + state.current.id + "/" + action;
}

function notesValue() {
  const text = $("notes").value.trim();
  return text === "" ? undefined : text;
}

async function outcome(result, message) {
  if (state.current === null) return;
  const body = { outcome: result, notes: notesValue() };
  if (result === "completed") body.follow_up = $("follow-up").checked;
  const data = await act(currentPath("outcome"), body, message);
  if (!data) return;
  if (data.follow_up_problem) complain("Follow-up " + data.follow_up_problem);
  else if (data.follow_up) say(message + " Follow-up call " + data.follow_up.id + " booked.");
  closeWork();
}

function localToIso(value) {
  return value ? new Date(value).toISOString() : undefined;
}

function wire() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { agent: $("login-agent").value.trim(), password: $("login-password").value };
    const result = await api("POST", "/callbacks/login", body);
    $("login-password").value = "";
    if (!result.ok) {
      complain(problemText(result.data, "log-in failed"));
      return;
    }
    say("Logged in as " + result.data.agent + ".");
    showList(result.data.agent, result.data.role);
  });
  $("logout").addEventListener("click", async () => {
    await api("POST", "/callbacks/logout", {});
    showLogin("");
    say("Logged out.");
  });
  $("refresh").addEventListener("click", refresh);
  $("close-work").addEventListener("click", closeWork);
  $("call").addEventListener("click", async () => {
    if (state.current === null) return;
    say("Calling: your phone rings first, then the customer's.");
    await act(currentPath("call"), {}, "The customer is being dialled. Record the result when you are done.");
  });
  $("done").addEventListener("click", () => outcome("completed", "Callback " + state.current.id + " done."));
  $("no-answer").addEventListener("click", () =>
    outcome("no_answer", "No answer recorded: callback " + state.current.id + " will be tried again later."),
  );
  $("busy").addEventListener("click", () =>
    outcome("busy", "Busy recorded: callback " + state.current.id + " will be tried again later."),
  );
  $("give-up").addEventListener("click", async () => {
    if (state.current === null) return;
    const id = state.current.id;
    if (await act(currentPath("give-up"), { notes: notesValue() }, "Callback " + id + " given up.")) closeWork();
  });
  $("release").addEventListener("click", async () => {
    if (state.current === null) return;
    const id = state.current.id;
    if (await act(currentPath("release"), {}, "Callback " + id + " is back in the list.")) closeWork();
  });
  $("save-notes").addEventListener("click", async () => {
    if (state.current === null) return;
    const notes = notesValue();
    if (notes === undefined) {
      complain("Write some notes first.");
      return;
    }
    const data = await act(currentPath("notes"), { notes }, "Notes saved.");
    if (data) {
      $("notes").value = "";
      showDetails(data.callback);
    }
  });
  $("reschedule").addEventListener("click", async () => {
    if (state.current === null) return;
    const at = localToIso($("resched-at").value);
    if (at === undefined) {
      complain("Pick the date and time to call back from.");
      return;
    }
    const id = state.current.id;
    const body = { not_before: at, window_end: localToIso($("resched-until").value) };
    if (await act(currentPath("reschedule"), body, "Callback " + id + " rescheduled.")) closeWork();
  });
  $("reassign").addEventListener("click", async () => {
    if (state.current === null) return;
    const agent = $("reassign-agent").value.trim();
    const data = await act(currentPath("reassign"), { agent }, "Callback " + state.current.id + " given to " + agent + ".");
    if (data) showDetails(data.callback);
  });
}

async function start() {
  wire();
  const result = await api("GET", "/callbacks/me");
  if (result.ok) showList(result.data.agent, result.data.role);
  else showLogin("");
}

document.addEventListener("DOMContentLoaded", start);
