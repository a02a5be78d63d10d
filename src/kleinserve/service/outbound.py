"""Outbound HTTP the server makes on a user's behalf: downloading image_urls and delivering webhooks.

A user-supplied URL is a server-side request forgery vector, so every request (and every redirect hop)
resolves the host first and refuses loopback, private, link-local and other non-public addresses unless
the operator allowed that network. The connection then goes to the address that was checked (the host
name still drives the Host header and TLS verification), so DNS cannot swap in another address later.
Downloads are bounded in time and size and must be images.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from urllib.parse import unquote_to_bytes

import httpx
from PIL import Image

from kleinserve.errors import InvalidRequest
from kleinserve.imaging import decode_image

MAX_REDIRECTS = 3
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_networks(cidrs: tuple[str, ...] | list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise InvalidRequest(
                "--allow-private-network",
                f"{cidr!r} is not a network; write it like 10.1.0.0/16 or 127.0.0.1",
            ) from None
    return networks


# Ranges Python's is_global lets through that are still not ordinary internet hosts: IETF protocol
# assignments (192.0.0.0/24), the deprecated 6to4 relay anycast, benchmarking, and reserved space.
NOT_PUBLIC = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4",
    "64:ff9b:1::/48", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
)]  # fmt: skip
SIIT = ipaddress.ip_network("::ffff:0:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address maps to or carries (mapped, SIIT, IPv4-compatible, NAT64, 6to4):
    an internal IPv4 address must not be reachable by writing it as IPv6."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in (SIIT, NAT64, IPV4_COMPATIBLE)) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast and not any(address in n for n in NOT_PUBLIC)


class Outbound:
    def __init__(
        self,
        allowed_networks: tuple[str, ...],
        *,
        max_bytes: int,
        timeout_s: float,
        decoder: Executor | None = None,
    ):
        self.allowed = check_networks(allowed_networks)
        self.decoder = decoder  # where images are decoded (None: asyncio's default threads)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    def permits(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed):
            return True
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return self.permits(embedded)
        return is_public(address)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # --- image_urls ------------------------------------------------------------------------------

    async def fetch_image(self, url: object, field: str) -> Image.Image:
        """An http(s) URL or a data URI -> a decoded image; InvalidRequest naming `field` otherwise."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidRequest(field, f"must be an http(s) URL or a data URI, got {url!r}")
        url = url.strip()
        if url[:5].lower() == "data:":
            data = self._data_uri_bytes(url, field)
        else:
            try:
                async with asyncio.timeout(self.timeout_s):
                    data = await self._download(url, field)
            except TimeoutError:
                raise InvalidRequest(
                    field, f"{_short(url)} did not send the image within {self.timeout_s:g} s"
                ) from None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, decode_image, data, _short(url), field)

    def _data_uri_bytes(self, uri: str, field: str) -> bytes:
        header, comma, payload = uri[5:].partition(",")
        if not comma:
            raise InvalidRequest(field, "is a data URI without a comma; write data:image/png;base64,<data>")
        media_type, *options = header.split(";")
        if media_type and not media_type.lower().startswith("image/"):
            raise InvalidRequest(field, f"is a data URI of {media_type}, not an image")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise InvalidRequest(field, f"is larger than the {self.max_bytes // 2**20} MiB limit per image")
        try:
            if "base64" in (option.lower() for option in options):
                return base64.b64decode(payload, validate=True)
            return unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(field, f"is a data URI whose base64 payload is broken ({exc})") from None

    async def _download(self, url: str, field: str) -> bytes:
        return await self.download(url, field, max_bytes=self.max_bytes, limit=self._limit(), image=True)

    async def download(
        self, url: str, field: str, *, max_bytes: int, limit: str, image: bool = False
    ) -> bytes:
        """GET `url`'s body, read only up to `max_bytes` (`limit` says the rule when it is larger); with
        `image`, a declared content type other than an image's is refused before the body is read."""
        what = "image" if image else "file"
        async with self.request("GET", url, field) as response:
            if response.status_code != 200:
                raise InvalidRequest(
                    field, f"{_short(url)} answered HTTP {response.status_code}; it must serve the {what}"
                )
            if image:
                _check_image_type(response, url, field)
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise InvalidRequest(field, f"{_short(url)} is {declared / 2**20:.1f} MiB; {limit}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidRequest(field, f"{_short(url)} is larger than allowed; {limit}")
                chunks.append(chunk)
            return b"".join(chunks)

    def _limit(self) -> str:
        return f"images may be at most {self.max_bytes // 2**20} MiB"

    # --- any request -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, field: str, **kwargs) -> AsyncIterator[httpx.Response]:
        """`async with outbound.request(...) as response`: redirects followed, every hop checked."""
        response = await self._send(method, url, field, kwargs)
        try:
            yield response
        finally:
            await response.aclose()

    async def _send(self, method: str, url: str, field: str, kwargs: dict) -> httpx.Response:
        client = self._http()
        target = _parse_url(url, field)
        kwargs = dict(kwargs)
        headers = kwargs.pop("headers", None) or {}  # the caller's, sent on every hop beside Host
        for _ in range(MAX_REDIRECTS + 1):
            if target.scheme not in ("http", "https") or not target.host:
                raise InvalidRequest(field, f"{_short(str(target))} is not an http(s) URL")
            address = await self.checked_address(target.host, target.port, field)
            pinned = target.copy_with(host=str(address))
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            request = client.build_request(
                method,
                pinned,
                headers={**headers, "Host": target.netloc.decode("ascii")},
                extensions=extensions,
                **kwargs,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise InvalidRequest(
                    field, f"{_short(str(target))} could not be reached ({_reason(exc)})"
                ) from None
            if not response.is_redirect:
                return response
            await response.aclose()
            target = _redirect_target(target, response.headers.get("location", ""), field)
        raise InvalidRequest(field, f"{_short(url)} redirected more than {MAX_REDIRECTS} times")

    async def checked_address(self, host: str, port: int | None, field: str) -> IPAddress:
        """The address to connect to; refused unless every address the host resolves to is permitted."""
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port or 443, type=socket.SOCK_STREAM
                )
            except socket.gaierror:
                raise InvalidRequest(field, f"the host {host!r} does not resolve") from None
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        refused = [a for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise InvalidRequest(
                field,
                f"{_where(host, refused)} a loopback, private, link-local or otherwise internal address; "
                "the server does not connect to those (an operator can allow a network with "
                "--allow-private-network)",
            )
        return addresses[0]

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.timeout_s)
        return self._client


def _check_image_type(response: httpx.Response, url: str, field: str) -> None:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
        raise InvalidRequest(field, f"{_short(url)} is {content_type}, not an image")


def _parse_url(url: str, field: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InvalidRequest(field, f"{_short(url)!r} is not a valid URL") from None


def _redirect_target(current: httpx.URL, location: str, field: str) -> httpx.URL:
    if not location:
        raise InvalidRequest(field, f"{_short(str(current))} redirected without a Location header")
    try:
        return current.join(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InvalidRequest(field, f"{_short(str(current))} redirected to an invalid URL") from None


def _where(host: str, refused: list) -> str:
    if not refused:
        return f"{host} resolves to no address, not even"
    return f"{host} is" if host == str(refused[0]) else f"{host} resolves to {refused[0]},"


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:60] + "..." + url[-12:]


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
