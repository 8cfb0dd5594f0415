// Overview: the storage's health (each backend, pendingSync, degraded state) and recent runs.
//
// TO ADD with issue 12 (not served yet; names from schema-next.graphql):
//   runStats(filter: { createdAfter: <now - 24 h> }, bucket: HOUR) {
//     runs byStatus { status count } durationMs { p50 p95 } usage { totalTokens }
//     series { start runs byStatus { status count } usage { totalTokens } } }
// as an inline SVG bar chart by hour and status, beside p50/p95 and the tokens.

import { gql } from "../client.js";
import { badge, h, loading, shortId, when } from "../dom.js";

const QUERY = `query Overview {
  health {
    status version uptimeSeconds pendingSync quarantined degradedSince
    backends { role kind healthy active latencyMs lastError checkedAt }
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

/** Render the overview into `root`. */
export async function render(root) {
  document.title = "Overview · Code Hero";
  root.replaceChildren(h("h1", {}, "Overview"), loading());
  const data = await gql(QUERY);
  root.replaceChildren(h("h1", {}, "Overview"), h("div.grid", {}, healthCard(data.health), runsCard(data.runs)));
}
