"""URIs, name-addr and Via values (RFC 3261 sections 19.1, 20.10, 20.42, 25.1)."""

import time

import pytest

from sip.errors import ParseError
from sip.uri import (
    NameAddr,
    Uri,
    Via,
    is_contact_list,
    is_name_addr,
    is_name_addr_list,
    is_request_uri,
    is_via_list,
    parse_params,
    split_top_level,
    unescape,
)

# (text, parsed, canonical text); one table drives parse and str().
URI_CASES = [
    (
        "sip:34020000001320000001@3402000000",
        Uri("sip", "34020000001320000001", "3402000000"),
        "sip:34020000001320000001@3402000000",
    ),
    (
        "sip:34020000001320000001@192.168.1.64:5060;transport=udp",
        Uri("sip", "34020000001320000001", "192.168.1.64", 5060, {"transport": "udp"}),
        "sip:34020000001320000001@192.168.1.64:5060;transport=udp",
    ),
    (
        "SIPS:alice:secret@[2001:db8::1]:65535;LR",
        Uri("sips", "alice", "[2001:db8::1]", 65535, {"lr": None}, password="secret"),
        "sips:alice:secret@[2001:db8::1]:65535;lr",
    ),
    (
        "sip:user;par=u%40example.net@example.com",
        Uri("sip", "user;par=u%40example.net", "example.com"),
        "sip:user;par=u%40example.net@example.com",
    ),
    (
        "sip:user@example.com?Route=%3Csip:example.com%3E",
        Uri("sip", "user", "example.com", headers="Route=%3Csip:example.com%3E"),
        "sip:user@example.com?Route=%3Csip:example.com%3E",
    ),
    ("sip:example.com", Uri("sip", None, "example.com"), "sip:example.com"),
    ("tel:+86-10-1234", Uri("tel", None, "+86-10-1234"), "tel:+86-10-1234"),
    (
        "soap.beep://192.0.2.103:3002",
        Uri("soap.beep", None, "//192.0.2.103:3002"),
        "soap.beep://192.0.2.103:3002",
    ),
]


@pytest.mark.parametrize(("text", "uri", "canonical"), URI_CASES, ids=[c[0] for c in URI_CASES])
def test_uri_parse_and_str(text: str, uri: Uri, canonical: str) -> None:
    assert Uri.parse(text) == uri
    assert str(uri) == canonical
    assert Uri.parse(canonical) == uri


def test_uri_hostport() -> None:
    assert Uri.parse("sip:a@h:5060").hostport == "h:5060"
    assert Uri.parse("sip:a@h").hostport == "h"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:user@host:65536",
        "sip:user@host:port",
        "sip:user@host:",
        "sip:a@b@c",
        "sip:user@ho st",
        "sip:user@host;;lr",
        "sip:user@host;=x",
        "sip:[::1",
        "nocolon",
        ":opaque",
        "sip:user@host>",
        "sip:user@\u00b2\u00b2",
    ],
)
def test_uri_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        Uri.parse(text)


def test_uri_keeps_escapes_and_unescape_decodes_once() -> None:
    uri = Uri.parse("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.user == "cal%6Cer"
    assert unescape(uri.user) == "caller"
    assert uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert unescape("v%61lue%25%34%31") == "value%41"


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("null-%00-null", "null-\x00-null"),
        ("%Z%45", "%ZE"),
        ("100%", "100%"),
        ("sips%3Auser%40example.com", "sips:user@example.com"),
        ("%E9%A2%84", "\u9884"),
        ("%B6", "\udcb6"),
        ("plain", "plain"),
    ],
)
def test_unescape(text: str, plain: str) -> None:
    assert unescape(text) == plain


