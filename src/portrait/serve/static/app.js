/* portrait dashboard: a hash-routed single page over the public API (no build step).
 *
 * Pages: #/ (search), #/user/ID, #/segment/NAME[/OFFSET], #/population, #/report/NAME.
 * Every request carries the API key kept in localStorage. The data behind each
 * chart is published on window.__charts (and in data-* attributes) so tests and
 * curious people can check what is drawn. body[data-ready="true"] once a page and
 * all its cards have loaded.
 */
(() => {
  "use strict";

  const KEY = "portrait.apiKey";
  const PALETTE = ["#4f46e5", "#0d9488", "#d97706", "#db2777", "#2563eb", "#65a30d",
    "#7c3aed", "#dc2626"];
  const HISTORY_POINTS = 30;
  const HISTORY_SERIES = 6;
  const TOP_INTERESTS = 10;
  const RECENT_EVENTS = 20;
  const HISTOGRAM_BINS = 20;
  const MEMBERS_PAGE = 60;
  const CHANGES_PAGE = 10000;
  const CHANGES_CAP = 50000; // changes read per segment for "size over time"
  const charts = (window.__charts = {});
  const view = document.getElementById("view");
  let plots = [];
  let pending = [];
  let renderSeq = 0;
  let memo = new Map();

  // -- DOM --------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  const enc = encodeURIComponent;
  const userLink = (id) => h("a", { href: `#/user/${enc(id)}`, class: "mono", dataset: { user: id } }, id);
  const segmentLink = (name) => h("a", { href: `#/segment/${enc(name)}`, dataset: { segment: name } }, name);

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a >= 100) return v.toLocaleString("en-US", { maximumFractionDigits: 1 });
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return v.toPrecision(3);
  }
  const fmtTime = (iso) => (iso ? iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1 UTC") : "–");
  const epoch = (iso) => Date.parse(iso) / 1000;

  // -- API --------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  let asking = null;
  function askKey(message) {
    if (asking) return asking;
    const dialog = document.getElementById("key-dialog");
    const form = document.getElementById("key-form");
    const input = document.getElementById("key-input");
    document.getElementById("key-error").textContent = message || "";
    input.value = "";
    asking = new Promise((resolve) => {
      const done = (ev) => {
        ev.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        localStorage.setItem(KEY, key);
        form.removeEventListener("submit", done);
        dialog.close();
        asking = null;
        resolve();
      };
      form.addEventListener("submit", done);
    });
    if (!dialog.open) dialog.showModal();
    return asking;
  }

  async function problemOf(response) {
    try {
      return await response.json();
    } catch {
      return { status: response.status, detail: `HTTP ${response.status}`, error: "HTTPError" };
    }
  }

  async function api(path, { as = "json", method = "GET", body } = {}) {
    for (;;) {
      let key = localStorage.getItem(KEY);
      if (!key) {
        await askKey("");
        key = localStorage.getItem(KEY);
      }
      const headers = { "X-API-Key": key };
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      if (r.status === 401) {
        const p = await problemOf(r);
        if (localStorage.getItem(KEY) === key) localStorage.removeItem(KEY);
        await askKey(`${p.detail || "the key was refused"}: enter another key`);
        continue;
      }
      if (!r.ok) throw new ApiError(r.status, await problemOf(r));
      if (as === "text") return r.text();
      if (as === "blob") return r.blob();
      return r.json();
    }
  }

  /** One fetch per page render for data several cards share. */
  function once(name, make) {
    if (!memo.has(name)) memo.set(name, make());
    return memo.get(name);
  }
  const getMeta = () => once("meta", () => api("/ui/meta"));
  const getSegments = () => once("segments", () => api("/v1/segments"));

  /** The change log of a segment (optionally of one user), oldest first, up to CHANGES_CAP. */
  function changeLog(segment, user) {
    return once(`changes:${segment}:${user || ""}`, async () => {
      const rows = [];
      let after = 0;
      for (;;) {
        const q = new URLSearchParams({ after, limit: CHANGES_PAGE });
        if (user) q.set("user", user);
        const page = await api(`/v1/segments/${enc(segment)}/changes?${q}`);
        rows.push(...page.changes);
        if (page.next_after === null || rows.length >= CHANGES_CAP) {
          return { rows, complete: page.next_after === null };
        }
        after = page.next_after;
      }
    });
  }

  // -- building blocks --------------------------------------------------
  function errorBox(e) {
    const p = e instanceof ApiError ? e.problem : { detail: String(e && e.message ? e.message : e) };
    return h("div", { class: "error", role: "alert", dataset: { error: p.error || "Error", status: p.status || "" } },
      h("strong", {}, p.title || "Something went wrong"), p.detail || "");
  }

  /** A card whose body fills in when `fill()` resolves; tracked so the page knows when it is ready. */
  function card(title, id, fill, { wide = false, span2 = false, head = null } = {}) {
    const body = h("div", { class: "card-body" }, h("p", { class: "loading" }, "Loading"));
    const el = h("section", { class: `card${wide ? " wide" : ""}${span2 ? " span2" : ""}`, dataset: { card: id, state: "loading" } },
      h("div", { class: "card-head" }, h("h2", {}, title), head), body);
    pending.push((async () => {
      try {
        const content = await fill();
        body.replaceChildren(...[content].flat(Infinity).filter(Boolean));
        el.dataset.state = "ready";
      } catch (e) {
        body.replaceChildren(errorBox(e));
        el.dataset.state = "error";
      }
    })());
    return el;
  }

  function bars(rows, { chart, max, cls = "", label = (r) => r.label, link = null } = {}) {
    const top = max ?? Math.max(0, ...rows.map((r) => r.value));
    return h("div", { class: `bars ${cls}`, dataset: { chart } },
      rows.map((r) => h("div", { class: "bar-row", dataset: { key: r.label, value: r.value } },
        h("span", { class: "bar-label", title: r.label }, link ? link(r) : label(r)),
        h("span", { class: "bar-track" }, barFill(r.value, top, r.cls)),
        h("span", { class: "bar-value" }, r.text ?? fmt(r.value)))));
  }
  function barFill(value, top, cls) {
    const el = h("span", { class: `bar-fill ${cls || ""}` });
    el.style.width = `${top > 0 ? Math.max(0, Math.min(100, (100 * value) / top)) : 0}%`;
    return el;
  }

  /** A y range that starts at 0 for values that cannot be negative (counts, affinities). */
  function fromZero(min, max) {
    const lo = Math.min(0, min ?? 0);
    const hi = max === null || max === undefined || max <= lo ? lo + 1 : max;
    const pad = (hi - lo) * 0.08;
    return [lo < 0 ? lo - pad : 0, hi + pad];
  }

  /** A uPlot line chart, drawn once its box has a width (and resized with it). */
  function lineChart({ x, series, height = 300, stepped = false, name }) {
    const el = h("div", { class: "chart", dataset: { chart: name, points: x.length, series: series.length } });
    const opts = {
      height,
      scales: { x: { time: true }, y: { range: (u, min, max) => fromZero(min, max) } },
      series: [{}, ...series.map((s, i) => ({
        label: s.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        spanGaps: false,
        points: { show: x.length <= 40, size: 5 },
        paths: stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        value: (u, v) => (v === null || v === undefined ? "–" : fmt(v)),
      }))],
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e5e7eb" } },
        { stroke: "#6b7280", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e5e7eb" }, size: 56,
          values: (u, vals) => vals.map((v) => fmt(v)) },
      ],
      cursor: { points: { size: 7 } },
      legend: { live: true },
    };
    const data = [x, ...series.map((s) => s.values)];
    let plot = null;
    const ro = new ResizeObserver(() => {
      const width = Math.floor(el.clientWidth);
      if (!width || el.dataset.disposed) return;
      if (!plot) {
        plot = new uPlot({ ...opts, width }, data, el);
        el.dataset.drawn = "true";
      } else if (Math.abs(plot.width - width) > 1) {
        plot.setSize({ width, height });
      }
    });
    ro.observe(el);
    el.dispose = () => {
      el.dataset.disposed = "true";
      ro.disconnect();
      if (plot) plot.destroy();
      plot = null;
    };
    plots.push(el);
    return el;
  }

  function table(head, rows, { cls = "" } = {}) {
    return h("div", { class: "table-scroll" }, h("table", { class: cls },
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { class: `${c.num ? "num" : ""} ${c.cls || ""}` }, c.label ?? c)))),
      h("tbody", {}, rows)));
  }

  // -- pages ------------------------------------------------------------
  async function home() {
    const input = h("input", { type: "search", name: "user", placeholder: "user id, e.g. u001",
      "aria-label": "user id", autocomplete: "off", spellcheck: "false", id: "hero-input" });
    const form = h("form", { class: "hero-search", onsubmit: (ev) => { ev.preventDefault(); goUser(input.value); } },
      input, h("button", { type: "submit" }, "Show profile"));
    const examples = h("div", { class: "examples" });
    const node = h("div", {},
      h("section", { class: "hero" },
        h("h1", {}, "Who is this user, right now?"),
        h("p", {}, "Profiles, interests over time, segments and recommendations, exact as of the last event."),
        form, examples),
      h("div", { class: "grid" },
        card("Segments", "segments", async () => segmentBars(await getSegments())),
        card("Interests on the move", "shift", async () => shiftTable((await api("/v1/drift?top=8")).interest_shift))));
    pending.push(getSegments().then(async (segs) => {
      const biggest = [...segs.segments].sort((a, b) => b.size - a.size)[0];
      if (!biggest || !biggest.size) return;
      const page = await api(`/v1/segments/${enc(biggest.name)}/members?limit=6`);
      examples.append(h("span", { class: "muted small" }, "Try:"), ...page.members.map((m) => h("span", { class: "chip" }, userLink(m))));
    }).catch(() => {}));
    setTimeout(() => input.focus(), 0);
    return node;
  }

  function segmentBars(segs) {
    charts.segments = segs.segments.map((s) => ({ name: s.name, size: s.size }));
    const rows = segs.segments.map((s) => ({ label: s.name, value: s.size,
      text: `${fmt(s.size)} · ${segs.population ? ((100 * s.size) / segs.population).toFixed(1) : 0}%` }));
    return [bars(rows, { chart: "segment-sizes", max: segs.population, link: (r) => segmentLink(r.label) }),
      h("p", { class: "note" }, `${fmt(segs.population)} users as of ${fmtTime(segs.as_of)}; bars are shares of all users.`)];
  }

  function shiftTable(rows) {
    if (!rows.length) return h("p", { class: "muted" }, "No user has a measurable interest shift.");
    return [table(["user", { label: "shift (JS, bits)", num: true }, "lately → long term"],
      rows.map((r) => h("tr", { dataset: { user: r.user_id, shift: r.interest_shift } },
        h("td", {}, userLink(r.user_id)), h("td", { class: "num" }, fmt(r.interest_shift)),
        h("td", {}, `${r.short_top ?? "–"} → ${r.long_top ?? "–"}`)))),
    h("p", { class: "note" }, "Jensen–Shannon divergence between each user's category mix at half-life 7 days and 90 days.")];
  }

  async function userPage(user) {
    const [profile, meta] = await Promise.all([api(`/v1/profiles/${enc(user)}`), getMeta()]);
    charts.profile = profile;
    const info = Object.fromEntries(meta.features.map((f) => [f.name, f]));
    const chips = profile.segments.length
      ? profile.segments.map((s) => h("span", { class: "chip" }, segmentLink(s)))
      : [h("span", { class: "chip plain" }, "in no segment")];
    return h("div", { dataset: { user } },
      h("div", { class: "page-head" },
        h("div", {}, h("div", { class: "eyebrow" }, "user"), h("h1", { class: "mono", id: "user-id" }, profile.user_id)),
        h("div", { class: "sub" }, `as of ${fmtTime(profile.as_of)}`),
        h("div", { class: "chips", id: "user-segments" }, chips)),
      h("div", { class: "grid three" },
        card("Top interests", "interests", () => interests(profile, info)),
        card("Segments", "memberships", async () => memberships(profile, await getSegments())),
        card("Recent segment changes", "timeline", () => userTimeline(user)),
        historyCard(user, profile, info),
        card("Profile", "profile", () => featuresTable(profile, info)),
        card("Recommendations", "recommendations", () => recommendations(user), { span2: true }),
        card("Recent events", "events", () => recentEvents(user), { wide: true })));
  }

  function interests(profile, info) {
    const keyed = Object.values(info).filter((f) => f.keyed);
    const decayed = keyed.filter((f) => f.kind === "decayed");
    const shown = decayed.length ? decayed : keyed;
    charts.interests = {};
    if (!shown.length) return h("p", { class: "muted" }, "The spec has no keyed features.");
    return shown.map((f) => {
      const entries = Object.entries(profile.features[f.name] || {})
        .filter(([, v]) => typeof v === "number")
        .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, TOP_INTERESTS);
      charts.interests[f.name] = entries.map(([key, value]) => ({ key, value }));
      const hl = f.half_life_s ? ` · half-life ${duration(f.half_life_s)}` : "";
      return h("div", { class: "interest", dataset: { feature: f.name } },
        h("h3", {}, f.name, h("span", { class: "kind" }, `${f.kind}${hl}`)),
        entries.length
          ? bars(entries.map(([label, value]) => ({ label, value })), { chart: `interests:${f.name}` })
          : h("p", { class: "muted" }, "nothing yet"));
    });
  }

  function duration(s) {
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (s >= size && s % size === 0) return `${s / size}${unit}`;
    }
    return `${s}s`;
  }

  function featuresTable(profile, info) {
    const value = (v) => {
      if (v && typeof v === "object") {
        const items = Object.entries(v).sort((a, b) => b[1] - a[1]);
        const shown = items.slice(0, 4).map(([k, x]) => `${k} ${fmt(x)}`).join(", ");
        return items.length > 4 ? `${shown}, … (${items.length})` : shown || "–";
      }
      return fmt(v);
    };
    const rows = Object.entries(profile.features).map(([name, v]) => h("tr", { dataset: { feature: name } },
      h("td", {}, name, h("span", { class: "kind" }, info[name]?.kind ?? "")), h("td", { class: "value" }, value(v))));
    const out = [table(["feature", "value"], rows, { cls: "kv" })];
    if (profile.models) {
      out.push(h("h3", {}, "Model outputs"), table(["output", "value"],
        Object.entries(profile.models).map(([k, v]) => h("tr", { dataset: { output: k } }, h("td", {}, k), h("td", {}, fmt(v)))),
        { cls: "kv" }));
    }
    return out;
  }

  /** Redraw a card's chart when its <select> changes (the card shows loading / error). */
  function redrawOnChange(el, select, slot, draw) {
    select.addEventListener("change", () => {
      el.dataset.state = "loading";
      draw(select.value).then((nodes) => { slot.replaceChildren(...nodes); el.dataset.state = "ready"; },
        (e) => { slot.replaceChildren(errorBox(e)); el.dataset.state = "error"; });
    });
  }

  function historyCard(user, profile, info) {
    const plottable = Object.values(info).filter((f) => f.value_type === "map" || f.value_type === "number");
    const preferred = plottable.find((f) => f.kind === "decayed" && f.keyed) || plottable.find((f) => f.keyed) || plottable[0];
    if (!preferred) return card("Evolution of interests", "history", async () => h("p", { class: "muted" }, "No numeric features."), { wide: true });
    const select = h("select", { id: "history-feature", "aria-label": "feature" },
      plottable.map((f) => h("option", { value: f.name, selected: f.name === preferred.name }, f.name)));
    const slot = h("div", {});
    const draw = async (name) => {
      for (const old of slot.querySelectorAll(".chart")) old.dispose();
      const f = info[name];
      const hist = await api(`/v1/profiles/${enc(user)}/history?feature=${enc(name)}&points=${HISTORY_POINTS}`);
      const x = hist.points.map((p) => epoch(p.at));
      let series;
      if (f.value_type === "map") {
        const last = hist.points[hist.points.length - 1].values[name] || {};
        const keys = Object.entries(last).sort((a, b) => b[1] - a[1]).slice(0, HISTORY_SERIES).map(([k]) => k);
        const missing = f.kind === "decayed" ? 0 : null; // a decayed key not seen yet is 0
        series = keys.map((k) => ({ label: k, values: hist.points.map((p) => (p.values[name] || {})[k] ?? missing) }));
      } else {
        series = [{ label: name, values: hist.points.map((p) => p.values[name] ?? null) }];
      }
      charts.history = { feature: name, at: hist.points.map((p) => p.at), start: hist.start, end: hist.end,
        series: series.map((s) => ({ label: s.label, values: s.values })) };
      return [lineChart({ x, series, name: `history:${name}` }),
        h("p", { class: "note" }, `Exact time travel: the value at ${hist.points.length} evenly spaced times from the first event (${fmtTime(hist.start)}) to now (${fmtTime(hist.end)}).`)];
    };
    const el = card("Evolution of interests", "history", async () => {
      slot.replaceChildren(...(await draw(preferred.name)));
      return slot;
    }, { wide: true, head: select });
    redrawOnChange(el, select, slot, draw);
    return el;
  }

  function memberships(profile, segs) {
    const mine = new Set(profile.segments);
    return table(["segment", "rule", "member"], segs.segments.map((s) => h("tr", { dataset: { segment: s.name, member: mine.has(s.name) } },
      h("td", { class: "nowrap" }, segmentLink(s.name)), h("td", {}, h("code", {}, s.rule)),
      h("td", {}, mine.has(s.name) ? h("span", { class: "badge enter" }, "member") : h("span", { class: "muted" }, "–")))));
  }

  async function userTimeline(user) {
    const segs = await getSegments();
    const logs = await Promise.all(segs.segments.map((s) => changeLog(s.name, user)));
    const rows = logs.flatMap((l) => l.rows).sort((a, b) => b.seq - a.seq);
    charts.timeline = rows;
    if (!rows.length) return h("p", { class: "muted" }, "No segment entries or exits yet.");
    return [timeline(rows.slice(0, 25), false),
      rows.length > 25 ? h("p", { class: "note" }, `The 25 newest of ${rows.length} changes.`) : null];
  }

  function timeline(rows, showUser) {
    return h("ol", { class: "timeline" }, rows.map((c) => h("li", { class: c.change, dataset: { seq: c.seq, segment: c.segment, change: c.change, user: c.user_id } },
      h("time", { datetime: c.ts }, fmtTime(c.ts)),
      h("div", {}, h("span", { class: `badge ${c.change}` }, c.change === "enter" ? "entered" : "left"), " ",
        showUser ? userLink(c.user_id) : segmentLink(c.segment)),
      h("div", { class: "cause" }, c.cause))));
  }

  async function recentEvents(user) {
    const got = await api(`/v1/profiles/${enc(user)}/events?limit=${RECENT_EVENTS}`);
    charts.events = got.events;
    if (!got.events.length) return h("p", { class: "muted" }, "No events logged yet.");
    const num = (v) => (v === undefined ? h("span", { class: "muted" }, "–") : fmt(v));
    return [table(["time", "type", "item", "category", { label: "price", num: true },
      { label: "qty", num: true, cls: "hide-narrow" }, { label: "rating", num: true }],
    got.events.map((ev) => h("tr", { dataset: { eventId: ev.event_id, type: ev.type } },
      h("td", { class: "nowrap" }, h("time", { datetime: ev.ts }, fmtTime(ev.ts))),
      h("td", {}, h("span", { class: "chip plain" }, ev.type)),
      h("td", { class: "mono" }, ev.item_id ?? "–"), h("td", {}, ev.category ?? "–"),
      h("td", { class: "num" }, num(ev.price)), h("td", { class: "num hide-narrow" }, num(ev.quantity)),
      h("td", { class: "num" }, num(ev.rating)))), { cls: "events" }),
    h("p", { class: "note" }, `The ${got.count} most recent logged events, newest first (event time).`)];
  }

  async function recommendations(user) {
    const recs = await api(`/v1/recommendations/${enc(user)}?k=10`);
    charts.recommendations = recs.items;
    if (!recs.items.length) return h("p", { class: "muted" }, "Nothing to recommend.");
    const top = Math.max(...recs.items.map((i) => i.score), 1e-12);
    return table(["#", "item", { label: "score", num: true }, "why", { label: "sources", cls: "hide-narrow" }], recs.items.map((item, i) => {
      const mini = h("span", { class: "mini-bar" }, h("span", {}));
      mini.firstChild.style.width = `${Math.max(0, (100 * item.score) / top)}%`;
      return h("tr", { dataset: { item: item.item_id, score: item.score } },
        h("td", { class: "num muted" }, i + 1), h("td", { class: "mono" }, item.item_id),
        h("td", { class: "num" }, mini, fmt(item.score)), h("td", {}, item.reason),
        h("td", { class: "hide-narrow" }, h("div", { class: "chips" }, item.sources.map((s) => h("span", { class: "chip plain" }, s)))));
    }));
  }

  async function population() {
    const [segs, health] = await Promise.all([getSegments(), fetch("/healthz").then((r) => r.json())]);
    const stat = (value, label, id) => h("div", { class: "stat", id }, h("div", { class: "value" }, value), h("div", { class: "label" }, label));
    return h("div", {},
      h("div", { class: "page-head" }, h("div", {}, h("div", { class: "eyebrow" }, "population"), h("h1", {}, "Everyone at a glance"))),
      h("div", { class: "stats" },
        stat(fmt(segs.population), "users", "stat-users"), stat(fmt(health.events), "events", "stat-events"),
        stat(segs.segments.length, "segments", "stat-segments"), stat(fmtTime(health.watermark), "as of (watermark)", "stat-asof")),
      h("div", { class: "grid" },
        card("Segment sizes", "segments", () => segmentBars(segs)),
        card("Evaluation report", "report", reportLinks),
        card("Segment sizes over time", "sizes", () => sizesOverTime(segs.segments, segs.as_of), { wide: true }),
        distributionCard(),
        card("Feature drift (PSI)", "drift", drift, { wide: true })));
  }

  /** A histogram of one numeric, non-keyed feature over all users (a select picks which). */
  function distributionCard() {
    const select = h("select", { id: "distribution-feature", "aria-label": "feature" });
    const slot = h("div", {});
    const draw = async (name) => {
      const d = await api(`/v1/features/${enc(name)}/distribution?bins=${HISTOGRAM_BINS}`);
      const time = d.value_type === "time";
      const show = (v) => (v === null ? "–" : time ? new Date(v * 1000).toISOString().slice(0, 16).replace("T", " ") : fmt(v));
      charts.distribution = { feature: d.feature, valueType: d.value_type, at: d.at, users: d.users, nulls: d.nulls,
        bins: d.bins.map((b) => [b.lo, b.hi]), counts: d.bins.map((b) => b.count), quantiles: d.quantiles };
      if (!d.bins.length) return [h("p", { class: "muted" }, "No user has a value yet.")];
      const rows = d.bins.map((b) => ({ label: `${show(b.lo)} – ${show(b.hi)}`, value: b.count }));
      const q = d.quantiles;
      return [bars(rows, { chart: `distribution:${d.feature}`, cls: "histogram" }),
        h("p", { class: "note" }, `${fmt(d.users - d.nulls)} of ${fmt(d.users)} users have a value as of ${fmtTime(d.at)}: ` +
          `median ${show(q.p50)}, p90 ${show(q.p90)}, p99 ${show(q.p99)}${time ? " (UTC)" : ""}; ` +
          `${rows.length === 1 ? "one bin (every value is equal)" : `${rows.length} equal-width bins from the smallest value to the largest`}.`)];
    };
    const el = card("Feature distributions", "distribution", async () => {
      const meta = await getMeta();
      const numeric = meta.features.filter((f) => !f.keyed && (f.value_type === "number" || f.value_type === "time"));
      if (!numeric.length) {
        select.hidden = true;
        return h("p", { class: "muted" }, "The spec has no numeric features.");
      }
      select.replaceChildren(...numeric.map((f) => h("option", { value: f.name }, f.name)));
      slot.replaceChildren(...(await draw(select.value)));
      return slot;
    }, { wide: true, head: select });
    redrawOnChange(el, select, slot, draw);
    return el;
  }

  /** Sizes over time from the entry/exit log: +1 per entry, −1 per exit, in log order. */
  async function sizesOverTime(segments, asOf, name = "segment-sizes") {
    const logs = await Promise.all(segments.map((s) => changeLog(s.name)));
    const events = [];
    logs.forEach((l, i) => l.rows.forEach((c) => events.push({ t: epoch(c.ts), seq: c.seq, i, d: c.change === "enter" ? 1 : -1 })));
    events.sort((a, b) => a.t - b.t || a.seq - b.seq);
    const sizes = segments.map(() => 0);
    const x = [];
    const ys = segments.map(() => []);
    for (const e of events) {
      sizes[e.i] += e.d;
      if (x.length && x[x.length - 1] === e.t) ys.forEach((y, j) => { y[y.length - 1] = sizes[j]; });
      else { x.push(e.t); ys.forEach((y, j) => y.push(sizes[j])); }
    }
    if (x.length && asOf && epoch(asOf) > x[x.length - 1]) { // hold the last sizes until now
      x.push(epoch(asOf));
      ys.forEach((y) => y.push(y[y.length - 1]));
    }
    charts.segmentSizes = Object.fromEntries(segments.map((s, j) => [s.name,
      { t: x, size: ys[j], changes: logs[j].rows.length, complete: logs[j].complete, current: s.size }]));
    if (!x.length) return h("p", { class: "muted" }, "No entries or exits logged yet.");
    const partial = logs.some((l) => !l.complete);
    return [lineChart({ x, series: segments.map((s, j) => ({ label: s.name, values: ys[j] })), stepped: true, name, height: 280 }),
      h("p", { class: "note" }, "Members over event time, replayed from the segment change log (every entry and exit, committed with its batch)." +
        (partial ? ` Only the first ${CHANGES_CAP.toLocaleString("en-US")} changes of a segment are read.` : ""))];
  }

  async function drift() {
    const d = await api("/v1/drift?top=10");
    const rows = [...d.population].sort((a, b) => b.psi - a.psi);
    charts.drift = { ref: d.ref, at: d.at, rows };
    const top = Math.max(0.25, ...rows.map((r) => r.psi));
    const psiRows = rows.map((r) => h("tr", { dataset: { feature: r.feature, psi: r.psi, level: r.level } },
      h("td", { class: "mono" }, r.feature),
      h("td", { class: "psi" }, h("span", { class: "bar-track" }, barFill(r.psi, top, r.level))),
      h("td", { class: "num" }, fmt(r.psi)), h("td", {}, h("span", { class: `badge ${r.level}` }, r.level)),
      h("td", { class: "num muted" }, r.bins)));
    const parts = [
      h("p", { class: "muted small" }, `Population stability index of each feature between ${fmtTime(d.ref)} and ${fmtTime(d.at)}: stable < 0.1 ≤ moderate < 0.25 ≤ significant.`),
      table(["feature", "", { label: "PSI", num: true }, "level", { label: "bins", num: true }], psiRows, { cls: "psi-table" }),
    ];
    if (d.bursts.length) {
      parts.push(h("h3", {}, "Bursts"), table(["user", { label: "events / window", num: true }],
        d.bursts.map((b) => h("tr", {}, h("td", {}, userLink(b.user_id)), h("td", { class: "num" }, fmt(b.max_events_per_window))))));
    }
    parts.push(h("h3", {}, "Interests on the move"), shiftTable(d.interest_shift));
    return parts;
  }

  async function reportLinks() {
    const meta = await getMeta();
    if (!meta.reports.length) {
      return h("div", { id: "no-report" },
        h("p", {}, meta.report_dir ? `No evaluation report found in ${meta.report_dir}.` : "No evaluation report is configured."),
        h("p", { class: "muted small" }, "Run ", h("code", {}, "portrait eval movielens-1m --out portrait-report/movielens-1m"),
          " (or ", h("code", {}, "make demo"), "), then start the server with ", h("code", {}, "PORTRAIT_REPORT=portrait-report"),
          " or from the directory holding portrait-report/."));
    }
    return h("ul", { class: "report-list" }, meta.reports.map((r) => h("li", { dataset: { report: r.name } },
      h("a", { href: `#/report/${enc(r.name)}` }, r.title), " ",
      h("span", { class: "muted small" }, `· ${new Date(r.modified * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC · ${r.files.filter((f) => f.endsWith(".png")).length} plots`))));
  }

  async function segmentPage(name, offset) {
    const [segs, page] = await Promise.all([getSegments(),
      api(`/v1/segments/${enc(name)}/members?offset=${offset}&limit=${MEMBERS_PAGE}`)]);
    const seg = segs.segments.find((s) => s.name === name);
    charts.members = page;
    const pager = h("div", { class: "pager" },
      offset > 0 ? h("a", { href: `#/segment/${enc(name)}/${Math.max(0, offset - MEMBERS_PAGE)}`, id: "members-prev" }, "← previous") : null,
      h("span", { class: "muted" }, page.total ? `${offset + 1}–${offset + page.members.length} of ${fmt(page.total)}` : "no members"),
      offset + MEMBERS_PAGE < page.total ? h("a", { href: `#/segment/${enc(name)}/${offset + MEMBERS_PAGE}`, id: "members-next" }, "next →") : null);
    return h("div", { dataset: { segment: name } },
      h("div", { class: "page-head" },
        h("div", {}, h("div", { class: "eyebrow" }, "segment"), h("h1", { id: "segment-name" }, name)),
        h("code", { class: "rule", id: "segment-rule" }, seg.rule),
        h("div", { class: "sub" }, `${fmt(seg.size)} of ${fmt(segs.population)} users (${segs.population ? ((100 * seg.size) / segs.population).toFixed(1) : 0}%) as of ${fmtTime(segs.as_of)}`)),
      h("div", { class: "grid" },
        card("Members", "members", async () => [h("ul", { class: "members", id: "members" },
          page.members.map((m) => h("li", {}, userLink(m)))), pager], { wide: true }),
        card("Size over time", "sizes", () => sizesOverTime([seg], segs.as_of, "segment-size")),
        card("Recent entries and exits", "changes", async () => {
          const log = await changeLog(name);
          const rows = [...log.rows].sort((a, b) => b.seq - a.seq).slice(0, 20);
          return rows.length ? timeline(rows, true) : h("p", { class: "muted" }, "No changes logged yet.");
        })));
  }

  async function reportPage(name) {
    const md = await api(`/ui/reports/${enc(name)}/report.md`, { as: "text" });
    const node = h("article", { class: "card report", dataset: { report: name } }, markdown(md));
    for (const img of node.querySelectorAll("img[data-file]")) {
      pending.push(api(`/ui/reports/${enc(name)}/${enc(img.dataset.file)}`, { as: "blob" }).then((blob) => {
        img.src = URL.createObjectURL(blob);
        return img.decode().then(() => { img.dataset.loaded = "true"; });
      }).catch((e) => img.replaceWith(errorBox(e))));
    }
    return h("div", {}, h("p", {}, h("a", { href: "#/population" }, "← population")), node);
  }

  // -- a small Markdown renderer for report.md (headings, tables, lists, images, **bold**, `code`)
  function inline(text) {
    return text.split(/(\*\*[^*]+\*\*|`[^`]+`)/).filter(Boolean).map((t) => {
      if (t.startsWith("**") && t.endsWith("**")) return h("strong", {}, t.slice(2, -2));
      if (t.startsWith("`") && t.endsWith("`")) return h("code", {}, t.slice(1, -1));
      return t;
    });
  }
  function markdown(text) {
    const out = [];
    const lines = text.split("\n");
    let para = [];
    const flush = () => { if (para.length) out.push(h("p", {}, inline(para.join(" ")))); para = []; };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const image = /^!\[([^\]]*)\]\(([^)\s]+)\)\s*$/.exec(line);
      if (heading) { flush(); out.push(h(`h${heading[1].length}`, {}, inline(heading[2]))); }
      else if (image) { flush(); out.push(h("figure", {}, h("img", { alt: image[1], dataset: { file: image[2] } }))); }
      else if (line.startsWith("|")) {
        flush();
        const block = [];
        while (i < lines.length && lines[i].startsWith("|")) block.push(lines[i++]);
        i--;
        const cells = (l) => l.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
        const body = block.slice(block.length > 1 && /^\|[\s:|-]+\|?$/.test(block[1]) ? 2 : 1);
        out.push(table(cells(block[0]).map((c) => ({ label: inline(c) })),
          body.map((l) => h("tr", {}, cells(l).map((c) => h("td", {}, inline(c)))))));
      } else if (/^[-*]\s+/.test(line)) {
        flush();
        const items = [];
        while (i < lines.length && /^[-*]\s+/.test(lines[i])) items.push(lines[i++].replace(/^[-*]\s+/, ""));
        i--;
        out.push(h("ul", {}, items.map((t) => h("li", {}, inline(t)))));
      } else if (!line.trim()) flush();
      else para.push(line.trim());
    }
    flush();
    return out;
  }

  // -- router -----------------------------------------------------------
  const ROUTES = [
    [/^#?\/?$/, "home", () => home()],
    [/^#\/user\/(.+)$/, "user", (m) => userPage(decodeURIComponent(m[1]))],
    [/^#\/segment\/([^/]+)(?:\/(\d+))?$/, "segment", (m) => segmentPage(decodeURIComponent(m[1]), Number(m[2] || 0))],
    [/^#\/population$/, "population", () => population()],
    [/^#\/report\/(.+)$/, "report", (m) => reportPage(decodeURIComponent(m[1]))],
  ];

  function goUser(text) {
    const id = text.trim();
    if (id) location.hash = `#/user/${enc(id)}`;
  }

  async function render() {
    const seq = ++renderSeq;
    document.body.dataset.ready = "false";
    for (const el of plots) el.dispose();
    plots = [];
    pending = [];
    memo = new Map();
    for (const k of Object.keys(charts)) delete charts[k];
    const hash = location.hash || "#/";
    const [re, page, make] = ROUTES.find(([r]) => r.test(hash)) || [null, "missing", null];
    document.body.dataset.page = page;
    for (const a of document.querySelectorAll("[data-nav]")) {
      a.classList.toggle("active", a.dataset.nav === page || (page === "user" && a.dataset.nav === "home"));
    }
    view.replaceChildren(h("p", { class: "loading" }, "Loading"));
    let node;
    try {
      node = make ? await make(re.exec(hash)) : errorBox(new Error(`no page at ${hash}`));
    } catch (e) {
      node = errorBox(e);
    }
    if (seq !== renderSeq) return;
    view.replaceChildren(node);
    document.title = page === "user" || page === "segment"
      ? `${decodeURIComponent(hash.split("/")[2])} · portrait` : "portrait";
    for (let n = -1; n !== pending.length;) { n = pending.length; await Promise.allSettled(pending); }
    if (seq === renderSeq) document.body.dataset.ready = "true";
  }

  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("search-input");
    goUser(input.value);
    input.value = "";
  });
  document.getElementById("change-key").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    askKey("").then(render);
  });
  // the key is needed to show anything: Escape does not close the dialog
  document.getElementById("key-dialog").addEventListener("cancel", (ev) => ev.preventDefault());
  window.addEventListener("hashchange", render);
  render();
})();
