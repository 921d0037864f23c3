"""The SSE wire format: ``Event``, ``comment`` and ``EventDecoder``.

Frames are checked byte for byte where the bytes are the contract, and
otherwise read back by two parsers that owe nothing to this library:

* sseclient-py 1.9.0 splits the byte stream with ``bytes.splitlines()``,
  which breaks only at ``\\r``, ``\\n`` and ``\\r\\n`` (unlike
  ``str.splitlines()``), and dispatches a block once it ends in a blank line;
* httpx-sse 0.4.3 decodes text with httpx, splits it with its own
  ``SSELineDecoder`` (CR, LF and CRLF only) and parses lines with
  ``SSEDecoder``; we drive it through its public ``EventSource`` so the
  line splitting is the library's own, not ours.

Both were checked to follow the WHATWG line-break rules for every character
in ``st.text()``, so neither needs a restricted strategy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource
from hypothesis import given, settings
from hypothesis import strategies as st
from sseclient import SSEClient

from flask_sse_flush import Event, comment
from flask_sse_flush.wire.frames import EventDecoder, decode_events

# No example database: the tests leave no files behind.
SETTINGS = settings(database=None, deadline=None)

FORBIDDEN = "\r\n\x00"
# codec="utf-8" keeps lone surrogates out: they have no UTF-8 encoding.
safe_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=FORBIDDEN))
bad_char = st.sampled_from(list(FORBIDDEN))


def normalise(text: str) -> str:
    """The data a client reads back: every CR, LF or CRLF becomes LF."""
    return re.sub(r"\r\n|\r", "\n", text)


Parsed = tuple[str, str, str | None]


def parse_sseclient(chunks: Iterable[bytes]) -> list[Parsed]:
    """``(event, data, id)`` of each event, as sseclient-py reads them."""
    return [(e.event, e.data, e.id) for e in SSEClient(iter(chunks)).events()]


def parse_httpx_sse(chunks: Iterable[bytes]) -> list[Parsed]:
    """``(event, data, id)`` of each event, as httpx-sse reads them."""
    response = httpx.Response(
        200,
        headers={"content-type": "text/event-stream; charset=utf-8"},
        content=iter(list(chunks)),
    )
    return [(e.event, e.data, e.id) for e in EventSource(response).iter_sse()]


def parse_ours(chunks: Iterable[bytes]) -> list[Event]:
    return list(decode_events(chunks))


def split_at(frame: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``frame`` cut at the given offsets (any order, repeats allowed)."""
    points = [0, *sorted({c % (len(frame) + 1) for c in cuts}), len(frame)]
    return [frame[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- Event: exact bytes ----------------------------------------------------


def test_typical_progress_event_bytes() -> None:
    event = Event({"progress": 5, "phase": "bundling"}, event="progress", id="j-1")
    assert event.encode() == (
        b'event: progress\nid: j-1\ndata: {"progress":5,"phase":"bundling"}\n\n'
    )


def test_plain_string_data() -> None:
    assert Event("hello").encode() == b"data: hello\n\n"


def test_all_fields_in_order() -> None:
    frame = Event("x", event="tick", id="7", retry=3000).encode()
    assert frame == b"event: tick\nid: 7\nretry: 3000\ndata: x\n\n"


def test_retry_only_with_data() -> None:
    assert Event("x", retry=0).encode() == b"retry: 0\ndata: x\n\n"


def test_json_is_compact_and_unescaped_like_json_stringify() -> None:
    data = {"a": [1, 2, {"b": None}], "text": "é ✓ 日本 😀", "ok": True}
    frame = Event(data).encode()
    assert frame == ('data: {"a":[1,2,{"b":null}],"text":"é ✓ 日本 😀","ok":true}\n\n'.encode())


def test_json_string_with_newline_stays_on_one_line() -> None:
    # JSON escapes the newline, so the payload needs only one data line.
    assert Event({"m": "a\nb"}).encode() == b'data: {"m":"a\\nb"}\n\n'


def test_json_list_and_scalar_data() -> None:
    assert Event([1, "two"]).encode() == b'data: [1,"two"]\n\n'
    assert Event(42).encode() == b"data: 42\n\n"
    assert Event(None).encode() == b"data: null\n\n"


@pytest.mark.parametrize(
    ("text", "frame"),
    [
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\n\rb", b"data: a\ndata:\ndata: b\n\n"),
        ("a\r\r\nb", b"data: a\ndata:\ndata: b\n\n"),
        ("a\n", b"data: a\ndata:\n\n"),
        ("\nb", b"data:\ndata: b\n\n"),
        ("\n", b"data:\ndata:\n\n"),
    ],
)
def test_line_breaks_in_data_start_new_data_lines(text: str, frame: bytes) -> None:
    assert Event(text).encode() == frame


@pytest.mark.parametrize(
    "char", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
)
def test_characters_str_splitlines_splits_on_stay_in_one_data_line(char: str) -> None:
    text = f"a{char}b"
    frame = Event(text).encode()
    assert frame == f"data: {text}\n\n".encode()
    assert parse_sseclient([frame]) == [("message", text, None)]
    assert parse_httpx_sse([frame]) == [("message", text, "")]
    assert [e.data for e in parse_ours([frame])] == [text]


def test_leading_spaces_in_data_survive_a_parser() -> None:
    text = "  two spaces\n one\n\tTab"
    frame = Event(text).encode()
    assert frame == b"data:   two spaces\ndata:  one\ndata: \tTab\n\n"
    assert parse_sseclient([frame]) == [("message", text, None)]
    assert parse_httpx_sse([frame]) == [("message", text, "")]
    assert [e.data for e in parse_ours([frame])] == [text]


def test_empty_data() -> None:
    frame = Event("").encode()
    assert frame == b"data:\n\n"
    assert Event().encode() == frame
    assert parse_sseclient([frame]) == [("message", "", None)]
    assert parse_httpx_sse([frame]) == [("message", "", "")]
    assert [e.data for e in parse_ours([frame])] == [""]


def test_int_id_becomes_str() -> None:
    event = Event("x", id=12)  # type: ignore[arg-type]
    assert event.id == "12"
    assert event.encode() == b"id: 12\ndata: x\n\n"
    assert Event("x", id=0).encode() == b"id: 0\ndata: x\n\n"  # type: ignore[arg-type]


def test_bytes_of_event_is_encode() -> None:
    event = Event({"k": "v"}, event="e", id="1", retry=10)
    assert bytes(event) == event.encode()
    assert isinstance(bytes(event), bytes)


def test_event_is_frozen() -> None:
    event = Event("x", event="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.event = "b"  # type: ignore[misc]
    assert event.encode() == b"event: a\ndata: x\n\n"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"p": float("-inf")}])
