// SSEFlushSource: an EventSource that keeps every event. Served as
// /sse-flush.js (a classic script: globalThis.SSEFlushSource) and as
// /sse-flush.mjs (an ES module); both wrap this one text. No dependencies:
// fetch, a stream reader, EventTarget; Web Locks and BroadcastChannel for
// shareTabs. Runs in browsers and in Node 18+.

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;
// How long the server waits between keepalives (seconds), and which event
// types end a stream for good (a render job's complete and error).
const KEEPALIVE_HEADER = "SSE-Flush-Keepalive";
const FINAL_HEADER = "SSE-Flush-Final";
const KEY = "sse-flush:";
const HISTORY = 1000;

/** The WHATWG event-stream parser, fed bytes (or text) as they arrive. */
class EventStreamParser {
  /**
   * @param {(type: string, data: string | null, lastEventId: string, id: string | null) => void} onEvent
   *   called at each blank line: `data` is null for a block without data
   *   (it only moves the last event id), `id` is the block's own id field.
   * @param {(ms: number) => void} [onRetry] called with each valid `retry:` field.
   * @param {string} [lastEventId] the id a resumed stream starts from.
   */
  constructor(onEvent, onRetry, lastEventId = "") {
    this.onEvent = onEvent;
    this.onRetry = onRetry || (() => {});
    this.lastEventId = lastEventId;
    this._decoder = new TextDecoder("utf-8");
    this._partial = []; // the pieces of a line not ended yet
    this._skipLF = false;
    this._first = true;
    this._reset();
  }

  _reset() {
    this._data = [];
    this._type = "";
    this._id = null;
  }

  /** Parse a chunk (a Uint8Array of UTF-8, or a string). */
  feed(chunk) {
    let text = typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    if (!text) return;
    if (this._first) {
      // The decoder drops one leading BOM from bytes; text given as such may have one.
      this._first = false;
      if (typeof chunk === "string" && text[0] === "\ufeff") text = text.slice(1);
    }
    if (this._skipLF) {
      // The last chunk ended in CR, taken as a line break already.
      this._skipLF = false;
      if (text[0] === "\n") text = text.slice(1);
    }
    // Only the new text is searched: a long line costs its length, once.
    const breaks = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = breaks.exec(text)) !== null) {
      this._partial.push(text.slice(start, match.index));
      const line = this._partial.join("");
      this._partial = [];
      this._line(line);
      start = breaks.lastIndex;
    }
    if (start < text.length) this._partial.push(text.slice(start));
    this._skipLF = text.endsWith("\r");
  }

  _line(line) {
    if (line === "") {
      const data = this._data.length ? this._data.join("\n") : null;
      const type = this._type || "message";
      const id = this._id;
      this._reset();
      this.onEvent(type, data, this.lastEventId, id);
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (name === "data") this._data.push(value);
    else if (name === "event") this._type = value;
    else if (name === "id" && !value.includes("\0")) this._id = this.lastEventId = value;
    else if (name === "retry" && /^[0-9]+$/.test(value)) this.onRetry(parseInt(value, 10));
  }
}

function storage() {
  try {
    return globalThis.sessionStorage || null;
  } catch {
    return null; // storage refused (a sandboxed frame, privacy settings)
  }
}

function remember(key, id) {
  try {
    const store = storage();
    if (!store) return;
    if (id) store.setItem(key, id);
    else store.removeItem(key);
  } catch {
    // quota, or storage refused: resume then depends on this page alone
  }
}

function recalled(key) {
  try {
    const store = storage();
    return (store && store.getItem(key)) || "";
  } catch {
    return "";
  }
}

// Retry-After: seconds, or an HTTP date; in milliseconds, or null.
function retryAfter(response) {
  const value = (response.headers.get("Retry-After") || "").trim();
  if (!value) return null;
  if (/^[0-9]+$/.test(value)) return parseInt(value, 10) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, when - Date.now());
}

function message(type, data, lastEventId, origin) {
  if (typeof MessageEvent === "function") {
    return new MessageEvent(type, { data, lastEventId, origin });
  }
  const event = new Event(type);
  return Object.assign(event, { data, lastEventId, origin });
}

