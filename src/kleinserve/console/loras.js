// The form's LoRAs: up to config.max_loras rows, each a path (a URL, a Hugging Face repo id, or a file of
// the server's --lora-dir picked from its list, GET /v1/loras) and a scale; what fal's `loras` takes.

import { option } from "./form.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_SCALE = 1;

export class LoraRows {
  constructor({ max, maxScale, onChange }) {
    this.max = max;
    this.maxScale = maxScale;
    this.onChange = onChange;
    this.files = []; // [{path, size_bytes}] of --lora-dir
    this.sent = []; // the row of each LoRA read() gave, in order: loras[i] is row sent[i]
    $("max-loras").textContent = max;
    $("max-lora-scale").textContent = maxScale;
    $("add-lora").addEventListener("click", () => {
      this.set([...this.read(true), { path: "", scale: DEFAULT_SCALE }]);
      $(`lora-${this.count - 1}-path`).focus();
    });
    this.set([]);
  }

  get count() {
    return $("lora-rows").children.length;
  }

  // the --lora-dir files offered in each row's list
  offer(files) {
    this.files = files;
    this.set(this.read(true));
  }

  // [{path, scale}] from the rows; blank paths are left out unless `all`
  read(all = false) {
    const loras = [];
    this.sent = [];
    for (let index = 0; index < this.count; index++) {
      const path = $(`lora-${index}-path`).value.trim();
      if (!path && !all) continue;
      const scale = $(`lora-${index}-scale`);
      const lora = { path };
      if (scale.value !== "") lora.scale = Number(scale.value);
      else if (scale.validity.badInput) lora.scale = scale.value; // for the server to refuse, at its row
      loras.push(lora);
      this.sent.push(index);
    }
    return loras;
  }

  set(loras) {
    $("lora-rows").replaceChildren(...loras.slice(0, this.max).map((lora, index) => this.row(lora, index)));
    $("add-lora").disabled = this.count >= this.max;
    this.onChange();
  }

  // the id of the control a field of the sent loras names ("loras[1].scale" -> "lora-<row>-scale")
  controlOf(field) {
    const match = /^loras\[(\d+)\](?:\.(path|scale))?/.exec(field);
    if (!match) return null;
    const row = this.sent[Number(match[1])];
    return row === undefined ? null : `lora-${row}-${match[2] || "path"}`;
  }

  row(lora, index) {
    const item = document.createElement("li");
    item.className = "lora-row";
    const prefix = `lora-${index}`;
    const number = index + 1;
    const path = input(`${prefix}-path`, "text", lora.path);
    path.placeholder = "https://…/style.safetensors, owner/repo or a file below";
    path.spellcheck = false;
    const pick = document.createElement("select");
    pick.id = `${prefix}-file`;
    pick.hidden = this.files.length === 0;
    pick.replaceChildren(
      option("", "pick a --lora-dir file…"),
      ...this.files.map((file) => option(file.path, `${file.path} (${megabytes(file.size_bytes)})`)),
    );
    pick.addEventListener("change", () => {
      if (pick.value) path.value = pick.value;
      pick.value = "";
      this.onChange();
    });
    const scale = input(`${prefix}-scale`, "number", lora.scale ?? DEFAULT_SCALE);
    Object.assign(scale, { min: 0, max: this.maxScale, step: 0.05 });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove LoRA ${number}`);
    remove.addEventListener("click", () => this.set(this.read(true).filter((_, i) => i !== index)));
    const error = document.createElement("p");
    error.id = `${prefix}-error`;
    error.className = "field-error";
    error.hidden = true;
    item.append(
      label(path, `LoRA ${number} path`), path, label(pick, `LoRA ${number} from the server`), pick,
      label(scale, `LoRA ${number} scale`), scale, remove, error,
    );
    return item;
  }
}

function input(id, type, value) {
  const element = document.createElement("input");
  Object.assign(element, { id, type, value });
  element.setAttribute("aria-describedby", id.replace(/-(path|scale)$/, "-error"));
  return element;
}

function label(control, text) {
  const element = document.createElement("label");
  element.htmlFor = control.id;
  element.textContent = text;
  element.className = "lora-label";
  if (control.hidden) element.hidden = true;
  return element;
}

function megabytes(bytes) {
  return bytes < 2 ** 20 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 2 ** 20).toFixed(1)} MB`;
}