def test_non_finite_json_data_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        Event(value)


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, b"bytes", {"k": object()}, {(1, 2): "tuple key"}]
)
def test_non_serialisable_data_raises_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        Event(value)


@pytest.mark.parametrize(
    ("retry", "error"),
    [
        (-1, ValueError),
        (True, TypeError),
        (False, TypeError),
        (1.5, TypeError),
        (1000.0, TypeError),
        ("1000", TypeError),
    ],
)
def test_bad_retry_is_rejected(retry: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Event("x", retry=retry)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("value", [1.5, b"bytes", ["x"]])
def test_non_string_name_or_id_is_rejected(field: str, value: object) -> None:
    with pytest.raises(TypeError):
        Event("x", **{field: value})  # type: ignore[arg-type]


def test_bool_id_is_rejected() -> None:
    with pytest.raises(TypeError):
        Event("x", id=True)  # type: ignore[arg-type]


# -- SSE injection ----------------------------------------------------------


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\r\nb", "a\x00b", "\n", "x\n\ndata: evil"])
def test_injection_examples_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        Event("x", **{field: value})  # type: ignore[arg-type]


@SETTINGS
@given(
    prefix=st.text(),
    bad=bad_char,
    suffix=st.text(),
    field=st.sampled_from(["event", "id"]),
)
def test_any_name_or_id_with_cr_lf_or_nul_is_refused(
    prefix: str, bad: str, suffix: str, field: str
) -> None:
    with pytest.raises(ValueError):
        Event("x", **{field: prefix + bad + suffix})  # type: ignore[arg-type]


@SETTINGS
@given(name=safe_text, ident=safe_text, data=st.text())
def test_any_safe_name_and_id_give_exactly_one_event(name: str, ident: str, data: str) -> None:
    frame = Event(data, event=name, id=ident).encode()
    expected = normalise(data)
    # An empty event type means "message" to a browser and to both parsers.
    assert parse_sseclient([frame]) == [(name or "message", expected, ident)]
    assert parse_httpx_sse([frame]) == [(name or "message", expected, ident)]
    ours = parse_ours([frame])
    assert [(e.event or "", e.data, e.id) for e in ours] == [(name, expected, ident)]


# -- comment() -------------------------------------------------------------


def test_comment_bytes() -> None:
    assert comment("keepalive") == b": keepalive\n\n"
    assert comment("") == b":\n\n"
    assert comment() == b":\n\n"


def test_comment_with_line_breaks_stays_a_comment() -> None:
    frame = comment("x\n\ndata: evil\n\n")
    assert frame == b": x\n:\n: data: evil\n:\n:\n\n"
    follow = Event("after").encode()
    assert parse_sseclient([frame + follow]) == [("message", "after", None)]
    assert parse_httpx_sse([frame + follow]) == [("message", "after", "")]
    assert [e.data for e in parse_ours([frame + follow])] == ["after"]


@SETTINGS
@given(text=st.text())
def test_any_comment_dispatches_no_event(text: str) -> None:
    frame = comment(text)
    assert frame.endswith(b"\n\n")
    assert b"\r" not in frame
    assert all(line.startswith(b":") for line in frame[:-2].split(b"\n"))
    assert parse_sseclient([frame]) == []
    assert parse_httpx_sse([frame]) == []
    assert parse_ours([frame]) == []
    # ... and leaves no state behind that would change the next event.
    assert parse_httpx_sse([frame, b"data: next\n\n"]) == [("message", "next", "")]
    assert parse_sseclient([frame, b"data: next\n\n"]) == [("message", "next", None)]


# -- data round trips ------------------------------------------------------


@SETTINGS
@given(text=st.text())
def test_frame_ends_with_exactly_one_blank_line(text: str) -> None:
    frame = Event(text).encode()
    assert b"\r" not in frame
    assert frame.endswith(b"\n\n")
    # Every line carries a field name, so the only blank line is the last.
    assert frame.count(b"\n\n") == 1


@SETTINGS
@given(text=st.text())
def test_any_text_round_trips_through_sseclient(text: str) -> None:
    frame = Event(text, event="t").encode()
    assert parse_sseclient([frame]) == [("t", normalise(text), None)]


@SETTINGS
@given(text=st.text(), cuts=st.lists(st.integers(min_value=0)))
def test_any_text_round_trips_through_httpx_sse(text: str, cuts: list[int]) -> None:
    frame = Event(text, event="t").encode()
    assert parse_httpx_sse([frame]) == [("t", normalise(text), "")]
    # Chunk boundaries anywhere, even inside a UTF-8 sequence.
    assert parse_httpx_sse(split_at(frame, cuts)) == [("t", normalise(text), "")]


@SETTINGS
@given(text=st.text(), cuts=st.lists(st.integers(min_value=0)))
def test_any_text_round_trips_through_event_decoder(text: str, cuts: list[int]) -> None:
    event = Event(text, event="t", id="1")
    frame = event.encode()
    expected = Event(normalise(text), event="t", id="1")
    assert parse_ours([frame]) == [expected]
    assert parse_ours(split_at(frame, cuts)) == [expected]
    assert parse_ours(frame[i : i + 1] for i in range(len(frame))) == [expected]


@SETTINGS
@given(
    events=st.lists(
        st.builds(
            Event,
            data=st.one_of(st.text(), st.dictionaries(st.text(), st.integers())),
            event=st.none() | safe_text.filter(bool),
            id=st.none() | safe_text,
        ),
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=0)),
)
def test_a_stream_of_events_round_trips(events: list[Event], cuts: list[int]) -> None:
    stream = b"".join(e.encode() for e in events)
    expected = [(e.event, normalise(e.text), e.id) for e in events]
    decoded = parse_ours(split_at(stream, cuts))
    assert [(e.event, e.data, e.id) for e in decoded] == expected
    assert parse_sseclient([stream]) == [(e or "message", d, i) for e, d, i in expected]


