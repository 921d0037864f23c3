"""Every Python sample of ``README.md`` and ``docs/*.rst``, run for real.

The rule: a block is a sample when it names its language ``python`` (run) or
``pycon`` (a doctest): ```` ```python ```` in Markdown, ``.. code-block::
python`` (or ``.. code::``) in reST. Bare ``::`` literal blocks and language-less
fences are refused (:func:`test_every_literal_block_names_its_language`), so no
Python can hide from the rule. Each sample is one test, ``<file>:<line>``, run
in a subprocess of its own (a sample may install signal handlers or stop the
process's streams) in a temporary folder, one per page.

Markers, on the lines right before a block (reST comments, invisible in the
built docs; ``<!-- marker: value -->`` in Markdown):

``# name.py`` as the block's first line
    The block is the file ``name.py``: later blocks of the page run beside
    it and may import it. A file whose name starts ``test_`` (or any block
    defining top-level ``test_*`` functions) is run by pytest.
``.. sample-context: name.py`` or ``.. sample-context: <context>``
    A fragment that continues ``name.py`` (an earlier file of the page) or
    one of :data:`CONTEXTS` (e.g. ``app``: a Flask ``app`` and a quick
    ``render``, which fragments of the guide take from the quickstart).
``.. sample-argv: 20 10``
    The command-line arguments the file runs with.
``.. sample-files-from: page.rst`` (anywhere in a page)
    The page's blocks also run beside the named files of ``page.rst``.
``.. not-runnable: <reason>``
    The block is not run; the reason is required, and shown as the skip.

After a ``python`` block has run, every Flask app it left in its namespace
(and the one its own ``create_app()`` builds) is exercised through the test
client: each ``GET`` route without URL variables is read to its end and must
not fail; ``/render/stream`` gets ``?data={"title": "intro"}`` and, when it
streams, must end with ``complete``. A thread that raises fails the sample.

Samples that mention Redis get the run's ``redis-server`` (the ``redis_server``
fixture) as ``REDIS_URL`` and as ``FLASK_SSE_FLUSH_REDIS_URL`` (what
``app.config.from_prefixed_env()`` turns into ``SSE_FLUSH_REDIS_URL``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.support import Server, raw_get
from tests.js_support import JS_CONTEXTS, run_js_sample

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]
RUN = {
    "python": "python",
    "py": "python",
    "python3": "python",
    "pycon": "pycon",
    # Run in Node against a real server: tests/js_support.py.
    "javascript": "javascript",
    "js": "javascript",
}
MARKERS = ("not-runnable", "sample-context", "sample-argv")
TIMEOUT = 60.0

#: What a fragment names with ``.. sample-context: <name>``: the names the
#: guide's prose gives it (the quickstart's ``app`` and ``render``). The
#: optional second part runs after the sample and checks what it did.
CONTEXTS: dict[str, tuple[str, str]] = {
    "app": (
        """\
import time

from flask import Flask

from flask_sse_flush import create_render_blueprint


def render(payload, progress):
    for step in range(1, 5):
        progress(step * 25, "rendering")
    return {"filename": "out.mp4", "url": "https://cdn.example.com/out.mp4"}


app = Flask(__name__)
""",
        "",
    ),
    "app-with-blueprint": (
        """\
from flask import Flask

from flask_sse_flush import create_render_blueprint


def render(payload, progress):
    for step in range(1, 5):
        progress(step * 25, "rendering")
    return {"filename": "out.mp4", "url": "https://cdn.example.com/out.mp4"}


app = Flask(__name__)
app.register_blueprint(create_render_blueprint(render))
""",
        "",
    ),
    # The Node service's own work, which a port keeps calling.
    "node-port": (
        """\
from flask import Flask


def bundle(payload, on_progress):
    for percent in (0, 50, 100):
        on_progress(percent)
    return payload


def render_media(bundled, on_progress):
    for fraction in (0.0, 0.5, 1.0):
        on_progress(fraction)
    return "out.mp4", "https://cdn.example.com/out.mp4"


app = Flask(__name__)
""",
        "",
    ),
    # A real RQ worker on the run's Redis, beside the page's tasks.py, for
    # the render the app enqueues when the harness streams one.
    "rq-worker": (
        """\
import atexit
import os
import subprocess
import sys

rq_worker = subprocess.Popen(
    [sys.executable, "-m", "rq.cli", "worker", "--url", os.environ["REDIS_URL"], "renders"],
    stdout=subprocess.DEVNULL,
)
atexit.register(rq_worker.kill)
""",
        """\
rq_worker.terminate()
rq_worker.wait(10)
""",
    ),
    # A job whose worker died: created in Redis, running, never to report.
    "stuck-job": (
        """\
import os

from flask_sse_flush import run_job
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.jobs import new_job_id

