// The answer form of a pending interrupt, shared by the thread view and the inbox:
// it starts a run with `resume` on the thread, then shows that run.

import { gql } from "./client.js";
import { busy, field, h, jsonOrText, jsonTree, shortId } from "./dom.js";

const START = `mutation Resume($input: StartRunInput!) { startRun(input: $input) { id } }`;

/** The interrupts' fields the forms show (select them under Thread.interrupts). */
export const INTERRUPT_FIELDS = "id node namespace value runId";

/**
 * One form per interrupt of `threadId`. With several pending, each answer is sent as
 * {interruptId: answer}: LangGraph's resume map, so it reaches the one that asked.
 */
export function interruptForms(threadId, interrupts, ctx) {
  return interrupts.map((it) => {
    const answer = h("textarea", { name: "answer", rows: 3, required: true, placeholder: 'yes, or {"approved": false, "feedback": "..."}' });
    const form = h(
      "form.action.resume",
      {
        "data-interrupt": it.id,
        onsubmit: async (event) => {
          event.preventDefault();
          const data = await busy(
            form,
            () => {
              const value = jsonOrText(answer.value);
              const resume = interrupts.length > 1 ? { [it.id]: value } : value;
              return gql(START, { input: { threadId, resume } });
            },
            ctx.showError,
          );
          if (data) ctx.navigate(`/ui/runs/${data.startRun.id}`);
        },
      },
      h(
        "h3",
        {},
        `Waiting at ${it.node}`,
        it.namespace ? h("span.source", {}, ` in ${it.namespace}`) : null,
        it.runId ? h("span.source", {}, " · run ", h("a", { href: `/ui/runs/${it.runId}` }, shortId(it.runId))) : null,
      ),
      h("div.asked", {}, jsonTree(it.value, 3)),
      field("Answer (JSON or text)", answer),
      h("button", { type: "submit" }, "Resume"),
    );
    return form;
  });
}
