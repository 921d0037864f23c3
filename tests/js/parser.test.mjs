// SSEFlushSource's parser against the cases the Python decoder is tested
// with (tests/sse_cases.json), fed as given and byte by byte.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { loadClient } from "./fake.mjs";

const { EventStreamParser, SSEFlushSource } = await loadClient();
const { cases } = JSON.parse(readFileSync(new URL("../sse_cases.json", import.meta.url), "utf-8"));

function chunksOf(c) {
  if (c.hex) return c.hex.map((h) => Uint8Array.from(Buffer.from(h, "hex")));
  return c.chunks.map((text) => new TextEncoder().encode(text));
}

function parse(chunks) {
  const events = [];
  let retry = null;
  const parser = new EventStreamParser(
    (type, data, lastEventId, id) => {
      if (data !== null) events.push([type, data, id]);
    },
    (ms) => {
      retry = ms;
    }
  );
  for (const chunk of chunks) parser.feed(chunk);
  return { events, retry, lastEventId: parser.lastEventId };
}

for (const c of cases) {
  test(`parser: ${c.name}`, () => {
    const whole = parse(chunksOf(c));
    assert.deepEqual(whole.events, c.events);
    assert.equal(whole.lastEventId, c.lastEventId);
    assert.equal(whole.retry, c.retry);
    const bytes = Buffer.concat(chunksOf(c).map((b) => Buffer.from(b)));
    const single = parse([...bytes].map((b) => Uint8Array.of(b)));
    assert.deepEqual(single.events, c.events, "byte by byte");
    assert.equal(single.lastEventId, c.lastEventId);
  });
}

test("parser: a block without data reports the id it moves to, with null data", () => {
  const seen = [];
  const parser = new EventStreamParser((...args) => seen.push(args));
  parser.feed("id: 7\n\n");
  assert.deepEqual(seen, [["message", null, "7", "7"]]);
});

test("parser: a resumed stream starts from the id it is given", () => {
  const seen = [];
  const parser = new EventStreamParser((...args) => seen.push(args), undefined, "j-4");
  parser.feed("data: x\n\n");
  assert.deepEqual(seen, [["message", "x", "j-4", null]]);
});

test("parser: text chunks are taken as they are", () => {
  const seen = [];
  const parser = new EventStreamParser((type, data) => seen.push([type, data]));
  parser.feed("event: a\ndata: é\n");
  parser.feed("\n");
  assert.deepEqual(seen, [["a", "é"]]);
});

test("the classes are exposed as EventSource's are", () => {
  assert.equal(SSEFlushSource.Parser, EventStreamParser);
  assert.deepEqual([SSEFlushSource.CONNECTING, SSEFlushSource.OPEN, SSEFlushSource.CLOSED], [0, 1, 2]);
  assert.equal(SSEFlushSource.prototype.OPEN, 1);
});
