// A fake clock and a fake server for SSEFlushSource's tests: no sleeps, no
// sockets. The client reads `setTimeout`, `clearTimeout` and `Date.now` from
// the global object when it calls them, so a test swaps them for these.

import path from "node:path";
import { pathToFileURL } from "node:url";

/** The client under test: the ES module as the app serves it. */
export async function loadClient() {
  const dir = process.env.SSE_FLUSH_CLIENT_DIR;
  if (!dir) throw new Error("SSE_FLUSH_CLIENT_DIR is not set (tests/test_client_js.py sets it)");
  return import(pathToFileURL(path.join(dir, "sse-flush.mjs")).href);
}

/** Let every pending promise and real I/O callback run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

export class Clock {
  now = 1_000_000;
  #timers = new Map();
  #next = 1;
  #saved = null;

  install() {
    this.#saved = {
      setTimeout: globalThis.setTimeout,
      clearTimeout: globalThis.clearTimeout,
      now: Date.now,
    };
    globalThis.setTimeout = (fn, ms = 0, ...args) => {
      const id = this.#next++;
      this.#timers.set(id, { at: this.now + Math.max(0, Number(ms) || 0), fn, args });
      return id;
    };
    globalThis.clearTimeout = (id) => {
      this.#timers.delete(id);
    };
    Date.now = () => this.now;
    return this;
  }

  uninstall() {
    if (!this.#saved) return;
    globalThis.setTimeout = this.#saved.setTimeout;
    globalThis.clearTimeout = this.#saved.clearTimeout;
    Date.now = this.#saved.now;
    this.#saved = null;
  }

  /** Pending timers' delays from now, soonest first. */
  pending() {
    return [...this.#timers.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, running each timer when its time comes. */
  async advance(ms) {
    const end = this.now + ms;
    await settle();
    for (;;) {
      let soonest = null;
      for (const [id, timer] of this.#timers) {
        if (timer.at <= end && (soonest === null || timer.at < soonest[1].at)) soonest = [id, timer];
      }
      if (soonest === null) break;
      const [id, timer] = soonest;
      this.#timers.delete(id);
      this.now = timer.at;
      timer.fn(...timer.args);
      await settle();
    }
    this.now = end;
    await settle();
  }
}

/**
 * A fake fetch. Each request waits in `requests` for the test to answer it:
 * `respond(status, headers)` with no body, or `stream(headers)`, which returns
 * a handle to send chunks and end (or break) the body.
 */
export class Server {
  requests = [];
  #waiters = [];

  fetch = (url, init = {}) => {
    const request = new Request(url, init);
    return new Promise((resolve, reject) => {
      const entry = { url: String(url), init, headers: request.headers, resolve, reject, answered: false };
      if (init.signal) {
        if (init.signal.aborted) return reject(new DOMException("aborted", "AbortError"));
        init.signal.addEventListener("abort", () => {
          entry.aborted = true;
          if (!entry.answered) reject(new DOMException("aborted", "AbortError"));
          if (entry.controller) {
            try {
              entry.controller.error(new DOMException("aborted", "AbortError"));
            } catch {
              // already closed
            }
          }
        });
      }
      this.requests.push(entry);
      for (const wake of this.#waiters.splice(0)) wake();
    });
  };

  /** The n-th request (0-based), once it has come. */
  async request(n) {
    await settle();
    if (!this.requests[n]) throw new Error(`no request #${n}; ${this.requests.length} came`);
    return this.requests[n];
  }

  respond(n, status, headers = {}, body = null) {
    const entry = this.requests[n];
    entry.answered = true;
    entry.resolve(new Response(body, { status, headers }));
  }

  stream(n, headers = {}) {
    const entry = this.requests[n];
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
      },
    });
    entry.controller = controller;
    entry.answered = true;
    entry.resolve(
      new Response(body, {
        status: 200,
        headers: { "Content-Type": "text/event-stream; charset=utf-8", ...headers },
      })
    );
    const encoder = new TextEncoder();
    return {
      send(text) {
        controller.enqueue(encoder.encode(text));
      },
      end() {
        controller.close();
      },
      fail() {
        controller.error(new TypeError("network error"));
      },
      get aborted() {
        return Boolean(entry.aborted);
      },
    };
  }
}

/** What a source dispatched, in order, as [type, data, lastEventId, readyState, status]. */
export function record(source, ...types) {
  const seen = [];
  for (const type of ["open", "message", "error", ...types]) {
    source.addEventListener(type, (event) => {
      seen.push({
        type,
        data: event.data,
        id: event.lastEventId,
        state: source.readyState,
        status: event.status,
        retryIn: event.retryIn,
      });
    });
  }
  return seen;
}

/** A sessionStorage for Node (a browser's is per tab and per origin). */
export class Storage {
  #items = new Map();
  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }
  setItem(key, value) {
    this.#items.set(key, String(value));
  }
  removeItem(key) {
    this.#items.delete(key);
  }
}
