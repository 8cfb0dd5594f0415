// Overview: the storage's health (each backend, pendingSync, degraded state), the
// last 24 hours of runs (runStats by hour and status as an inline SVG chart,
// p50/p95 durations, tokens) and the latest runs.

import { stackedBars, legend } from "../charts.js";
import { gql } from "../client.js";
import { badge, count, h, loading, ms, shortId, when } from "../dom.js";

const HOUR = 3600 * 1000;

const QUERY = `query Overview($since: DateTime!) {
  health {
    status version uptimeSeconds pendingSync quarantined degradedSince
    backends { role kind healthy active latencyMs lastError checkedAt }
  }
  runStats(filter: { createdAfter: $since }, bucket: HOUR) {
    runs
    byStatus { status count }
    durationMs { count p50 p95 }
    usage { inputTokens outputTokens totalTokens }
    series { start runs byStatus { status count } }
  }
  runs(first: 10) {
    totalCount
    edges { node { id threadId graph status createdAt finishedAt userId } }
  }
}`;

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function healthCard(health) {
  const facts = [
    ["Status", badge(health.status)],
    ["Pending sync", String(health.pendingSync)],
    ["Quarantined", String(health.quarantined)],
    ["Degraded since", when(health.degradedSince)],
    ["Uptime", duration(health.uptimeSeconds)],
    ["Version", health.version],
  ];
  return h(
    "section.card",
    { "aria-labelledby": "health-title" },
    h("h2", { id: "health-title" }, "Storage health"),
    health.status === "DEGRADED"
      ? h("p.warn", {}, "A fallback stores checkpoints; writes will be copied back to the primary when it returns.")
      : null,
    h("dl.facts", {}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)])),
    h(
      "table",
      { "aria-label": "Backends" },
      h("thead", {}, h("tr", {}, ["Role", "Kind", "Healthy", "Active", "Latency", "Last error", "Checked"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        {},
        health.backends.map((b) =>
          h(
            "tr",
            { "data-backend": b.role },
            h("td", {}, b.role),
            h("td", {}, b.kind),
            h("td", {}, b.healthy ? "yes" : h("strong.bad", {}, "no")),
            h("td", {}, b.active ? "yes" : "no"),
            h("td", {}, b.latencyMs === null ? "—" : `${b.latencyMs.toFixed(1)} ms`),
            h("td", {}, b.lastError || "—"),
            h("td", {}, when(b.checkedAt)),
          ),
        ),
      ),
    ),
  );
}

function runsCard(runs) {
  return h(
    "section.card",
    { "aria-labelledby": "runs-title" },
    h("h2", { id: "runs-title" }, `Recent runs (${runs.totalCount} in all)`),
    runs.edges.length
      ? h(
          "table",
          { "aria-label": "Recent runs" },
          h("thead", {}, h("tr", {}, ["Run", "Status", "Graph", "Thread", "User", "Created"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            {},
            runs.edges.map(({ node: r }) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `/ui/runs/${r.id}` }, shortId(r.id))),
                h("td", {}, badge(r.status)),
                h("td", {}, r.graph),
                h("td", {}, h("a", { href: `/ui/threads/${r.threadId}` }, shortId(r.threadId))),
                h("td", {}, r.userId || "—"),
                h("td", {}, when(r.createdAt)),
              ),
            ),
          ),
        )
      : h("p", {}, "No runs yet. ", h("a", { href: "/ui/threads" }, "Start one"), "."),
  );
}

/** One bucket per hour from `since`'s hour to now's, the series' counts in those it has. */
function hours(series, since, now) {
  const byStart = new Map(series.map((b) => [Date.parse(b.start), b]));
  const out = [];
  for (let t = Math.floor(since / HOUR) * HOUR; t <= now; t += HOUR) {
    const b = byStart.get(t);
    out.push({ start: new Date(t), runs: b ? b.runs : 0, byStatus: b ? b.byStatus : [] });
  }
  return out;
}

function statsCard(stats, since, now) {
  const buckets = hours(stats.series, since, now);
  const busiest = buckets.reduce((a, b) => (b.runs > a.runs ? b : a), buckets[0]);
  const summary = stats.runs
    ? `${stats.runs} runs in the last 24 hours; the busiest hour began at ${busiest.start.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })} with ${busiest.runs}.`
    : "No run in the last 24 hours.";
  const d = stats.durationMs;
  const present = stats.byStatus.filter((c) => c.count);
  const facts = [
    ["Runs", count(stats.runs)],
    ["By status", present.length ? h("span.counts", {}, present.map((c) => h("span", {}, badge(c.status), ` ${c.count}`))) : "—"],
    ["Duration p50", d ? ms(d.p50) : "—"],
    ["Duration p95", d ? ms(d.p95) : "—"],
    ["Tokens", `${count(stats.usage.totalTokens)} (${count(stats.usage.inputTokens)} in, ${count(stats.usage.outputTokens)} out)`],
  ];
  return h(
    "section.card.stats",
    { "aria-labelledby": "stats-title" },
    h("h2", { id: "stats-title" }, "Runs, last 24 hours"),
    h("div.chart-box", { "data-testid": "runs-chart", "data-since": new Date(since).toISOString() }, stackedBars(buckets, { title: "Runs per hour by status, last 24 hours", summary })),
    legend(),
    h("dl.facts", {}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)])),
  );
}

/** Render the overview into `root`. */
export async function render(root) {
  document.title = "Overview · Code Hero";
  root.replaceChildren(h("h1", {}, "Overview"), loading());
  const now = Date.now();
  const since = now - 24 * HOUR;
  const data = await gql(QUERY, { since: new Date(since).toISOString() });
  root.replaceChildren(
    h("h1", {}, "Overview"),
    statsCard(data.runStats, since, now),
    h("div.grid", {}, healthCard(data.health), runsCard(data.runs)),
  );
  // On a narrow window the chart scrolls sideways: show its newest hours first.
  const box = root.querySelector("[data-testid=runs-chart]");
  box.scrollLeft = box.scrollWidth;
}
