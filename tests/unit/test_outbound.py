"""The outbound guard in-process: which addresses the server refuses to reach, and bounded downloads."""

import asyncio
import base64
import ipaddress

import pytest

from kleinserve.errors import InvalidRequest
from kleinserve.service.outbound import Outbound, check_networks


def outbound(*allowed: str) -> Outbound:
    return Outbound(allowed, max_bytes=2**20, timeout_s=1.5)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_internal_addresses_are_refused(address):
    assert not outbound().permits(ipaddress.ip_address(address))


def test_public_addresses_pass_and_an_operator_can_allow_a_network():
    guard = outbound("10.1.0.0/16", "127.0.0.1")
    assert guard.permits(ipaddress.ip_address("93.184.216.34"))
    assert guard.permits(ipaddress.ip_address("2606:2800:220:1::1"))
    assert guard.permits(ipaddress.ip_address("10.1.200.3")) and guard.permits(
        ipaddress.ip_address("127.0.0.1")
    )
    assert not guard.permits(ipaddress.ip_address("10.2.0.1")) and not guard.permits(
        ipaddress.ip_address("127.0.0.2")
    )


def test_a_bad_network_setting_names_the_flag():
    with pytest.raises(InvalidRequest, match=r"--allow-private-network.*10\.1\.0\.0/16"):
        check_networks(["not-a-network"])


def test_host_names_are_checked_by_what_they_resolve_to():
    with pytest.raises(InvalidRequest, match=r"localhost resolves to 127\.0\.0\.1"):
        asyncio.run(outbound().checked_address("localhost", 80, "image_urls[0]"))
    with pytest.raises(InvalidRequest, match="does not resolve"):
        asyncio.run(outbound().checked_address("no-such-host.invalid", 80, "image_urls[0]"))


def test_data_uris(tmp_path):
    from support.images import random_image

    image = random_image(32, 24)
    image.save(tmp_path / "a.png")
    payload = base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
    decoded = asyncio.run(outbound().fetch_image(f"data:image/png;base64,{payload}", "image_urls[0]"))
    assert decoded.size == (32, 24)
    too_big = "data:image/png;base64," + "A" * (2 * 2**20)
    with pytest.raises(InvalidRequest, match="1 MiB limit"):
        asyncio.run(outbound().fetch_image(too_big, "image_urls[0]"))
    with pytest.raises(InvalidRequest, match="without a comma"):
        asyncio.run(outbound().fetch_image("data:image/png;base64", "image_urls[0]"))


def test_downloads_from_an_allowed_host(image_host):
    guard = outbound("127.0.0.1")
    image = asyncio.run(guard.fetch_image(f"{image_host.url}/c.webp", "image_urls[2]"))
    assert image.size == image_host.SIZES["c.webp"]
    with pytest.raises(InvalidRequest, match=r"image_urls\[0\]: 127\.0\.0\.1 is a loopback"):
        asyncio.run(outbound().fetch_image(f"{image_host.url}/a.png", "image_urls[0]"))
