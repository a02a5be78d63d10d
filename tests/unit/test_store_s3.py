"""The S3 image store's flag values are checked, and a bad one names the flag (no S3 server needed)."""

import pytest

from kleinserve.cli import main
from kleinserve.settings import Settings
from kleinserve.storage.s3 import S3Location

from support.s3_server import bucket, s3, s3_endpoint, s3_env  # noqa: F401 (fixtures)

# The store alone ------------------------------------------------------------------------------------------


def test_store_values_are_checked_and_a_bad_one_names_the_flag(tmp_path, capsys):
    assert S3Location.parse("s3://my-images/kleinserve/") == S3Location("my-images", "kleinserve")
    assert S3Location.parse("s3://my-images") == S3Location("my-images", "")
    assert Settings(store="s3://my-images/a/b").store == "s3://my-images/a/b"
    for bad in ("gs://my-images/x", "s3://No_Such/x", "s3://ab", "/var/images", "s3://my-images/a//b"):
        with pytest.raises(ValueError, match=r"s3://BUCKET/PREFIX"):
            Settings(store=bad)
    assert main(["serve", "--demo", "--data-dir", str(tmp_path), "--store", "gs://my-images"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --store:") and "s3://BUCKET/PREFIX" in error
    with pytest.raises(ValueError, match="http"):
        Settings(store="s3://my-images", store_public_url="images.example.com")
