"""Per-request LoRA against diffusers' pipeline with load_lora_weights + set_adapters, on the tiny checkpoint,
with LoRA files made here in the naming conventions diffusers' Flux2 loader reads; and mixed LoRA sets in one
batch, each image equal to the one made alone."""

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline

from kleinserve.errors import InvalidLora
from kleinserve.models import Variant
from kleinserve.request import build_request

from support.images import cpu_generator, random_image
from support.lora_files import (
    linear_shapes,
    write_bfl_lora,
    write_kohya_lora,
    write_misfit_lora,
    write_peft_lora,
)

TOLERANCE = 2 / 255  # the bound; measured: ~2e-6 in float32
WRITERS = {
    "peft": lambda path, shapes: write_peft_lora(path, shapes, seed=1),
    "peft_alpha": lambda path, shapes: write_peft_lora(path, shapes, seed=2, rank=8, alpha=4.0),
    "bfl": lambda path, shapes: write_bfl_lora(path, shapes, seed=3),
    "kohya": lambda path, shapes: write_kohya_lora(path, shapes, seed=4, strength=0.8),
}


@pytest.fixture(scope="module")
def lora_files(checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    shapes = linear_shapes(checkpoints[Variant.DISTILLED])
    return {name: write(folder / f"{name}.safetensors", shapes) for name, write in WRITERS.items()}


@pytest.fixture(scope="module")
def pipelines(checkpoints):
    def load(variant):
        pipe = Flux2KleinPipeline.from_pretrained(checkpoints[variant], dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return {variant: load(variant) for variant in (Variant.DISTILLED, Variant.BASE)}


def diffusers_image(pipe, request, files, scales) -> np.ndarray:
    names = [f"adapter_{i}" for i in range(len(files))]
    for name, path in zip(names, files, strict=True):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    pipe.set_adapters(names, scales)
    kwargs = dict(
        prompt=request.prompt,
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=cpu_generator(request.seed),
        output_type="np",
    )
    if request.images:
        kwargs["image"] = list(request.images)
    try:
        return pipe(**kwargs).images[0]
    finally:
        pipe.unload_lora_weights()


def ours(engine, request) -> np.ndarray:
    return engine.generate([request], output="float")[0].images[0]


def lora_request(spec, files, scales, **fields):
    loras = [{"path": str(path), "scale": scale} for path, scale in zip(files, scales, strict=True)]
    fields = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 5, **fields}
    return build_request(spec, loras=loras, **fields)


CASES = {
    "distilled, one PEFT LoRA at 0.5": (Variant.DISTILLED, ["peft"], [0.5], {}),
    "distilled, one BFL-named LoRA at 1.5": (Variant.DISTILLED, ["bfl"], [1.5], {}),
    "distilled, three (PEFT with alpha metadata, kohya, BFL)": (
        Variant.DISTILLED, ["peft_alpha", "kohya", "bfl"], [0.5, 1.5, 1.0], {},
    ),
    "base (CFG), one kohya LoRA at 1.5": (Variant.BASE, ["kohya"], [1.5], {"steps": 4}),
    "base (CFG), three at 0.5/1.5/1.0": (
        Variant.BASE, ["peft", "bfl", "kohya"], [0.5, 1.5, 1.0], {"steps": 3},
    ),
    "distilled edit with a reference, three": (
        Variant.DISTILLED, ["peft", "kohya", "peft_alpha"], [1.5, 0.5, 1.0],
        {"images": [random_image(96, 80, seed=3)], "width": None, "height": None},
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant,names,scales,fields", CASES.values(), ids=CASES.keys())
def test_lora_images_match_diffusers(engines, pipelines, lora_files, variant, names, scales, fields):
    engine, files = engines[variant], [lora_files[name] for name in names]
    request = lora_request(engine.spec, files, scales, **fields)
    actual = ours(engine, request)
    expected = diffusers_image(pipelines[variant], request, files, scales)
    assert expected.std() > 0.05
    without = ours(engine, build_request(engine.spec, **{**_fields(request), "loras": []}))
    assert (
        np.abs(actual - without).max() > 0.05
    )  # the LoRA changes the picture, so the parity means something
    assert np.abs(actual - expected).max() <= TOLERANCE


def _fields(request) -> dict:
    return dict(
        prompt=request.prompt, width=request.width, height=request.height, steps=request.steps,
        seed=request.seed, images=request.images, guidance=request.guidance,
    )  # fmt: skip


def test_a_batch_mixing_lora_sets_gives_each_image_its_own(engine, spec, lora_files):
    a, b = lora_files["peft"], lora_files["bfl"]
    sets = [([], []), ([a], [1.0]), ([b], [0.5]), ([a, b], [1.5, 0.25])]
    requests = [lora_request(spec, files, scales) for files, scales in sets]
    together = engine.generate(requests, output="float")
    assert [result.batch_images for result in together] == [4] * 4  # one batch
    alone = [ours(engine, request) for request in requests]
    for mixed, single in zip(together, alone, strict=True):
        assert np.abs(mixed.images[0] - single).max() <= 1e-5
    differences = [np.abs(alone[0] - image).max() for image in alone[1:]]
    assert min(differences) > 0.05
    assert "lora" in together[0].timings


def test_a_lora_leaves_the_model_unchanged(engine, spec, lora_files):
    plain = build_request(spec, prompt="a lighthouse", width=64, height=64, seed=5)
    before = ours(engine, plain)
    ours(engine, lora_request(spec, [lora_files["peft"]], [4.0]))
    assert np.array_equal(before, ours(engine, plain))


def test_parsed_adapters_are_cached(engine, lora_files):
    engine.load_lora(str(lora_files["kohya"]))
    hits = engine.lora_cache.stats.hits
    engine.load_lora(str(lora_files["kohya"]))
    assert engine.lora_cache.stats.hits == hits + 1
    assert engine.lora_cache.stats.bytes > 0


def test_a_lora_shaped_for_another_model_names_what_does_not_fit(engine, checkpoints, tmp_path):
    path = write_misfit_lora(tmp_path / "wide.safetensors", linear_shapes(checkpoints[Variant.DISTILLED]))
    with pytest.raises(InvalidLora, match=r"wide.safetensors does not fit this model: 4 of another shape"):
        engine.load_lora(str(path))


def test_a_lora_for_another_architecture_is_refused(engine, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
        },
        str(path),
    )
    with pytest.raises(InvalidLora, match="no LoRA tensors"):
        engine.load_lora(str(path))
    unet = tmp_path / "unet.safetensors"
    module = "transformer.down_blocks.0.proj_in"
    save_file(
        {f"{module}.lora_A.weight": torch.zeros(4, 320), f"{module}.lora_B.weight": torch.zeros(320, 4)},
        str(unet),
    )
    with pytest.raises(InvalidLora, match="1 modules the model lacks"):
        engine.load_lora(str(unet))


def test_pickles_and_other_files_are_refused_without_unpickling(engine, tmp_path):
    class Trap:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    pickle_file = tmp_path / "trap.safetensors"
    torch.save({"x": Trap()}, pickle_file)
    with pytest.raises(InvalidLora, match="not a safetensors file"):
        engine.load_lora(str(pickle_file))
    png = tmp_path / "picture.safetensors"
    random_image(64, 64).save(png, format="PNG")
    with pytest.raises(InvalidLora, match="not a safetensors file"):
        engine.load_lora(str(png))
