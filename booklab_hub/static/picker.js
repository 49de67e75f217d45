// Booklab repository picker. Data from GitLab is only ever put on the page
// with textContent / Option(), never as HTML.
(function () {
  "use strict";
  const root = document.getElementById("booklab-picker");
  if (!root) return;
  const base = root.dataset.base; // e.g. "/hub/booklab/"
  const publicBase = root.dataset.public; // e.g. "https://hub.example.org"
  const el = (id) => document.getElementById(id);
  const state = { search: "", page: 1, nextPage: null, seq: 0, project: null };
  const DEBOUNCE_MS = 300;

  function showError(id, message) {
    const box = el(id);
    box.textContent = message || "";
    box.classList.toggle("d-none", !message);
  }

  async function getJSON(url) {
    let resp;
    try {
      resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    } catch (err) {
      throw new Error("The hub cannot be reached; check your connection and reload the page.");
    }
    let data = {};
    try { data = await resp.json(); } catch (err) { data = {}; }
    if (!resp.ok) throw new Error(data.error || `The hub answered ${resp.status}; try again.`);
    return data;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? "" : `active ${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
  }

  function projectItem(p) {
    const item = document.createElement("button");
    item.type = "button";
    item.className = "list-group-item list-group-item-action booklab-project";
    item.dataset.path = p.path_with_namespace;
    const name = document.createElement("div");
    name.className = "fw-semibold";
    name.textContent = p.path_with_namespace;
    const desc = document.createElement("div");
    desc.className = "small text-muted";
    desc.textContent = p.description || "";
    const active = document.createElement("div");
    active.className = "text-muted booklab-when";
    active.textContent = when(p.last_activity_at);
    item.append(name, desc, active);
    item.addEventListener("click", () => chooseProject(p, item));
    return item;
  }

  function renderProjects(projects) {
    const list = el("project-list");
    list.replaceChildren();
    if (!projects.length) {
      const empty = document.createElement("div");
      empty.className = "list-group-item text-muted";
      empty.textContent = state.search ? `No project matches “${state.search}”.` : "You are not a member of any project yet.";
      list.append(empty);
    }
    for (const p of projects) list.append(projectItem(p));
    el("page-label").textContent = `Page ${state.page}`;
    el("prev-page").disabled = state.page <= 1;
    el("next-page").disabled = !state.nextPage;
  }

  async function loadProjects() {
    const seq = ++state.seq;
    const params = new URLSearchParams({ search: state.search, page: String(state.page) });
    root.setAttribute("aria-busy", "true");
    try {
      const data = await getJSON(`${base}api/projects?${params}`);
      if (seq !== state.seq) return; // a newer search is under way
      showError("project-error", "");
      state.nextPage = data.next_page;
      renderProjects(data.projects);
    } catch (err) {
      if (seq !== state.seq) return;
      state.nextPage = null;
      showError("project-error", err.message);
      renderProjects([]);
    } finally {
      if (seq === state.seq) root.removeAttribute("aria-busy");
    }
  }

  function fillRefs(refs) {
    const select = el("ref-select");
    select.replaceChildren();
    for (const [label, names] of [["Branches", refs.branches], ["Tags", refs.tags]]) {
      if (!names.length) continue;
      const group = document.createElement("optgroup");
      group.label = label;
      for (const n of names) {
        const isDefault = label === "Branches" && n === refs.default_branch;
        group.append(new Option(isDefault ? `${n} (default)` : n, n, isDefault, isDefault));
      }
      select.append(group);
    }
    select.disabled = false;
    el("launch-button").disabled = false;
    el("refs-note").classList.toggle("d-none", !refs.truncated);
    offerAutosave(refs.branches);
  }

  // booklab/<user>/<server>-autosave (booklab_hub/autosave.py): the person's own
  // autosaved work on this project, offered before its default branch
  function offerAutosave(branches) {
    const mine = `booklab/${el("launch-panel").dataset.user}/`;
    const found = branches.filter((n) => n.startsWith(mine) && n.endsWith("-autosave"));
    el("autosave-offer").classList.toggle("d-none", !found.length);
    el("autosave-branch").textContent = found[0] || "";
  }

  async function chooseProject(p, item) {
    for (const other of document.querySelectorAll(".booklab-project.active")) other.classList.remove("active");
    item.classList.add("active");
    state.project = p.path_with_namespace;
    el("launch-placeholder").classList.add("d-none");
    el("launch-panel").classList.remove("d-none");
    el("chosen-project").textContent = p.path_with_namespace;
    el("launch-project").value = p.path_with_namespace;
    el("ref-select").replaceChildren();
    el("ref-select").disabled = true;
    el("launch-button").disabled = true;
    el("autosave-offer").classList.add("d-none");
    showError("refs-error", "");
    try {
      const refs = await getJSON(`${base}api/refs?${new URLSearchParams({ project: p.path_with_namespace })}`);
      if (state.project !== refs.project) return; // another project was chosen meanwhile
      fillRefs(refs);
    } catch (err) {
      if (state.project === p.path_with_namespace) showError("refs-error", err.message);
    }
    updateLink();
  }

  function currentRef() {
    return el("sha-input").value.trim() || el("ref-select").value || "HEAD";
  }

  function updateLink() {
    if (!state.project) return;
    const profile = el("profile-select") ? el("profile-select").value : "default";
    const query = profile && profile !== "default" ? `?${new URLSearchParams({ profile })}` : "";
    const link = `${publicBase}${base}v2/gl/${encodeURIComponent(state.project)}/${encodeURIComponent(currentRef())}${query}`;
    const badge = `${publicBase}${base}badge.svg`;
    el("launch-link").value = link;
    el("badge-markdown").value = `[![Launch on Booklab](${badge})](${link})`;
    el("badge-rst").value = `.. image:: ${badge}\n   :target: ${link}\n   :alt: Launch on Booklab`;
  }

  async function copyLink() {
    const input = el("launch-link");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (err) {
      input.select(); // plain-http hubs have no clipboard API: fall back to a selection
      document.execCommand("copy");
    }
    el("copy-status").textContent = "Launch link copied";
  }

  let timer = null;
  el("project-search").addEventListener("input", (ev) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.search = ev.target.value.trim();
      state.page = 1;
      loadProjects();
    }, DEBOUNCE_MS);
  });
  el("prev-page").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); loadProjects(); });
  el("next-page").addEventListener("click", () => { if (state.nextPage) { state.page = state.nextPage; loadProjects(); } });
  el("ref-select").addEventListener("change", updateLink);
  el("autosave-continue").addEventListener("click", () => {
    el("ref-select").value = el("autosave-branch").textContent;
    el("sha-input").value = "";
    updateLink();
  });
  el("sha-input").addEventListener("input", updateLink);
  if (el("profile-select")) el("profile-select").addEventListener("change", updateLink);
  el("copy-link").addEventListener("click", copyLink);
  el("launch-form").addEventListener("submit", () => {
    el("launch-button").disabled = true;
    el("launch-button").textContent = "Launching…";
  });
  loadProjects();
})();
