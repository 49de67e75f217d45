// Booklab build-log page: replays and follows a launch over Server-Sent Events.
// Log lines are added with textContent only.
(function () {
  "use strict";
  const root = document.getElementById("booklab-build");
  if (!root) return;
  const el = (id) => document.getElementById(id);
  const logBox = el("build-log");
  const next = root.dataset.next || "";
  const PROGRESS = { queued: 5, claimed: 10, fetching: 20, building: 40, starting: 80, running: 95 };

  function setState(text, tone) {
    const badge = el("build-state");
    badge.textContent = text;
    badge.className = `badge text-bg-${tone || "secondary"}`;
  }

  function addLine(entry, cls) {
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
    const line = document.createElement("div");
    line.className = cls;
    if (entry.phase) {
      const phase = document.createElement("span");
      phase.className = "booklab-phase";
      phase.textContent = `[${entry.phase}]`;
      line.append(phase);
    }
    line.append(document.createTextNode(entry.message || ""));
    logBox.append(line);
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }

  function show(id, message) {
    const box = el(id);
    box.textContent = message;
    box.classList.remove("d-none");
  }

  const source = new EventSource(root.dataset.events);
  const data = (ev) => JSON.parse(ev.data);

  source.addEventListener("open", () => setState("connected"));
  source.addEventListener("log", (ev) => addLine(data(ev), "log-line"));
  source.addEventListener("state", (ev) => {
    const entry = data(ev);
    addLine({ message: `— ${entry.state}: ${entry.message || ""}` }, `state-line ${entry.state}`);
    setState(entry.state, entry.state === "failed" ? "danger" : "info");
    if (entry.state in PROGRESS) el("build-progress").style.width = `${PROGRESS[entry.state]}%`;
  });
  source.addEventListener("job", (ev) => {
    // make this page's address the job's, so a reload shows the log even after the build
    const url = new URL(data(ev).page, window.location.href);
    if (next) url.searchParams.set("next", next);
    window.history.replaceState(null, "", url);
  });
  source.addEventListener("ready", (ev) => {
    source.close();
    const url = data(ev).url + next;
    setState("ready", "success");
    el("build-progress").style.width = "100%";
    const done = el("build-done");
    done.textContent = "Your server is ready: ";
    const link = document.createElement("a");
    link.href = url;
    link.textContent = "open it";
    done.append(link);
    done.classList.remove("d-none");
    if (root.dataset.open === "yes") window.location.assign(url);
  });
  source.addEventListener("failed", (ev) => {
    source.close();
    setState("failed", "danger");
    el("build-progress").classList.add("bg-danger");
    show("build-failed", `The launch failed: ${data(ev).message}`);
  });
  source.addEventListener("stopped", (ev) => {
    source.close();
    setState("stopped", "secondary");
    show("build-done", data(ev).message);
  });
  source.addEventListener("end", () => source.close());
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CONNECTING) setState("reconnecting…", "warning");
  });
})();
