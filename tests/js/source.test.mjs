// SSEFlushSource's connection logic on a fake clock and a fake fetch: what it
// asks for, when it comes back, and when it stops for good.

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { Clock, Server, Storage, loadClient, record, settle } from "./fake.mjs";

const { SSEFlushSource } = await loadClient();
const URL_ = "http://127.0.0.1:9/render/stream?data=%7B%7D";

let clock;
let server;
let sources;
let random;

beforeEach(() => {
  clock = new Clock().install();
  server = new Server();
  sources = [];
  random = Math.random;
  Math.random = () => 0.5;
});

afterEach(() => {
  for (const source of sources) source.close();
  clock.uninstall();
  Math.random = random;
  delete globalThis.sessionStorage;
});

function open(options = {}, url = URL_) {
  const source = new SSEFlushSource(url, { fetch: server.fetch, ...options });
  sources.push(source);
  return source;
}

test("it asks for an event stream with the page's headers, and dispatches events like EventSource", async () => {
  const source = open({ headers: { Authorization: "Bearer abc" } });
  const seen = record(source, "progress");
  const messages = [];
  source.onmessage = (event) => messages.push(event.data);
  assert.equal(source.readyState, SSEFlushSource.CONNECTING);
  assert.equal(source.url, URL_);
  const request = await server.request(0);
  assert.equal(request.headers.get("Authorization"), "Bearer abc");
  assert.equal(request.headers.get("Accept"), "text/event-stream");
  assert.equal(request.headers.get("Last-Event-ID"), null);
  assert.equal(request.init.credentials, "same-origin");
  const body = server.stream(0);
  await settle();
  assert.equal(source.readyState, SSEFlushSource.OPEN);
  body.send('event: progress\nid: j-1\ndata: {"progress":5}\n\ndata: hi\n');
  body.send("\n");
  await settle();
  assert.deepEqual(
    seen.map((e) => [e.type, e.data, e.id, e.state]),
    [
      ["open", undefined, undefined, 1],
      ["progress", '{"progress":5}', "j-1", 1],
      ["message", "hi", "j-1", 1],
    ]
  );
  assert.deepEqual(messages, ["hi"]);
  assert.equal(source.lastEventId, "j-1");
});

test("withCredentials sends cookies across origins; headers may be a function called per connection", async () => {
  let calls = 0;
  const source = open({ withCredentials: true, headers: () => ({ "X-Token": `t${++calls}` }) });
  assert.equal(source.withCredentials, true);
  const first = await server.request(0);
  assert.equal(first.init.credentials, "include");
  assert.equal(first.headers.get("X-Token"), "t1");
  server.stream(0).end();
  await clock.advance(1000);
  const second = await server.request(1);
  assert.equal(second.headers.get("X-Token"), "t2");
});

test("an ended stream is resumed after the server's retry, with Last-Event-ID", async () => {
  const source = open();
  const seen = record(source);
  await server.request(0);
  const body = server.stream(0);
  body.send("retry: 2500\nid: j-3\ndata: a\n\n");
  body.end();
  await settle();
  const error = seen.find((e) => e.type === "error");
  assert.equal(error.state, SSEFlushSource.CONNECTING);
  assert.equal(error.status, null);
  assert.equal(error.retryIn, 2500);
  await clock.advance(2499);
  assert.equal(server.requests.length, 1, "not before the server's retry");
  await clock.advance(1);
  const again = await server.request(1);
  assert.equal(again.headers.get("Last-Event-ID"), "j-3");
});

test("repeated failures back off exponentially, jittered, up to maxRetry", async () => {
  open({ retry: 1000, maxRetry: 8000 });
  const waits = [];
  for (let n = 0; n < 6; n++) {
    const request = await server.request(n);
    request.reject(new TypeError("connection refused"));
    await settle();
    waits.push(clock.pending()[0]);
    await clock.advance(waits[n]);
  }
  // The first wait is the retry itself; then between half and all of
  // retry * 2^n (Math.random() is 0.5 here: three quarters), capped.
  assert.deepEqual(waits, [1000, 1500, 3000, 6000, 6000, 6000]);
});

