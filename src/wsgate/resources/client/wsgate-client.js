// wsgate browser client: a dependency-free ES module, served by every gateway at /.wsgate/client.js.
//
// Browsers cannot put an Authorization header on a WebSocket, so the client signs in over HTTP first:
// POST <service path>/.wsgate/session answers the realm's 401 challenge through a challenge handler and
// returns a session cookie, which the WebSocket upgrade then carries. Before the session or the
// realm's authorization-timeout runs out, the client signs in again with fresh credentials; the gateway
// extends every live connection of the session without disconnecting it (docs/security.md).
// Each deadline is renewed once, at most a third of its lifetime early (with jitter); a renewal that does
// not move the deadline is not repeated, and failed renewals back off exponentially: no request storms.

const REALM = /realm="((?:[^"\\]|\\.)*)"/;
const LIFETIME_SHARE = 1 / 3;  // the renewal margin never exceeds this share of the session's lifetime
const JITTER = 0.2;  // renew up to 20 % of the margin earlier, so the clients of one deadline spread out
const RETRY_FIRST = 1, RETRY_MAX = 30;  // seconds of backoff after a failed renewal, doubling

/** Seconds to wait before renewing: `margin` early, but never more than a third of `lifetime`. */
export function renewalDelay(untilDeadline, lifetime, margin, random = Math.random) {
  const effective = Math.min(margin, Math.max(lifetime, 0) * LIFETIME_SHARE);
  return Math.max(0, untilDeadline - effective * (1 + random() * JITTER));
}

/** Backoff after `failures` consecutive failed renewals: 1, 2, 4 … 30 s, jittered over its upper half. */
export function retryDelay(failures, random = Math.random) {
  const ceiling = Math.min(RETRY_FIRST * 2 ** Math.max(failures - 1, 0), RETRY_MAX);
  return ceiling * (0.5 + random() / 2);
}

/** Worth retrying: the network failed, or the gateway was busy or could not decide (429, 5xx). */
function transient(error) {
  return !(error instanceof AuthenticationError) || error.status === 429 || error.status >= 500;
}

export class ChallengeRequest {
  constructor(location, challenge) {
    this.location = location;
    this.challenge = challenge || "";
    const words = this.challenge.split(/\s+/).filter(Boolean);
    this.scheme = words[0] && words[0].toLowerCase() === "application" && words[1] ? words[1] : (words[0] || "");
    const match = REALM.exec(this.challenge);
    this.realm = match ? match[1].replace(/\\(.)/g, "$1") : null;
  }
}

/** Answers Basic and Application Basic with credentials from loginHandler(request) -> {user, password} | null. */
export class BasicChallengeHandler {
  constructor(loginHandler) {
    this.loginHandler = loginHandler;
    this.realmHandlers = new Map();
  }
  setRealmLoginHandler(realm, handler) { this.realmHandlers.set(realm, handler); }
  canHandle(request) { return request.scheme.toLowerCase() === "basic"; }
  async handle(request) {
    const handler = this.realmHandlers.get(request.realm) || this.loginHandler;
    const credentials = handler ? await handler(request) : null;
    if (!credentials) return null;
    const bytes = new TextEncoder().encode(`${credentials.user}:${credentials.password}`);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    bytes.fill(0);
    return `Basic ${btoa(binary)}`;
  }
}

/** Answers Application Token (and Bearer) with tokenProvider(request) -> token | null; asked again on renewal. */
export class TokenChallengeHandler {
  constructor(tokenProvider) { this.tokenProvider = tokenProvider; }
  canHandle(request) { return ["token", "bearer"].includes(request.scheme.toLowerCase()); }
  async handle(request) {
    const token = await this.tokenProvider(request);
    return token ? `Bearer ${token}` : null;
  }
}

/** Chooses a handler by the URL that challenged: register("https://gw.example.com/trading/*", handler). */
export class DispatchChallengeHandler {
  constructor() { this.routes = []; }
  register(pattern, handler) {
    const regex = new RegExp("^" + pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$");
    this.routes.push([regex, handler]);
    return this;
  }
  find(request) { return (this.routes.find(([re, h]) => re.test(request.location) && h.canHandle(request)) || [])[1]; }
  canHandle(request) { return Boolean(this.find(request)); }
  async handle(request) { const h = this.find(request); return h ? h.handle(request) : null; }
}

export class AuthenticationError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function sessionUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/$/, "") + "/.wsgate/session";
  url.search = "";
  return url.toString();
}

