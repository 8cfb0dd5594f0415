// Small DOM helpers shared by the views: element building, a JSON tree, formats.

/** h("tag.class", {attr: value, onclick: fn}, ...children): an element. */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** s("tag.class", {attr: value}, ...children): an SVG element (attributes as given, no handlers). */
export function s(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElementNS(SVG_NS, tag);
  if (classes.length) el.setAttribute("class", classes.join(" "));
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) el.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A duration in milliseconds for people: "850 ms", "3.2 s", "4 min 5 s", or "—". */
export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(1)} s`;
  return `${Math.floor(value / 60000)} min ${Math.round((value % 60000) / 1000)} s`;
}

/** A count with thousands separators. */
export function count(value) {
  return Number(value || 0).toLocaleString();
}

/** A collapsible tree of a JSON value: objects and arrays as <details>, open to `open` levels. */
export function jsonTree(value, open = 1, label = null) {
  const key = label === null ? null : h("span.key", {}, `${label}: `);
  if (value === null || typeof value !== "object") {
    return h("div.leaf", {}, key, h(`span.json-${value === null ? "null" : typeof value}`, {}, JSON.stringify(value)));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const summary = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
  const node = h("details.tree", { open: open > 0 }, h("summary", {}, key, h("span.count", {}, summary)));
  for (const [k, v] of entries) node.append(jsonTree(v, open - 1, k));
  return h("div.json", {}, node);
}

/** A local date and time, or "—". */
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/** Eight characters of an id (the last ones for time-ordered ids), the whole id as a tooltip. */
export function shortId(id, tail = false) {
  const text = String(id);
  return h("code.id", { title: text }, tail ? text.slice(-8) : text.slice(0, 8));
}

/** A status as a coloured badge. */
export function badge(status) {
  return h(`span.badge.s-${String(status).toLowerCase()}`, {}, status);
}

/** A "Loading…" line for a slow call. */
export function loading(what = "Loading…") {
  return h("p.loading", { role: "status", "aria-busy": "true" }, what);
}

/** A labelled form control: <label>text <control></label>. */
export function field(text, control) {
  return h("label.field", {}, h("span", {}, text), control);
}

/** Disable a form's controls while `work` runs; its errors go to `onError`. */
export async function busy(form, work, onError) {
  const controls = [...form.querySelectorAll("button, input, select, textarea")];
  controls.forEach((c) => (c.disabled = true));
  form.setAttribute("aria-busy", "true");
  try {
    return await work();
  } catch (err) {
    onError(err);
    return undefined;
  } finally {
    controls.forEach((c) => (c.disabled = false));
    form.removeAttribute("aria-busy");
  }
}

/** An error the banner shows as the API would show a refused input. */
function badInput(message) {
  return Object.assign(new RangeError(message), { code: "BAD_USER_INPUT" });
}

/**
 * Text parsed as JSON, refusing a number JSON.parse would silently change: one past a
 * double's range (1e400 becomes Infinity, which is sent as null), one that underflows to
 * 0 (1e-400), or an integer past 2^53 that a double cannot hold (rounded). The API refuses the first and keeps the
 * others exact; the page cannot, so it says so. A SyntaxError for text that is not JSON.
 */
export function parseJson(text) {
  return JSON.parse(text, (key, value, context) => {
    if (typeof value !== "number") return value;
    const source = context && context.source; // the number as typed (Chromium 114+, Firefox 135+)
    if (!Number.isFinite(value)) throw badInput(`${source || "a number"} is out of range for a JSON number`);
    if (source && value === 0 && /[1-9]/.test(source.split(/[eE]/)[0])) {
      throw badInput(`${source} is too small for a JSON number: it would be sent as 0`);
    }
    if (source && /^-?\d+$/.test(source) && !Number.isSafeInteger(value) && BigInt(source) !== BigInt(value)) {
      // An integer a double cannot hold exactly (2^53 + 1): it would be sent rounded.
      throw badInput(`${source} is past what the page can send exactly (2^53): send it as a string, or through the API`);
    }
    return value;
  });
}

/** Text as JSON when it parses, else the text itself (for resume answers); a number JSON cannot keep is refused. */
export function jsonOrText(text) {
  try {
    return parseJson(text);
  } catch (err) {
    if (err instanceof SyntaxError) return text;
    throw err;
  }
}
