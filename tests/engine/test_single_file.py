"""BFL single-file transformers (bf16 and fp8) load to the same model as the diffusers tree.

The files are written here in the layout of the official ones: BFL's key names (its flux2 repo's module
names: `double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `final_layer.adaLN_modulation.1`, norms as
`.scale`), bf16; for fp8, block linears as float8_e4m3fn with a float32 `.weight_scale` and `.input_scale`.
They are made from the tiny diffusers transformer by `bfl_state_dict`, the inverse of diffusers' conversion
(checked against it below).
"""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from diffusers import Flux2Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
from huggingface_hub import constants
from safetensors.torch import save_file

from kleinserve.engine import Engine
from kleinserve.engine.single_file import COMFY_PREFIX, check_single_file, diffusers_state_dict
from kleinserve.errors import InvalidCheckpoint, UnknownModel
from kleinserve.models import Variant, resolve_model, with_local_path
from kleinserve.request import build_request
from kleinserve.service.engine_startup import check_weights
from kleinserve.service.served_models import served_specs
from kleinserve.settings import Settings

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
RENAMES = {  # diffusers -> BFL, outside the blocks
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
}
DOUBLE = {  # within transformer_blocks.N -> double_blocks.N
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0.weight": "img_attn.proj.weight",
    "attn.to_add_out.weight": "txt_attn.proj.weight",
    "ff.linear_in.weight": "img_mlp.0.weight",
    "ff.linear_out.weight": "img_mlp.2.weight",
    "ff_context.linear_in.weight": "txt_mlp.0.weight",
    "ff_context.linear_out.weight": "txt_mlp.2.weight",
}
SINGLE = {  # within single_transformer_blocks.N -> single_blocks.N
    "attn.to_qkv_mlp_proj.weight": "linear1.weight",
    "attn.to_out.weight": "linear2.weight",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}
QKV = {
    "img_attn.qkv.weight": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv.weight": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
QUANTIZED = ("qkv.weight", "proj.weight", "mlp.0.weight", "mlp.2.weight", "linear1.weight", "linear2.weight")


def bfl_state_dict(diffusers: dict) -> dict:
    """BFL's names for a diffusers Flux2Transformer2DModel state dict: fused qkv, (shift, scale) last norm."""
    out = {}
    for key, value in diffusers.items():
        if key.startswith("transformer_blocks."):
            _, n, rest = key.split(".", 2)
            if rest in DOUBLE:
                out[f"double_blocks.{n}.{DOUBLE[rest]}"] = value
        elif key.startswith("single_transformer_blocks."):
            _, n, rest = key.split(".", 2)
            out[f"single_blocks.{n}.{SINGLE[rest]}"] = value
        elif key == "norm_out.linear.weight":
            scale, shift = value.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale])
        else:
            module, param = key.rsplit(".", 1)
            out[f"{RENAMES[module]}.{param}"] = value
    blocks = {key.split(".")[1] for key in diffusers if key.startswith("transformer_blocks.")}
    for n in blocks:
        for fused, parts in QKV.items():
            out[f"double_blocks.{n}.{fused}"] = torch.cat(
                [diffusers[f"transformer_blocks.{n}.{part}.weight"] for part in parts]
            )
    return out


def fp8_state_dict(bfl: dict, per_row: bool) -> dict:
    """The fp8 file's tensors: block linears as float8_e4m3fn + float32 weight_scale / input_scale."""
    out = {}
    for key, value in bfl.items():
        if key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(QUANTIZED):
            amax = value.abs().amax(dim=1, keepdim=True) if per_row else value.abs().amax()
            scale = (amax.float() / FP8_MAX).clamp(min=1e-12)
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.replace(".weight", ".weight_scale")] = scale
            out[key.replace(".weight", ".input_scale")] = torch.tensor(0.02, dtype=torch.float32)
        else:
            out[key] = value.to(torch.bfloat16)
    return out


def transformer_state(checkpoint):
    return Flux2Transformer2DModel.from_pretrained(checkpoint / "transformer").state_dict()


