// Threads: filter (statuses, user, metadata, metadata keys), sort, totalCount, cursor
// paging; delete the selected rows (deleteThreads by ids, after a confirmation); start a run.
// Every filter lives in the URL (/ui/threads?status=IDLE&status=ERROR&user=...), so a
// view can be shared. The threads waiting for a human have their own view, /ui/inbox.

import { gql } from "../client.js";
import { badge, busy, field, h, loading, parseJson, shortId, when } from "../dom.js";

const QUERY = `query Threads($first: Int!, $after: String, $filter: ThreadFilter, $orderBy: ThreadSort) {
  threads(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id status userId createdAt updatedAt metadata } }
  }
  waiting: threads(first: 1, filter: { statuses: [INTERRUPTED] }) { totalCount }
  graphs { name default }
}`;

const START = `mutation Start($input: StartRunInput!) { startRun(input: $input) { id threadId status } }`;

const DELETE = `mutation DeleteThreads($ids: [ID!]!, $limit: Int!) {
  deleteThreads(filter: { ids: $ids }, limit: $limit) { deleted threadIds hasMore }
}`;

const STATUSES = ["IDLE", "BUSY", "INTERRUPTED", "ERROR"];
const SORTS = {
  UPDATED_AT_DESC: "Updated, newest first",
  UPDATED_AT_ASC: "Updated, oldest first",
  CREATED_AT_DESC: "Created, newest first",
  CREATED_AT_ASC: "Created, oldest first",
};
const SIZES = ["10", "20", "50", "100"];

function select(name, options, value) {
  return h(
    "select",
    { name },
    Object.entries(options).map(([v, text]) => h("option", { value: v, selected: v === value }, text)),
  );
}

function refused(message) {
  return Object.assign(new Error(message), { code: "BAD_USER_INPUT" });
}

function variables(query) {
  const filter = {};
  const statuses = query.getAll("status").filter(Boolean);
  if (statuses.length) filter.statuses = statuses;
  if (query.get("user")) filter.userId = query.get("user");
  const keys = (query.get("keys") || "").split(",").map((k) => k.trim()).filter(Boolean);
  if (keys.length) filter.metadataHasKeys = keys;
  if (query.get("metadata")) {
    try {
      filter.metadata = parseJson(query.get("metadata"));
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err; // a number the page cannot send as typed
      throw refused('the metadata filter must be a JSON object, e.g. {"project": "x"}');
    }
  }
  const first = query.get("first") || "20";
  if (!/^\d+$/.test(first)) throw refused(`per page must be a whole number, got ${JSON.stringify(first)}`);
  const [fieldName, direction] = (query.get("sort") || "UPDATED_AT_DESC").split(/_(?=ASC$|DESC$)/);
  return {
    first: Number(first),
    after: query.get("after") || null,
    filter: Object.keys(filter).length ? filter : null,
    orderBy: { field: fieldName, direction },
  };
}

function filterForm(query, ctx) {
  const form = h(
    "form.card.filters",
    {
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        const params = new URLSearchParams();
        for (const [k, v] of new FormData(form)) if (v) params.append(k, String(v));
        params.delete("after");
        ctx.navigate(`/ui/threads${params.size ? `?${params}` : ""}`);
      },
    },
    field(
      "Statuses (none: any)",
      h(
        "select",
        { name: "status", multiple: true, size: STATUSES.length },
        STATUSES.map((st) => h("option", { value: st, selected: query.getAll("status").includes(st) }, st)),
      ),
    ),
    field("User", h("input", { name: "user", value: query.get("user") || "", placeholder: "user id" })),
    field("Metadata contains", h("input", { name: "metadata", value: query.get("metadata") || "", placeholder: '{"project": "x"}' })),
    field("Has metadata keys", h("input", { name: "keys", value: query.get("keys") || "", placeholder: "project, owner" })),
    field("Sort", select("sort", SORTS, query.get("sort") || "UPDATED_AT_DESC")),
    field("Per page", select("first", Object.fromEntries(SIZES.map((s) => [s, s])), query.get("first") || "20")),
    h("button", { type: "submit" }, "Apply"),
  );
  return form;
}

