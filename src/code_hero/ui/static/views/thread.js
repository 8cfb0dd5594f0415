// Thread: metadata, status, runs, the checkpoint timeline and a checkpoint's values;
// start a run, resume an interrupt, fork from a checkpoint, delete.
//
// TO ADD with issue 12 (not served yet; names from schema-next.graphql):
//   Checkpoint.updatedBy in each timeline row; Checkpoint.changes { channel before
//   after appended } per step as a diff (appended: only the new list items).
// TO ADD with issue 13: Thread.interrupts { id node namespace value runId } for the
//   resume form (instead of the latest checkpoint's __interrupt__ pending writes);
//   copyThread(id) -> a "Copy" action; updateState(input: { threadId values asNode
//   checkpointId namespace }) -> an "Edit state" form.

import { gql } from "../client.js";
import { badge, busy, field, h, jsonOrText, jsonTree, loading, shortId, when } from "../dom.js";

const QUERY = `query Thread($id: ID!, $after: String) {
  thread(id: $id) {
    id status userId createdAt updatedAt metadata
    latestCheckpoint { id next pendingWrites { taskId channel value } }
    runs(first: 20) { totalCount edges { node { id status graph createdAt finishedAt error } } }
    checkpoints(first: 20, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id step source createdAt runId next } }
    }
  }
}`;
const VALUES = `query Values($threadId: ID!, $id: ID!) {
  checkpoint(threadId: $threadId, id: $id) { id values metadata }
}`;
const START = `mutation Start($input: StartRunInput!) { startRun(input: $input) { id } }`;
const DELETE = `mutation Delete($id: ID!) { deleteThread(id: $id) { deleted checkpointsDeleted runsDeleted } }`;

function startRun(input, form, ctx) {
  return busy(form, () => gql(START, { input }), ctx.showError).then((data) => {
    if (data) ctx.navigate(`/ui/runs/${data.startRun.id}`);
  });
}

function messageForm(title, button, input, ctx, extra = null) {
  const message = h("textarea", { name: "message", rows: 2, required: true });
  const form = h(
    "form.action",
    {
      onsubmit: (event) => {
        event.preventDefault();
        startRun({ ...input, message: message.value }, form, ctx);
      },
    },
    title ? h("h3", {}, title) : null,
    extra,
    field("Message", message),
    h("button", { type: "submit" }, button),
  );
  return form;
}

function resumeForm(thread, ctx) {
  const writes = (thread.latestCheckpoint && thread.latestCheckpoint.pendingWrites) || [];
  const asked = writes.filter((w) => w.channel === "__interrupt__").map((w) => w.value);
  const answer = h("textarea", { name: "answer", rows: 3, required: true, placeholder: 'yes, or {"approved": false, "feedback": "..."}' });
  const form = h(
    "form.action.resume",
    {
      onsubmit: (event) => {
        event.preventDefault();
        startRun({ threadId: thread.id, resume: jsonOrText(answer.value) }, form, ctx);
      },
    },
    h("h3", {}, "The graph waits for an answer"),
    asked.length ? h("div.asked", {}, asked.map((v) => jsonTree(v, 3))) : null,
    field("Answer (JSON or text)", answer),
    h("button", { type: "submit" }, "Resume"),
  );
  return form;
}

function deleteAction(thread, ctx) {
  const box = h("div.action.danger");
  const ask = () =>
    box.replaceChildren(
      h("p", { role: "status" }, "Delete this thread, its checkpoints and its runs everywhere?"),
      h("button.danger", { type: "button", onclick: remove }, "Yes, delete"),
      h("button", { type: "button", onclick: idle }, "Keep it"),
    );
  const idle = () => box.replaceChildren(h("button.danger", { type: "button", onclick: ask }, "Delete thread…"));
  async function remove() {
    const done = await busy(box, () => gql(DELETE, { id: thread.id }), ctx.showError);
    if (done) ctx.navigate("/ui/threads");
  }
  idle();
  return box;
}