@pytest.fixture(scope="module")
def bf16_tree(checkpoints, tmp_path_factory):
    """The tiny distilled tree with its transformer weights rounded to bf16, as the real files hold them."""
    tree = shutil.copytree(checkpoints[Variant.DISTILLED], tmp_path_factory.mktemp("trees") / "bf16")
    model = Flux2Transformer2DModel.from_pretrained(tree / "transformer", dtype=torch.bfloat16)
    model.save_pretrained(tree / "transformer")
    return tree


@pytest.fixture(scope="module")
def bfl_weights(bf16_tree):
    return {
        key: value.to(torch.bfloat16) for key, value in bfl_state_dict(transformer_state(bf16_tree)).items()
    }


@pytest.fixture(scope="module")
def single_file_tree(bf16_tree, bfl_weights, tmp_path_factory):
    """The official repo's layout, transformer/ holding only its config: flux-2-klein-4b.safetensors at
    the root."""
    tree = shutil.copytree(bf16_tree, tmp_path_factory.mktemp("trees") / "single")
    (tree / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    save_file(bfl_weights, tree / "flux-2-klein-4b.safetensors")
    return tree


@pytest.fixture(scope="module")
def tree_engine(bf16_tree):
    return Engine.load(resolve_model(str(bf16_tree)))


def test_bfl_names_invert_diffusers_conversion(bf16_tree, bfl_weights):
    assert {
        "img_in.weight",
        "time_in.in_layer.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.1.txt_attn.norm.key_norm.scale",
        "single_blocks.1.linear2.weight",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
    } <= set(bfl_weights)
    assert all(tensor.dtype == torch.bfloat16 for tensor in bfl_weights.values())
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl_weights))
    expected = transformer_state(bf16_tree)
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[key].float(), expected[key]) for key in expected)


def test_the_official_layout_loads_the_root_single_file_to_the_same_model_and_images(
    single_file_tree, tree_engine
):
    engine = Engine.load(resolve_model(str(single_file_tree)))
    loaded, expected = (
        engine.components.transformer.state_dict(),
        tree_engine.components.transformer.state_dict(),
    )
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    request = build_request(engine.spec, prompt="a single file", width=64, height=64, seed=5)
    image = engine.generate([request])[0].images[0]
    assert (image == tree_engine.generate([request])[0].images[0]).all()


