"""`kleinserve plan`: weight memory per component, counted on the meta device from the published configs
(nothing loaded, nothing downloaded), the fp8 byte rule, offloading, what fits, and the command's output."""

import json

import pytest
import torch

from kleinserve.cli import main
from kleinserve.engine import architectures
from kleinserve.engine.memory_plan import Allowance, fp8_converts, plan_classifier, plan_model, weight_bytes
from kleinserve.models import resolve_model
from kleinserve.service.safety import classifier_config

# Counted once on the meta device; the transformers and VAE agree with DESIGN.md (3.88 B, 9.08 B, ~84 M).
# The text encoders are the engine's: Qwen3-4B / Qwen3-8B cut to 27 layers, no final norm, no LM head.
PARAMS = {
    "flux.2-klein-4b": {"text encoder": 3_114_088_192, "transformer": 3_875_544_576, "VAE": 84_046_115},
    "flux.2-klein-9b": {"text encoder": 5_831_883_520, "transformer": 9_078_581_248, "VAE": 84_046_115},
}


def by_name(plan):
    return {c.name: c for c in plan.components}


@pytest.mark.parametrize("model", PARAMS)
def test_registry_models_count_the_published_parameters_in_bf16(model):
    plan = plan_model(resolve_model(model))
    counted = by_name(plan)
    assert {name: c.params for name, c in counted.items()} == PARAMS[model]
    assert all(
        c.bytes == 2 * c.params and c.precision == "bf16" and c.placement == "gpu" for c in counted.values()
    )
    assert plan.weights_on_gpu() == 2 * sum(PARAMS[model].values())


@pytest.mark.parametrize(("size", "full_billions"), [("4b", 4.02), ("9b", 8.19)])
def test_the_text_encoder_is_the_published_qwen3_less_what_flux2_never_runs(size, full_billions):
    """Qwen3-4B (tied LM head) is 4.02 B and Qwen3-8B 8.19 B parameters (DESIGN.md): less layers 28..36, the
    final norm and the LM head, that is the engine's 27-layer text encoder the plan counts."""
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        full = Qwen3ForCausalLM(architectures.text_encoder_config(size))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(full) / 1e9 == pytest.approx(full_billions, abs=0.01)
    head = 0 if full.config.tie_word_embeddings else count(full.lm_head)
    unused = sum(count(layer) for layer in full.model.layers[27:]) + count(full.model.norm) + head
    model = architectures.SIZES[size]["spec"]
    assert count(full) - unused == PARAMS[model]["text encoder"]


def test_fp8_stores_block_linear_weights_in_one_byte_plus_a_scale_per_output_channel():
    block = torch.nn.Module()
    block.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(8, 4)])
    block.proj_out = torch.nn.Linear(8, 4)  # outside the repeated blocks: stays bf16
    block = block.to(torch.bfloat16)
    assert fp8_converts("transformer", "transformer_blocks.0", block.transformer_blocks[0])
    assert not fp8_converts("transformer", "proj_out", block.proj_out)
    assert not fp8_converts("VAE", "transformer_blocks.0", block.transformer_blocks[0])
    params, size, converted = weight_bytes("transformer", block, "fp8")
    assert (params, converted) == (2 * 36, 32)
    assert size == (32 * 1 + 4 * 4 + 4 * 2) + (36 * 2)  # weight fp8 + scales + bias bf16; proj_out bf16
    assert weight_bytes("transformer", block, None) == (72, 144, 0)


def test_9b_with_fp8_transformer_and_text_encoder_is_at_most_18_gb_of_weights():
    fp8 = dict(quantize="fp8", quantize_text_encoder="fp8")
    counted = by_name(plan_model(resolve_model("flux.2-klein-9b"), **fp8))
    fp8_weights = counted["text encoder"].bytes + counted["transformer"].bytes
    assert fp8_weights <= 18e9 and fp8_weights == pytest.approx(15.90e9, rel=0.01)
    assert counted["transformer"].fp8_params / PARAMS["flux.2-klein-9b"]["transformer"] > 0.95
    assert counted["VAE"].precision == "bf16" and counted["VAE"].fp8_params == 0


