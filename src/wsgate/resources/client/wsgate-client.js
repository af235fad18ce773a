// wsgate browser client: a dependency-free ES module, served by every gateway at /.wsgate/client.js.
// It connects with a WebSocket, or, where none can be opened, emulates one over HTTP (WSE, at the end of
// this file) with the same API; `transport` says which ("websocket" or "wse").
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
 * sign-in (or the emulated connection's create) is refused, or an Error (with `.status` where the gateway
 * answered) when no connection could be opened.
 * options: challengeHandler, protocols, refreshMargin (seconds before expiry to renew, default 30; at most a
 * third of the lifetime), onmessage(event), onclose(event), onsession(info) (after each sign-in or renewal),
 * onerror(error) (a failed renewal), binaryType ("blob" or "arraybuffer"), transport ("auto": WebSocket,
 * falling back to emulation when it cannot be opened; "websocket"; "wse"), fallbackTimeout (seconds a
 * WebSocket may take to open before "auto" falls back, default 5).
 */
export async function connect(url, options = {}) {
  const session = options.challengeHandler ? await signIn(url, options.challengeHandler) : null;
  const transport = options.transport || "auto";
  let socket = null;
  if (transport !== "wse") {
    try {
      socket = await openWebSocket(url, options.protocols, options.fallbackTimeout ?? 5);
    } catch (error) {
      if (transport === "websocket") throw error;
    }
  }
  if (!socket) socket = await EmulatedWebSocket.open(url, options.protocols, options.challengeHandler);
  const client = new WsgateSocket(url, socket, session, options);
  client.scheduleRenewal();
  return client;
}

/** A native WebSocket once open; rejects if it fails or closes first, or takes longer than `timeout` s. */
function openWebSocket(url, protocols, timeout) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, protocols || []);
    const settle = (error) => {
      clearTimeout(timer);
      socket.onopen = socket.onerror = socket.onclose = null;
      if (error) reject(error); else resolve(socket);
    };
    const failed = () => settle(new Error(`WebSocket to ${url} failed (refused by the gateway or unreachable)`));
    const timer = setTimeout(() => { socket.close(); failed(); }, timeout * 1000);
    socket.onopen = () => settle(null);
    socket.onerror = socket.onclose = failed;
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
    if (options.binaryType) socket.binaryType = options.binaryType;
    socket.onmessage = (event) => options.onmessage && options.onmessage(event);
    socket.onclose = (event) => { clearTimeout(this.timer); options.onclose && options.onclose(event); };
    if (session && options.onsession) options.onsession(session);
  }
  /** "websocket", or "wse" when the connection is emulated over HTTP (WebSocket could not be opened). */
  get transport() { return this.socket.transport || "websocket"; }
  get protocol() { return this.socket.protocol; }
  get binaryType() { return this.socket.binaryType; }
  set binaryType(value) { this.socket.binaryType = value; }
  get expires() { return this.session ? this.session.expires : null; }
  get open() { return this.socket.readyState <= 1; }  // CONNECTING or OPEN
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

// -- WebSocket emulation (WSE) ------------------------------------------------------------------------
// When no WebSocket can be opened (a proxy strips Upgrade or refuses it), the same connection is emulated
// over plain HTTP, as the gateway serves it under <path>/;e/ (Kaazing's WSE, k3po specification/wse): a
// create POST answers with an upstream and a downstream URL; messages go up as POSTs of frames (one at a
// time, batched) and come down a streaming GET that the gateway ends with RECONNECT, when the next GET
// takes over (long-polling where a proxy buffers). Every request carries the next sequence number of its
// direction. WSE's CLOSE carries no code: a close by the gateway reads as 1005 (no status).
// No request follows a redirect (a WebSocket handshake follows none): a 3xx would take the messages or the
// downstream off the gateway, past the check of the create's URLs; it fails the request instead.

const NOP = 0x00, RECONNECT = 0x01, CLOSE = 0x02;  // command codes
const BUFFERING_TIMEOUT = 5000;  // ms without the downstream's headers: a buffering proxy; long-poll instead
const SILENCE_TIMEOUT = 60000;  // ms without a byte downstream (the gateway sends a no-op every 20 s): lost
const CLOSE_TIMEOUT = 5000;  // ms to wait for the gateway's CLOSE after ours

function frame(type, payload) {
  const groups = [payload.length & 0x7f];
  for (let n = Math.floor(payload.length / 128); n > 0; n = Math.floor(n / 128)) groups.unshift((n & 0x7f) | 0x80);
  const out = new Uint8Array(1 + groups.length + payload.length);
  out[0] = type;
  out.set(groups, 1);
  out.set(payload, 1 + groups.length);
  return out;
}

const command = (code) => Uint8Array.of(0x01, 0x30, 0x30 + code, 0xff);  // codes 0-2: "00", "01", "02"
const PONG = Uint8Array.of(0x8a, 0x00);

