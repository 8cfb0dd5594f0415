// Run: follows runEvents live: status, agent transitions, messages token by
// token, tool calls, the event log; the steps as a Gantt-like chart with the token
// usage and the duration (Run.steps/usage/durationMs, read again when a node's
// update or a status event arrives, and at the end); cancel; resume an interrupt.
// A lost socket (network down, server restart) is resumed with afterSeq = the last
// seq seen, and an event at or below it is never shown twice. The start forms use
// startRun and come here rather than runStream (see thread.js for why).

import { gql, resetSocket, socketQuery, subscribe } from "../client.js";
import { gantt } from "../charts.js";
import { badge, busy, count, field, h, jsonOrText, jsonTree, loading, ms, shortId, when } from "../dom.js";

const QUERY = `query Run($id: ID!) {
  run(id: $id) { id threadId graph status input error userId metadata createdAt startedAt finishedAt }
}`;
const EVENTS = `subscription Events($runId: ID!, $afterSeq: Int!) {
  runEvents(runId: $runId, afterSeq: $afterSeq) {
    __typename seq at
    ... on RunStatusChanged { status error }
    ... on AgentTransition { fromAgent toAgent reason }
    ... on MessageDelta { node messageId delta }
    ... on ToolCall { agent tool args result }
    ... on Interrupted { node value }
    ... on NodeUpdate { node }
    ... on CheckpointSaved { checkpointId step }
    ... on CustomEvent { data }
  }
}`;
const TIMELINE = `query Timeline($id: ID!) {
  run(id: $id) {
    status durationMs
    usage { inputTokens outputTokens totalTokens }
    steps { node namespace startedAt finishedAt durationMs error }
  }
}`;
const CANCEL = `mutation Cancel($id: ID!) { cancelRun(id: $id) { id status } }`;
const START = `mutation Start($input: StartRunInput!) { startRun(input: $input) { id } }`;
const ENDED = new Set(["SUCCESS", "ERROR", "INTERRUPTED", "CANCELLED"]);

function describe(e) {
  switch (e.__typename) {
    case "RunStatusChanged":
      return `status ${e.status}${e.error ? `: ${e.error}` : ""}`;
    case "AgentTransition":
      return `${e.fromAgent || "start"} → ${e.toAgent}`;
    case "MessageDelta":
      return `${e.node}: ${JSON.stringify(e.delta)}`;
    case "ToolCall":
      return `${e.agent} called ${e.tool}`;
    case "Interrupted":
      return `interrupted at ${e.node}`;
    case "NodeUpdate":
      return `${e.node} updated the state`;
    case "CheckpointSaved":
      return `checkpoint at step ${e.step}`;
    default:
      return e.__typename;
  }
}

