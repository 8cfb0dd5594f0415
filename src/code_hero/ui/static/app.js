// The page's shell: routing by path (every view has a shareable URL under /ui),
// the error banner, and the sign-in form when the gateway asks for credentials.

import { credentials, setCredentials } from "./client.js";
import { field, h } from "./dom.js";

// One module per view, loaded when first shown.
const ROUTES = [
  [/^\/ui\/?$/, () => import("./views/overview.js")],
  [/^\/ui\/threads\/?$/, () => import("./views/threads.js")],
  [/^\/ui\/inbox\/?$/, () => import("./views/inbox.js")],
  [/^\/ui\/threads\/([^/]+)\/?$/, () => import("./views/thread.js")],
  [/^\/ui\/runs\/([^/]+)\/?$/, () => import("./views/run.js")],
];

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let cleanup = null;
// The view shown: a render, or the sign-in form, counts one more. What an earlier one
// still reports (a request that answers late) is dropped.
let shown = 0;

/** Show an error (a GraphQLError: its message and extensions.code) in the banner. */
export function showError(err) {
  const code = err && err.code ? err.code : "";
  banner.replaceChildren(
    h("strong", {}, "Error: "),
    h("span.error-text", {}, (err && err.message) || String(err)),
    code ? h("code.code", {}, code) : null,
    h("button.dismiss", { type: "button", "aria-label": "Dismiss the error", onclick: clearError }, "×"),
  );
  banner.hidden = false;
}

/** Hide the banner. */
export function clearError() {
  banner.hidden = true;
  banner.replaceChildren();
}

/** Go to a path under /ui (pushes history). */
export function navigate(path) {
  history.pushState(null, "", path);
  render();
}

/**
 * What a view reports: a refusal of the credentials (at load, or a socket closed
 * when a JWT expires) ends the session, with the sign-in form; anything else
 * goes to the banner.
 */
function report(err) {
  if (err && err.code === "UNAUTHENTICATED") signedOut(err);
  else showError(err);
}

/** What view number `mine` gets: its reports count while it is the one shown. */
function contextOf(mine) {
  return { navigate, showError: (err) => mine === shown && report(err), clearError };
}

/** The view stops, and the sign-in form takes its place (once: later reports are dropped). */
function signedOut(err) {
  shown += 1;
  const stop = cleanup;
  cleanup = null;
  if (stop) stop();
  // With none stored yet, the sign-in form says all there is to say: no error banner.
  // Refused ones are dropped (no "Sign out" for a session that is over).
  const refused = Boolean(credentials());
  if (refused) {
    setCredentials("");
    header();
    showError(err);
  }
  signIn(refused ? "These credentials were refused: try another API key or JWT." : null);
}

function signIn(reason) {
  const input = h("input", { type: "password", name: "credentials", autocomplete: "off", required: true });
  const form = h(
    "form.card.signin",
    {
      onsubmit: (event) => {
        event.preventDefault();
        setCredentials(input.value.trim());
        clearError();
        render();
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, reason || "This gateway needs credentials. They are kept in this tab's session storage only."),
    field("API key or JWT", input),
    h("button", { type: "submit" }, "Sign in"),
  );
  view.replaceChildren(form);
  input.focus();
}

function header() {
  const who = document.getElementById("who");
  who.replaceChildren(
    credentials()
      ? h(
          "button.link",
          {
            type: "button",
            onclick: () => {
              setCredentials("");
              render();
            },
          },
          "Sign out",
        )
      : "",
  );
  const path = location.pathname;
  const section = path.startsWith("/ui/inbox") ? "inbox" : path.startsWith("/ui/threads") || path.startsWith("/ui/runs") ? "threads" : "overview";
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** The path's parts decoded, or null when one holds a malformed %-escape. */
function decoded(parts) {
  try {
    return parts.map(decodeURIComponent);
  } catch {
    return null; // URIError
  }
}

/** Show the view of the current URL. */
export async function render() {
  const mine = ++shown;
  const stop = cleanup;
  cleanup = null;
  if (stop) stop();
  clearError();
  header();
  const path = location.pathname;
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  const params = route ? decoded(path.match(route[0]).slice(1)) : null;
  if (!params) {
    // No such view, or an id with a malformed %-escape (/ui/threads/%ff), which names
    // no thread or run: there is nothing to ask the API for.
    const why = route ? ": its id holds a malformed %-escape, so it names nothing" : "";
    view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No view at ", h("code", {}, path), why, ". ", h("a", { href: "/ui" }, "Overview")));
    return;
  }
  const query = new URLSearchParams(location.search);
  try {
    const module = await route[1]();
    const done = (await module.render(view, params, query, contextOf(mine))) || null;
    if (mine !== shown) {
      if (done) done(); // another view (or the sign-in form) came meanwhile
      return;
    }
    cleanup = done;
  } catch (err) {
    if (mine !== shown) return; // for a view no longer shown
    if (err && err.code === "UNAUTHENTICATED") {
      signedOut(err);
      return;
    }
    showError(err);
    view.replaceChildren(h("h1", {}, "Could not load this view"), h("p", {}, "See the error above; ", h("a", { href: location.pathname + location.search }, "try again"), "."));
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.hasAttribute("data-external") || link.target) return;
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui")) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
// The server says whether /graphql serves GraphiQL (off by default with authentication).
document.querySelector("[data-graphiql-link]").hidden = document.body.dataset.graphiql !== "true";
render();
