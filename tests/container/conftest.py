"""The image, built once per run by container/build.sh (cached layers: about 2 min when nothing changed)."""

import pytest

from support.containers import build_image, new_volume, podman_missing, remove_volume


@pytest.fixture(scope="session")
def image() -> str:
    if why := podman_missing():
        pytest.skip(why)
    name, seconds = build_image()
    print(f"\nimage {name} built (or found cached) in {seconds:.0f} s")
    return name


@pytest.fixture
def volume():
    """A fresh named podman volume for /data, removed after the test."""
    name = new_volume()
    yield name
    remove_volume(name)
