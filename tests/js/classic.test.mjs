// The classic script (/sse-flush.js) defines globalThis.SSEFlushSource and
// nothing else; the module and the script are the same client.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import vm from "node:vm";

import { loadClient } from "./fake.mjs";

test("the classic script defines globalThis.SSEFlushSource, and only that", async () => {
  const text = readFileSync(path.join(process.env.SSE_FLUSH_CLIENT_DIR, "sse-flush.js"), "utf-8");
  const context = vm.createContext({ EventTarget, Event, MessageEvent, URL, TextDecoder, Headers });
  context.globalThis = context;
  const before = new Set(Object.keys(context));
  vm.runInContext(text, context);
  const added = Object.keys(context).filter((key) => !before.has(key));
  assert.deepEqual(added, ["SSEFlushSource"]);
  const { SSEFlushSource } = await loadClient();
  assert.equal(context.SSEFlushSource.name, SSEFlushSource.name);
  assert.deepEqual(Object.keys(context.SSEFlushSource), Object.keys(SSEFlushSource));
});

test("the module's default export is SSEFlushSource", async () => {
  const client = await loadClient();
  assert.equal(client.default, client.SSEFlushSource);
});