/** Render one run into `root`, live; returns the cleanup that stops following it. */
export async function render(root, [id], _query, ctx) {
  document.title = `Run ${id.slice(0, 8)} · Code Hero`;
  root.replaceChildren(h("h1", {}, "Run ", shortId(id)), loading());
  const { run } = await gql(QUERY, { id });
  if (!run) {
    root.replaceChildren(h("h1", {}, "No such run"), h("p", {}, h("a", { href: "/ui/threads" }, "All threads")));
    return null;
  }

  const status = h("span", { "data-testid": "run-status" }, badge(run.status));
  const live = h("p.live", { role: "status", "data-testid": "live" }, "Connecting…");
  const cancel = h("button.danger", { type: "button" }, "Cancel run");
  const cancelForm = h("div.action", {}, cancel);
  const transitions = h("ol.transitions", { "aria-label": "Agent transitions" });
  const messages = h("div.messages", { "data-testid": "messages" });
  const tools = h("ul.tools", { "aria-label": "Tool calls" });
  // The empty panels say "yet" while the run goes on, and what happened once it ended.
  const noTools = h("p.empty", {}, "No tool call yet.");
  const noTransitions = h("p.empty", {}, "No agent handed over yet (a graph without agents has none).");
  const noMessages = h("p.empty", {}, "No message yet (a graph without a model streams none).");
  const started = h("dd", { "data-fact": "Started" }, when(run.startedAt));
  const finished = h("dd", { "data-fact": "Finished" }, when(run.finishedAt));
  const interrupts = h("div.interrupts");
  const events = h("ol.events", { "data-testid": "events", "aria-label": "Events" });
  const bubbles = new Map();
  const duration = h("dd", { "data-fact": "Duration" }, "—");
  const tokens = h("dd", { "data-fact": "Tokens" }, "—");
  const steps = h("div.chart-box", { "data-testid": "steps" }, h("p.empty", {}, "No step yet."));

  // Run.steps, usage and durationMs: read again after a node's update or a status
  // change, at most one read in flight and one queued (a burst of events makes one read);
  // over the run's socket, so a read the network cuts is not a failed request in the log.
  let reading = null;
  let again = false;
  let stale = false;
  function showTimeline(r) {
    duration.textContent = ms(r.durationMs);
    tokens.textContent = `${count(r.usage.totalTokens)} (${count(r.usage.inputTokens)} in, ${count(r.usage.outputTokens)} out)`;
    steps.dataset.count = r.steps.length;
    const none = ENDED.has(r.status) ? "No step ran." : "No step yet.";
    steps.replaceChildren(r.steps.length ? gantt(r.steps, { title: `The ${r.steps.length} steps of run ${id}` }) : h("p.empty", {}, none));
  }
  function refresh() {
    if (reading) {
      again = true;
      return reading;
    }
    if (!navigator.onLine) {
      stale = true; // read when the network is back
      return Promise.resolve();
    }
    reading = socketQuery(TIMELINE, { id })
      .then((data) => data.run && showTimeline(data.run))
      .catch((err) => {
        // A lost network is the live line's news, not an error: read again when back.
        if (err.code === "NETWORK") stale = true;
        else ctx.showError(err);
      })
      .finally(() => {
        reading = null;
        if (again) {
          again = false;
          refresh();
        }
      });
    return reading;
  }
  // A read that starts after the run ended (one in flight may have started before).
  async function finalRead() {
    while (reading) await reading;
    await refresh();
  }

  cancel.addEventListener("click", async () => {
    const done = await busy(cancelForm, () => gql(CANCEL, { id }), ctx.showError);
    if (done) setStatus(done.cancelRun.status);
  });

  function setStatus(value) {
    status.replaceChildren(badge(value));
    cancelForm.hidden = ENDED.has(value);
    if (ENDED.has(value)) {
      noTools.textContent = "No tool was called.";
      noTransitions.textContent = "No agent handed over (a graph without agents has none).";
      noMessages.textContent = "No message was streamed (a graph without a model streams none).";
    }
  }

  function bubble(e) {
    const key = e.messageId || `${e.node}-${e.seq}`;
    let text = bubbles.get(key);
    if (!text) {
      text = h("div.text", { "data-message": key });
      bubbles.set(key, text);
      noMessages.remove();
      messages.append(h("article.message", {}, h("header", {}, e.node), text));
    }
    return text;
  }

  function resumeForm(e) {
    const answer = h("textarea", { name: "answer", rows: 2, required: true });
    const form = h(
      "form.action.resume",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          const data = await busy(form, () => gql(START, { input: { threadId: run.threadId, resume: jsonOrText(answer.value) } }), ctx.showError);
          if (data) ctx.navigate(`/ui/runs/${data.startRun.id}`);
        },
      },
      h("h3", {}, `Waiting at ${e.node}`),
      jsonTree(e.value, 3),
      field("Answer (JSON or text)", answer),
      h("button", { type: "submit" }, "Resume"),
    );
    return form;
  }

  let lastSeq = 0;
  function apply(e) {
    if (e.seq <= lastSeq) return; // already shown (a replay after a resume)
    lastSeq = e.seq;
    events.append(h("li", { "data-seq": e.seq }, h("span.seq", {}, e.seq), ` ${describe(e)}`));
    if (e.__typename === "NodeUpdate" || e.__typename === "RunStatusChanged") refresh();
    switch (e.__typename) {
      case "RunStatusChanged":
        setStatus(e.status);
        // The status events carry the times the run record shows (no query needed).
        if (e.status === "RUNNING" && !run.startedAt) started.textContent = when(e.at);
        if (ENDED.has(e.status)) finished.textContent = when(e.at);
        if (e.error) ctx.showError({ message: e.error, code: "RUN_ERROR" });
        break;
      case "AgentTransition":
        noTransitions.remove();
        transitions.append(h("li", {}, h("strong", {}, e.fromAgent || "start"), " → ", h("strong", {}, e.toAgent), e.reason ? h("span.reason", {}, ` ${e.reason}`) : null));
        break;
      case "MessageDelta":
        bubble(e).append(e.delta);
        break;
      case "ToolCall":
        noTools.remove();
        tools.append(h("li", {}, h("strong", {}, e.tool), ` by ${e.agent}`, jsonTree({ args: e.args, result: e.result }, 1)));
        break;
      case "Interrupted":
        interrupts.replaceChildren(resumeForm(e));
        break;
    }
  }

  // Following the run: one subscription at a time (`generation`), resumed after lastSeq.
  let generation = 0;
  let stop = null;
  let retry = null;
  let failures = 0;
  let ended = false;

  function follow() {
    clearTimeout(retry);
    const mine = ++generation;
    live.textContent = lastSeq ? `Resuming after event ${lastSeq}…` : "Following live…";
    stop = subscribe(EVENTS, { runId: id, afterSeq: lastSeq }, {
      next: (data) => {
        if (mine !== generation) return;
        failures = 0;
        live.textContent = "Following live…";
        if (stale) {
          stale = false;
          refresh();
        }
        apply(data.runEvents);
      },
      error: (err) => {
        if (mine !== generation) return;
        if (err.code !== "NETWORK") {
          live.textContent = "Stopped.";
          ctx.showError(err);
          return;
        }
        const wait = Math.min(5000, 500 * 2 ** failures++);
        live.textContent = `Connection lost; resuming after event ${lastSeq} in ${wait / 1000} s…`;
        retry = setTimeout(follow, wait);
      },
      complete: () => {
        if (mine !== generation) return;
        ended = true;
        // The last read of the steps first: "ended" then means every number is final.
        finalRead().then(() => {
          if (mine === generation) live.textContent = `The run has ended (${lastSeq} events).`;
        });
      },
    });
  }

  function offline() {
    if (ended) return;
    generation++; // ignore whatever the old socket still says
    if (stop) stop();
    resetSocket();
    clearTimeout(retry);
    live.textContent = `Offline; will resume after event ${lastSeq}.`;
  }
  function online() {
    if (!ended) follow();
  }
  window.addEventListener("offline", offline);
  window.addEventListener("online", online);
  setStatus(run.status); // an ended run's panels and Cancel, before any event is replayed

  root.replaceChildren(
    h("h1", {}, "Run ", h("code.id", {}, run.id), " ", status),
    live,
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
          h("dt", {}, "Thread"),
          h("dd", {}, h("a", { href: `/ui/threads/${run.threadId}` }, shortId(run.threadId))),
          h("dt", {}, "Graph"),
          h("dd", {}, run.graph),
          h("dt", {}, "User"),
          h("dd", {}, run.userId || "—"),
          h("dt", {}, "Created"),
          h("dd", {}, when(run.createdAt)),
          h("dt", {}, "Started"),
          started,
          h("dt", {}, "Finished"),
          finished,
          h("dt", {}, "Duration"),
          duration,
          h("dt", {}, "Tokens"),
          tokens,
        ),
        h("h3", {}, "Input"),
        jsonTree(run.input, 2),
        cancelForm,
        interrupts,
      ),
      h("section.card", { "aria-labelledby": "agents" }, h("h2", { id: "agents" }, "Agent transitions"), noTransitions, transitions),
    ),
    h("section.card", { "aria-labelledby": "steps-title" }, h("h2", { id: "steps-title" }, "Steps"), steps),
    h("section.card", { "aria-labelledby": "msgs" }, h("h2", { id: "msgs" }, "Messages"), noMessages, messages),
    h("section.card", { "aria-labelledby": "tools" }, h("h2", { id: "tools" }, "Tool calls"), noTools, tools),
    h("section.card", {}, h("details.log", {}, h("summary", {}, "Event log"), events)),
  );
  follow();
  refresh();

  return () => {
    generation++;
    clearTimeout(retry);
    window.removeEventListener("offline", offline);
    window.removeEventListener("online", online);
    if (stop) stop();
  };
}