function checkpointItem(thread, cp, ctx) {
  const body = h("div.cp-body");
  const item = h(
    "details.checkpoint",
    {
      "data-checkpoint": cp.id,
      ontoggle: async () => {
        if (!item.open || body.dataset.loaded) return;
        body.replaceChildren(loading());
        try {
          const data = await gql(VALUES, { threadId: thread.id, id: cp.id });
          body.dataset.loaded = "1";
          body.replaceChildren(
            h("h4", {}, "Values"),
            jsonTree(data.checkpoint.values, 1),
            h("h4", {}, "Metadata"),
            jsonTree(data.checkpoint.metadata, 0),
            messageForm(null, "Fork from this checkpoint", { threadId: thread.id, fromCheckpointId: cp.id }, ctx),
          );
        } catch (err) {
          body.replaceChildren();
          ctx.showError(err);
        }
      },
    },
    h(
      "summary",
      {},
      h("span.step", {}, `step ${cp.step}`),
      h("span.source", {}, cp.source),
      h("span", {}, when(cp.createdAt)),
      shortId(cp.id, true), // checkpoint ids are time-ordered: their heads look alike
      cp.next.length ? h("span.next", {}, `→ ${cp.next.join(", ")}`) : null,
    ),
    body,
  );
  return h("li", {}, item);
}

/** Render one thread into `root`. */
export async function render(root, [id], query, ctx) {
  document.title = `Thread ${id.slice(0, 8)} · Code Hero`;
  root.replaceChildren(h("h1", {}, "Thread ", shortId(id)), loading());
  const { thread } = await gql(QUERY, { id, after: query.get("after") || null });
  if (!thread) {
    root.replaceChildren(h("h1", {}, "No such thread"), h("p", {}, h("a", { href: "/ui/threads" }, "All threads")));
    return;
  }
  const cps = thread.checkpoints;
  const next = new URLSearchParams({ after: cps.pageInfo.endCursor || "" });
  root.replaceChildren(
    h("h1", {}, "Thread ", h("code.id", {}, thread.id), " ", badge(thread.status)),
    h(
      "div.grid",
      {},
      h(
        "section.card",
        { "aria-labelledby": "about" },
        h("h2", { id: "about" }, "About"),
        h(
          "dl.facts",
          {},
          h("dt", {}, "User"),
          h("dd", {}, thread.userId || "—"),
          h("dt", {}, "Created"),
          h("dd", {}, when(thread.createdAt)),
          h("dt", {}, "Updated"),
          h("dd", {}, when(thread.updatedAt)),
        ),
        h("h3", {}, "Metadata"),
        jsonTree(thread.metadata, 2),
      ),
      h(
        "section.card.actions",
        { "aria-labelledby": "act" },
        h("h2", { id: "act" }, "Actions"),
        thread.status === "INTERRUPTED" ? resumeForm(thread, ctx) : null,
        messageForm("Start a run", "Start run", { threadId: thread.id }, ctx),
        deleteAction(thread, ctx),
      ),
    ),
    h(
      "section.card",
      { "aria-labelledby": "runs" },
      h("h2", { id: "runs" }, `Runs (${thread.runs.totalCount})`),
      h(
        "ul.runs",
        {},
        thread.runs.edges.map(({ node: r }) =>
          h(
            "li",
            {},
            h("a", { href: `/ui/runs/${r.id}` }, shortId(r.id)),
            " ",
            badge(r.status),
            ` ${r.graph} · ${when(r.createdAt)}`,
            r.error ? h("span.bad", {}, ` ${r.error}`) : null,
          ),
        ),
      ),
    ),
    h(
      "section.card",
      { "aria-labelledby": "timeline" },
      h("h2", { id: "timeline" }, `Checkpoints (${cps.totalCount}), newest first`),
      h("ol.timeline", {}, cps.edges.map(({ node }) => checkpointItem(thread, node, ctx))),
      h(
        "nav.pager",
        { "aria-label": "Checkpoint pages" },
        query.get("after") ? h("a", { href: `/ui/threads/${thread.id}` }, "Newest") : null,
        cps.pageInfo.hasNextPage ? h("a", { href: `/ui/threads/${thread.id}?${next}` }, "Older") : null,
      ),
    ),
  );
}
