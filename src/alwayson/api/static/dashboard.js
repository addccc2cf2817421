// The alwayson dashboard: asks for the API token, polls /api/v1/dashboard every second
// and draws it. Plain JavaScript, no dependencies; every text goes in with textContent,
// never innerHTML, so nothing the platform reports can inject markup.
"use strict";

(() => {
  const TOKEN_KEY = "alwayson.token";
  const ENDPOINT = "/api/v1/dashboard";
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const HIGHLIGHT_MS = 15000;
  const MAX_CHANGES = 40;
  const DASH = "—";
  const TONE = { healthy: "ok", degraded: "warn", critical: "bad", unknown: "none" };
  const ICON = { ok: "✔", warn: "▲", bad: "✖", none: "?" };
  const KIND_NAMES = {
    gateway: "gateway",
    frontdoor: "front door",
    agent: "database agent",
    etcd: "etcd member",
  };

  const state = {
    timer: null,
    inflight: null,
    lastDoc: null,
    lastOkAt: 0,
    seen: new Map(),
    primed: false,
    flagged: new Map(),
    changes: [],
    drawnChanges: "",
  };

  const $ = (id) => document.getElementById(id);

  // h("li", {class: "x", "data-id": 3}, "text", child, [more]) → an element.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false || child === "") continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  const tone = (health) => TONE[health] || "none";
  const cap = (word) => (word ? word[0].toUpperCase() + word.slice(1) : "");
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  // ------------------------------------------------------------------ formatting

  function fmtRate(v) {
    if (v === null || v === undefined) return DASH;
    return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  function fmtPercent(v) {
    if (v === null || v === undefined) return DASH;
    const p = v * 100;
    if (p === 0) return "0 %";
    if (p < 0.01) return "<0.01 %";
    return `${p < 10 ? p.toFixed(2) : p.toFixed(1)} %`;
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtSeconds(v) {
    if (v === null || v === undefined) return DASH;
    if (v === 0) return "0 s";
    if (v < 1) return `${(v * 1000).toFixed(v < 0.01 ? 1 : 0)} ms`;
    if (v < 120) return `${v.toFixed(v < 10 ? 2 : 1)} s`;
    return fmtDuration(v);
  }

  function fmtBytes(v) {
    if (v === null || v === undefined) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = Number(v);
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i ? n.toFixed(1) : String(n)} ${units[i]}`;
  }

  const ago = (ts, now) => (ts === null || ts === undefined ? DASH : `${fmtDuration(now - ts)} ago`);
  const clock = (ts) => new Date(ts * 1000).toLocaleTimeString();

  function badge(health) {
    const t = tone(health);
    return h(
      "span",
      { class: `badge tone-${t}` },
      h("span", { "aria-hidden": "true" }, ICON[t]),
      ` ${health}`,
    );
  }

  // ------------------------------------------------------------------ token and polling

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function stopPolling() {
    clearTimeout(state.timer);
    state.timer = null;
    if (state.inflight) state.inflight.abort();
    state.inflight = null;
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, POLL_MS);
  }

  function showLogin(message) {
    stopPolling();
    $("main").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    hideBanner();
    const box = $("login-error");
    box.hidden = !message;
    box.textContent = message || "";
    setText($("updated"), "not signed in");
    $("token").focus();
  }

  function showDashboard() {
    $("login").hidden = true;
    $("login-error").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
  }

  function showBanner(text) {
    const banner = $("banner");
    setText(banner, text);
    banner.hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
    document.body.classList.remove("stale");
  }

  function connectionLost(why) {
    document.body.classList.add("stale");
    const since = state.lastOkAt
      ? ` What you see is from ${new Date(state.lastOkAt).toLocaleTimeString()}.`
      : "";
    showBanner(`Lost contact with the controller: ${why}. Retrying every second.${since}`);
    setText($("updated"), "not updating");
  }

  async function poll() {
    clearTimeout(state.timer);
    state.timer = null;
    const current = token();
    if (!current) {
      showLogin();
      return;
    }
    const abort = new AbortController();
    state.inflight = abort;
    const timeout = setTimeout(() => abort.abort(), TIMEOUT_MS);
    let response;
    try {
      response = await fetch(ENDPOINT, {
        headers: { Authorization: `Bearer ${current}`, Accept: "application/json" },
        cache: "no-store",
        signal: abort.signal,
      });
    } catch (err) {
      clearTimeout(timeout);
      if (state.inflight !== abort) return; // logged out meanwhile
      connectionLost(
        abort.signal.aborted
          ? `no answer within ${TIMEOUT_MS / 1000} s`
          : "the API cannot be reached (is the controller running?)",
      );
      schedule();
      return;
    }
    clearTimeout(timeout);
    if (state.inflight !== abort) return;
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(
        `The API refused this token (HTTP ${response.status}). Copy it again from ` +
          ".alwayson/token in the platform's state directory: a new state directory " +
          "gets a new token.",
      );
      return;
    }
    let doc = null;
    let problem = "";
    try {
      const body = await response.json();
      if (response.ok) doc = body;
      else problem = `the API answered HTTP ${response.status}: ${body.error || body.detail || ""}`;
    } catch (err) {
      problem = `the API answered HTTP ${response.status} with something that is not JSON`;
    }
    if (doc === null) {
      connectionLost(problem);
      schedule();
      return;
    }
    state.lastOkAt = Date.now();
    hideBanner();
    showDashboard();
    try {
      render(doc);
    } catch (err) {
      console.error(err);
      showBanner(`This update could not be drawn (${err.message}); showing the previous one.`);
    }
    schedule();
  }

  // ------------------------------------------------------------------ changes

  function instancesOf(doc) {
    const out = [];
    for (const site of doc.sites) {
      for (const svc of site.services) out.push(...svc.instances);
      out.push(...site.components);
    }
    return out;
  }

  function noteChanges(doc) {
    const seen = new Map();
    const found = [];
    const add = (text, t, id) => {
      found.push({ at: Date.now(), text, tone: t });
      if (id) state.flagged.set(id, Date.now());
    };
    for (const inst of instancesOf(doc)) {
      const key = `i:${inst.id}`;
      const now = { state: inst.state, pid: inst.pid, restarts: inst.restarts };
      const before = state.seen.get(key);
      seen.set(key, now);
      if (!state.primed) continue;
      if (!before) add(`${inst.id} appeared (${inst.state})`, inst.tone, inst.id);
      else if (before.state !== now.state)
        add(`${inst.id}: ${before.state} → ${now.state}`, inst.tone, inst.id);
      else if (now.restarts > before.restarts || (before.pid && now.pid && before.pid !== now.pid))
        add(`${inst.id} restarted (pid ${before.pid || DASH} → ${now.pid || DASH})`, "warn", inst.id);
    }
    for (const db of doc.databases) {
      for (const site of db.sites) {
        const key = `d:${db.name}:${site.site}`;
        const before = state.seen.get(key);
        seen.set(key, site.role);
        if (state.primed && before && before !== site.role)
          add(`database ${db.name} in ${site.site}: ${before} → ${site.role}`, "warn");
      }
    }
    for (const alert of doc.alerts.firing || []) {
      const key = `a:${alert.name}:${JSON.stringify(alert.labels)}`;
      seen.set(key, alert.name);
      if (state.primed && !state.seen.has(key)) add(`alert ${alert.name} firing`, "bad");
    }
    if (state.primed) {
      for (const [key, before] of state.seen) {
        if (seen.has(key)) continue;
        if (key.startsWith("i:")) add(`${key.slice(2)} removed`, "none");
        else if (key.startsWith("a:")) add(`alert ${before} resolved`, "ok");
      }
    }
    state.seen = seen;
    state.primed = true;
    state.changes = [...found.reverse(), ...state.changes].slice(0, MAX_CHANGES);
  }

  function renderChanges() {
    const signature = state.changes.map((c) => c.at + c.text).join("|");
    if (signature === state.drawnChanges) return; // untouched: nothing re-announced
    state.drawnChanges = signature;
    $("no-changes").hidden = state.changes.length > 0;
    $("changes").replaceChildren(
      ...state.changes.map((c) =>
        h(
          "li",
          { class: `tone-${c.tone}` },
          h("time", { datetime: new Date(c.at).toISOString() }, new Date(c.at).toLocaleTimeString()),
          " ",
          c.text,
        ),
      ),
    );
  }

  // ------------------------------------------------------------------ drawing

  function render(doc) {
    const now = doc.generated_at || Date.now() / 1000;
    noteChanges(doc);
    renderHeader(doc);
    renderAlerts(doc.alerts, now);
    renderSites(doc, now);
    renderDatabases(doc.databases);
    renderReleases(doc.releases, now);
    renderDrills(doc.drills, now);
    renderChanges();
    state.lastDoc = doc;
  }

  function renderHeader(doc) {
    const name = doc.platform || "no platform";
    setText($("platform"), name);
    setText($("front-door"), doc.front_door ? `front door ${doc.front_door}` : "nothing applied");
    const t = tone(doc.health);
    const box = $("health");
    const why = doc.reasons.length ? doc.reasons.join(" · ") : `all ${doc.desired} processes ready`;
    const signature = `${doc.health}|${why}`;
    if (box.dataset.signature !== signature) {
      box.dataset.signature = signature;
      box.dataset.health = doc.health;
      box.className = `health tone-${t}`;
      box.replaceChildren(
        h("span", { class: "health-icon", "aria-hidden": "true" }, ICON[t]),
        h("span", { class: "health-word" }, cap(doc.health)),
        h("span", { class: "health-why" }, why),
      );
    }
    document.title = `${ICON[t]} ${cap(doc.health)} · ${name} · alwayson`;
    setText(
      $("updated"),
      `updated ${new Date().toLocaleTimeString()} · ${doc.ready}/${doc.desired} processes ready`,
    );
    setText($("verdict"), doc.verdict ? `Controller: ${doc.verdict}` : "");
  }

  function renderAlerts(alerts, now) {
    const panel = $("alerts-panel");
    if (alerts.firing === null) {
      panel.className = "panel tone-none";
      $("alerts").replaceChildren(h("p", { class: "muted" }, "No data yet: monitoring has not reported."));
      return;
    }
    const firing = alerts.firing;
    const critical = firing.some((a) => a.severity === "critical" || a.severity === "page");
    panel.className = `panel tone-${firing.length ? (critical ? "bad" : "warn") : "ok"}`;
    const list = firing.length
      ? h(
          "ul",
          { class: "alerts" },
          firing.map((a) =>
            h(
              "li",
              { class: `alert sev-${a.severity}`, "data-alert": a.name },
              h("span", { class: "sev" }, a.severity.toUpperCase()),
              h("strong", {}, a.name),
              a.summary ? ` — ${a.summary}` : "",
              h(
                "span",
                { class: "labels" },
                Object.entries(a.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(" "),
              ),
              a.active_at ? h("span", { class: "muted" }, `since ${clock(a.active_at)} (${ago(a.active_at, now)})`) : "",
            ),
          ),
        )
      : h("p", { class: "ok-text" }, "✔ None firing.");
    const pending = (alerts.pending || []).length
      ? h(
          "p",
          { class: "muted" },
          `${plural(alerts.pending.length, "alert")} pending (not firing yet): `,
          alerts.pending.map((a) => a.name).join(", "),
        )
      : "";
    $("alerts").replaceChildren(list, pending);
  }

  function renderSites(doc, now) {
    const columns = doc.sites.map((site) => (site.witness ? witnessColumn(site, now) : siteColumn(site, now)));
    if (!columns.length) columns.push(h("p", { class: "muted" }, "No sites: nothing is applied yet."));
    $("sites").replaceChildren(...columns);
  }

  function siteHead(site, extra) {
    return h(
      "header",
      { class: "site-head" },
      h("h3", { id: `site-${site.name}` }, site.name),
      extra,
      site.desired ? badge(site.health) : h("span", { class: "badge tone-none" }, "nothing to run"),
      h("span", { class: "count" }, `${site.ready}/${site.desired} ready`),
    );
  }

  function siteColumn(site, now) {
    return h(
      "section",
      {
        class: `site tone-${tone(site.health)}`,
        "data-site": site.name,
        "aria-labelledby": `site-${site.name}`,
      },
      siteHead(site, null),
      site.services.map((svc) => serviceCard(site, svc, now)),
      components(site, now),
    );
  }

  function witnessColumn(site, now) {
    return h(
      "section",
      {
        class: `site witness tone-${tone(site.health)}`,
        "data-site": site.name,
        "aria-labelledby": `site-${site.name}`,
      },
      siteHead(site, h("span", { class: "tag" }, "witness")),
      h("p", { class: "muted small" }, "Runs no workloads; breaks ties between the sites."),
      components(site, now),
    );
  }

  function components(site, now) {
    return h(
      "div",
      { class: "components" },
      h("h4", {}, "Platform processes"),
      site.components.length
        ? h(
            "ul",
            { class: "instances", "aria-label": `platform processes in ${site.name}` },
            site.components.map((inst) => instanceRow(inst, now, KIND_NAMES[inst.kind] || inst.kind)),
          )
        : h("p", { class: "muted small" }, "none"),
    );
  }

  function metric(name, value, extra) {
    return h("div", { class: `metric ${extra || ""}` }, h("dt", {}, name), h("dd", {}, value));
  }

  function serviceCard(site, svc, now) {
    const t = svc.traffic;
    const several = svc.versions.length > 1;
    return h(
      "article",
      { class: `card tone-${tone(svc.health)}`, "data-service": svc.name, "data-site": site.name },
      h(
        "header",
        { class: "card-head" },
        h("h4", {}, svc.name),
        h(
          "span",
          { class: "versions" },
          svc.versions.map((v) =>
            h("span", { class: "version" }, `v${v.version}${several ? ` ×${v.instances}` : ""}`),
          ),
        ),
        h("span", { class: "count" }, `${svc.ready}/${svc.desired} ready`),
      ),
      h(
        "dl",
        { class: "traffic" },
        metric("req/s", t ? fmtRate(t.rps) : DASH),
        metric("errors", t ? fmtPercent(t.error_rate) : DASH, t && t.error_rate > 0.01 ? "bad-text" : ""),
        metric("p95", t ? fmtSeconds(t.p95_seconds) : DASH),
      ),
      t ? "" : h("p", { class: "muted small nodata" }, "traffic: no data yet"),
      h(
        "ul",
        { class: "instances", "aria-label": `${svc.name} instances in ${site.name}` },
        svc.instances.map((inst) =>
          instanceRow(inst, now, `#${inst.ordinal}`, several ? `v${inst.version}` : ""),
        ),
        svc.instances.length ? "" : h("li", { class: "muted" }, "no instances"),
      ),
    );
  }

  function instanceRow(inst, now, name, version) {
    const flaggedAt = state.flagged.get(inst.id);
    const fresh = flaggedAt !== undefined && Date.now() - flaggedAt < HIGHLIGHT_MS;
    const classes = ["instance", `tone-${inst.tone}`, fresh ? "changed" : "", inst.desired ? "" : "leaving"];
    const title = [
      inst.id,
      inst.address,
      inst.version ? `version ${inst.version}` : "",
      inst.started_at ? `started ${ago(inst.started_at, now)}` : "",
    ]
      .filter(Boolean)
      .join(" · ");
    return h(
      "li",
      {
        class: classes.filter(Boolean).join(" "),
        "data-instance": inst.id,
        "data-state": inst.state,
        "data-restarts": inst.restarts,
        "data-pid": inst.pid || "",
        title,
      },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("span", { class: "inst-name" }, name),
      h("span", { class: "state" }, inst.state),
      version ? h("span", { class: "version" }, version) : "",
      h("span", { class: "pid" }, inst.pid ? `pid ${inst.pid}` : "no process"),
      inst.restarts ? h("span", { class: "restarts" }, `restarted ${inst.restarts}×`) : "",
      fresh ? h("span", { class: "flag" }, "changed") : "",
      inst.detail ? h("span", { class: "detail" }, inst.detail) : "",
    );
  }

  function renderDatabases(dbs) {
    if (!dbs.length) {
      $("databases").replaceChildren(h("p", { class: "muted" }, "The spec declares no databases."));
      return;
    }
    $("databases").replaceChildren(...dbs.map(databaseBlock));
  }

  function databaseBlock(db) {
    const lease = [
      `lease: ${db.lease_holder || "free (no primary)"}`,
      db.epoch !== null && db.epoch !== undefined ? `epoch ${db.epoch}` : "",
      db.lease_expires_in !== null && db.lease_expires_in !== undefined
        ? `expires in ${fmtSeconds(Math.max(0, db.lease_expires_in))}`
        : "",
    ]
      .filter(Boolean)
      .join(", ");
    const facts = [
      `${db.replication} replication`,
      lease,
      `sync standby: ${db.sync_standby || "none"}`,
      db.pending_request ? `request in progress: ${db.pending_request}` : "",
    ].filter(Boolean);
    return h(
      "article",
      { class: `db tone-${tone(db.health)}`, "data-database": db.name },
      h("h3", {}, db.name, " ", badge(db.health)),
      h("p", { class: "small" }, facts.join(" · ")),
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, `Sites of database ${db.name}`),
        h("thead", {}, h("tr", {}, ["Site", "Role", "Replication", "Lag"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          {},
          db.sites.map((s) =>
            h(
              "tr",
              { "data-db-site": s.site, "data-role": s.role },
              h("th", { scope: "row" }, s.site),
              h(
                "td",
                { class: `role role-${s.role}` },
                s.role,
                s.role === "primary" && s.writable === false ? " (not writable)" : "",
                s.stale ? h("span", { class: "bad-text problem" }, "stale: no recent report") : "",
                s.alert ? h("span", { class: "bad-text problem" }, s.alert) : "",
              ),
              h(
                "td",
                {},
                s.role === "primary" ? "—" : s.replication ? `${s.replication}${s.sync_state ? ` (${s.sync_state})` : ""}` : DASH,
              ),
              h(
                "td",
                { class: "num" },
                s.lag_bytes === null ? DASH : `${fmtBytes(s.lag_bytes)} · ${fmtSeconds(s.lag_seconds)}`,
              ),
            ),
          ),
        ),
      ),
      db.problems.length
        ? h("ul", { class: "db-problems" }, db.problems.map((p) => h("li", { class: "bad-text" }, `⚠ ${p}`)))
        : "",
    );
  }

  function renderReleases(releases, now) {
    if (!releases.length) {
      $("releases").replaceChildren(h("p", { class: "muted" }, "None in progress."));
      return;
    }
    $("releases").replaceChildren(
      h(
        "ul",
        { class: "releases" },
        releases.map((r) =>
          h(
            "li",
            { "data-release": r.service },
            h("strong", {}, r.service),
            ` ${r.from} → ${r.to} `,
            h("span", { class: "tag" }, r.strategy),
            " ",
            h("span", { class: `tag phase-${r.phase}` }, r.phase),
            h(
              "div",
              { class: "step" },
              h("progress", { value: r.step, max: r.steps, "aria-label": `${r.service} release progress` }),
              ` step ${r.step} of ${r.steps}: ${r.step_name}`,
              r.routing === "weighted" ? ` (${r.weight} % of traffic to ${r.to})` : "",
            ),
            h("div", { class: "muted small" }, `started ${ago(r.started_at, now)}${r.message ? ` · ${r.message}` : ""}`),
          ),
        ),
      ),
    );
  }

  function renderDrills(drills, now) {
    if (drills === null) {
      $("drills").replaceChildren(h("p", { class: "muted" }, "No data yet: no drill results reported."));
      return;
    }
    if (!drills.length) {
      $("drills").replaceChildren(h("p", { class: "muted" }, "No drill has run yet."));
      return;
    }
    const passed = (r) => ["pass", "passed", "ok", "success"].includes(String(r).toLowerCase());
    $("drills").replaceChildren(
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, "Recent drills, newest first"),
        h("thead", {}, h("tr", {}, ["Drill", "Started", "Result", "RTO", "RPO", "Lost"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          {},
          drills.map((d) =>
            h(
              "tr",
              { "data-drill": d.name },
              h("th", { scope: "row" }, d.name),
              h("td", { class: "num" }, d.started_at ? ago(d.started_at, now) : DASH),
              h("td", { class: passed(d.result) ? "ok-text" : "bad-text" }, `${passed(d.result) ? "✔" : "✖"} ${d.result}`),
              h("td", { class: "num" }, fmtSeconds(d.rto_seconds)),
              h("td", { class: "num" }, fmtSeconds(d.rpo_seconds)),
              h("td", {}, d.lost === null || d.lost === undefined ? DASH : String(d.lost)),
            ),
          ),
        ),
      ),
    );
  }

  // ------------------------------------------------------------------ start

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    $("login-error").hidden = true;
    setText($("updated"), "checking the token…");
    poll();
  });

  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  });

  if (token()) poll();
  else showLogin();
})();
