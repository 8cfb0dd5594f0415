// The dashboard's two inline SVG charts, drawn from API data with no library:
// runs per time bucket stacked by status (overview), and a run's steps as a
// Gantt-like bar chart (run view, one g.task per step). Each has a <title> and a <desc> for screen
// readers, and data-* attributes that say what each bar stands for.

import { h, ms, s } from "./dom.js";

/** Every run status, in the order the stacks are drawn (bottom up) and the legend lists. */
export const RUN_STATUSES = ["SUCCESS", "RUNNING", "PENDING", "INTERRUPTED", "CANCELLED", "ERROR"];

let ids = 0;

function hourLabel(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** The legend of the status colours: an HTML list (readable, wraps on narrow windows). */
export function legend(statuses = RUN_STATUSES) {
  return h(
    "ul.legend",
    { "aria-label": "Legend" },
    statuses.map((status) => h("li", {}, h(`span.swatch.st-${status}`, { "aria-hidden": "true" }), status)),
  );
}

/**
 * Runs per bucket stacked by status. `buckets`: [{start: Date, runs, byStatus: [{status, count}]}],
 * oldest first, one per hour; `summary`: the sentence of the chart's <desc>.
 */
export function stackedBars(buckets, { title, summary }) {
  const W = 760;
  const H = 220;
  const pad = { left: 34, right: 24, top: 10, bottom: 28 };
  const plotW = W - pad.left - pad.right;
  const plotH = H - pad.top - pad.bottom;
  const max = Math.max(1, ...buckets.map((b) => b.runs));
  const slot = plotW / Math.max(1, buckets.length);
  const barW = Math.max(2, slot * 0.72);
  const y = (n) => pad.top + plotH - (n / max) * plotH;
  const id = `chart-${++ids}`;

  const axis = [0, Math.ceil(max / 2), max]
    .filter((v, i, all) => all.indexOf(v) === i)
    .map((v) => [
      s("line.grid", { x1: pad.left, x2: W - pad.right, y1: y(v), y2: y(v) }),
      s("text.tick", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, v),
    ]);
  const every = Math.ceil(buckets.length / 8); // at most ~8 time labels
  const bars = buckets.map((b, i) => {
    const x = pad.left + i * slot + (slot - barW) / 2;
    let base = 0;
    const counts = Object.fromEntries(b.byStatus.map((c) => [c.status, c.count]));
    const parts = RUN_STATUSES.filter((st) => counts[st]).map((st) => {
      const rect = s(`rect.st-${st}`, {
        x,
        width: barW,
        y: y(base + counts[st]),
        height: y(base) - y(base + counts[st]),
        "data-status": st,
        "data-count": counts[st],
      });
      base += counts[st];
      return rect;
    });
    const what = b.byStatus.filter((c) => c.count).map((c) => `${c.count} ${c.status}`).join(", ");
    return s(
      "g.bucket",
      { "data-start": b.start.toISOString(), "data-runs": b.runs },
      s("title", {}, `${hourLabel(b.start)}: ${b.runs} run${b.runs === 1 ? "" : "s"}${what ? ` (${what})` : ""}`),
      // A transparent full-height target, so a thin bar's tooltip is easy to reach.
      s("rect.hit", { x: pad.left + i * slot, width: slot, y: pad.top, height: plotH }),
      parts,
      i % every === 0 ? s("text.tick", { x: x + barW / 2, y: H - 8, "text-anchor": "middle" }, hourLabel(b.start)) : null,
    );
  });
  return s(
    "svg.chart.stacked",
    { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, preserveAspectRatio: "xMidYMid meet" },
    s("title", { id: `${id}-t` }, title),
    s("desc", { id: `${id}-d` }, summary),
    axis,
    s("line.axis", { x1: pad.left, x2: W - pad.right, y1: y(0), y2: y(0) }),
    bars,
  );
}

/**
 * A run's steps as horizontal bars on one time axis (a Gantt chart): one row per
 * step, from its start to its end (to `now` while it runs), its duration beside it.
 */
export function gantt(steps, { title, now = Date.now() }) {
  const W = 760;
  const row = 24;
  const label = 230;
  const right = 70;
  const H = 24 + steps.length * row;
  const start = Math.min(...steps.map((st) => Date.parse(st.startedAt)));
  const end = Math.max(...steps.map((st) => (st.finishedAt ? Date.parse(st.finishedAt) : now)), start + 1);
  const x = (t) => label + ((t - start) / (end - start)) * (W - label - right);
  const id = `chart-${++ids}`;
  const total = end - start;
  const rows = steps.map((st, i) => {
    const t0 = Date.parse(st.startedAt);
    const t1 = st.finishedAt ? Date.parse(st.finishedAt) : now;
    const top = 4 + i * row;
    const name = st.namespace ? `${st.namespace.split(":")[0]} › ${st.node}` : st.node;
    const state = st.error ? "error" : st.finishedAt ? "done" : "running";
    const width = Math.max(2, x(t1) - x(t0));
    return s(
      "g.task",
      { "data-step": i, "data-node": st.node, "data-state": state },
      s("title", {}, `${name}: ${st.finishedAt ? ms(st.durationMs) : "running"}${st.error ? ` (error: ${st.error})` : ""}`),
      s("text.name", { x: label - 8, y: top + 15, "text-anchor": "end" }, name.length > 34 ? `${name.slice(0, 33)}…` : name),
      s(`rect.bar.${state}`, { x: x(t0), y: top + 3, width, height: row - 8, rx: 3 }),
      s("text.dur", { x: x(t0) + width + 4, y: top + 15 }, st.finishedAt ? ms(st.durationMs) : "…"),
    );
  });
  return s(
    "svg.chart.gantt",
    { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": `${id}-t ${id}-d` },
    s("title", { id: `${id}-t` }, title),
    s("desc", { id: `${id}-d` }, `${steps.length} steps over ${ms(total)}: ${steps.map((st) => `${st.node} ${ms(st.durationMs)}`).join(", ")}.`),
    s("line.axis", { x1: label, x2: label, y1: 0, y2: H - 18 }),
    s("text.tick", { x: label, y: H - 4 }, "0"),
    s("text.tick", { x: W - right, y: H - 4, "text-anchor": "end" }, ms(total)),
    rows,
  );
}