test("the jitter spreads clients between half and all of the backoff", async () => {
  for (const [value, expected] of [
    [0, 1000],
    [0.999, 1999],
  ]) {
    Math.random = () => value;
    server = new Server();
    const source = open({ retry: 1000 });
    (await server.request(0)).reject(new TypeError("refused"));
    await clock.advance(1000);
    (await server.request(1)).reject(new TypeError("refused"));
    await settle();
    assert.equal(Math.round(clock.pending()[0]), expected);
    source.close();
  }
});

test("a 503 with Retry-After is retried after that many seconds, and then completes", async () => {
  const source = open();
  const seen = record(source, "complete");
  await server.request(0);
  server.respond(0, 503, { "Retry-After": "1", "Content-Type": "application/json" }, '{"error":"busy"}');
  await settle();
  const error = seen.find((e) => e.type === "error");
  assert.equal(error.status, 503);
  assert.equal(error.state, SSEFlushSource.CONNECTING);
  assert.ok(error.retryIn >= 1000 && error.retryIn <= 1200, `retry in ${error.retryIn} ms`);
  await clock.advance(999);
  assert.equal(server.requests.length, 1);
  await clock.advance(201);
  await server.request(1);
  const body = server.stream(1, { "SSE-Flush-Final": "complete, error" });
  body.send('event: complete\nid: j-9\ndata: {"url":"/v.mp4"}\n\n');
  await settle();
  assert.equal(source.readyState, SSEFlushSource.CLOSED);
  assert.ok(body.aborted, "the finished stream is let go");
  await clock.advance(60_000);
  assert.equal(server.requests.length, 2, "no request after complete");
  assert.deepEqual(
    seen.map((e) => e.type),
    ["error", "open", "complete"]
  );
});

test("a 429's Retry-After may be an HTTP date", async () => {
  open();
  await server.request(0);
  server.respond(0, 429, { "Retry-After": new Date(clock.now + 3000).toUTCString() });
  await settle();
  const wait = clock.pending()[0];
  assert.ok(wait >= 2000 && wait <= 3600, `waits ${wait} ms`);
});

for (const status of [204, 400, 401, 403, 404, 413]) {
  test(`a ${status} stops for good with an error event carrying the status`, async () => {
    const source = open();
    const seen = record(source);
    await server.request(0);
    server.respond(0, status);
    await settle();
    assert.equal(source.readyState, SSEFlushSource.CLOSED);
    assert.deepEqual(
      seen.map((e) => [e.type, e.status, e.state]),
      [["error", status, SSEFlushSource.CLOSED]]
    );
    await clock.advance(120_000);
    assert.equal(server.requests.length, 1);
  });
}

test("a 502 or 500 is retried with backoff, as a network failure is", async () => {
  const source = open();
  const seen = record(source);
  await server.request(0);
  server.respond(0, 502);
  await settle();
  assert.equal(seen[0].status, 502);
  assert.equal(source.readyState, SSEFlushSource.CONNECTING);
  await clock.advance(1000);
  await server.request(1);
});

test("a 200 that is not an event stream stops for good, as EventSource does", async () => {
  const source = open();
  await server.request(0);
  server.respond(0, 200, { "Content-Type": "text/html" }, "<p>login</p>");
  await settle();
  assert.equal(source.readyState, SSEFlushSource.CLOSED);
  await clock.advance(60_000);
  assert.equal(server.requests.length, 1);
});

test("silence for twice the announced keepalive means a dead connection: it reconnects at once", async () => {
  const source = open();
  await server.request(0);
  const body = server.stream(0, { "SSE-Flush-Keepalive": "15" });
  body.send("id: j-2\ndata: a\n\n");
  await clock.advance(20_000);
  body.send(": keepalive\n\n"); // a byte resets the timer
  await clock.advance(29_999);
  assert.equal(server.requests.length, 1);
  assert.equal(source.readyState, SSEFlushSource.OPEN);
  await clock.advance(1);
  assert.ok(body.aborted, "the dead connection is dropped");
  const again = await server.request(1);
  assert.equal(again.headers.get("Last-Event-ID"), "j-2");
  assert.ok(clock.now - 1_000_000 <= 50_000);
});

