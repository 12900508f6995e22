"""Differential tests: h11 and httptools behind the same server give the same answers.

Every request of forkserve's own corpus (requests.yaml), of the peer corpus
(../shared/conformance, when present) and of the property tests' strategies
goes through the whole request path in process (`InProcessClient`: the
pre-check, the parser seam, the body decoders, the environ, the response
writer) once per parser. The app answers with its whole environ, so equal
response bytes mean the same status, the same `Connection: close`, and
byte-identical environs; the connection's state afterwards shows the same
close. Hypothesis also generates valid heads of its own (methods, targets,
field names and values, repeated fields, Cookie, Host forms).

Where the parsers disagreed, `http.check_head` refuses the head before
either parser sees it (the stricter answer wins under both): see the cases
named in `test_where_they_disagreed_the_pre_check_decides`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkserve.errors import HTTPError
from forkserve.http import METHODS, Limits, check_head
from forkserve.inprocess import InProcessClient
from forkserve.parser import HeadParser, httptools_parser, parse_h11
from tests.conformance import test_peer_corpus, test_properties
from tests.conformance.test_corpus import CASES

httptools = pytest.importorskip("httptools", reason="the fast extra is not installed")
PARSE_HTTPTOOLS = httptools_parser()
PARSERS: dict[str, HeadParser] = {"h11": parse_h11, "httptools": PARSE_HTTPTOOLS}

DEFAULT_LIMITS = Limits()
# The limits of tests/conformance/test_corpus.py's server.
CORPUS_LIMITS = Limits(request_line=256, fields=20, field_size=256, head=2048, body=64)
EXAMPLES = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_DATE = re.compile(rb"\r\nDate: [^\r]*")


def environ_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with its whole environ (values that are not objects) and the body it read."""
    body = environ["wsgi.input"].read()
    shown = sorted((k, v) for k, v in environ.items()
                   if isinstance(v, str | bytes | int | bool | tuple))
    out = repr(shown).encode() + b"\nbody=" + repr(body).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(out)))])
    return [out]


def exchange(parser: str, data: bytes, limits: Limits, eof: bool = False) -> tuple[bytes, bool]:
    """What the server wrote (Date taken out) and whether it kept the connection open."""
    client = InProcessClient(environ_app, parse_head=PARSERS[parser], limits=limits)
    try:
        assert client.memory is not None
        client.memory.client_closed = eof
        out = client.request(data)
        if eof and client.open:
            out += client.request(b"")  # the read that sees the client's EOF
        return _DATE.sub(b"", out), client.open
    finally:
        client.close()


def same_answer(data: bytes, limits: Limits = DEFAULT_LIMITS, eof: bool = False) -> bytes:
    first = exchange("h11", data, limits, eof)
    second = exchange("httptools", data, limits, eof)
    assert first == second, data
    return first[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_own_corpus(case: Any) -> None:
    out = same_answer(case.request, CORPUS_LIMITS, case.eof)
    if case.status:
        assert out.startswith(b"HTTP/1.1 %d " % case.status), out[:100]


@pytest.mark.skipif(test_peer_corpus.MISSING, reason=test_peer_corpus.MISSING_REASON)
@pytest.mark.parametrize(("name", "data"), [c[:2] for c in test_peer_corpus.CASES],
                         ids=[c[0] for c in test_peer_corpus.CASES])
def test_peer_corpus(name: str, data: bytes) -> None:
    same_answer(data, eof=True)


@EXAMPLES
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    same_answer(data, eof=True)


@EXAMPLES
@given(test_properties.mutated())
def test_mutated_valid_requests(data: bytes) -> None:
    same_answer(data, eof=True)


@EXAMPLES
@given(test_properties.malformed())
def test_malformed(data: bytes) -> None:
    same_answer(data, eof=True)


# -- valid heads of our own ---------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# RFC 3986 pchar and the query's extra "/" and "?", percent signs included.
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"
VCHAR = bytes(range(0x21, 0x7F))
OBS_TEXT = bytes(range(0x80, 0x100))

tokens = st.text(TCHAR, min_size=1, max_size=12).map(str.encode)
segments = st.text(PCHAR + "/", max_size=20)
paths = st.builds(lambda s: "/" + s, segments)
queries = st.one_of(st.just(""), st.builds(lambda q: "?" + q, st.text(PCHAR + "/?", max_size=20)))
hosts = st.sampled_from([b"a", b"example.com", b"example.com:8080", b"127.0.0.1:80",
                         b"[::1]", b"[::1]:8000", b"xn--bcher-kva.example", b"", b"a.b.c:"])
fragments = st.one_of(st.just(""), st.builds(lambda f: "#" + f, st.text(PCHAR + "/?#", max_size=8)))
origin_targets = st.builds(lambda p, q: (p + q).encode(), paths, queries)
origin_targets_with_fragments = st.builds(lambda t, f: t + f.encode(), origin_targets, fragments)
absolute_targets = st.builds(lambda scheme, host, p: scheme + b"://" + host + p,
                             st.sampled_from([b"http", b"https", b"HTTP"]),
                             st.sampled_from([b"a", b"example.com:81", b"[::1]:8"]),
                             origin_targets)
value_byte = st.sampled_from(list(VCHAR) + [0x20, 0x09] + list(OBS_TEXT[:8]) + [0xFF])
values = st.lists(value_byte, max_size=24).map(bytes)
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
field_names = st.one_of(tokens, st.sampled_from(
    [b"Accept", b"accept", b"X-Forwarded-For", b"Cookie", b"cookie", b"User-Agent", b"X_Dash",
     b"Content-Type", b"Authorization", b"If-None-Match", b"Upgrade", b"Connection"]))
cookies = st.lists(st.builds(lambda k, v: k + b"=" + v, tokens, tokens), min_size=1,
                   max_size=4).map(lambda parts: b"; ".join(parts))


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(sorted(METHODS - {b"CONNECT"})))
    form = draw(st.sampled_from(["origin", "absolute", "asterisk"]))
    if form == "asterisk":
        method, target = b"OPTIONS", b"*"
    else:
        target = draw(origin_targets_with_fragments if form == "origin" else absolute_targets)
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    fields: list[bytes] = []
    if version == b"1.1" or draw(st.booleans()):
        fields.append(draw(st.sampled_from([b"Host", b"host", b"HOST"])) + b":" + draw(ows)
                      + draw(hosts) + draw(ows))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["field", "repeat", "cookie"]))
        if kind == "cookie":
            fields.append(b"Cookie:" + draw(ows) + draw(cookies) + draw(ows))
        elif kind == "repeat" and fields[1:]:
            name = draw(st.sampled_from(fields[1:])).split(b":")[0]
            fields.append(name + b":" + draw(ows) + draw(values) + draw(ows))
        else:
            fields.append(draw(field_names) + b":" + draw(ows) + draw(values) + draw(ows))
    fields = [f for f in fields if not f.lower().startswith((b"host:", b"host\t"))
              or f is fields[0] or version == b"1.0"]
    if draw(st.booleans()):
        fields.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))
    draw(st.randoms()).shuffle(fields)
    return b"%s %s HTTP/%s\r\n" % (method, target, version) + b"".join(
        f + b"\r\n" for f in fields) + b"\r\n"