// The longest delay setTimeout keeps (about 24.8 days).
const LONGEST = 2 ** 31 - 1;

/**
 * A drop-in for EventSource over fetch: headers, a body, backoff, Retry-After,
 * a heartbeat timeout, resume across reloads and one connection for all tabs.
 */
class SSEFlushSource extends EventTarget {
  #options;
  #lastEventId = "";
  #retry;
  #failures = 0;
  #notBefore = 0; // a Retry-After: no request before this time (ms)
  #timer = null;
  #heartbeat = null;
  #silence = 0;
  #abort = null;
  #final = null;
  #key;
  #origin;
  #listening = [];
  // shareTabs
  #channel = null;
  #leader = false;
  #release = null;
  #lockAbort = null;
  #token = Math.random().toString(36).slice(2);
  #seq = 0; // the number of the last event this tab relayed as leader
  #history = [];
  #seen = new Set();
  #waiting = null;
  #shown = "";

  /**
   * @param {string | URL} url the stream.
   * @param {object} [options] see sse-flush.d.ts.
   */
  constructor(url, options = {}) {
    super();
    const base = globalThis.location ? globalThis.location.href : undefined;
    this.url = new URL(String(url), base).href;
    this.#origin = new URL(this.url).origin;
    this.#options = {
      method: "GET",
      headers: {},
      body: undefined,
      withCredentials: false,
      retry: 1000,
      maxRetry: 30000,
      heartbeatTimeout: undefined,
      connectTimeout: undefined,
      resume: true,
      shareTabs: false,
      finalEvents: undefined,
      fetch: undefined,
      ...options,
    };
    const o = this.#options;
    for (const name of ["retry", "maxRetry", "heartbeatTimeout", "connectTimeout"]) {
      if (o[name] === undefined && name.endsWith("Timeout")) continue;
      if (!(Number.isFinite(o[name]) && o[name] >= 0)) {
        throw new TypeError(`SSEFlushSource: ${name} must be a number of milliseconds >= 0`);
      }
    }
    this.withCredentials = Boolean(o.withCredentials);
    this.readyState = CONNECTING;
    this.onopen = this.onmessage = this.onerror = null;
    for (const type of ["open", "message", "error"]) {
      this.addEventListener(type, (event) => {
        const handler = this["on" + type];
        if (typeof handler === "function") handler.call(this, event);
      });
    }
    this.#retry = o.retry;
    if (o.finalEvents) this.#final = new Set(o.finalEvents);
    this.#key = KEY + this.url;
    if (o.resume) this.#lastEventId = recalled(this.#key);
    this.#listen();
    Promise.resolve().then(() => (this.#sharing() ? this.#share() : this.#connect()));
  }

  /** The id of the last event received (sent as Last-Event-ID on reconnects). */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** Stop for good: no more requests, and the stored resume point is forgotten. */
  close() {
    if (this.readyState === CLOSED) return;
    this.#stop(false);
    remember(this.#key, "");
  }

  #stop(final) {
    this.readyState = CLOSED;
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#drop();
    for (const [target, type, fn] of this.#listening) target.removeEventListener(type, fn);
    this.#listening = [];
    this.#unshare(final);
  }

  // Abort the connection in flight, if any.
  #drop() {
    clearTimeout(this.#heartbeat);
    this.#heartbeat = null;
    if (this.#abort) this.#abort.abort();
    this.#abort = null;
  }

  // Browsers: reconnect at once when the page comes back or the network
  // does (not before a Retry-After); leave the bfcache free to keep the page
  // (no request in flight, no lock held).
  #listen() {
    const on = (target, type, fn) => {
      if (!target || typeof target.addEventListener !== "function") return;
      target.addEventListener(type, fn);
      this.#listening.push([target, type, fn]);
    };
    if (!globalThis.document) return;
    const wake = () => {
      if (this.readyState === CLOSED || document.visibilityState === "hidden") return;
      if (this.#sharing() && !this.#channel) {
        this.#share(); // back from the bfcache: join the tabs again
        return;
      }
      if (this.#abort || (this.#channel && !this.#leader)) return;
      if (Date.now() < this.#notBefore) return;
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#connect();
    };
    on(globalThis, "online", wake);
    on(globalThis, "pageshow", wake);
    on(document, "visibilitychange", wake);
    on(globalThis, "pagehide", (event) => {
      if (!event.persisted || this.readyState === CLOSED) return;
      clearTimeout(this.#timer);
      this.#timer = null;
      this.#drop();
      this.#unshare(false);
      this.readyState = CONNECTING;
    });
  }

  async #connect() {
    this.#timer = null;
    if (this.readyState === CLOSED || this.#abort) return;
    const o = this.#options;
    const abort = new AbortController();
    this.#abort = abort;
    let response;
    try {
      // A function gives fresh headers (a token) and body at each connection.
      const headers = new Headers(typeof o.headers === "function" ? await o.headers() : o.headers);
      headers.set("Accept", "text/event-stream");
      if (this.#lastEventId) headers.set("Last-Event-ID", this.#lastEventId);
      const body = typeof o.body === "function" ? o.body() : o.body;
      if (this.#abort !== abort) return;
      // A request the network swallowed (a pooled connection a NAT dropped)
      // gets no answer at all: give up on it after a quarter of a keepalive
      // period (the server answers a stream's headers at once).
      const patience = o.connectTimeout !== undefined ? o.connectTimeout : this.#silence / 8;
      if (patience > 0) this.#heartbeat = setTimeout(() => this.#dead(abort), patience);
      response = await (o.fetch || fetch)(this.url, {
        method: o.method,
        headers,
        body,
        credentials: this.withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: abort.signal,
      });
      if (!response || typeof response.status !== "number" || !response.headers) {
        throw new TypeError("fetch gave no response");
      }
    } catch {
      if (this.#abort !== abort) return; // closed, or dropped on purpose
      clearTimeout(this.#heartbeat);
      this.#abort = null;
      this.#retryLater(null, null);
      return;
    }
    if (this.#abort !== abort) {
      if (response.body) response.body.cancel().catch(() => {});
      return;
    }
    clearTimeout(this.#heartbeat);
    const status = response.status;
    const type = response.headers.get("Content-Type") || "";
    if (status === 200 && /^text\/event-stream/i.test(type) && response.body) {
      await this.#read(response, abort);
      return;
    }
    if (response.body) response.body.cancel().catch(() => {});
    this.#abort = null;
    if (status === 429 || status === 503) this.#retryLater(status, retryAfter(response));
    else if (status >= 500 || status === 408) this.#retryLater(status, null);
    else this.#fail(status);
  }

  async #read(response, abort) {
    const header = parseFloat(response.headers.get(KEEPALIVE_HEADER) || "");
    const given = this.#options.heartbeatTimeout;
    const timeout = given !== undefined ? given : header > 0 ? header * 2000 : 0;
    this.#silence = timeout;
    if (!this.#options.finalEvents) {
      const final = (response.headers.get(FINAL_HEADER) || "").split(",").map((s) => s.trim());
      this.#final = new Set(final.filter(Boolean));
    }
    this.#origin = new URL(response.url || this.url).origin;
    const reader = response.body.getReader();
    const parser = new EventStreamParser(
      (type, data, lastEventId, id) => this.#received(type, data, lastEventId, id),
      (ms) => {
        this.#retry = ms;
      },
      this.#lastEventId
    );
    const arm = () => {
      clearTimeout(this.#heartbeat);
      // No byte for about two keepalive periods: the connection is dead (a
      // proxy or NAT dropped it without a word). Start over at once.
      if (timeout > 0) this.#heartbeat = setTimeout(() => this.#dead(abort), timeout);
    };
    this.readyState = OPEN;
    this.#failures = 0;
    arm();
    this.#announce({ kind: "open" });
    this.dispatchEvent(new Event("open"));
    try {
      while (this.#abort === abort) {
        const { done, value } = await reader.read();
        if (done || this.#abort !== abort) break;
        arm();
        parser.feed(value);
      }
    } catch {
      // the connection failed, or we aborted it
    }
    reader.cancel().catch(() => {});
    if (this.#abort !== abort) return;
    this.#abort = null;
    clearTimeout(this.#heartbeat);
    this.#retryLater(null, null);
  }

  // The connection is dead, not the server: drop it and start over at once.
  #dead(abort) {
    if (this.#abort !== abort) return;
    this.#drop();
    this.#retryLater(null, 0);
  }

  #received(type, data, lastEventId, id) {
    if (this.readyState === CLOSED) return;
    this.#moveTo(lastEventId);
    if (data === null) {
      // A block with an id and no data: the other tabs' resume point moves too.
      if (this.#channel) this.#channel.postMessage({ kind: "id", id: lastEventId });
      return;
    }
    // A job's last event carries an id of its own; an id-less "error" (the
    // event store away for a while) is not the end.
    const final = Boolean(id !== null && this.#final && this.#final.has(type));
    const event = { type, data, lastEventId, id, final, seq: ++this.#seq };
    if (this.#channel) this.#channel.postMessage({ kind: "event", ...event });
    this.#deliver(event);
  }

  #moveTo(lastEventId) {
    if (lastEventId === this.#lastEventId) return;
    this.#lastEventId = lastEventId;
    if (this.#options.resume) remember(this.#key, lastEventId);
  }

  #deliver(event) {
    if (this.#channel) {
      // Shared: a new leader's first events may repeat what its last leader
      // passed on (the library's event ids are unique), and a tab that joins
      // late is sent the events so far.
      if (event.id) {
        if (this.#seen.has(event.id)) return;
        this.#seen.add(event.id);
        if (this.#seen.size > HISTORY) this.#seen.delete(this.#seen.values().next().value);
      }
      if (!this.#leader) this.#moveTo(event.lastEventId);
      this.#history.push(event);
      if (this.#history.length > HISTORY) this.#history.shift();
    }
    if (event.lastEventId) this.#shown = event.lastEventId;
    this.dispatchEvent(message(event.type, event.data, event.lastEventId, this.#origin));
    if (event.final && this.readyState !== CLOSED) {
      // A render job's complete or error: nothing follows, ask for nothing.
      this.#stop(true);
      remember(this.#key, "");
    }
  }

  #retryLater(status, delay) {
    if (this.readyState === CLOSED) return;
    this.readyState = CONNECTING;
    let wait = delay;
    if (wait === null) {
      // The server's retry first, then jittered exponential backoff (from
      // at least the option's retry: a "retry: 0" must not spin).
      const n = this.#failures;
      const base = n === 0 ? this.#retry : Math.max(this.#retry, this.#options.retry, 100);
      const cap = Math.min(this.#options.maxRetry, base * 2 ** n);
      wait = n === 0 ? Math.min(cap, this.#retry) : cap / 2 + (Math.random() * cap) / 2;
    } else if (status !== null) {
      wait = delay * (1 + Math.random() * 0.2);
      this.#notBefore = Date.now() + wait;
    }
    wait = Math.min(wait, LONGEST);
    this.#failures += 1;
    this.#announce({ kind: "error", status, retryIn: wait });
    this.dispatchEvent(Object.assign(new Event("error"), { status, retryIn: wait }));
    if (this.readyState !== CONNECTING || this.#timer || this.#abort) return;
    this.#timer = setTimeout(() => this.#connect(), wait);
  }

  #fail(status) {
    this.#announce({ kind: "error", status, closed: true });
    this.#stop(false);
    this.dispatchEvent(Object.assign(new Event("error"), { status }));
  }

  // shareTabs: the tab that holds the lock reads the stream and passes each
  // event on; the others wait for the lock, and the next takes over from its
  // own last id when the leader goes.
  #sharing() {
    const o = this.#options;
    return Boolean(o.shareTabs && globalThis.navigator && navigator.locks && globalThis.BroadcastChannel);
  }

  #share() {
    if (this.readyState === CLOSED) return;
    const channel = new BroadcastChannel(this.#key);
    const lock = new AbortController();
    this.#channel = channel;
    this.#lockAbort = lock;
    this.#waiting = [];
    channel.onmessage = (event) => this.#heard(event.data);
    navigator.locks
      .request(this.#key, { signal: lock.signal }, () => {
        if (this.readyState === CLOSED || this.#channel !== channel) return undefined;
        this.#synced(); // events heard before: this tab's own, in order
        if (this.readyState === CLOSED) return undefined; // one of them was the last
        this.#leader = true;
        channel.postMessage({ kind: "leader" });
        this.#connect();
        return new Promise((resolve) => {
          this.#release = resolve;
        });
      })
      .catch((error) => {
        // Aborted: closed before this tab's turn. Refused (an opaque origin,
        // a sandboxed frame): this tab reads the stream on its own.
        if (error && error.name === "AbortError") return;
        if (this.readyState === CLOSED || this.#channel !== channel) return;
        this.#options = { ...this.#options, shareTabs: false };
        this.#unshare(false);
        this.#connect();
      });
    channel.postMessage({ kind: "hello", from: this.#token, id: this.#shown });
  }

  // Leave the tabs: give up the lock (or the wait for it) and the channel.
  #unshare(final) {
    if (this.#lockAbort) this.#lockAbort.abort();
    // After the last event, hold the lock a moment: the other tabs hear that
    // event and close, rather than one taking over to ask for a finished stream.
    if (this.#release) setTimeout(this.#release, final ? 1000 : 0);
    if (this.#channel) this.#channel.close();
    this.#channel = this.#release = this.#lockAbort = this.#waiting = null;
    this.#leader = false;
  }

  #synced() {
    const waiting = this.#waiting || [];
    this.#waiting = null;
    for (const event of waiting) this.#heard(event);
  }

  #announce(note) {
    if (this.#channel && this.#leader) this.#channel.postMessage(note);
  }

  #heard(note) {
    if (this.readyState === CLOSED || !note) return;
    if (note.kind === "hello") {
      if (!this.#leader) return;
      const at = note.id ? this.#history.findIndex((e) => e.lastEventId === note.id) : -1;
      const events = this.#history.slice(at + 1);
      const reply = { kind: "history", to: note.from, events, state: this.readyState };
      this.#channel.postMessage({ ...reply, upTo: this.#seq });
      return;
    }
    if (this.#leader) return;
    if (note.kind === "leader" && this.#waiting) {
      // A leader that came after this tab said hello: ask it again.
      this.#channel.postMessage({ kind: "hello", from: this.#token, id: this.#shown });
    } else if (note.kind === "history") {
      if (note.to !== this.#token || !this.#waiting) return;
      if (note.state === OPEN) this.#heard({ kind: "open" });
      // Live events heard meanwhile that the history holds already are dropped.
      const waiting = this.#waiting.filter((e) => e.kind !== "event" || e.seq > note.upTo);
      this.#waiting = null;
      for (const event of note.events) this.#deliver(event);
      for (const event of waiting) this.#heard(event);
    } else if (this.#waiting && (note.kind === "event" || note.kind === "id")) {
      // Until the leader's answer comes, live events wait behind the past.
      this.#waiting.push(note);
    } else if (note.kind === "event") {
      this.#deliver(note);
    } else if (note.kind === "id") {
      this.#moveTo(note.id);
    } else if (note.kind === "open" && this.readyState !== OPEN) {
      this.readyState = OPEN;
      this.dispatchEvent(new Event("open"));
    } else if (note.kind === "error") {
      if (note.closed) this.#stop(false);
      else this.readyState = CONNECTING;
      const detail = note.closed ? { status: note.status } : { status: note.status, retryIn: note.retryIn };
      this.dispatchEvent(Object.assign(new Event("error"), detail));
    }
  }
}

for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSED })) {
  Object.defineProperty(SSEFlushSource, name, { value, enumerable: true });
  Object.defineProperty(SSEFlushSource.prototype, name, { value, enumerable: true });
}
SSEFlushSource.Parser = EventStreamParser;