test("a request that gets no answer is given up after a quarter of a keepalive period, and retried at once", async () => {
  open();
  await server.request(0);
  const body = server.stream(0, { "SSE-Flush-Keepalive": "4" });
  body.send("id: j-1\ndata: a\n\n");
  await clock.advance(8000); // silence: the connection is dead
  assert.ok(body.aborted);
  const swallowed = await server.request(1); // on a connection that is dead too
  await clock.advance(999);
  assert.equal(server.requests.length, 2);
  await clock.advance(1);
  assert.ok(swallowed.aborted, "the unanswered request is dropped");
  const third = await server.request(2);
  assert.equal(third.headers.get("Last-Event-ID"), "j-1");
});

test("connectTimeout sets that patience itself; without a keepalive heard there is none", async () => {
  open({ connectTimeout: 300 });
  await server.request(0);
  await clock.advance(300);
  await server.request(1);
  const patient = open();
  await settle();
  await clock.advance(3_600_000);
  assert.ok(!server.requests[2].aborted);
  patient.close();
});

test("heartbeatTimeout overrides the header, and 0 turns it off", async () => {
  open({ heartbeatTimeout: 0 });
  await server.request(0);
  server.stream(0, { "SSE-Flush-Keepalive": "1" });
  await clock.advance(600_000);
  assert.equal(server.requests.length, 1);
  const other = open({ heartbeatTimeout: 500 });
  await settle();
  server.stream(1);
  await clock.advance(500);
  await server.request(2);
  other.close();
});

test("without a keepalive header there is no heartbeat timeout", async () => {
  open();
  await server.request(0);
  server.stream(0);
  await clock.advance(3_600_000);
  assert.equal(server.requests.length, 1);
});

test("close() stops for good: the connection is dropped and nothing is asked again", async () => {
  const source = open();
  await server.request(0);
  const body = server.stream(0);
  await settle();
  source.close();
  assert.equal(source.readyState, SSEFlushSource.CLOSED);
  await settle();
  assert.ok(body.aborted);
  await clock.advance(600_000);
  assert.equal(server.requests.length, 1);
  source.close(); // twice is fine
});

test("close() while waiting to reconnect cancels the reconnection", async () => {
  const source = open();
  (await server.request(0)).reject(new TypeError("refused"));
  await settle();
  source.close();
  await clock.advance(600_000);
  assert.equal(server.requests.length, 1);
});

test("close() from a handler stops at once: later events of the same chunk are not dispatched", async () => {
  const source = open();
  const seen = [];
  source.onmessage = (event) => {
    seen.push(event.data);
    source.close();
  };
  await server.request(0);
  server.stream(0).send("data: a\n\ndata: b\n\n");
  await settle();
  assert.deepEqual(seen, ["a"]);
});

test("finalEvents names the end of a stream the server does not name", async () => {
  const source = open({ finalEvents: ["done"] });
  await server.request(0);
  const body = server.stream(0);
  body.send("event: done\nid: c-1\ndata: {}\n\n");
  await settle();
  assert.equal(source.readyState, SSEFlushSource.CLOSED);
});

test("an error event without an id of its own (the event store away) is not the end", async () => {
  const source = open();
  const seen = record(source);
  await server.request(0);
  const body = server.stream(0, { "SSE-Flush-Final": "complete, error" });
  body.send("id: j-3\ndata: a\n\n");
  body.send('event: error\ndata: {"message":"the event store is away","reconnect":true}\n\n');
  body.end();
  await settle();
  assert.equal(source.readyState, SSEFlushSource.CONNECTING);
  assert.ok(seen.some((e) => e.type === "error" && e.data));
  await clock.advance(1000);
  assert.equal((await server.request(1)).headers.get("Last-Event-ID"), "j-3");
});