/** One message (or a command) as upstream bytes; a Blob as a promise of them. */
function encode(data) {
  if (typeof data === "string") return frame(0x81, new TextEncoder().encode(data));
  if (data instanceof ArrayBuffer) return frame(0x80, new Uint8Array(data));
  if (ArrayBuffer.isView(data)) return frame(0x80, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  if (data instanceof Blob) return data.arrayBuffer().then(encode);
  throw new TypeError("send() takes a string, an ArrayBuffer, a typed array or a Blob");
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) { out.set(part, at); at += part.length; }
  return out;
}

/** Downstream frames from chunks as they arrive: {type: 0x80|0x81, payload}, {command}, {type: 0x89|0x8a}. */
export class FrameReader {
  constructor() { this.buffer = new Uint8Array(0); }
  push(chunk) {
    this.buffer = this.buffer.length ? concat([this.buffer, chunk]) : chunk;
    const frames = [], b = this.buffer;
    let pos = 0;
    while (pos < b.length) {
      const start = pos, type = b[pos++];
      if (type === 0x80 || type === 0x81) {
        let length = 0, byte = 0x80;
        while (byte & 0x80 && pos < b.length) { byte = b[pos++]; length = length * 128 + (byte & 0x7f); }
        if (byte & 0x80 || pos + length > b.length) { pos = start; break; }  // the rest comes with the next chunk
        frames.push({ type, payload: b.subarray(pos, pos + length) });
        pos += length;
      } else if (type === 0x01) {
        const stop = b.indexOf(0xff, pos);
        if (stop < 0) { pos = start; break; }
        for (let i = pos; i + 1 < stop; i += 2) frames.push({ command: parseInt(String.fromCharCode(b[i], b[i + 1]), 16) });
        pos = stop + 1;
      } else if (type === 0x89 || type === 0x8a) {
        if (pos >= b.length) { pos = start; break; }
        pos += 1;
        frames.push({ type });
      } else {
        throw new Error(`unknown WSE frame type ${type}`);
      }
    }
    this.buffer = b.subarray(pos);
    return frames;
  }
}

/** The create's answer: the upstream and downstream URLs, which must stay on the gateway, under the service. */
function emulationUrls(target, text) {
  const urls = text.split("\n").filter(Boolean).slice(0, 2).map((line) => new URL(line));
  const base = target.pathname.split("/;e/")[0];
  const valid = (u) => (u.protocol === target.protocol || u.protocol === "https:") && u.host === target.host
    && u.pathname.startsWith(base + "/");
  if (urls.length !== 2 || !urls.every(valid)) throw new Error("the gateway's emulation URLs are not its own");
  return urls;
}

/** An emulated WebSocket with the native one's API: readyState, protocol, binaryType, send, close, on*. */
export class EmulatedWebSocket extends EventTarget {
  /** Create the emulated connection at `url` (ws: or wss:); answers 401 challenges with `challengeHandler`. */
  static async open(url, protocols = [], challengeHandler = null) {
    const target = new URL(url);
    target.protocol = target.protocol === "wss:" ? "https:" : "http:";
    target.pathname = target.pathname.replace(/\/$/, "") + "/;e/cbm";
    const sequence = Math.floor(Math.random() * 2 ** 31);
    let authorization = null;
    for (let attempt = 0; attempt < 4; attempt++) {
      const headers = { "X-WebSocket-Version": "wseb-1.0", "X-Sequence-No": String(sequence), "X-Accept-Commands": "ping" };
      if (protocols.length) headers["X-WebSocket-Protocol"] = protocols.join(",");
      if (authorization) headers.Authorization = authorization;
      const response = await fetch(target, { method: "POST", headers, credentials: "include", cache: "no-store", redirect: "error" });
      if (response.status === 201) {
        const type = (response.headers.get("Content-Type") || "").replace(/ /g, "").toLowerCase();
        if (type !== "text/plain;charset=utf-8") throw new Error("the gateway's emulation answer is not text/plain");
        const [up, down] = emulationUrls(target, await response.text());
        return new EmulatedWebSocket(url, up, down, sequence, response.headers.get("X-WebSocket-Protocol") || "");
      }
      const request = new ChallengeRequest(target.toString(), response.headers.get("WWW-Authenticate"));
      if (response.status !== 401 || !challengeHandler || !challengeHandler.canHandle(request)) {
        const message = `WebSocket to ${url} failed, and its emulation was refused: HTTP ${response.status}`;
        if (response.status === 401 || response.status === 403) throw new AuthenticationError(response.status, message);
        throw Object.assign(new Error(message), { status: response.status });
      }
      authorization = await challengeHandler.handle(request);
      if (!authorization) throw new AuthenticationError(401, "no credentials given");
    }
    throw new AuthenticationError(401, "too many challenges");
  }

  constructor(url, up, down, sequence, protocol) {
    super();
    this.url = url;
    this.transport = "wse";
    this.protocol = protocol;
    this.extensions = "";
    this.binaryType = "blob";
    this.readyState = 1;  // OPEN: the create succeeded
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this.up = up;
    this.down = down;
    this.upSequence = this.downSequence = sequence;
    this.outbox = [];  // frames (or promises of them) for the next upstream request
    this.sending = null;  // the upstream request in flight
    this.polling = false;  // long-polling (a buffering proxy) instead of streaming
    this.downstream = new AbortController();
    this.closing = null;  // [code, reason] of our close()
    this.timer = null;
    this.pump().catch(() => this.lost());
  }