def test_json_data_round_trips_through_json() -> None:
    data = {"progress": 42, "phase": "rendering", "nested": {"é": [1, None]}}
    (decoded,) = parse_ours([Event(data, event="progress").encode()])
    assert decoded.json() == data
    assert json.loads(parse_sseclient([Event(data).encode()])[0][1]) == data


# -- EventDecoder: WHATWG details ------------------------------------------


def feed_all(*chunks: bytes) -> tuple[EventDecoder, list[Event]]:
    decoder = EventDecoder()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return decoder, events


def test_decoder_strips_a_leading_bom() -> None:
    _, events = feed_all(b"\xef\xbb\xbfdata: x\n\n")
    assert [e.data for e in events] == ["x"]


def test_decoder_strips_a_bom_split_across_chunks() -> None:
    _, events = feed_all(b"\xef", b"\xbb", b"\xbfdata: x\n\n")
    assert [e.data for e in events] == ["x"]


def test_decoder_strips_only_one_bom() -> None:
    # The second BOM is part of the field name "\ufeffdata", an unknown field.
    _, events = feed_all(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n")
    assert [e.data for e in events] == ["y"]


def test_decoder_keeps_a_bom_after_the_start() -> None:
    _, events = feed_all(b"data: x\n\n", "\ufeffdata: y\n\ndata: z\n\n".encode())
    assert [e.data for e in events] == ["x", "z"]


def test_decoder_field_without_colon_has_empty_value() -> None:
    _, events = feed_all(b"data\n\n", b"data: a\ndata\ndata: b\n\n")
    assert [e.data for e in events] == ["", "a\n\nb"]


def test_decoder_strips_exactly_one_leading_space() -> None:
    _, events = feed_all(b"data:  two\n\ndata:x\n\ndata: \n\n")
    assert [e.data for e in events] == [" two", "x", ""]


def test_decoder_value_may_contain_colons() -> None:
    _, events = feed_all(b"event: a:b\ndata: c: d\n\n")
    assert [(e.event, e.data) for e in events] == [("a:b", "c: d")]


def test_decoder_ignores_an_id_containing_nul() -> None:
    decoder, events = feed_all(b"id: 1\ndata: a\n\n", b"id: 2\x003\ndata: b\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", None)]
    assert decoder.last_event_id == "1"