test("a server's retry: 0 reconnects at once, but repeated failures still back off", async () => {
  open();
  await server.request(0);
  const body = server.stream(0);
  body.send("retry: 0\nid: j-1\ndata: a\n\n");
  body.end();
  await settle();
  assert.deepEqual(clock.pending(), [0]);
  for (let n = 1; n < 4; n++) {
    await clock.advance(clock.pending()[0]);
    (await server.request(n)).reject(new TypeError("refused"));
    await settle();
  }
  // 1000 * 2^n jittered (three quarters here), not 0: no spinning.
  assert.deepEqual(clock.pending(), [6000]);
  assert.equal(server.requests.length, 4);
});

test("the connect timeout does not count the time a headers function takes", async () => {
  let calls = 0;
  open({
    connectTimeout: 100,
    headers: () => new Promise((resolve) => setTimeout(() => resolve({ "X-N": `${++calls}` }), 500)),
  });
  await clock.advance(500);
  const request = await server.request(0);
  assert.equal(request.headers.get("X-N"), "1");
  await clock.advance(99);
  assert.ok(!request.aborted);
  server.stream(0);
  await clock.advance(10_000);
  assert.equal(server.requests.length, 1);
});

test("without a final event, complete is an event like another", async () => {
  const source = open();
  await server.request(0);
  const body = server.stream(0);
  body.send("event: complete\ndata: {}\n\n");
  body.end();
  await settle();
  assert.equal(source.readyState, SSEFlushSource.CONNECTING);
});

test("the gap event reaches the page like any named event", async () => {
  const source = open();
  const seen = record(source, "gap");
  await server.request(0);
  server.stream(0).send('event: gap\nid: c-5\ndata: {"missed":3}\n\n');
  await settle();
  assert.deepEqual(seen.at(-1).type, "gap");
  assert.equal(seen.at(-1).data, '{"missed":3}');
});

test("the last id is kept in sessionStorage, per URL: a new source for it resumes", async () => {
  globalThis.sessionStorage = new Storage();
  const first = open();
  await server.request(0);
  server.stream(0, { "SSE-Flush-Final": "complete, error" }).send("id: j-7\ndata: a\n\n");
  await settle();
  assert.equal(sessionStorage.getItem(`sse-flush:${URL_}`), "j-7");
  // A reload: the page makes a new source for the same URL.
  const second = open();
  const request = await server.request(1);
  assert.equal(request.headers.get("Last-Event-ID"), "j-7");
  assert.equal(second.lastEventId, "j-7");
  const other = open({}, "http://127.0.0.1:9/render/stream?data=%7B%22a%22%3A1%7D");
  assert.equal((await server.request(2)).headers.get("Last-Event-ID"), null);
  server.stream(1, { "SSE-Flush-Final": "complete, error" }).send("event: complete\nid: j-8\ndata: {}\n\n");
  await settle();
  assert.equal(sessionStorage.getItem(`sse-flush:${URL_}`), null, "forgotten once the job is over");
  first.close();
  other.close();
});

test("resume: false neither reads nor writes sessionStorage", async () => {
  globalThis.sessionStorage = new Storage();
  sessionStorage.setItem(`sse-flush:${URL_}`, "j-1");
  open({ resume: false });
  const request = await server.request(0);
  assert.equal(request.headers.get("Last-Event-ID"), null);
  server.stream(0).send("id: j-2\ndata: a\n\n");
  await settle();
  assert.equal(sessionStorage.getItem(`sse-flush:${URL_}`), "j-1");
});

test("a method and a body are sent on every connection", async () => {
  open({ method: "POST", body: () => '{"q":1}' });
  const request = await server.request(0);
  assert.equal(request.init.method, "POST");
  assert.equal(request.init.body, '{"q":1}');
});

test("bad options are refused with a TypeError", () => {
  assert.throws(() => new SSEFlushSource(URL_, { retry: -1 }), TypeError);
  assert.throws(() => new SSEFlushSource(URL_, { maxRetry: Number.NaN }), TypeError);
  assert.throws(() => new SSEFlushSource(URL_, { heartbeatTimeout: "soon" }), TypeError);
  assert.throws(() => new SSEFlushSource("not a url"), TypeError);
});