function startForm(graphs, ctx) {
  const message = h("textarea", { name: "message", rows: 2, required: true, placeholder: "What should the agents do?" });
  const graph = h("select", { name: "graph" }, graphs.map((g) => h("option", { value: g.name, selected: g.default }, g.name)));
  const form = h(
    "form.card.start",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        const run = await busy(
          form,
          () => gql(START, { input: { message: message.value, graph: graph.value } }),
          ctx.showError,
        );
        if (run) ctx.navigate(`/ui/runs/${run.startRun.id}`);
      },
    },
    h("h2", {}, "Start a run on a new thread"),
    field("Message", message),
    field("Graph", graph),
    h("button", { type: "submit" }, "Start run"),
  );
  return form;
}

function bulkDelete(table, ctx) {
  const box = h("div.action.bulk");
  const chosen = () => [...table.querySelectorAll("input[name=select]:checked")].map((c) => c.value);
  const idle = () => {
    const n = chosen().length;
    box.replaceChildren(h("button.danger", { type: "button", disabled: n === 0, onclick: ask }, `Delete selected (${n})…`));
  };
  const ask = () =>
    box.replaceChildren(
      h("p", { role: "status" }, `Delete ${chosen().length} threads, their checkpoints and their runs everywhere?`),
      h("button.danger", { type: "button", onclick: remove }, "Yes, delete them"),
      h("button", { type: "button", onclick: idle }, "Keep them"),
    );
  async function remove() {
    const ids = chosen();
    const done = await busy(box, () => gql(DELETE, { ids, limit: ids.length }), ctx.showError);
    if (done) ctx.navigate(location.pathname + location.search);
  }
  table.addEventListener("change", idle);
  idle();
  return box;
}

function table(threads) {
  if (!threads.edges.length) return h("p.empty", {}, "No thread matches.");
  return h(
    "table.threads",
    { "aria-label": "Threads" },
    h("thead", {}, h("tr", {}, ["Thread", "Status", "User", "Updated", "Created", "Metadata", "Select"].map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      threads.edges.map(({ node: t }) =>
        h(
          "tr",
          { "data-thread": t.id },
          h("td", {}, h("a", { href: `/ui/threads/${t.id}` }, shortId(t.id))),
          h("td", {}, badge(t.status)),
          h("td", {}, t.userId || "—"),
          h("td", {}, when(t.updatedAt)),
          h("td", {}, when(t.createdAt)),
          h("td.meta", {}, Object.keys(t.metadata).length ? JSON.stringify(t.metadata) : "—"),
          h("td", {}, h("input", { type: "checkbox", name: "select", value: t.id, "aria-label": `Select thread ${t.id}` })),
        ),
      ),
    ),
  );
}

/** Render the thread list into `root`. */
export async function render(root, _params, query, ctx) {
  document.title = "Threads · Code Hero";
  // One form for both paints: what someone selects while the list loads stays.
  const filters = filterForm(query, ctx);
  root.replaceChildren(h("h1", {}, "Threads"), filters, loading());
  let data;
  try {
    data = await gql(QUERY, variables(query));
  } catch (err) {
    if (!err || err.code !== "BAD_USER_INPUT") throw err;
    // A filter the API refuses (a shared or hand-edited URL): the form stays, to fix it.
    ctx.showError(err);
    const why = h("p.empty", { role: "status" }, "This filter was refused (see the error above): change it above, or ", h("a", { href: "/ui/threads" }, "clear the filters"), ".");
    root.replaceChildren(h("h1", {}, "Threads"), filters, why);
    return;
  }
  const { threads, waiting } = data;
  const next = new URLSearchParams(query);
  next.set("after", threads.pageInfo.endCursor || "");
  const first = new URLSearchParams(query);
  first.delete("after");
  const rows = table(threads);
  root.replaceChildren(
    h("h1", {}, "Threads"),
    h(
      "p.summary",
      {},
      h(
        "span",
        { "data-testid": "total", "data-count": threads.totalCount },
        `${threads.totalCount} ${threads.totalCount === 1 ? "thread matches" : "threads match"}.`,
      ),
      " ",
      h("a", { href: "/ui/inbox" }, `Waiting for a human: ${waiting.totalCount}`),
    ),
    filters,
    rows,
    threads.edges.length ? bulkDelete(rows, ctx) : null,
    h(
      "nav.pager",
      { "aria-label": "Pages" },
      query.get("after") ? h("a", { href: `/ui/threads?${first}` }, "First page") : null,
      threads.pageInfo.hasNextPage ? h("a", { href: `/ui/threads?${next}`, rel: "next" }, "Next page") : null,
    ),
    startForm(data.graphs, ctx),
  );
}