NAME_ADDR_CASES = [
    (
        "<sip:34020000001320000001@3402000000>;tag=287801969",
        NameAddr(Uri("sip", "34020000001320000001", "3402000000"), None, {"tag": "287801969"}),
    ),
    (
        '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8',
        NameAddr(Uri("sip", "jdrosen", "example.com"), '"J Rosenberg \\\\\\""', {"tag": "98asjd8"}),
    ),
    (
        "caller<sip:caller@example.com>;tag=323",
        NameAddr(Uri("sip", "caller", "example.com"), "caller", {"tag": "323"}),
    ),
    (
        "sip:watson@example.com ;   tag    = 1918181833n",
        NameAddr(Uri("sip", "watson", "example.com"), None, {"tag": "1918181833n"}),
    ),
    (
        "sip:+19725552222@gw1.example.net;unknownparam",
        NameAddr(Uri("sip", "+19725552222", "gw1.example.net"), None, {"unknownparam": None}),
    ),
    (
        "<sip:+19725552222@gw1.example.net;unknownparam>",
        NameAddr(Uri("sip", "+19725552222", "gw1.example.net", None, {"unknownparam": None})),
    ),
    (
        'token1~` token2\'+_ <sip:mundane@example.com>;p="a;b,c"',
        NameAddr(Uri("sip", "mundane", "example.com"), "token1~` token2'+_", {"p": '"a;b,c"'}),
    ),
    ("isbn:2983792873", NameAddr(Uri("isbn", None, "2983792873"))),
    ("<name:John_Smith>", NameAddr(Uri("name", None, "John_Smith"))),
    (
        "\u5f20\u4e09 <sip:1@h>;tag=",
        NameAddr(Uri("sip", "1", "h"), "\u5f20\u4e09", {"tag": ""}),
    ),
    (
        '"\u6444\u50cf\u673a 1" <sip:1@h>',
        NameAddr(Uri("sip", "1", "h"), '"\u6444\u50cf\u673a 1"'),
    ),
]


@pytest.mark.parametrize(("text", "value"), NAME_ADDR_CASES, ids=range(len(NAME_ADDR_CASES)))
def test_name_addr_parse(text: str, value: NameAddr) -> None:
    assert is_name_addr(text)
    assert NameAddr.parse(text) == value


def test_name_addr_str_and_tag() -> None:
    value = NameAddr.parse('"Cam 1" <sip:1@h:5060>;tag=abc')
    assert value.tag == "abc"
    assert str(value) == '"Cam 1" <sip:1@h:5060>;tag=abc'
    assert NameAddr.parse(str(value)) == value


def test_wildcard_contact() -> None:
    value = NameAddr.parse("*")
    assert value.wildcard
    assert str(value) == "*"
    assert is_contact_list("*")


@pytest.mark.parametrize(
    "text",
    [
        '"Watson, Thomas" < sip:t.watson@example.org >',  # RFC 4475 3.1.2.14
        "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # 3.1.2.15
        '"Mr. J. User <sip:j.user@example.com>',  # 3.1.2.6
        '"Joe" <sip:joe@example.org>;;;;',  # 3.1.2.1
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # 3.1.2.13
        "sip:a@b, sip:c@d",
        "<sip:a@b",
        "<sip:a@b>>",
        "<>",
        "",
        "<sip:a@b>;=1",
        "<sip:a@b:99999>",
        "sip:a@b;tag=a b",
        '"unterminated \\"',
        "a <b>",
    ],
)
def test_name_addr_rejects(text: str) -> None:
    assert not is_name_addr(text)
    with pytest.raises(ParseError):
        NameAddr.parse(text)


def test_parameter_without_value() -> None:
    # generic-param = token [ EQUAL gen-value ]: a bare name is valid.
    assert NameAddr.parse("<sip:a@b>;x").params == {"x": None}


def test_contact_and_route_lists() -> None:
    assert is_contact_list('<sip:a@b>;expires=60, "Bell, A" <sip:c@d>, sip:e@f;q=0.5')
    assert not is_contact_list("<sip:a@b>,")
    assert not is_contact_list("*, <sip:a@b>")
    assert is_name_addr_list("<sip:p1@h;lr>, <sip:p2@h;lr>")
    assert not is_name_addr_list("sip:p1@h")


VIA_CASES = [
    (
        "SIP/2.0/UDP 192.168.0.64:5060;rport;branch=z9hG4bK927308490",
        Via("UDP", "192.168.0.64", 5060, {"rport": None, "branch": "z9hG4bK927308490"}),
    ),
    (
        "SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw",
        Via("UDP", "192.0.2.2", None, {"branch": "390skdjuw"}),
    ),
    (
        "SIP  /    2.0   / udp  192.168.255.111   ; branch= z9hG4bK30239",
        Via("UDP", "192.168.255.111", None, {"branch": "z9hG4bK30239"}),
    ),
    (
        "SIP/2.0/TCP [2001:db8::9]:5061;received=[2001:db8::9];branch=z9hG4bK-.!%66*_+`'~",
        Via(
            "TCP",
            "[2001:db8::9]",
            5061,
            {"received": "[2001:db8::9]", "branch": "z9hG4bK-.!%66*_+`'~"},
        ),
    ),
    ("SIP/2.0/UNKNOWN t4.example.com : 8", Via("UNKNOWN", "t4.example.com", 8)),
]


