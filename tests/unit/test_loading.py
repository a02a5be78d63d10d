"""Loading without weights: a failed download and weights missing offline are clear errors saying where
and how."""

import pytest
from huggingface_hub import constants

from kleinserve.engine.loading import locate_checkpoint
from kleinserve.errors import WeightsNotFound
from kleinserve.models import resolve_model


def test_missing_weights_offline_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFound) as error:
        locate_checkpoint(resolve_model("flux.2-klein-9b"))
    message = str(error.value)
    assert str(tmp_path) in message and "black-forest-labs/FLUX.2-klein-9B" in message
    assert "hf download" in message and "HF_TOKEN" in message and "local checkpoint directory" in message


def test_a_failed_download_is_reported_not_raised_raw(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(WeightsNotFound, match="download failed"):
        locate_checkpoint(resolve_model("flux.2-klein-4b"))
