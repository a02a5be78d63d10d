"""Where images are stored, as `--store` names it: "local", or an S3 bucket and prefix (s3://BUCKET/PREFIX).

A domain value: settings check it at parse time, storage/s3.py opens what it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "s3://"
# S3's rules for bucket names: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with
# a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
STORE_FORMS = "local, or s3://BUCKET/PREFIX (e.g. s3://my-images/kleinserve; the prefix may be left out)"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading or trailing slashes; may be empty

    @classmethod
    def parse(cls, value: str) -> S3Location:
        """ValueError naming the accepted forms unless `value` is s3://BUCKET[/PREFIX]."""
        if not value.startswith(SCHEME):
            raise ValueError(f"not a store: {value!r}; use {STORE_FORMS}")
        bucket, _, prefix = value[len(SCHEME) :].partition("/")
        if not _BUCKET.match(bucket):
            raise ValueError(
                f"{bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, dots and hyphens); "
                f"use {STORE_FORMS}"
            )
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise ValueError(f"the prefix {prefix!r} has an empty part; use {STORE_FORMS}")
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"
