// Reference images for editing: picked or dropped, shown as removable thumbnails, kept as data URIs
// (what fal's image_urls takes).

export class References {
  constructor({ input, dropZone, list, onChange, onError }) {
    this.items = []; // [{name, type, dataUri}]
    this.max = 4;
    this.list = list;
    this.onChange = onChange;
    this.onError = onError;
    input.addEventListener("change", async () => {
      await this.add([...input.files]);
      input.value = "";
    });
    dropZone.addEventListener("dragover", (event) => {
      event.preventDefault();
      dropZone.classList.add("over");
    });
    dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
    dropZone.addEventListener("drop", async (event) => {
      event.preventDefault();
      dropZone.classList.remove("over");
      await this.add([...event.dataTransfer.files]);
    });
  }

  async add(files) {
    const images = files.filter((file) => file.type.startsWith("image/"));
    if (images.length < files.length) this.onError("only image files can be references");
    const room = this.max - this.items.length;
    if (images.length > room) this.onError(`at most ${this.max} reference images; the rest were left out`);
    for (const file of images.slice(0, Math.max(room, 0))) {
      this.items.push({ name: file.name, type: file.type, dataUri: await readDataUri(file) });
    }
    this.render();
  }

  set(items) {
    this.items = items.slice(0, this.max);
    this.render();
  }

  remove(index) {
    this.items.splice(index, 1);
    this.render();
  }

  render() {
    this.list.replaceChildren(
      ...this.items.map((item, index) => {
        const entry = document.createElement("li");
        const img = document.createElement("img");
        img.src = item.dataUri;
        img.alt = item.name;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.title = `Remove ${item.name}`;
        remove.setAttribute("aria-label", `Remove ${item.name}`);
        remove.addEventListener("click", () => this.remove(index));
        entry.append(img, remove);
        return entry;
      }),
    );
    this.onChange();
  }
}

function readDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
