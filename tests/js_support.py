"""Node for the client's tests: find it, give it the client as served, run the docs' samples.

A ``javascript`` block of the docs is a sample like a Python one
(``tests/test_docs_samples.py``): it runs in Node against a real server
(``tests/js/app.py`` under gunicorn), as an ES module, beside
``sse-flush.mjs``. What a page would have is there as globals:
``SSEFlushSource``, ``EventSource`` (the same class: the drop-in runs the
native samples), ``location`` (the server), the page's elements the samples
name (``bar``, ``label``, ``link``) and its functions (``show``,
``showProgress``, ``showResult``, ``showError``, ``alert``,
``currentToken``), and ``jobId`` (a running job's). A sample passes when the
process ends by itself, cleanly, every source it opened closed and at least
one event dispatched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from flask import Flask

from flask_sse_flush import SSEFlush
from tests.browser.support import require

#: ``.. sample-context:`` names a JavaScript sample may use.
JS_CONTEXTS = {
    "source": (
        "const source = new SSEFlushSource("
        '"/render/stream?data=" + encodeURIComponent(JSON.stringify({ title: "intro" })));\n'
    ),
}

#: ``sse-flush.mjs`` as a sample imports it: the client, counting what it does.
_TRACKED = """\
import { SSEFlushSource as Served, EventStreamParser } from "./client.mjs";

const opened = [];
let dispatched = 0;

export class SSEFlushSource extends Served {
  constructor(url, options) {
    super(url, options);
    opened.push(this);
  }
  dispatchEvent(event) {
    if (event.data !== undefined) dispatched += 1;
    return super.dispatchEvent(event);
  }
}
export { EventStreamParser };
export default SSEFlushSource;

process.on("exit", (code) => {
  if (code !== 0) return;
  const open = opened.filter((source) => source.readyState !== Served.CLOSED);
  if (!opened.length || open.length || !dispatched) {
    const counts = `opened ${opened.length}, left open ${open.length}, events ${dispatched}`;
    console.error(`sources: ${counts}`);
    process.exitCode = 1;
  }
});
"""

_PAGE = """\
import { SSEFlushSource } from "./sse-flush.mjs";

globalThis.SSEFlushSource = SSEFlushSource;
globalThis.EventSource = SSEFlushSource;
globalThis.location = { href: BASE + "/" };
globalThis.jobId = JOB;
globalThis.bar = { value: 0 };
globalThis.label = { textContent: "" };
globalThis.link = { href: "" };
for (const name of ["show", "showProgress", "showResult", "showError", "alert"]) {
  globalThis[name] = (...args) => console.log(name, JSON.stringify(args));
}
globalThis.currentToken = async () => "docs-token";
"""


def node() -> str:
    """Node 18 or later; skips (or fails, in CI) where it is missing."""
    found = shutil.which("node")
    if found is None:
        require("node")
    assert found is not None
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < 18:
        pytest.fail(f"Node {version.strip()} is too old: SSEFlushSource needs Node 18+")
    return found


def write_client(folder: Path) -> None:
    """The client's files in ``folder``, exactly as an app serves them."""
    app = Flask(__name__)
    SSEFlush(app)
    client = app.test_client()
    for name in ("sse-flush.js", "sse-flush.mjs", "sse-flush.d.ts"):
        (folder / name).write_bytes(client.get(f"/{name}").data)


def run_js_sample(
    text: str, context: str, folder: Path, base: str, job_id: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a documentation sample in Node against the server at ``base``."""
    write_client(folder)
    (folder / "sse-flush.mjs").rename(folder / "client.mjs")
    (folder / "sse-flush.mjs").write_text(_TRACKED)
    page = _PAGE.replace("BASE", repr(base)).replace("JOB", repr(job_id))
    (folder / "page.mjs").write_text(page)
    # A sample written for a server of its own talks to this one.
    source = text.replace("http://127.0.0.1:8000", base)
    prelude = JS_CONTEXTS[context] if context else ""
    (folder / "sample.mjs").write_text('import "./page.mjs";\n' + prelude + source)
    return subprocess.run(
        [node(), "sample.mjs"], cwd=folder, capture_output=True, text=True, timeout=timeout
    )
