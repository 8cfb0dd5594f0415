// The one GraphQL client of the page: POST /graphql for queries and mutations,
// graphql-ws (vendored UMD build, global `graphqlWs`) for subscriptions.
// Credentials live in sessionStorage only, and travel as `Authorization: Bearer`
// on every request and in the socket's connection_init payload.

const KEY = "code-hero.credentials";
const ENDPOINT = "/graphql";

/** The stored API key or JWT, or "". */
export function credentials() {
  return sessionStorage.getItem(KEY) || "";
}

/** Store (or with "", forget) the API key or JWT; the socket reconnects with it. */
export function setCredentials(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
  resetSocket();
}

/** A GraphQL error (or a transport failure shaped like one): message and extensions.code. */
export class GraphQLError extends Error {
  constructor(errors, data = null) {
    const first = errors[0] || {};
    super(first.message || "request failed");
    this.errors = errors;
    this.code = (first.extensions && first.extensions.code) || "";
    this.data = data;
  }
}

/** Run a query or mutation; resolves to `data`, rejects with GraphQLError. */
export async function gql(query, variables = {}) {
  const headers = {
    "content-type": "application/json",
    accept: "application/graphql-response+json, application/json",
  };
  const token = credentials();
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(ENDPOINT, {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
    });
  } catch (err) {
    throw new GraphQLError([{ message: `network error: ${err.message}`, extensions: { code: "NETWORK" } }]);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new GraphQLError([{ message: `HTTP ${response.status}`, extensions: { code: `HTTP_${response.status}` } }]);
  }
  if (body.errors && body.errors.length) throw new GraphQLError(body.errors, body.data);
  return body.data;
}

let socket = null;

function client() {
  if (!socket) {
    const url = new URL(ENDPOINT, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    socket = globalThis.graphqlWs.createClient({
      url: url.href,
      lazy: true,
      // A lost socket is resumed by the subscriber (with its own afterSeq), not
      // replayed by the client with the original variables.
      retryAttempts: 0,
      keepAlive: 10000,
      connectionParams: () => {
        const token = credentials();
        return token ? { authorization: `Bearer ${token}` } : {};
      },
    });
  }
  return socket;
}

/** Close the socket; the next subscription opens a new one. */
export function resetSocket() {
  if (socket) socket.dispose();
  socket = null;
}

/**
 * Subscribe; `next(data)` per result, `error(err)` once with a GraphQLError
 * (extensions.code "NETWORK" when the socket was lost), `complete()` at the end.
 * Returns the function that unsubscribes.
 */
export function subscribe(query, variables, { next, error, complete }) {
  return client().subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors && result.errors.length) error(new GraphQLError(result.errors));
        else next(result.data);
      },
      error: (err) => {
        if (Array.isArray(err)) error(new GraphQLError(err));
        else if (err && typeof err.code === "number") {
          const reason = err.reason || `socket closed (${err.code})`;
          const code = err.code === 4403 ? "UNAUTHENTICATED" : "NETWORK";
          error(new GraphQLError([{ message: reason, extensions: { code } }]));
        } else error(new GraphQLError([{ message: String((err && err.message) || err || "socket error"), extensions: { code: "NETWORK" } }]));
      },
      complete,
    },
  );
}

/**
 * Run a query over the socket the page's subscriptions already hold; resolves to
 * `data`. A read here dies with the socket quietly when the network goes, where a
 * fetch in flight would be logged by the browser as a failed request.
 */
export function socketQuery(query, variables = {}) {
  return new Promise((resolve, reject) => {
    let data = null;
    subscribe(query, variables, {
      next: (result) => {
        data = result;
      },
      error: reject,
      complete: () => resolve(data),
    });
  });
}
