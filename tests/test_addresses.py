"""IP literals: one canonical text per address, and a public flag from fixed tables, the same on every Python."""

import ipaddress

import pytest

from login_pipeline.addresses import ClassifiedIp, classify_ip


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("1.2.3.4", "1.2.3.4"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # IPv4-mapped IPv6 is the IPv4 address it carries
        ("::FFFF:0102:0304", "1.2.3.4"),
        ("0:0:0:0:0:ffff:1.2.3.4", "1.2.3.4"),
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:0db8:0:0::1", "2001:db8::1"),
        ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
        ("FE80::ABCD", "fe80::abcd"),
        ("::", "::"),
        ("64:ff9b::8.8.8.8", "64:ff9b::808:808"),  # NAT64 stays IPv6: it is the address that was seen
    ],
)
def test_each_address_has_one_canonical_text(text, canonical):
    assert classify_ip(text).canonical == canonical


@pytest.mark.parametrize(
    "text, version, public",
    [
        # IPv4
        ("8.8.8.8", 4, True),
        ("9.255.255.255", 4, True),
        ("11.0.0.0", 4, True),
        ("108.228.145.239", 4, True),
        ("0.1.2.3", 4, False),
        ("10.0.0.7", 4, False),
        ("100.64.0.1", 4, False),
        ("100.127.255.255", 4, False),
        ("100.128.0.0", 4, True),
        ("127.0.0.1", 4, False),
        ("169.254.1.1", 4, False),
        ("172.16.0.1", 4, False),
        ("172.32.0.1", 4, True),
        ("192.0.0.9", 4, False),
        ("192.0.2.1", 4, False),
        ("192.168.1.1", 4, False),
        ("198.18.0.1", 4, False),
        ("198.51.100.1", 4, False),
        ("203.0.113.1", 4, False),
        ("224.0.0.1", 4, False),
        ("240.0.0.1", 4, False),
        ("255.255.255.255", 4, False),
        # IPv4-mapped: exactly as the IPv4 address (Python's own answer differs between versions)
        ("::ffff:8.8.8.8", 4, True),
        ("::ffff:224.0.0.1", 4, False),
        ("::ffff:10.0.0.1", 4, False),
        # NAT64 well-known prefix: as public as the embedded IPv4 address; the local-use prefix never
        ("64:ff9b::8.8.8.8", 6, True),
        ("64:ff9b::10.0.0.1", 6, False),
        ("64:ff9b:1::1", 6, False),
        # global unicast and its exceptions
        ("2001:4860:4860::8888", 6, True),
        ("2606:4700::1111", 6, True),
        ("2002::1", 6, True),
        ("2001::1", 6, False),  # Teredo, inside the IETF protocol assignments 2001::/23
        ("2001:2::1", 6, False),  # benchmarking
        ("2001:10::1", 6, False),  # ORCHID (deprecated)
        ("2001:1::1", 6, True),
        ("2001:1::2", 6, True),
        ("2001:1::4", 6, False),
        ("2001:3::1", 6, True),
        ("2001:4:112::1", 6, True),
        ("2001:4:113::1", 6, False),
        ("2001:20::1", 6, True),
        ("2001:2f::1", 6, True),
        ("2001:30::1", 6, True),
        ("2001:40::1", 6, False),
        ("2001:1ff:ffff::1", 6, False),
        ("2001:200::1", 6, True),  # just past 2001::/23
        ("2001:db8::1", 6, False),
        ("2001:db9::1", 6, True),  # documentation
        ("3fff::1", 6, False),
        ("3fff:fff::1", 6, False),
        ("3fff:1000::1", 6, True),  # documentation (RFC 9637)
        # outside 2000::/3
        ("::", 6, False),
        ("::1", 6, False),
        ("::1.2.3.4", 6, False),
        ("100::1", 6, False),
        ("5f00::1", 6, False),  # SRv6 SIDs
        ("fc00::1", 6, False),
        ("fd12:3456::1", 6, False),  # unique local
        ("fe80::1", 6, False),
        ("fec0::1", 6, False),
        ("ff02::1", 6, False),
        ("ff0e::1", 6, False),
        ("4000::1", 6, False),
        ("1fff:ffff::1", 6, False),
    ],
)
def test_version_and_public_come_from_the_fixed_tables(text, version, public):
    result = classify_ip(text)
    assert (result.version, result.is_public) == (version, public)


@pytest.mark.parametrize(
    "text",
    [
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3.4\x00",
        "256.1.1.1",
        "",
        "::1::",
        "1:2",
        "::g",
        "fe80::1%eth0",
        "fe80::1%1",
        "ff02::1%\x1b]0;owned\x07",
        "1.2.3.4/32",
        "2001:db8::/32",
        "１.２.３.４",
        "２００１:db8::1",
        "0x7f.1",
        "2130706433",
        "[::1]",
        "::ffff:1.2.3.04",
    ],
)
def test_what_is_not_a_plain_ip_literal_is_refused(text):
    assert classify_ip(text) is None


def test_the_result_is_a_typed_record():
    assert classify_ip("1.2.3.4") == ClassifiedIp("1.2.3.4", 4, True)


def test_the_first_byte_shortcut_answers_as_the_range_search_for_every_range_edge():
    from login_pipeline.addresses import _NON_PUBLIC_IPV4, _ipv4_is_public

    edges = {edge + step for start, end in _NON_PUBLIC_IPV4 for edge in (start, end) for step in (-1, 0, 1)}
    edges |= {first << 24 | low for first in range(256) for low in (0, 0xFFFFFF, 0x7F0000)}
    for number in sorted(n for n in edges if 0 <= n < 2**32):
        text = str(ipaddress.IPv4Address(number))
        assert classify_ip(text).is_public == _ipv4_is_public(number), text