broker = RedisBroker(os.environ["REDIS_URL"])
job_id = new_job_id()
broker.create(job_id)
broker.update(job_id, {"state": "running"})
""",
        """\
assert broker.status(job_id).state == "error", broker.status(job_id)
broker.close()
""",
    ),
}


@dataclass(frozen=True)
class Sample:
    page: Path
    line: int  # of the block's first line of code
    language: str  # "python" or "pycon"
    text: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def name(self) -> str | None:
        """The file the block is, from a first line ``# name.py``."""
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        found = re.fullmatch(r"#\s*([\w.]+\.py)\b.*", first.strip())
        return found.group(1) if found else None

    def defines_tests(self) -> list[str]:
        tree = ast.parse(self.text)
        return [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]


@dataclass
class Page:
    path: Path
    samples: list[Sample]
    files_from: list[str]
    problems: list[str]


_RST_BLOCK = re.compile(r"^(\s*)\.\. (?:code-block|code|sourcecode)::\s*(\S+)\s*$")
_RST_MARKER = re.compile(r"^\s*\.\. ([a-z-]+):(?!:)\s*(.*?)\s*$")
_MD_FENCE = re.compile(r"^```(\S*)\s*$")
_MD_MARKER = re.compile(r"^<!--\s*([a-z-]+):\s*(.*?)\s*-->\s*$")


def _markers_before(
    lines: list[str], index: int, pattern: re.Pattern[str]
) -> dict[int, tuple[str, str]]:
    """The marker lines right above line ``index`` (blank lines between allowed)."""
    found: dict[int, tuple[str, str]] = {}
    i = index - 1
    while i >= 0:
        if not lines[i].strip():
            i -= 1
            continue
        match = pattern.match(lines[i])
        if match is None or match.group(1) not in MARKERS:
            break
        found[i] = (match.group(1), match.group(2))
        i -= 1
    return found


def _parse_rst(lines: list[str]) -> Iterator[tuple[int, str, int, str]]:
    """(directive line index, language, first code line number, code) per code block."""
    for i, line in enumerate(lines):
        match = _RST_BLOCK.match(line)
        if match is None:
            continue
        indent = len(match.group(1))
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip().startswith(":"):
            j += 1  # the directive's options
        first = None
        while j < len(lines):
            text = lines[j]
            if text.strip() and len(text) - len(text.lstrip()) <= indent:
                break
            if text.strip() and first is None:
                first = j
            if first is not None:
                body.append(text)
            j += 1
        while body and not body[-1].strip():
            body.pop()
        width = min(len(b) - len(b.lstrip()) for b in body if b.strip())
        code = "\n".join(b[width:] for b in body) + "\n"
        yield i, match.group(2), (first or i) + 1, code


def _parse_markdown(lines: list[str]) -> Iterator[tuple[int, str, int, str]]:
    i = 0
    while i < len(lines):
        match = _MD_FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        yield i, match.group(1), i + 2, "\n".join(lines[i + 1 : j]) + "\n"
        i = j + 1


def read_page(path: Path) -> Page:
    lines = path.read_text(encoding="utf-8").splitlines()
    markdown = path.suffix == ".md"
    marker = _MD_MARKER if markdown else _RST_MARKER
    blocks = _parse_markdown(lines) if markdown else _parse_rst(lines)
    samples: list[Sample] = []
    problems: list[str] = []
    attached: set[int] = set()
    for index, language, first, code in blocks:
        found = _markers_before(lines, index, marker)
        attached |= set(found)
        where = f"{path.relative_to(REPO)}:{index + 1}"
        if language == "" and markdown:
            problems.append(f"{where}: a fence without a language")
        if language.lower() not in RUN:
            if found:
                problems.append(f"{where}: sample markers on a {language or 'untagged'} block")
            continue
        markers = {name: value for name, value in found.values()}
        if "not-runnable" in markers and not markers["not-runnable"]:
            problems.append(f"{where}: not-runnable needs a reason")
        samples.append(Sample(path, first, RUN[language.lower()], code, markers))
    files_from: list[str] = []
    for i, line in enumerate(lines):
        match = marker.match(line)
        if match is None:
            continue
        name, value = match.group(1), match.group(2)
        if name == "sample-files-from":
            files_from.append(value)
        elif name in MARKERS and i not in attached:
            problems.append(f"{path.relative_to(REPO)}:{i + 1}: {name} is not right before a block")
        elif name.startswith("sample-") and name not in MARKERS:
            problems.append(f"{path.relative_to(REPO)}:{i + 1}: unknown marker {name}")
    if not markdown:
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.endswith("::") and not stripped.startswith(".. "):
                problems.append(
                    f"{path.relative_to(REPO)}:{i + 1}: a '::' literal block: "
                    "say its language with '.. code-block:: <language>'"
                )
    return Page(path, samples, files_from, problems)