  get bufferedAmount() { return this.outbox.reduce((n, f) => n + (f.length || 0), 0); }

  send(data) {
    if (this.readyState !== 1) return;  // as native: data sent after close is discarded
    this.outbox.push(encode(data));
    this.flush();
  }

  close(code = 1000, reason = "") {
    if (code !== 1000 && (code < 3000 || code > 4999)) throw new DOMException(`invalid close code ${code}`, "InvalidAccessError");
    if (new TextEncoder().encode(reason).length > 123) throw new DOMException("close reason too long", "SyntaxError");
    if (this.readyState >= 2) return;
    this.readyState = 2;  // CLOSING until the gateway's CLOSE arrives
    this.closing = [code, reason];
    this.outbox.push(command(CLOSE));
    this.flush();
    setTimeout(() => this.finish(1006, "", false), CLOSE_TIMEOUT);
  }

  /** Send what is queued, one upstream request at a time; each body ends with RECONNECT. */
  flush() {
    if (this.sending || !this.outbox.length) return;
    this.sending = (async () => {
      while (this.outbox.length) {
        const frames = await Promise.all(this.outbox.splice(0));
        frames.push(command(RECONNECT));
        const response = await fetch(this.up, {
          method: "POST",
          body: concat(frames),
          headers: { "Content-Type": "application/octet-stream", "X-Sequence-No": String(++this.upSequence) },
          credentials: "include",
          cache: "no-store",
          redirect: "error",
        });
        if (response.status !== 200) return this.lost(response.status === 413 ? 1009 : 1006);
      }
    })().catch(() => this.lost()).finally(() => { this.sending = null; this.flush(); });
  }

  /** Attach downstream responses one after another until the connection closes. */
  async pump() {
    let next = this.attach();
    while (this.readyState !== 3) {
      this.watch();
      let response = await (this.polling ? next : Promise.race([next, sleep(BUFFERING_TIMEOUT)]));
      if (!response) {  // no headers yet: a proxy buffers the response. The gateway ends it once the poll arrives.
        this.polling = true;
        const overlapping = this.attach();
        if (!(await this.read(await next))) return this.lost();
        next = overlapping;
        continue;
      }
      if (!(await this.read(response))) return this.lost();
      if (this.readyState !== 3) next = this.attach();
    }
  }

  attach() {
    const url = new URL(this.down);
    if (this.polling) url.searchParams.set(".ki", "p");
    const headers = { "X-Sequence-No": String(++this.downSequence) };
    return fetch(url, { headers, credentials: "include", cache: "no-store", redirect: "error", signal: this.downstream.signal });
  }

  /** One downstream response's frames; true if it ended with RECONNECT (or the close), false if it was lost. */
  async read(response) {
    if (response.status !== 200) return false;
    const frames = new FrameReader();
    if (!response.body) return this.handle(frames.push(new Uint8Array(await response.arrayBuffer()))) === true;
    const reader = response.body.getReader();
    for (;;) {
      this.watch();
      const { value, done } = await reader.read();
      if (done) return this.readyState === 3;
      const ended = this.handle(frames.push(value));
      if (ended !== null) { reader.cancel().catch(() => null); return ended; }
    }
  }

  /** Act on frames; true once RECONNECT (or our CLOSE's answer) ends the response, null to read on. */
  handle(frames) {
    for (const f of frames) {
      if (this.readyState === 3) return true;
      if (f.command === RECONNECT) return true;
      if (f.command === CLOSE) {
        if (this.closing) this.finish(...this.closing, true);
        else { this.outbox.push(command(CLOSE)); this.flush(); this.finish(1005, "", true); }  // the answer
        return true;
      }
      if (f.type === 0x89) { this.outbox.push(PONG); this.flush(); }
      if (f.type === 0x80 || f.type === 0x81) this.deliver(f);
    }
    return null;
  }

  deliver(f) {
    let data;
    if (f.type === 0x81) data = new TextDecoder().decode(f.payload);
    else if (this.binaryType === "arraybuffer") data = f.payload.slice().buffer;
    else data = new Blob([f.payload]);
    this.emit(new MessageEvent("message", { data, origin: new URL(this.down).origin }));
  }

  watch() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.downstream.abort(), SILENCE_TIMEOUT);
  }

  emit(event) {
    this.dispatchEvent(event);
    const handler = this["on" + event.type];
    if (handler) handler.call(this, event);
  }

  lost(code = 1006) {
    if (this.readyState === 3) return;
    this.outbox.length = 0;
    this.emit(new Event("error"));
    this.finish(code, "", false);
  }

  finish(code, reason, wasClean) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    clearTimeout(this.timer);
    this.downstream.abort();
    this.emit(new CloseEvent("close", { code, reason, wasClean }));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(() => resolve(null), ms));