@EXAMPLES
@given(valid_heads())
def test_valid_heads_give_the_same_environ(head: bytes) -> None:
    try:
        check_head(head, Limits())
    except HTTPError as exc:
        # Only what the generator cannot rule out cheaply: two Host fields
        # (a repeated Host) or a Content-Type given twice.
        assert exc.status == 400 and ("Host" in exc.detail or "Content-Type" in exc.detail), (
            head, exc.detail)
        return
    assert PARSE_HTTPTOOLS(head) == parse_h11(head)
    out = same_answer(head)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n"), out[:200]


@pytest.mark.parametrize(("head", "status"), [
    # llhttp knows a fixed list of methods; h11 takes any token. RFC 9110 §9.1:
    # an unrecognised method gets 501, under both.
    (b"-BLARGH / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    (b"PRI /x HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    # llhttp refuses a fragment straight after an absolute-form authority; h11
    # takes it. RFC 9112 §3.2.2: absolute-form has no fragment at all: 400.
    (b"GET http://a#f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET http://a/x?y#f HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
def test_where_they_disagreed_the_pre_check_decides(head: bytes, status: int) -> None:
    out = same_answer(head)
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:100]


def test_methods_are_what_llhttp_knows() -> None:
    """`http.METHODS` is exactly the set llhttp accepts (asked one by one)."""
    class Sink:
        def on_headers_complete(self) -> None:
            pass

    candidates = set(METHODS) | {b"PRI", b"DESCRIBE", b"SETUP", b"PLAY", b"RECORD", b"FOO",
                                 b"VERSION-CONTROL", b"get", b"Get", b"-BLARGH"}
    accepted = set()
    for method in candidates:
        parser = httptools.HttpRequestParser(Sink())
        try:
            parser.feed_data(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            continue
        accepted.add(method)
    assert accepted == METHODS


def test_the_adapter_keeps_nothing_from_one_head_to_the_next() -> None:
    """One callbacks object serves every head of a worker: a refused head, a head
    with more fields, and an earlier result must not leak into the next."""
    first = PARSE_HTTPTOOLS(b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\nY: 2\r\n\r\n")
    with pytest.raises(HTTPError):
        PARSE_HTTPTOOLS(b"GET /b HTTP/1.1\r\nHost: b\r\nBad Name: 3\r\n\r\n")
    second = PARSE_HTTPTOOLS(b"POST /c HTTP/1.0\r\nZ: 4\r\n\r\n")
    assert second == parse_h11(b"POST /c HTTP/1.0\r\nZ: 4\r\n\r\n")
    assert second.headers == [(b"Z", b"4")] and second.target == b"/c"
    assert first.headers == [(b"Host", b"a"), (b"X", b"1"), (b"Y", b"2")]
