"""The registry on the tiny model's files: a local checkpoint directory declares its variant."""

import pytest

from kleinserve.models import Variant, resolve_model


@pytest.mark.parametrize("variant", list(Variant))
def test_a_local_checkpoint_directory_declares_its_variant(checkpoints, variant):
    spec = resolve_model(str(checkpoints[variant]))
    assert spec.variant is variant
    assert spec.local_path == checkpoints[variant].resolve() and spec.hf_repo is None
    assert spec.uses_cfg == (variant is Variant.BASE)