/** Sign in to the realm behind wsUrl: resolves {user, roles, expires}, or null if the service has no sessions. */
export async function signIn(wsUrl, challengeHandler) {
  const location = sessionUrl(wsUrl);
  let authorization = null;
  for (let attempt = 0; attempt < 4; attempt++) {
    const headers = authorization ? { Authorization: authorization } : {};
    const response = await fetch(location, { method: "POST", headers, credentials: "include" });
    if (response.ok) return response.json();
    if (response.status === 404) return null;  // unprotected, or a realm without authorization-mode recycle
    if (response.status !== 401) throw new AuthenticationError(response.status, `sign-in refused: HTTP ${response.status}`);
    const request = new ChallengeRequest(location, response.headers.get("WWW-Authenticate"));
    if (!challengeHandler || !challengeHandler.canHandle(request)) {
      throw new AuthenticationError(401, `no handler for challenge "${request.challenge}"`);
    }
    authorization = await challengeHandler.handle(request);
    if (!authorization) throw new AuthenticationError(401, "no credentials given");
  }
  throw new AuthenticationError(401, "too many challenges");
}

/** Sign out: the gateway closes every connection of the session. */
export async function signOut(wsUrl) {
  const response = await fetch(sessionUrl(wsUrl), { method: "DELETE", credentials: "include" });
  return response.ok ? response.json() : null;
}

/**
 * Connect through the gateway. Resolves a WsgateSocket once open; rejects with AuthenticationError when
 * sign-in is refused, or an Error when the upgrade is (a 403 shows up as a failed WebSocket).
 * options: challengeHandler, protocols, refreshMargin (seconds before expiry to renew, default 30; at most a
 * third of the lifetime), onmessage(event), onclose(event), onsession(info) (after each sign-in or renewal),
 * onerror(error) (a failed renewal).
 */
export async function connect(url, options = {}) {
  const session = await signIn(url, options.challengeHandler);
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, options.protocols || []);
    const client = new WsgateSocket(url, socket, session, options);
    socket.onopen = () => { client.scheduleRenewal(); resolve(client); };
    socket.onerror = () => reject(new Error(`WebSocket to ${url} failed (refused by the gateway or unreachable)`));
  });
}

export class WsgateSocket {
  constructor(url, socket, session, options) {
    this.url = url;
    this.socket = socket;
    this.options = options;
    this.timer = null;
    this.failures = 0;  // consecutive failed renewals
    this.renewedFor = null;  // the deadline a renewal already ran for
    this.learn(session);
    socket.onmessage = (event) => options.onmessage && options.onmessage(event);
    socket.onclose = (event) => { clearTimeout(this.timer); options.onclose && options.onclose(event); };
    if (session && options.onsession) options.onsession(session);
  }
  get expires() { return this.session ? this.session.expires : null; }
  get open() { return this.socket.readyState <= WebSocket.OPEN; }
  send(data) { this.socket.send(data); }
  close(code = 1000, reason = "") { clearTimeout(this.timer); this.socket.close(code, reason); }
  async signOut() { clearTimeout(this.timer); return signOut(this.url); }

  learn(session) {
    this.session = session;
    this.lifetime = session && session.expires ? session.expires - Date.now() / 1000 : 0;
  }

  scheduleRenewal() {
    clearTimeout(this.timer);
    const deadline = this.expires;
    if (!deadline || !this.open) return;
    if (this.renewedFor !== null && deadline <= this.renewedFor) return;  // renewed once, not moved: it ends there
    const delay = this.failures
      ? retryDelay(this.failures)
      : renewalDelay(deadline - Date.now() / 1000, this.lifetime, this.options.refreshMargin ?? 30);
    this.timer = setTimeout(() => this.renew(), delay * 1000);
  }

  /** Present fresh credentials now; the gateway extends this session's live connections. */
  async renew() {
    clearTimeout(this.timer);
    const deadline = this.expires;
    try {
      const session = await signIn(this.url, this.options.challengeHandler);
      this.failures = 0;
      this.renewedFor = deadline;
      this.learn(session);
      if (session && this.options.onsession) this.options.onsession(session);
    } catch (error) {
      if (this.options.onerror) this.options.onerror(error);
      if (!transient(error)) return;  // refused: the gateway closes the connection at its deadline
      this.failures += 1;
    }
    this.scheduleRenewal();
  }
}
