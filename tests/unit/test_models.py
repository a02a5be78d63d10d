"""The registry: ids, aliases, defaults, and directories that are not klein checkpoints."""

import dataclasses
import json

import pytest

from kleinserve.errors import InvalidCheckpoint, UnknownModel
from kleinserve.models import REGISTRY, Variant, known_model_ids, resolve_model

CANONICAL = [
    "flux.2-klein-4b",
    "flux.2-klein-9b",
    "flux.2-klein-9b-kv",
    "flux.2-klein-base-4b",
    "flux.2-klein-base-9b",
]


def test_registry_holds_every_variant():
    assert known_model_ids() == CANONICAL
    variants = {spec.id: spec.variant for spec in REGISTRY}
    assert variants["flux.2-klein-9b-kv"] is Variant.KV
    assert variants["flux.2-klein-base-4b"] is Variant.BASE
    assert variants["flux.2-klein-4b"] is Variant.DISTILLED


@pytest.mark.parametrize(
    "alias,expected",
    [
        ("flux-2-klein-9b", "flux.2-klein-9b"),
        ("black-forest-labs/flux-2-klein-9b", "flux.2-klein-9b"),
        ("black-forest-labs/FLUX.2-klein-9B", "flux.2-klein-9b"),
        ("bfl/flux-2-klein-9b", "flux.2-klein-9b"),
        ("fal-ai/flux-2/klein/9b", "flux.2-klein-9b"),
        ("fal-ai/flux-2/klein/4b/edit", "flux.2-klein-4b"),
        ("FLUX.2-KLEIN-4B", "flux.2-klein-4b"),
        ("black-forest-labs/FLUX.2-klein-base-4B", "flux.2-klein-base-4b"),
        ("fal-ai/flux-2/klein/9b/base", "flux.2-klein-base-9b"),
        ("fal-ai/flux-2/klein/base/9b/edit", "flux.2-klein-base-9b"),
        ("black-forest-labs/FLUX.2-klein-9b-kv", "flux.2-klein-9b-kv"),
        ("  flux-2-klein-9b-kv ", "flux.2-klein-9b-kv"),
    ],
)
def test_aliases_resolve_case_insensitively(alias, expected):
    assert resolve_model(alias).id == expected


def test_defaults_follow_the_variant():
    distilled, base = resolve_model("flux.2-klein-4b"), resolve_model("flux.2-klein-base-9b")
    assert (distilled.default_steps, distilled.min_steps, distilled.max_steps) == (4, 4, 8)
    assert distilled.default_guidance == 1.0 and not distilled.uses_cfg
    assert (base.default_steps, base.default_guidance, base.uses_cfg) == (50, 4.0, True)
    assert base.default_negative_prompt == ""
    for spec in REGISTRY:
        assert spec.max_reference_images == 4
        assert (spec.size_multiple, spec.min_side, spec.max_side) == (16, 64, 2048)
        assert spec.hf_repo.startswith("black-forest-labs/FLUX.2-klein-")


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY[0].default_steps = 8


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModel) as error:
        resolve_model("flux-3-giant")
    for model_id in CANONICAL:
        assert model_id in str(error.value)


def test_directories_that_are_not_klein_checkpoints_are_refused(tmp_path):
    with pytest.raises(InvalidCheckpoint, match=r"model_index\.json is missing"):
        resolve_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(InvalidCheckpoint, match="StableDiffusionPipeline"):
        resolve_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(InvalidCheckpoint, match="not readable JSON"):
        resolve_model(str(tmp_path))
