"""Images in an S3 bucket (`--store s3://BUCKET/PREFIX`), for API servers and workers on several machines.

Configuration is boto3's own, from the standard AWS variables: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(or AWS_PROFILE), AWS_REGION / AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for S3-compatible stores (MinIO,
Cloudflare R2, ...). The server checks the bucket at start (head_bucket) and does not start without it.

Object keys are PREFIX/{folder}/{index}.{ext}, the same storage keys as local files under a prefix.

URLs handed to clients:
- presigned GET URLs (the default), valid for `--presign-expiry-s` (3600 s; S3 caps it at 7 days, and at
  the lifetime of temporary credentials). The bucket stays private. They point at the S3 endpoint, which
  the clients must be able to reach.
- with `--store-public-url URL`, plain URLs URL/PREFIX/{folder}/{index}.{ext} for a public bucket or a CDN
  in front of it: nothing expires but the objects themselves (retention).
`--public-base-url` stays what it is, the server's own address; it does not shape S3 URLs. GET /files/{key}
on any API server answers 307 to a freshly made URL for the object (404 when it is gone), so a /files link
keeps working whichever store wrote it and however old its presigned URL is.

An S3 PUT is atomic (a reader sees the whole object or none), so nothing is ever half-written and
remove_partial_files has nothing to do. Every method blocks on the network: callers run them on worker
threads (asyncio.to_thread), as they do for the local store.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from kleinserve.errors import InvalidRequest, StoreUnavailable
from kleinserve.storage.store import CACHE_FOREVER, LocalFile, content_type_of, image_key, is_valid_key
from kleinserve.store_location import S3Location

log = logging.getLogger("kleinserve")

MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}  # error codes S3 answers for what is not there


class S3Store:
    """The `Store` of storage/store.py on an S3 bucket; `client` is a boto3 S3 client (made from the
    environment when left out)."""

    def __init__(
        self, location: S3Location, presign_expiry_s: int, public_url: str | None = None, client=None
    ):
        self.location = location
        self.presign_expiry_s = presign_expiry_s
        self.public_url = public_url.rstrip("/") if public_url else None
        self.client = client if client is not None else _client()

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def check(self) -> None:
        """StoreUnavailable naming the bucket and the endpoint unless the bucket can be reached."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except NoCredentialsError:
            reason = "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            reason = {
                "404": "the bucket does not exist",
                "403": "access denied (check the AWS credentials and the bucket's policy)",
            }.get(code, str(exc))
        except BotoCoreError as exc:  # e.g. the endpoint cannot be reached
            reason = str(exc)
        else:
            return
        raise StoreUnavailable(
            f"--store {self.location}: cannot use bucket '{self.location.bucket}' at {self.endpoint}: "
            f"{reason}; the endpoint and credentials come from AWS_ENDPOINT_URL, AWS_REGION, "
            f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )

    def put(self, key: str, data: bytes) -> None:
        """StoreUnavailable when the endpoint cannot be reached or answers with a server error (the
        caller may retry); other refusals (access denied, no such bucket) raise as boto3 raises them."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.location.bucket,
                Key=self.object_key(key),
                Body=data,
                ContentType=content_type_of(key),
                CacheControl=CACHE_FOREVER,
            )
        except (BotoCoreError, ClientError) as exc:  # refused, timed out, or the server's own error
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
            if status < 500:
                raise
            where = f"{self.location} at {self.endpoint}"
            raise StoreUnavailable(f"cannot store {key} in {where}: {exc}") from exc

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        if not is_valid_key(key):
            return None
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in MISSING:
                return None
            raise
        return answer["Body"].read()

    def url(self, key: str, base_url: str) -> str:
        """A URL a client can GET the image from; `base_url` (the server's own) plays no part."""
        if self.public_url:
            return f"{self.public_url}/{quote(self.object_key(key))}"
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.location.bucket, "Key": self.object_key(key)},
            ExpiresIn=self.presign_expiry_s,
        )

    def local_file(self, key: str) -> LocalFile | None:
        return None

    def redirect_url(self, key: str) -> str | None:
        """Where GET /files/{key} sends its client: a fresh URL for the object, or None if it is not there."""
        from botocore.exceptions import ClientError

        if not is_valid_key(key):
            return None
        try:
            self.client.head_object(Bucket=self.location.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in MISSING:
                return None
            raise
        return self.url(key, "")

    def delete_folder(self, folder: str) -> None:
        if not is_valid_key(image_key(folder, 0, "png")):
            return
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.object_key(folder) + "/"
        )
        for page in pages:
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:  # at most 1000 a page, as many as delete_objects takes
                self.client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": objects, "Quiet": True}
                )

    def remove_partial_files(self) -> int:
        return 0  # an S3 PUT leaves no partial object behind

    def object_key(self, key: str) -> str:
        return f"{self.location.prefix}/{key}" if self.location.prefix else key


def open_s3_store(store: str, presign_expiry_s: int, public_url: str | None) -> S3Store:
    """The S3 store `--store` names, checked: StoreUnavailable if its bucket cannot be reached."""
    s3 = S3Store(S3Location.parse(store), presign_expiry_s, public_url)
    s3.check()
    log.info(
        "images stored in %s at %s; URLs %s",
        s3.location,
        s3.endpoint,
        f"under {s3.public_url}" if s3.public_url else f"presigned for {presign_expiry_s} s",
    )
    return s3


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise InvalidRequest("--store", "an S3 store needs boto3: pip install 'kleinserve[scale]'") from exc
    # SigV4 everywhere (required for presigned URLs outside us-east-1); a connection per worker thread.
    return boto3.client("s3", config=Config(signature_version="s3v4", max_pool_connections=32))
