// The chat page the server answers at "/": one self-contained HTML document (inline CSS and JS, no
// build step, no external requests). It streams replies from /v1/chat/completions (fetch + SSE
// parsing), keeps the conversation in the page, and has a system prompt field, sampling settings,
// an optional API key (kept in localStorage) and a stop button (AbortController).
//
// The inline script avoids backquotes and dollar-brace so this file can hold it in a template literal.

export const WEB_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>qwen-native chat</title>
<style>
  :root { --bg: #f6f7f9; --fg: #1d2330; --muted: #6b7385; --user: #dbe8ff; --bot: #ffffff; --line: #d9dde5; --accent: #3b5bdb; --err: #c92a2a; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--fg);
         display: flex; flex-direction: column; height: 100vh; }
  header { display: flex; align-items: center; gap: 12px; padding: 10px 16px; border-bottom: 1px solid var(--line); background: #fff; }
  header h1 { font-size: 16px; margin: 0; }
  header .model { color: var(--muted); font-size: 13px; }
  header .spacer { flex: 1; }
  details.settings { padding: 8px 16px; background: #fff; border-bottom: 1px solid var(--line); }
  details.settings summary { cursor: pointer; color: var(--muted); font-size: 13px; }
  .grid { display: grid; grid-template-columns: 140px 1fr; gap: 6px 12px; align-items: center; margin-top: 8px; max-width: 760px; }
  .grid label { color: var(--muted); font-size: 13px; }
  .grid textarea, .grid input { font: inherit; padding: 4px 6px; border: 1px solid var(--line); border-radius: 4px; width: 100%; }
  #messages { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: 820px; padding: 8px 12px; border-radius: 8px; white-space: pre-wrap; word-wrap: break-word; border: 1px solid var(--line); }
  .msg.user { align-self: flex-end; background: var(--user); }
  .msg.assistant { align-self: flex-start; background: var(--bot); }
  .msg.assistant.streaming::after { content: "\\25CF"; color: var(--accent); margin-left: 4px; }
  .msg.error { color: var(--err); }
  .msg .note { color: var(--muted); font-size: 12px; margin-left: 6px; }
  .empty { color: var(--muted); text-align: center; margin-top: 20vh; }
  form { display: flex; gap: 8px; padding: 10px 16px; border-top: 1px solid var(--line); background: #fff; }
  form textarea { flex: 1; font: inherit; resize: none; height: 3.2em; padding: 6px 8px; border: 1px solid var(--line); border-radius: 6px; }
  button { font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
  button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
  button:disabled { opacity: .45; cursor: default; }
  #status { color: var(--muted); font-size: 12px; padding: 0 16px 6px; min-height: 1.4em; background: #fff; }
</style>
</head>
<body data-busy="false">
<header>
  <h1>qwen-native</h1><span class="model" id="model-id">loading...</span>
  <span class="spacer"></span>
  <button type="button" id="clear">New chat</button>
</header>
<details class="settings">
  <summary>Settings</summary>
  <div class="grid">
    <label for="system">System prompt</label><textarea id="system" rows="2">You are a helpful assistant.</textarea>
    <label for="temperature">Temperature</label><input id="temperature" type="number" min="0" max="2" step="0.1" placeholder="model default">
    <label for="top-p">Top p</label><input id="top-p" type="number" min="0" max="1" step="0.05" placeholder="model default">
    <label for="max-tokens">Max tokens</label><input id="max-tokens" type="number" min="1" step="1" placeholder="model default">
    <label for="api-key">API key</label><input id="api-key" type="password" placeholder="only if the server needs one" autocomplete="off">
  </div>
</details>
<div id="messages"><div class="empty" id="empty">Send a message to start.</div></div>
<div id="status"></div>
<form id="form">
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)" autofocus></textarea>
  <button type="submit" class="primary" id="send">Send</button>
  <button type="button" id="stop" disabled>Stop</button>
</form>
<script>
"use strict";
(function () {
  var $ = function (id) { return document.getElementById(id); };
  var history = [];        // [{role, content}] of finished turns
  var controller = null;   // AbortController of the reply streaming now
  var modelId = null;
  var apiKey = $("api-key");
  try { apiKey.value = localStorage.getItem("qwen-native-api-key") || ""; } catch (e) {}
  apiKey.addEventListener("change", function () { try { localStorage.setItem("qwen-native-api-key", apiKey.value); } catch (e) {} });

  function headers() {
    var h = { "Content-Type": "application/json" };
    if (apiKey.value) h.Authorization = "Bearer " + apiKey.value;
    return h;
  }
  function url(p) { return new URL(p, location.href).toString(); }
  function status(text) { $("status").textContent = text; }
  function setBusy(busy) {
    document.body.dataset.busy = busy ? "true" : "false";
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }
  function addMessage(role, text) {
    var empty = $("empty");
    if (empty) empty.remove();
    var el = document.createElement("div");
    el.className = "msg " + role;
    el.textContent = text;
    $("messages").appendChild(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }
  function numberField(id) {
    var v = $(id).value.trim();
    return v === "" ? undefined : Number(v);
  }
  async function errorText(res) {
    try { var j = await res.json(); if (j && j.error && j.error.message) return j.error.message; } catch (e) {}
    return "HTTP " + res.status;
  }

  function loadModel() {
    fetch(url("v1/models"), { headers: headers() }).then(function (res) {
      if (!res.ok) return errorText(res).then(function (m) { $("model-id").textContent = "(" + m + ")"; });
      return res.json().then(function (j) { modelId = j.data[0].id; $("model-id").textContent = modelId; });
    }).catch(function (e) { $("model-id").textContent = "(" + e.message + ")"; });
  }
  apiKey.addEventListener("change", loadModel);
  loadModel();

  // Reads an SSE body; calls onData with each "data:" payload.
  async function readSse(res, onData) {
    var reader = res.body.getReader();
    var decoder = new TextDecoder();
    var buf = "";
    for (;;) {
      var r = await reader.read();
      if (r.done) break;
      buf += decoder.decode(r.value, { stream: true }).replace(/\\r\\n/g, "\\n");
      var i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        var event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        var data = event.split("\\n").filter(function (l) { return l.indexOf("data:") === 0; })
          .map(function (l) { return l.slice(5).replace(/^ /, ""); }).join("\\n");
        if (data && onData(data) === false) return;
      }
    }
  }

  async function send(text) {
    var userEl = addMessage("user", text);
    var el = addMessage("assistant", "");
    el.classList.add("streaming");
    var messages = [];
    var system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages = messages.concat(history, [{ role: "user", content: text }]);
    var body = { messages: messages, stream: true, stream_options: { include_usage: true } };
    if (modelId) body.model = modelId;
    var t = numberField("temperature"), p = numberField("top-p"), m = numberField("max-tokens");
    if (t !== undefined) body.temperature = t;
    if (p !== undefined) body.top_p = p;
    if (m !== undefined) body.max_tokens = m;
    controller = new AbortController();
    setBusy(true);
    status("generating...");
    var reply = "", finish = null, usage = null, t0 = performance.now();
    try {
      var res = await fetch(url("v1/chat/completions"), { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
      if (!res.ok) throw new Error(await errorText(res));
      await readSse(res, function (data) {
        if (data === "[DONE]") return false;
        var j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message);
        if (j.usage) usage = j.usage;
        var c = j.choices && j.choices[0];
        if (!c) return;
        if (c.delta && c.delta.content) { reply += c.delta.content; el.textContent = reply; el.scrollIntoView({ block: "end" }); }
        if (c.finish_reason) finish = c.finish_reason;
      });
      history.push({ role: "user", content: text }, { role: "assistant", content: reply });
      var secs = (performance.now() - t0) / 1000;
      status((usage ? usage.completion_tokens + " tokens, " + (usage.completion_tokens / secs).toFixed(1) + " tok/s, " : "") + "finish: " + (finish || "?"));
    } catch (e) {
      if (e.name === "AbortError") {
        var note = document.createElement("span");
        note.className = "note";
        note.textContent = "[stopped; not kept in the history]";
        el.appendChild(note);
        el.dataset.stopped = "true";
        userEl.dataset.stopped = "true";
        status("stopped");
      } else {
        el.classList.add("error");
        el.textContent = "Error: " + e.message;
        status("error");
      }
    } finally {
      el.classList.remove("streaming");
      controller = null;
      setBusy(false);
    }
  }

  $("form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $("form").requestSubmit(); }
  });
  $("stop").addEventListener("click", function () { if (controller) controller.abort(); });
  $("clear").addEventListener("click", function () {
    if (controller) controller.abort();
    history = [];
    $("messages").innerHTML = '<div class="empty" id="empty">Send a message to start.</div>';
    status("");
  });
})();
</script>
</body>
</html>
`;