def test_decoder_last_event_id_persists_and_resets_on_empty_id() -> None:
    decoder, _ = feed_all(b"id: 5\ndata: a\n\ndata: b\n\n")
    assert decoder.last_event_id == "5"
    decoder.feed(b"id\ndata: c\n\n")
    assert decoder.last_event_id == ""


@pytest.mark.parametrize("value", [b"12a", b"-5", b" 5", b"1.5", b"", "\u0661\u0662".encode()])
def test_decoder_ignores_retry_that_is_not_ascii_digits(value: bytes) -> None:
    decoder, events = feed_all(b"retry: " + value + b"\ndata: x\n\n")
    assert [(e.data, e.retry) for e in events] == [("x", None)]
    assert decoder.retry is None


def test_decoder_accepts_digit_retry_without_dispatching() -> None:
    decoder, events = feed_all(b"retry: 1500\n\n")
    assert events == []
    assert decoder.retry == 1500
    _, events = feed_all(b"retry: 0007\ndata: x\n\n")
    assert [(e.data, e.retry) for e in events] == [("x", 7)]


def test_decoder_does_not_dispatch_an_event_without_data() -> None:
    _, events = feed_all(b"event: progress\nid: 3\n\n", b"data: x\n\n")
    # The event type of the data-less block does not leak into the next.
    assert [(e.event, e.data, e.id) for e in events] == [(None, "x", None)]


