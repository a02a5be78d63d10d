// This browser's recent jobs, in local storage: the request (its LoRAs too), the seed used and the result's
// image URLs.
// Reference images are kept only while small (local storage holds a few MB); never the API key.

const STORAGE = "kleinserve.history";
const MAX_ENTRIES = 20;
const MAX_REFERENCE_CHARS = 400_000;

export function loadHistory() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORAGE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return [];
  }
}

export function remember(entry) {
  const size = entry.references.reduce((total, ref) => total + ref.dataUri.length, 0);
  const kept = size <= MAX_REFERENCE_CHARS ? entry.references : [];
  const record = { ...entry, references: kept, referencesDropped: entry.references.length - kept.length };
  const entries = [record, ...loadHistory().filter((old) => old.id !== entry.id)].slice(0, MAX_ENTRIES);
  save(entries);
  return entries;
}

export function forgetAll() {
  localStorage.removeItem(STORAGE);
}

function save(entries) {
  for (let count = entries.length; count > 0; count--) {
    try {
      localStorage.setItem(STORAGE, JSON.stringify(entries.slice(0, count)));
      return;
    } catch {
      // over the quota: keep fewer entries
    }
  }
}

// The list's items: a summary and "Open" / "Run again" buttons.
export function renderHistory(list, entries, { onOpen, onRerun }) {
  list.replaceChildren(
    ...entries.map((entry) => {
      const item = document.createElement("li");
      const when = new Date(entry.at).toLocaleString();
      const what = document.createElement("span");
      const refs = entry.references.length + (entry.referencesDropped || 0);
      what.textContent =
        `${when} · ${entry.modelId} · seed ${entry.seed} · ${entry.images.length} image(s)` +
        (refs ? ` · ${refs} reference(s)` : "") +
        (entry.input.loras ? ` · ${entry.input.loras.length} LoRA(s)` : "") +
        ` · ${entry.input.prompt}`;
      what.className = "history-text";
      item.append(what, button("Open", () => onOpen(entry)), button("Run again", () => onRerun(entry)));
      return item;
    }),
  );
}

function button(label, action) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.addEventListener("click", action);
  return element;
}
