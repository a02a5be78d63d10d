// The request form: filled from the server's config.json, read into fal's input fields, restored from
// history, and told where each error goes.

const $ = (id) => document.getElementById(id);

// a fal input field (as errors name it) -> the form control whose "-error" paragraph shows the message
const FIELD_CONTROLS = {
  prompt: "prompt",
  image_size: "size",
  width: "size",
  height: "size",
  num_inference_steps: "steps",
  seed: "seed",
  num_images: "num-images",
  output_format: "output-format",
  guidance_scale: "guidance",
  negative_prompt: "negative-prompt",
  image_urls: "references",
  image_url: "references",
  loras: "loras",
  model: "model",
  api_key: "api-key",
};
const INVALID_MARKS = { size: ["width", "height"], loras: [] };
const AUTO_SIZE = "auto";
const CUSTOM_SIZE = "custom";

export class RequestForm {
  constructor(config, references, loras) {
    this.config = config;
    this.references = references;
    this.loras = loras;
    this.models = Object.fromEntries(config.models.map((model) => [model.id, model]));
    $("model").replaceChildren(...config.models.map((m) => option(m.id, modelLabel(m))));
    $("output-format").replaceChildren(...config.output_formats.map((f) => option(f, f)));
    const presets = Object.entries(config.size_presets).map(
      ([name, size]) => option(name, `${name.replace(/_/g, " ")} (${size.width}×${size.height})`),
    );
    presets.push(option(CUSTOM_SIZE, "custom"), option(AUTO_SIZE, "match first reference"));
    $("size-preset").replaceChildren(...presets);
    $("size-preset").value = config.default_size_preset;
    $("model").addEventListener("change", () => this.applyModel());
    $("size-preset").addEventListener("change", () => this.applyPreset());
    for (const side of ["width", "height"]) {
      $(side).addEventListener("input", () => ($("size-preset").value = CUSTOM_SIZE));
    }
    $("random-seed").addEventListener("change", () => ($("seed").disabled = $("random-seed").checked));
    this.applyModel();
    this.applyPreset();
  }

  get model() {
    return this.models[$("model").value];
  }

  applyModel() {
    const model = this.model;
    const steps = $("steps");
    steps.value = model.default_steps;
    steps.min = model.min_steps;
    steps.max = model.max_steps;
    $("steps-hint").textContent = `${model.min_steps} to ${model.max_steps}`;
    $("num-images").max = model.max_images;
    for (const side of ["width", "height"]) {
      Object.assign($(side), { min: model.min_side, max: model.max_side, step: model.size_multiple });
    }
    $("cfg-fields").hidden = !model.uses_cfg;
    $("guidance").value = model.default_guidance;
    $("negative-prompt").value = model.default_negative_prompt;
    this.references.max = model.max_reference_images;
    $("max-refs").textContent = model.max_reference_images;
  }

  applyPreset() {
    const preset = this.config.size_presets[$("size-preset").value];
    if (preset) {
      $("width").value = preset.width;
      $("height").value = preset.height;
    }
    const auto = $("size-preset").value === AUTO_SIZE;
    $("width").disabled = auto;
    $("height").disabled = auto;
  }

  // "match first reference" only makes sense with references; edits offer it as their default
  referencesChanged() {
    const preset = $("size-preset");
    const hasReferences = this.references.items.length > 0;
    preset.querySelector(`option[value="${AUTO_SIZE}"]`).disabled = !hasReferences;
    if (hasReferences && !this.wasEdit) preset.value = AUTO_SIZE;
    if (!hasReferences && preset.value === AUTO_SIZE) preset.value = this.config.default_size_preset;
    this.wasEdit = hasReferences;
    this.applyPreset();
  }

