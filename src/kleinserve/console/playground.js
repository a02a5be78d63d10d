// The playground: a form for one generation, sent to fal's streaming endpoint; each step's preview is
// shown as it arrives, then the images. Also: "Copy code", this browser's history, the usage panel.

import { ApiFailure, getJson, saveKey, savedKey, streamFal } from "./api.js";
import { RequestForm } from "./form.js";
import { forgetAll, loadHistory, remember, renderHistory } from "./history.js";
import { LoraRows } from "./loras.js";
import { References } from "./references.js";
import { LANGUAGES } from "./snippets.js";
import { wireUsage } from "./usage.js";

const $ = (id) => document.getElementById(id);

class Playground {
  constructor(config) {
    this.config = config;
    this.language = "curl";
    this.running = null; // the AbortController of the job in flight
    this.references = new References({
      input: $("references"),
      dropZone: $("drop-zone"),
      list: $("thumbnails"),
      onChange: () => {
        this.form.referencesChanged();
        this.updateCode();
      },
      onError: (message) => this.form.showErrors([{ field: "image_urls", message }]),
    });
    this.loras = new LoraRows({
      max: config.max_loras, maxScale: config.max_lora_scale, onChange: () => this.form && this.updateCode(),
    });
    this.form = new RequestForm(config, this.references, this.loras);
    this.wireKey();
    this.listLoraFiles();
    this.wireCode();
    this.wireHistory();
    wireUsage({
      panel: $("usage"), status: $("usage-status"), table: $("usage-table"),
      keyRequired: config.api_key_required, currentKey: () => $("api-key").value.trim(),
    });
    const demo = config.models.find((model) => model.demo);
    if (demo) {
      $("demo-warning").textContent = `${demo.id} is a DEMO model with tiny random weights: its images are noise.`;
      $("demo-warning").hidden = false;
    }
    $("form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    $("form").addEventListener("input", () => this.updateCode());
    $("form").addEventListener("change", () => this.updateCode());
    $("stop").addEventListener("click", () => this.running && this.running.abort());
    this.updateCode();
  }

  wireKey() {
    $("key-fields").hidden = !this.config.api_key_required;
    $("api-key").value = savedKey();
    $("api-key").addEventListener("input", () => saveKey($("api-key").value.trim()));
    $("api-key").addEventListener("change", () => this.listLoraFiles());
  }

  // the server's --lora-dir files, offered in each LoRA row (asked for only once a needed key is there)
  async listLoraFiles() {
    const key = $("api-key").value.trim();
    const status = $("lora-files-status");
    if (this.config.api_key_required && !key) {
      status.textContent = "Enter the API key to list the server's LoRA files.";
      return;
    }
    try {
      const listing = await getJson("/v1/loras", key);
      this.loras.offer(listing.data);
      status.textContent = listing.lora_dir
        ? `${listing.data.length} LoRA file(s) on the server${listing.truncated ? " (the first ones)" : ""}.`
        : "The server has no --lora-dir: give a LoRA by URL or Hugging Face repo id.";
    } catch (error) {
      status.textContent = `The server's LoRA files could not be listed: ${error.message}`;
    }
  }

  async generate() {
    const form = this.form;
    form.clearErrors();
    const key = $("api-key").value.trim();
    if (this.config.api_key_required && !key) {
      form.showErrors([{ field: "api_key", message: "This server requires an API key: enter yours here." }]);
      return;
    }
    const request = form.read();
    if (!request.endpoint) {
      form.showErrors([{ field: "model", message: `${request.model.id} has no fal endpoint to stream from.` }]);
      return;
    }
    const references = this.references.items.map((ref) => ({ ...ref }));
    const input = { ...request.input };
    if (request.edit) input.image_urls = references.map((ref) => ref.dataUri);
    this.startProgress();
    this.running = new AbortController();
    try {
      const output = await streamFal(request.endpoint, input, key, (event) => this.showStep(event),
        this.running.signal);
      const entry = {
        id: `${Date.now()}-${Math.random().toString(36).slice(2)}`, at: Date.now(),
        modelId: request.model.id, input: request.input, references, seed: output.seed,
        images: output.images, timings: output.timings,
      };
      this.showResults(entry);
      this.renderHistory(remember(entry));
      $("progress-text").textContent = `Done · seed ${output.seed}`;
    } catch (error) {
      this.showFailure(error);
    } finally {
      this.running = null;
      $("generate").disabled = false;
      $("stop").hidden = true;
    }
  }

  showFailure(error) {
    if (error.name === "AbortError") {
      $("progress-text").textContent = "Stopped.";
      return;
    }
    $("progress-panel").hidden = true;
    if (!(error instanceof ApiFailure)) {
      this.form.showErrors([{ field: null, message: `The request failed: ${error.message}` }]);
      return;
    }
    const keyProblem = error.status === 401 && this.config.api_key_required;
    this.form.showErrors(error.problems.map((p) => (keyProblem ? { ...p, field: "api_key" } : p)));
  }

  startProgress() {
    $("generate").disabled = true;
    $("stop").hidden = false;
    $("progress-panel").hidden = false;
    $("progress").value = 0;
    $("progress-text").textContent = "Waiting for the model…";
    $("previews").replaceChildren();
    $("previews").dataset.stepsSeen = "0";
  }

  // one streamed step: the progress bar and each image's current estimate
  showStep(event) {
    if (event.step === undefined) return; // the output, handled by generate
    $("progress").value = event.progress;
    $("progress-text").textContent = `Step ${event.step} of ${event.num_inference_steps}`;
    const previews = $("previews");
    event.images.forEach((image, index) => {
      let img = previews.children[index];
      if (!img) {
        img = document.createElement("img");
        img.alt = `Preview of image ${index + 1}`;
        previews.append(img);
      }
      img.src = image.url;
      img.dataset.step = event.step;
    });
    previews.dataset.stepsSeen = String(Number(previews.dataset.stepsSeen) + 1);
  }

  showResults(entry) {
    $("results-empty").hidden = true;
    $("result-list").replaceChildren(...entry.images.map((image, index) => this.resultFigure(entry, image, index)));
  }

  resultFigure(entry, image, index) {
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = image.url;
    link.target = "_blank";
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = `Result ${index + 1}: ${entry.input.prompt}`;
    link.append(img);
    const caption = document.createElement("figcaption");
    const facts = document.createElement("span");
    const inference = entry.timings && entry.timings.inference;
    facts.textContent = `${image.width}×${image.height} · seed ${entry.seed}` +
      (inference === undefined ? "" : ` · inference ${inference} s`);
    const timings = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Timings";
    const stages = document.createElement("p");
    stages.textContent = Object.entries(entry.timings || {}).map(([stage, s]) => `${stage} ${s} s`).join(", ");
    timings.append(summary, stages);
    const download = document.createElement("a");
    download.href = image.url;
    download.download = image.file_name || `image-${index}`;
    download.textContent = "Download";
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = "Use this seed";
    reuse.addEventListener("click", () => {
      this.form.useSeed(entry.seed);
      this.updateCode();
    });
    caption.append(facts, " ", download, " ", reuse, timings);
    figure.append(link, caption);
    return figure;
  }

  wireHistory() {
    $("clear-history").addEventListener("click", () => {
      forgetAll();
      this.renderHistory([]);
    });
    this.renderHistory(loadHistory());
  }

  renderHistory(entries) {
    renderHistory($("history-list"), entries, {
      onOpen: (entry) => {
        this.form.restore(entry);
        this.showResults(entry);
        this.updateCode();
      },
      onRerun: (entry) => {
        this.form.restore(entry, entry.seed);
        this.updateCode();
        this.generate();
      },
    });
  }

  wireCode() {
    for (const tab of document.querySelectorAll("#code [role=tab]")) {
      tab.addEventListener("click", () => {
        this.language = tab.dataset.lang;
        for (const other of document.querySelectorAll("#code [role=tab]")) {
          other.setAttribute("aria-selected", String(other === tab));
        }
        this.updateCode();
      });
    }
    $("copy-code").addEventListener("click", () => this.copyCode());
  }

  updateCode() {
    const request = this.form.read();
    if (!request.endpoint) {
      $("code-text").textContent = `# ${request.model.id} has no fal endpoint`;
      return;
    }
    const call = {
      origin: location.origin, keyRequired: this.config.api_key_required, modelId: request.model.id,
      replicateModel: request.model.replicate_model, gatewayModel: request.model.gateway_model,
      endpoint: request.endpoint, input: request.input, size: request.size,
      references: this.references.items.map(({ name, type }) => ({ name, type })),
    };
    const language = LANGUAGES[this.language];
    $("code-note").textContent = language.note(call);
    $("code-text").textContent = language.render(call);
    $("copy-status").textContent = "";
  }

  async copyCode() {
    const text = $("code-text").textContent;
    try {
      await navigator.clipboard.writeText(text);
      $("copy-status").textContent = "Copied.";
    } catch {
      // no clipboard here (plain http, or no permission): select the text for the user to copy
      const range = document.createRange();
      range.selectNodeContents($("code-text"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("copy-status").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  }
}

async function start() {
  const response = await fetch("/console/config.json");
  const config = await response.json();
  window.playground = new Playground(config);
  document.body.dataset.ready = "true";
}

start();