PAGE_OF = {page.name: read_page(page) for page in PAGES}
SAMPLES = [sample for page in PAGE_OF.values() for sample in page.samples]


def test_every_literal_block_names_its_language() -> None:
    problems = [problem for page in PAGE_OF.values() for problem in page.problems]
    assert not problems, "\n".join(problems)


def test_the_rule_finds_the_samples() -> None:
    # A parser that silently found nothing would pass every other test.
    assert len(SAMPLES) >= 35
    assert {s.page.name for s in SAMPLES} >= {"README.md", "quickstart.rst", "scaling.rst"}
    contexts = {s.markers["sample-context"] for s in SAMPLES if "sample-context" in s.markers}
    for context in contexts:
        known = CONTEXTS.keys() | JS_CONTEXTS.keys()
        assert context in known or context.endswith(".py"), f"unknown context {context!r}"
    assert sum(s.language == "javascript" for s in SAMPLES) >= 6
    for page in PAGE_OF.values():
        for other in page.files_from:
            assert other in PAGE_OF, f"{page.path.name}: sample-files-from names no page: {other}"


def _files_before(sample: Sample) -> dict[str, str]:
    """The named files the sample runs beside: other pages', then its page's so far."""
    page = PAGE_OF[sample.page.name]
    files: dict[str, str] = {}
    for other in page.files_from:
        for earlier in PAGE_OF[other].samples:
            if earlier.name:
                files[earlier.name] = _source(earlier, files)
    for earlier in page.samples:
        if earlier.line >= sample.line:
            break
        if earlier.name and "not-runnable" not in earlier.markers:
            files[earlier.name] = _source(earlier, files)
    return files


def _source(sample: Sample, files: dict[str, str]) -> str:
    """The sample as a file: its text, after the file it continues if it names one."""
    context = sample.markers.get("sample-context", "")
    if context.endswith(".py"):
        return files[context] + "\n\n" + sample.text
    return sample.text