def test_model_id_equals_file_takes_the_tree_beside_it_or_the_models_repo(
    single_file_tree, bf16_tree, tmp_path, monkeypatch, tree_engine
):
    registry = resolve_model("flux.2-klein-4b")
    beside = with_local_path(registry, single_file_tree / "flux-2-klein-4b.safetensors")
    assert (
        beside.local_path == single_file_tree
        and beside.transformer_file.name == "flux-2-klein-4b.safetensors"
    )
    assert resolve_model(str(beside.transformer_file)).transformer_file == beside.transformer_file

    # Only the file here; the tree (no transformer weights, its config only) from the Hugging Face cache.
    alone = shutil.copy(beside.transformer_file, tmp_path / "flux-2-klein-4b.safetensors")
    spec = with_local_path(registry, alone)
    assert spec.local_path is None and spec.transformer_file == alone
    snapshot = tmp_path / "hub" / f"models--{registry.hf_repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(single_file_tree, snapshot, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(single_file_tree / "text_encoder" / "model.safetensors", snapshot / "text_encoder")
    shutil.copy(single_file_tree / "vae" / "diffusion_pytorch_model.safetensors", snapshot / "vae")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    engine = Engine.load(spec, allow_download=False)
    loaded, expected = (
        engine.components.transformer.state_dict(),
        tree_engine.components.transformer.state_dict(),
    )
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    with pytest.raises(UnknownModel, match="say which model"):
        resolve_model(str(alone))
    typo = with_local_path(registry, tmp_path / "flux-2-klien-4b.safetensors")
    assert typo.transformer_file == tmp_path / "flux-2-klien-4b.safetensors"  # a file: "does not exist"


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_an_fp8_file_loads_dequantized_within_fp8_error(
    single_file_tree, bfl_weights, tree_engine, tmp_path, per_row
):
    fp8 = fp8_state_dict(bfl_weights, per_row)
    assert fp8["double_blocks.0.img_attn.qkv.weight"].dtype == torch.float8_e4m3fn
    path = tmp_path / "flux-2-klein-4b-fp8.safetensors"
    save_file(fp8, path)
    check_single_file(path)
    tree = dataclasses.replace(resolve_model(str(single_file_tree)), transformer_file=path)
    engine = Engine.load(tree)
    loaded = engine.components.transformer.state_dict()
    assert loaded["transformer_blocks.0.attn.to_q.weight"].dtype == torch.float32  # dequantized, not fp8

    # Exactly the file's fp8 values times their scales, renamed as diffusers renames the bf16 file.
    dequantized = {
        key: fp8[key].float() * fp8[key.replace(".weight", ".weight_scale")]
        if fp8[key].dtype == torch.float8_e4m3fn
        else fp8[key].float()
        for key in bfl_weights
    }
    expected = convert_flux2_transformer_checkpoint_to_diffusers(dequantized)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    # ...and within fp8's rounding (3 mantissa bits: 2^-4 relative; subnormals 2^-9 x scale) of bf16's.
    reference = tree_engine.components.transformer.state_dict()
    for key, original in bfl_weights.items():
        scale_key = key.replace(".weight", ".weight_scale")
        atol = fp8[scale_key].max().item() * 2**-9 if scale_key in fp8 else 0
        fused = convert_flux2_transformer_checkpoint_to_diffusers({key: original.float()})
        for name, value in fused.items():
            torch.testing.assert_close(loaded[name], value, rtol=2**-4, atol=atol)
            if atol == 0:
                assert torch.equal(loaded[name], reference[name])
    request = build_request(engine.spec, prompt="fp8", width=64, height=64, seed=5)
    assert engine.generate([request])[0].images[0].shape == (64, 64, 3)