def test_an_offloaded_text_encoder_leaves_the_gpu_while_generating_not_while_encoding():
    spec = resolve_model("flux.2-klein-9b")
    resident = plan_model(spec, quantize="fp8", quantize_text_encoder="fp8")
    offloaded = plan_model(spec, quantize="fp8", quantize_text_encoder="fp8", offload="text-encoder")
    text = by_name(offloaded)["text encoder"]
    assert text.placement == "cpu"
    assert offloaded.weights_on_gpu() == resident.weights_on_gpu() - text.bytes
    assert offloaded.weights_while_encoding() == resident.weights_on_gpu()
    allowance = Allowance()
    assert offloaded.peak(allowance) < resident.peak(allowance)


def test_the_safety_checker_is_counted_from_its_config_or_said_unknown(safety_classifier):
    default = plan_classifier(*classifier_config("Falconsai/nsfw_image_detection"))
    assert (default.params, default.bytes, default.precision) == (85_800_194, 4 * 85_800_194, "fp32")
    tiny = plan_classifier(*classifier_config(str(safety_classifier)))
    from transformers import AutoModelForImageClassification

    loaded = AutoModelForImageClassification.from_pretrained(safety_classifier)
    assert tiny.bytes == sum(p.numel() * p.element_size() for p in loaded.parameters())
    unknown = plan_classifier(*classifier_config("someone/not-cached-anywhere"))
    assert unknown.bytes is None and "unknown" in unknown.source


def test_plan_prints_a_table_per_model_and_the_largest_model_that_fits(capsys):
    argv = ["plan", "--model", "flux-2-klein-4b", "--model", "flux.2-klein-9b", "--quantize", "fp8",
            "--quantize-text-encoder", "fp8", "--offload", "text-encoder",
            "--gpu-memory-gb", "16"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    levers = "--quantize fp8, --quantize-text-encoder fp8, --offload text-encoder"
    assert f"flux.2-klein-9b (bfloat16, {levers})" in out
    assert "  text encoder      5,831,883,520  fp8+bf16   cpu, gpu to encode     6.46" in out
    assert "flux.2-klein-4b fits in 16 GB" in out and "flux.2-klein-9b fits in 16 GB" not in out
    assert (
        "largest registry model that fits 16 GB with --quantize fp8 --quantize-text-encoder fp8 --offload"
        " text-encoder: flux.2-klein-4b"
        in out
    )


def test_plan_json(capsys):
    argv = ["plan", "--model", "flux.2-klein-9b", "--quantize", "fp8", "--quantize-text-encoder", "fp8",
            "--json", "--gpu-memory-gb", "24"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"models", "allowance", "gpu_memory_gb", "fits", "largest_fitting"}
    model = report["models"][0]
    assert [c["name"] for c in model["components"]] == [
        "text encoder",
        "transformer",
        "VAE",
        "safety checker",
    ]
    assert model["components"][1]["params"] == PARAMS["flux.2-klein-9b"]["transformer"]
    assert model["peak_bytes"] <= 24e9 and report["fits"] == {"flux.2-klein-9b": True}
    assert report["largest_fitting"] == "flux.2-klein-9b" and report["allowance"]["estimate"] is True


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--model", "flux.2-klein-13b"], 1, "known models: flux.2-klein-4b, flux.2-klein-9b"),
        (["--model", "flux.2-klein-4b", "--quantize", "int4"], 2, "invalid choice: 'int4'"),
        (["--model", "flux.2-klein-4b", "--offload", "vae"], 2, "invalid choice: 'vae'"),
        (["--model", "flux.2-klein-4b", "--gpu-memory-gb", "0"], 2, "--gpu-memory-gb: must be more than 0"),
        ([], 2, "--model"),
    ],
)
def test_plan_errors_name_the_problem(capsys, argv, code, message):
    try:
        returned = main(["plan", *argv])
    except SystemExit as exit:  # argparse's errors
        returned = exit.code
    assert returned == code and message in capsys.readouterr().err