def base_environment() -> dict[str, str]:
    """This environment, with this checkout first on the path and no Redis URL."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FLASK_SSE_FLUSH_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    return env


def _environment(request: pytest.FixtureRequest, sample: Sample) -> dict[str, str]:
    env = base_environment()
    text = sample.text + CONTEXTS.get(sample.markers.get("sample-context", ""), ("", ""))[0]
    if re.search(r"redis|from_prefixed_env", text, re.IGNORECASE):
        url = request.getfixturevalue("redis_server").url
        env["REDIS_URL"] = env["FLASK_SSE_FLUSH_REDIS_URL"] = url
    return env


def _run(command: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def run_sample(
    sample: Sample, folder: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run one sample in ``folder`` (its page's files written there first)."""
    files = _files_before(sample)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    context = sample.markers.get("sample-context", "")
    tests = sample.defines_tests() if sample.language == "python" else []
    if tests:
        target = sample.name or f"sample_{sample.line}.py"
        (folder / target).write_text(_source(sample, files), encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        command += ["--rootdir", str(folder), target, "-k", " or ".join(tests)]
        return _run(command, folder, env)
    before, after = CONTEXTS.get(context, ("", ""))
    if context.endswith(".py"):
        before = files[context]
    spec = {
        "language": sample.language,
        "before": before,
        "source": sample.text,
        "after": after,
        "filename": str(sample.page),
        "line": sample.line,
        "argv": sample.markers.get("sample-argv", "").split(),
    }
    (folder / "sample.json").write_text(json.dumps(spec), encoding="utf-8")
    return _run([sys.executable, "-m", "tests.test_docs_samples", "sample.json"], folder, env)


def run_in_node(
    text: str, context: str, folder: Path, server: Server, timeout: float = TIMEOUT
) -> CompletedProcess[str]:
    """A JavaScript sample, in Node, against ``server`` (with a job of its own started)."""
    body = json.dumps({"title": "intro"}).encode()
    with raw_get(server.port, "/render", method="POST", body=body) as response:
        job = json.loads(response.body())["id"]
    base = f"http://127.0.0.1:{server.port}"
    return run_js_sample(text, context, folder, base, job, timeout)


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_sample(sample: Sample, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "not-runnable" in sample.markers:
        pytest.skip(f"not runnable: {sample.markers['not-runnable']}")
    if sample.language == "javascript":
        context = sample.markers.get("sample-context", "")
        result = run_in_node(sample.text, context, tmp_path, request.getfixturevalue("js_server"))
    else:
        result = run_sample(sample, tmp_path, _environment(request, sample))
    assert result.returncode == 0, (
        f"{sample.id} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def test_a_broken_sample_fails(tmp_path: Path) -> None:
    """The harness itself: a sample that drifted from the code does not pass."""
    page = REPO / "README.md"
    broken = [
        "from flask_sse_flush import RedisBroker\n",  # it lives in flask_sse_flush.brokers
        "import threading\nthreading.Thread(target=lambda: 1 / 0).start()\n",
        "from flask import Flask\napp = Flask(__name__)\n"
        "@app.get('/boom')\ndef boom():\n    raise RuntimeError('drifted')\n",
        ">>> 1 + 1\n3\n",
    ]
    for text in broken:
        language = "pycon" if text.startswith(">>>") else "python"
        result = run_sample(Sample(page, 1, language, text), tmp_path, base_environment())
        assert result.returncode != 0, text


@pytest.mark.parametrize(
    "text",
    [
        "showProgres(1);\n",  # a name that drifted
        # A source that ends refused, having dispatched nothing.
        'const s = new SSEFlushSource("/nowhere"); s.onerror = () => s.close();\n',
        # One left open: the process never ends by itself.
        'new SSEFlushSource("/sse?channel=quiet");\n',
    ],
)
def test_a_broken_javascript_sample_fails(text: str, tmp_path: Path, js_server: Server) -> None:
    try:
        result = run_in_node(text, "", tmp_path, js_server, timeout=10)
    except subprocess.TimeoutExpired:
        return
    assert result.returncode != 0, result.stdout + result.stderr


def test_the_sigterm_sample_lets_the_process_exit(tmp_path: Path) -> None:
    """docs/shutdown.rst: the handler begins the graceful stop and still ends the process."""
    (sample,) = [s for s in SAMPLES if s.page.name == "shutdown.rst" and "SIGTERM" in s.text]
    program = tmp_path / "serve.py"
    program.write_text(
        sample.text
        + "\nimport time\nprint('ready', flush=True)\ntime.sleep(30)\n"
        + "raise SystemExit('SIGTERM did not end the process')\n",
        encoding="utf-8",
    )
    env = base_environment()
    command = [sys.executable, str(program)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            start = time.monotonic()
            process.terminate()
            code = process.wait(timeout=10)
            assert code == 0, f"exit status {code}"
            assert time.monotonic() - start < 5
        finally:
            if process.poll() is None:
                process.kill()


# The subprocess side: ``python -m tests.test_docs_samples sample.json``.


def _exercise(app: Any) -> None:
    """Read every GET route of ``app`` without URL variables; none may fail."""
    from flask_sse_flush.testing import parse_events

    app.testing = True  # a view's exception reaches us, not a 500 page
    client = app.test_client()
    for rule in list(app.url_map.iter_rules()):
        if "GET" not in (rule.methods or ()) or rule.arguments or rule.endpoint == "static":
            continue
        url = rule.rule
        if url.endswith("/render/stream"):
            url += "?data=" + quote(json.dumps({"title": "intro"}))
        elif url.endswith("/render/diagnose"):
            url += "?n=2&interval=0"
        response = client.get(url, buffered=False)
        if response.mimetype == "text/event-stream" and not url.split("?")[0].endswith(
            "/render/stream"
        ):
            # A channel's stream never ends by itself: its opening frame says it works.
            body = next(iter(response.response), b"")
            assert body.startswith((b"id: ", b"retry: ", b":")), f"GET {url}: {body!r}"
        else:
            body = response.get_data()
        response.close()
        assert response.status_code < 500, f"GET {url}: {response.status_code}"
        if url.split("?")[0].endswith("/render/stream") and response.status_code == 200:
            events = parse_events(body)
            assert events and events[-1].event == "complete", f"GET {url}: {events}"


def _main(spec_file: str) -> int:
    import doctest

    from flask import Flask

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    raised: list[threading.ExceptHookArgs] = []

    def excepthook(args: threading.ExceptHookArgs) -> None:
        raised.append(args)
        threading.__excepthook__(args)

    threading.excepthook = excepthook
    sys.path.insert(0, os.getcwd())
    filename, line = spec["filename"], spec["line"]
    if spec["language"] == "pycon":
        parser = doctest.DocTestParser()
        test = parser.get_doctest(spec["source"], {}, filename, filename, line - 1)
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
        runner.run(test)
        return 1 if runner.failures else 0
    sys.argv = [filename, *spec["argv"]]
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": filename}
    exec(compile(spec["before"], "<context>", "exec"), namespace)
    code = compile("\n" * (line - 1) + spec["source"], filename, "exec")
    exec(code, namespace)
    apps = [value for value in namespace.values() if isinstance(value, Flask)]
    factory = namespace.get("create_app")
    code_of = getattr(factory, "__code__", None)
    if callable(factory) and code_of is not None and code_of.co_filename == filename:
        apps.append(factory())  # the sample's own factory, not one it imported
    for app in apps:
        _exercise(app)
    exec(compile(spec["after"], "<check>", "exec"), namespace)
    time.sleep(0.1)  # let threads the sample started report
    return 1 if raised else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
