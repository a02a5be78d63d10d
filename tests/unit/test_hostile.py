"""Hostile input, without a server: the SSRF guard refuses every address that maps to an internal one
(defect 9 of the issue "Hostile input and faults"; the others are in tests/live/test_hostile.py)."""

import ipaddress

from kleinserve.service.outbound import Outbound

# 9. the SSRF guard let internal IPv4 addresses through written as IPv6, and some non-global ranges ------


def test_every_address_that_maps_to_an_internal_one_is_refused():
    outbound = Outbound((), max_bytes=1, timeout_s=1)
    refused = ["::7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::", "::ffff:0:7f00:1", "::ffff:127.0.0.1",
               "192.0.0.8", "192.88.99.1", "2002:c0a8:101::1", "64:ff9b::a00:1", "64:ff9b:1::1", "fe80::1",
               "fc00::1", "::1", "::", "0.0.0.0", "100.64.0.1", "169.254.169.254", "198.18.0.1"]  # fmt: skip
    allowed = ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
    assert [a for a in refused if outbound.permits(ipaddress.ip_address(a))] == []
    assert all(outbound.permits(ipaddress.ip_address(a)) for a in allowed)