@pytest.mark.parametrize(("text", "via"), VIA_CASES, ids=range(len(VIA_CASES)))
def test_via_parse(text: str, via: Via) -> None:
    assert is_via_list(text)
    assert Via.parse(text) == via


def test_via_str_branch_protocol() -> None:
    via = Via.parse("SIP/2.0/UDP h:5060;branch=z9hG4bKx;rport=5060;received=1.2.3.4")
    assert via.branch == "z9hG4bKx"
    assert via.protocol == "SIP/2.0"
    assert str(via) == "SIP/2.0/UDP h:5060;branch=z9hG4bKx;rport=5060;received=1.2.3.4"
    assert Via.parse(str(via)) == via


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 192.0.2.15;;,;,,",  # RFC 4475 3.1.2.1
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:70000",
        "SIP/2.0/UDP host;branch=a b",
        "SIP/2.0/UDPhost",
        "SIP/2.0/UDP host,",
        "SIP/2.0/UDP ho st",
        "",
    ],
)
def test_via_rejects(text: str) -> None:
    assert not is_via_list(text)
    with pytest.raises(ParseError):
        Via.parse(text)


def test_via_list() -> None:
    text = "SIP/2.0/TCP a;branch=z9hG4bK1 , SIP/2.0/UDP b:5060"
    assert is_via_list(text)
    assert [Via.parse(v).host for v in split_top_level(text, ",")] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        ("sip:user@example.com", True),
        ("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1@example.com", True),
        ("nobodyKnowsThisScheme:totallyopaquecontent", True),
        ("<sip:user@example.com>", False),
        ("sip:user@example.com?Route=%3Csip:example.com%3E", False),
        ("sip:user@example.com;", False),
        ("sip:user@host:99999", False),
    ],
)
def test_request_uri(text: str, uri: bool) -> None:
    assert is_request_uri(text) is uri


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a, b,c", ["a", " b", "c"]),
        ('"x, y" <sip:a@b>, c', ['"x, y" <sip:a@b>', " c"]),
        ('"x \\", y", c', ['"x \\", y"', " c"]),
        ("<sip:a@b;x=1,2>, c", ["<sip:a@b;x=1,2>", " c"]),
        ('"unterminated, c', ['"unterminated, c']),
        ('"trailing backslash\\', ['"trailing backslash\\']),
        ("", [""]),
    ],
)
def test_split_top_level(text: str, parts: list[str]) -> None:
    assert split_top_level(text, ",") == parts


def test_split_top_level_other_separator() -> None:
    assert split_top_level('a|"b|c"|<d|e>', "|") == ["a", '"b|c"', "<d|e>"]


def test_parse_params() -> None:
    assert parse_params(';TAG=a ; lr;q = 0.5;x="a;b"') == {
        "tag": "a",
        "lr": None,
        "q": "0.5",
        "x": '"a;b"',
    }
    assert parse_params("") == {}
    assert parse_params(";;") == {}
    with pytest.raises(ParseError):
        parse_params(";=1")


@pytest.mark.parametrize(
    "text",
    [
        "a " * 30000,
        "a " * 30000 + "<",
        '"' + "a" * 60000,
        '"' + "\\" * 60000,
        "<" * 60000,
        "sip:" + "a@" * 30000,
        "<sip:a@b>" + ";a" * 30000 + " x",
        "<sip:a@b>," * 6000 + "x",
        "sip:a@b," * 7500 + "<",
        "SIP/2.0/UDP h;a=b, " * 3000 + "x",
        "SIP / 2.0 / UDP" + " " * 60000,
        ('"a" <sip:x@y>;t="q", ' * 2700) + '"',
        "sip:a@b:" + "1" * 60000,
        "<sip:[" + ":" * 60000 + ">",
    ],
    ids=range(14),
)
def test_pathological_values_are_linear(text: str) -> None:
    start = time.perf_counter()
    for check in (is_name_addr, is_contact_list, is_via_list, is_name_addr_list, is_request_uri):
        check(text)
    for parse in (NameAddr.parse, Via.parse, Uri.parse, parse_params):
        try:
            parse(text)
        except ParseError:
            pass
    split_top_level(text, ",")
    assert time.perf_counter() - start < 1.0
