"""The safety checker's classifier: the tiny one passes images at the default threshold and flags all at
0; one without an unsafe label is refused."""

import numpy as np
import pytest

from kleinserve.service.safety import ClassifierSafetyChecker, SafetyModelUnavailable, unsafe_label_ids


def test_the_tiny_classifier_passes_images_at_the_default_threshold_and_flags_all_at_zero(safety_classifier):
    images = [np.random.default_rng(i).integers(0, 256, (64, 48, 3), dtype=np.uint8) for i in range(3)]
    lenient = ClassifierSafetyChecker(safety_classifier, threshold=0.5, device="cpu")
    assert all(score < 0.5 for score in lenient.scores(images)) and lenient.flags(images) == [False] * 3
    assert ClassifierSafetyChecker(safety_classifier, threshold=0.0, device="cpu").flags(images) == [True] * 3


def test_a_classifier_without_an_unsafe_label_is_refused(safety_classifier, tmp_path):
    config = (safety_classifier / "config.json").read_text().replace('"nsfw"', '"cat"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(SafetyModelUnavailable, match=r"not an NSFW classifier.*cat"):
        unsafe_label_ids(tmp_path)