def test_decoder_discards_an_unterminated_event_at_the_end() -> None:
    assert parse_ours([b"data: x\n"]) == []
    assert parse_ours([b"data: x"]) == []


def test_decoder_ignores_unknown_fields_and_field_case() -> None:
    _, events = feed_all(b"foo: bar\nData: no\ndata: x\nEVENT: no\n\n")
    assert [(e.event, e.data) for e in events] == [(None, "x")]
    _, events = feed_all(b"foo: bar\n\n")
    assert events == []


def test_decoder_ignores_comments() -> None:
    _, events = feed_all(b": hello\ndata: x\n: middle\ndata: y\n:\n\n")
    assert [e.data for e in events] == ["x\ny"]
    _, events = feed_all(b": only a comment\n\n")
    assert events == []


def test_decoder_cr_and_lf_split_across_feeds_are_one_line_break() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Were the LF a second line break, "a" would be dispatched on its own.
    events = decoder.feed(b"\ndata: b\n\n")
    assert [e.data for e in events] == ["a\nb"]


def test_decoder_accepts_cr_and_crlf_line_endings() -> None:
    _, events = feed_all(b"event: e\r\ndata: a\r\ndata: b\rdata: c\n\r\n")
    assert [(e.event, e.data) for e in events] == [("e", "a\nb\nc")]
    _, events = feed_all(b"data: a\r\rdata: b\r\n\r\n")
    assert [e.data for e in events] == ["a", "b"]


def test_decoder_dispatches_a_cr_terminated_event_at_once() -> None:
    # "\r\r" is a complete event: a line ending and a blank line. A CR ends
    # a line when it arrives; waiting for a possible LF must not hold the
    # event back (a browser dispatches it at once, and at the end of the
    # stream it must not be lost).
    decoder = EventDecoder()
    assert [e.data for e in decoder.feed(b"data: x\r\r")] == ["x"]
    assert [e.data for e in parse_ours([b"data: x\r\r"])] == ["x"]


def test_decoder_keeps_utf8_split_across_feeds() -> None:
    frame = "data: é😀\n\n".encode()
    _, events = feed_all(*(frame[i : i + 1] for i in range(len(frame))))
    assert [e.data for e in events] == ["é😀"]


def test_decoder_replaces_invalid_utf8() -> None:
    _, events = feed_all(b"data: a\xffb\n\n")
    assert [e.data for e in events] == ["a\ufffdb"]


def test_decoder_survives_nul_in_event_name() -> None:
    # The event type buffer takes any value (only ``id`` refuses NUL); a
    # well-formed server stream must not crash the parser.
    decoder = EventDecoder()
    events = decoder.feed(b"event: a\x00b\ndata: x\n\ndata: y\n\n")
    assert [e.data for e in events] == ["x", "y"]


def test_decoded_event_reencodes_to_the_same_frame() -> None:
    original = Event("a\nb", event="e", id="9", retry=5)
    (decoded,) = parse_ours([original.encode()])
    assert decoded == original
    assert decoded.encode() == original.encode()


# -- the cases SSEFlushSource's parser is tested with too ---------------------

SHARED_CASES = json.loads((Path(__file__).with_name("sse_cases.json")).read_text())["cases"]


@pytest.mark.parametrize("case", SHARED_CASES, ids=[c["name"] for c in SHARED_CASES])
@pytest.mark.parametrize("split", ["as given", "byte by byte"])
def test_decoder_agrees_with_the_shared_cases(case: dict[str, Any], split: str) -> None:
    chunks = (
        [bytes.fromhex(h) for h in case["hex"]]
        if "hex" in case
        else [c.encode("utf-8", "surrogatepass") for c in case["chunks"]]
    )
    if split == "byte by byte":
        chunks = [bytes([b]) for b in b"".join(chunks)]
    decoder, events = feed_all(*chunks)
    assert [[e.event or "message", e.data, e.id] for e in events] == case["events"]
    assert decoder.last_event_id == case["lastEventId"]
    assert decoder.retry == case["retry"]
