// Thread: metadata, status, expiry, runs, the checkpoint timeline (step, source, the
// nodes that wrote it, and when opened its changes as a diff and its values as a tree);
// start a run, answer an interrupt, fork from a checkpoint, edit state, copy, delete.
//
// Starting a run uses startRun, then shows the run's own view (which follows
// runEvents): the run gets a shareable URL at once, and reloading it or losing the
// socket resumes with afterSeq there. runStream would tie the run's only stream to
// this page's socket and need that same resume path anyway.

import { gql } from "../client.js";
import { badge, busy, field, h, jsonTree, loading, parseJson, shortId, when } from "../dom.js";
import { INTERRUPT_FIELDS, interruptForms } from "../resume.js";

const QUERY = `query Thread($id: ID!, $after: String) {
  thread(id: $id) {
    id status userId createdAt updatedAt expiresAt metadata
    interrupts { ${INTERRUPT_FIELDS} }
    runs(first: 20) { totalCount edges { node { id status graph createdAt finishedAt error } } }
    checkpoints(first: 20, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id step source createdAt runId next updatedBy } }
    }
  }
}`;
const VALUES = `query Values($threadId: ID!, $id: ID!) {
  checkpoint(threadId: $threadId, id: $id) { id values metadata changes { channel before after appended } }
}`;
const UPDATE = `mutation Edit($input: UpdateStateInput!) { updateState(input: $input) { id step source } }`;
const COPY = `mutation Copy($id: ID!) { copyThread(id: $id) { id } }`;
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

function editForm(thread, ctx, rerender) {
  const values = h("textarea.code", { name: "values", rows: 4, required: true, spellcheck: "false", placeholder: '{"messages": [{"role": "user", "content": "..."}]}' });
  const asNode = h("input", { name: "asNode", placeholder: "LangGraph's choice" });
  const form = h(
    "form.action.edit",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        let parsed;
        try {
          parsed = parseJson(values.value);
        } catch (err) {
          const message = err instanceof SyntaxError ? `the values are not JSON: ${err.message}` : err.message;
          ctx.showError({ message, code: "BAD_USER_INPUT" });
          return;
        }
        const input = { threadId: thread.id, values: parsed, asNode: asNode.value.trim() || null };
        const done = await busy(form, () => gql(UPDATE, { input }), ctx.showError);
        if (done) rerender();
      },
    },
    h("h3", {}, "Edit state"),
    h("p.hint", {}, "Applied as the node's update would be (reducers apply): a list channel such as messages is appended to."),
    field("Values (JSON object)", values),
    field("As node (optional)", asNode),
    h("button", { type: "submit" }, "Save as a new checkpoint"),
  );
  return form;
}

function copyAction(thread, ctx) {
  const box = h("div.action");
  const button = h("button", { type: "button" }, "Copy thread");
  button.addEventListener("click", async () => {
    const done = await busy(box, () => gql(COPY, { id: thread.id }), ctx.showError);
    if (done) ctx.navigate(`/ui/threads/${done.copyThread.id}`);
  });
  box.append(button);
  return box;
}

/** A channel's change: before/after trees, or for a list that only grew, its new items marked added. */
function change(c) {
  if (c.appended) {
    const items = Array.isArray(c.after) ? c.after : [c.after];
    return h(
      "div.change",
      { "data-channel": c.channel },
      h("h5", {}, c.channel, h("span.source", {}, ` +${items.length} appended`)),
      items.map((v) => h("div.added", { "aria-label": "added" }, h("span.mark", { "aria-hidden": "true" }, "+"), jsonTree(v, 1))),
    );
  }
  return h(
    "div.change",
    { "data-channel": c.channel },
    h("h5", {}, c.channel),
    h(
      "div.diff",
      {},
      h("div.removed", { "aria-label": "before" }, h("span.mark", { "aria-hidden": "true" }, "−"), c.before === null || c.before === undefined ? h("span.empty", {}, "(unset)") : jsonTree(c.before, 1)),
      h("div.added", { "aria-label": "after" }, h("span.mark", { "aria-hidden": "true" }, "+"), jsonTree(c.after, 1)),
    ),
  );
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
          const changes = data.checkpoint.changes;
          body.replaceChildren(
            h("h4", {}, "Changes"),
            changes.length ? h("div.changes", {}, changes.map(change)) : h("p.empty", {}, "Nothing changed."),
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
      cp.updatedBy.length ? h("span.by", {}, `by ${cp.updatedBy.join(", ")}`) : null,
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
  const rerender = () => render(root, [id], query, ctx).catch(ctx.showError);
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
          thread.expiresAt ? [h("dt", {}, "Expires"), h("dd", { "data-fact": "Expires" }, when(thread.expiresAt))] : null,
        ),
        h("h3", {}, "Metadata"),
        jsonTree(thread.metadata, 2),
      ),
      h(
        "section.card.actions",
        { "aria-labelledby": "act" },
        h("h2", { id: "act" }, "Actions"),
        interruptForms(thread.id, thread.interrupts, ctx),
        messageForm("Start a run", "Start run", { threadId: thread.id }, ctx),
        editForm(thread, ctx, rerender),
        h("div.row", {}, copyAction(thread, ctx), deleteAction(thread, ctx)),
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