  // fal's input (without image_urls), the endpoint it goes to (its /lora endpoint with LoRAs), and the size
  // it asks for (null: automatic)
  read() {
    const model = this.model;
    const edit = this.references.items.length > 0;
    const input = { prompt: $("prompt").value };
    const preset = $("size-preset").value;
    const size = preset === AUTO_SIZE ? null : { width: number("width"), height: number("height") };
    if (preset in this.config.size_presets) input.image_size = preset;
    else if (size) input.image_size = size;
    setIfGiven(input, "num_inference_steps", number("steps"));
    if (!$("random-seed").checked) setIfGiven(input, "seed", number("seed"));
    setIfGiven(input, "num_images", number("num-images"));
    input.output_format = $("output-format").value;
    if (model.uses_cfg) {
      setIfGiven(input, "guidance_scale", number("guidance"));
      if ($("negative-prompt").value) input.negative_prompt = $("negative-prompt").value;
    }
    const loras = this.loras.read();
    if (loras.length) input.loras = loras;
    const endpoint = model.fal_endpoint && model.fal_endpoint + (edit ? "/edit" : "") + (loras.length ? "/lora" : "");
    return { model, input, endpoint, size, edit };
  }

  // a history entry's request back in the form; `seed` fixes the seed (a re-run), else it stays random
  restore(entry, seed) {
    if (this.models[entry.modelId]) $("model").value = entry.modelId;
    this.applyModel();
    const { input } = entry;
    $("prompt").value = input.prompt;
    this.references.set(entry.references);
    this.loras.set(input.loras || []);
    const size = input.image_size;
    $("size-preset").value = size === undefined ? AUTO_SIZE : typeof size === "string" ? size : CUSTOM_SIZE;
    this.applyPreset();
    if (size && typeof size === "object") {
      $("width").value = size.width;
      $("height").value = size.height;
    }
    if (input.num_inference_steps !== undefined) $("steps").value = input.num_inference_steps;
    $("num-images").value = input.num_images || 1;
    $("output-format").value = input.output_format || "png";
    if (input.guidance_scale !== undefined) $("guidance").value = input.guidance_scale;
    $("negative-prompt").value = input.negative_prompt || "";
    $("random-seed").checked = seed === undefined;
    $("seed").disabled = seed === undefined;
    if (seed !== undefined) $("seed").value = seed;
  }

  useSeed(seed) {
    $("random-seed").checked = false;
    $("seed").disabled = false;
    $("seed").value = seed;
  }

  clearErrors() {
    for (const element of document.querySelectorAll(".field-error, .form-error")) {
      element.hidden = true;
      element.textContent = "";
    }
    for (const element of document.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
  }

  // [{field, message}]: each next to its control (a LoRA's next to its row); what names no control goes under
  // the button
  showErrors(problems) {
    for (const { field, message } of problems) {
      const lora = field && this.loras.controlOf(field); // "lora-<row>-path" | "lora-<row>-scale"
      const control = lora || (field && FIELD_CONTROLS[field.split(/[.[]/)[0]]);
      const target = lora ? $(lora.replace(/-(path|scale)$/, "-error")) : $(control ? `${control}-error` : "form-error");
      target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
      target.hidden = false;
      for (const id of control ? INVALID_MARKS[control] || [control] : []) {
        $(id).setAttribute("aria-invalid", "true");
      }
    }
    const first = document.querySelector("[aria-invalid]");
    if (first) first.focus();
  }
}

function modelLabel(model) {
  const kind = model.uses_cfg ? "Base" : model.variant === "kv" ? "KV" : "distilled";
  const state = model.state === "ready" ? "" : ` (${model.state})`;
  return `${model.id} · ${kind}${model.demo ? " · DEMO" : ""}${state}`;
}

export function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

// a number field's value: a number, or the raw text for the server to refuse (empty: not given)
function number(id) {
  const element = $(id);
  if (element.value === "") return element.validity.badInput ? NaN : undefined;
  return Number(element.value);
}

function setIfGiven(input, name, value) {
  if (value !== undefined && !Number.isNaN(value)) input[name] = value;
}