def test_files_that_are_not_bf16_or_fp8_flux2_safetensors_are_refused_without_unpickling(
    single_file_tree, bfl_weights, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    pickled = tmp_path / "flux-2-klein-4b.safetensors"
    torch.save({"img_in.weight": torch.zeros(2)}, pickled)
    with pytest.raises(
        InvalidCheckpoint, match=r"flux-2-klein-4b\.safetensors is not a safetensors file .*zip"
    ):
        check_single_file(pickled)
    tree = resolve_model(str(single_file_tree))
    with pytest.raises(InvalidCheckpoint, match="never unpickles"):
        Engine.load(dataclasses.replace(tree, transformer_file=pickled))

    flux1 = tmp_path / "flux1.safetensors"
    save_file({"model.diffusion_model.double_blocks.0.img_mod.lin.weight": torch.zeros(2)}, flux1)
    with pytest.raises(InvalidCheckpoint, match=r"FLUX\.1's"):
        check_single_file(flux1)

    int8 = tmp_path / "int8.safetensors"
    save_file({**bfl_weights, "single_blocks.0.linear1.weight": torch.zeros(2, 2, dtype=torch.int8)}, int8)
    with pytest.raises(
        InvalidCheckpoint, match=r"torch\.int8 weights \(single_blocks\.0\.linear1\.weight\)|I8 weights"
    ):
        check_single_file(int8)

    other_size = tmp_path / "other-size.safetensors"
    smaller = {k: v for k, v in bfl_weights.items() if not k.startswith("single_blocks.1.")}
    smaller["img_in.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
    save_file(smaller, other_size)
    with pytest.raises(
        InvalidCheckpoint,
        match=r"does not fit the architecture in .*config\.json: 4 weights missing"
        r" \(e\.g\. single_transformer_blocks\.1\..*; 1 of another shape \(e\.g\. x_embedder\.weight",
    ):
        Engine.load(dataclasses.replace(tree, transformer_file=other_size))


def test_a_tree_without_transformer_weights_needs_exactly_one_root_file(single_file_tree, tmp_path):
    tree = shutil.copytree(single_file_tree, tmp_path / "two")
    shutil.copy(tree / "flux-2-klein-4b.safetensors", tree / "flux-2-klein-4b-fp8.safetensors")
    with pytest.raises(
        InvalidCheckpoint, match=r"several single files \(flux-2-klein-4b-fp8\.safetensors, flux"
    ):
        Engine.load(resolve_model(str(tree)))
    for path in tree.glob("*.safetensors"):
        path.unlink()
    with pytest.raises(InvalidCheckpoint, match="has no transformer weights"):
        Engine.load(resolve_model(str(tree)))
    (tree / "transformer" / "config.json").unlink()
    save_file({"single_stream_modulation.lin.weight": torch.zeros(2)}, tree / "flux-2-klein-4b.safetensors")
    with pytest.raises(InvalidCheckpoint, match=r"transformer/config\.json is missing"):
        Engine.load(resolve_model(str(tree)))
    json.loads((single_file_tree / "transformer" / "config.json").read_text())  # the original is untouched


def test_comfyui_prefix_spellings_and_markers_read_as_the_bfl_file(bfl_weights, bf16_tree, tmp_path):
    """ComfyUI's bundles: `model.diffusion_model.` keys, `.scale_weight`/`.scale_input`, `scaled_fp8`."""
    fp8 = fp8_state_dict(bfl_weights, per_row=False)
    comfy = {
        COMFY_PREFIX
        + key.replace(".weight_scale", ".scale_weight").replace(".input_scale", ".scale_input"): value
        for key, value in fp8.items()
    }
    comfy[COMFY_PREFIX + "scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    bfl_path, comfy_path = tmp_path / "bfl.safetensors", tmp_path / "comfy.safetensors"
    save_file(fp8, bfl_path)
    save_file(comfy, comfy_path)
    from_comfy = diffusers_state_dict(comfy_path, torch.float32)
    from_bfl = diffusers_state_dict(bfl_path, torch.float32)
    assert from_comfy.keys() == from_bfl.keys() == transformer_state(bf16_tree).keys()
    assert all(torch.equal(from_comfy[key], from_bfl[key]) for key in from_bfl)
    # A file already in diffusers' names (the tree's own weights file named as FILE) needs no conversion.
    tree_file = diffusers_state_dict(
        bf16_tree / "transformer" / "diffusion_pytorch_model.safetensors", torch.float32
    )
    assert all(torch.equal(tree_file[key], value) for key, value in transformer_state(bf16_tree).items())


def test_serve_names_the_model_flag_when_its_file_is_wrong(tmp_path):
    not_safetensors = tmp_path / "flux-2-klein-4b.safetensors"
    not_safetensors.write_bytes(b"GGUF" + bytes(60))
    settings = Settings(models=(f"flux.2-klein-4b={not_safetensors}",), data_dir=tmp_path)
    ((spec, _demo),) = served_specs(settings)
    assert spec.transformer_file == not_safetensors and spec.local_path is None
    with pytest.raises(
        InvalidCheckpoint, match=r"^--model flux\.2-klein-4b=\S+flux-2-klein-4b\.safetensors: .*GGUF"
    ):
        check_weights(spec, settings)


@pytest.mark.parametrize(("size", "tensors", "fp8_tensors"), [("4b", 149, 309), ("9b", 201, 425)])
def test_full_size_key_counts_match_the_published_files(size, tensors, fp8_tensors):
    """On the meta device: the published 4B / 9B shapes in BFL's names round-trip through diffusers'
    converter, and the fp8 layout's tensor counts match what loaders report for the real files (309 in
    flux-2-klein-4b-fp8.safetensors; 112 input scales in the 9B one)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import full_size

    with torch.device("meta"):
        model = Flux2Transformer2DModel(**full_size.TRANSFORMER, **full_size.SIZES[size]["transformer"])
    expected = model.state_dict()
    bfl = bfl_state_dict(expected)
    quantized = [
        key for key in bfl if key.startswith(("double_blocks.", "single_blocks.")) and key.endswith(QUANTIZED)
    ]
    assert len(bfl) == tensors and len(bfl) + 2 * len(quantized) == fp8_tensors
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {key: value.shape for key, value in converted.items()} == {k: v.shape for k, v in expected.items()}
