// Inbox: the threads waiting for a human (status INTERRUPTED), each with the
// questions its graph asked (Thread.interrupts) and a form that answers them.

import { gql } from "../client.js";
import { h, loading, shortId, when } from "../dom.js";
import { INTERRUPT_FIELDS, interruptForms } from "../resume.js";

const QUERY = `query Inbox($after: String) {
  threads(first: 20, after: $after, filter: { statuses: [INTERRUPTED] }, orderBy: { field: UPDATED_AT, direction: ASC }) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id userId updatedAt metadata interrupts { ${INTERRUPT_FIELDS} } } }
  }
}`;

function item(thread, ctx) {
  return h(
    "section.card.inbox-item",
    { "data-thread": thread.id, "aria-label": `Thread ${thread.id}` },
    h(
      "h2",
      {},
      "Thread ",
      h("a", { href: `/ui/threads/${thread.id}` }, shortId(thread.id)),
      h("span.source", {}, ` ${thread.userId || "no owner"} · waiting since ${when(thread.updatedAt)}`),
    ),
    thread.interrupts.length
      ? interruptForms(thread.id, thread.interrupts, ctx)
      : h("p.empty", {}, "No pending question (answered meanwhile?)."),
  );
}

/** Render the inbox into `root`. */
export async function render(root, _params, query, ctx) {
  document.title = "Inbox · Code Hero";
  root.replaceChildren(h("h1", {}, "Inbox"), loading());
  const { threads } = await gql(QUERY, { after: query.get("after") || null });
  const next = new URLSearchParams({ after: threads.pageInfo.endCursor || "" });
  root.replaceChildren(
    h("h1", {}, "Inbox"),
    h(
      "p.summary",
      {},
      h("span", { "data-testid": "total", "data-count": threads.totalCount }, `${threads.totalCount} ${threads.totalCount === 1 ? "thread waits" : "threads wait"} for a human, the longest waiting first.`),
    ),
    h("div.inbox", {}, threads.edges.length ? threads.edges.map(({ node }) => item(node, ctx)) : h("p.empty", {}, "Nothing waits for an answer.")),
    h(
      "nav.pager",
      { "aria-label": "Pages" },
      query.get("after") ? h("a", { href: "/ui/inbox" }, "First page") : null,
      threads.pageInfo.hasNextPage ? h("a", { href: `/ui/inbox?${next}`, rel: "next" }, "Next page") : null,
    ),
  );
}
