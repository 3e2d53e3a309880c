// The image playground: generations (JSON), edits with a painted mask and variations
// (multipart), through the public Images API; each result shows its timing.

import { api, h, list, seconds, showError } from "./api.js";
import { MaskCanvas } from "./mask.js";

const PATHS = {
  generate: "/v1/images/generations",
  edit: "/v1/images/edits",
  variation: "/v1/images/variations",
};
const LABELS = { generate: "Generate", edit: "Edit", variation: "Make variations" };

export class Playground {
  constructor() {
    this.form = document.getElementById("pg-form");
    this.model = document.getElementById("pg-model");
    this.status = document.getElementById("pg-status");
    this.error = document.getElementById("pg-error");
    this.results = document.getElementById("pg-results");
    this.submit = document.getElementById("pg-submit");
    this.mask = new MaskCanvas(document.getElementById("pg-canvas"), document.getElementById("pg-brush"));
    this.running = null; // {model, started}
    this.counter = 0;
    for (const radio of this.form.querySelectorAll('input[name="mode"]')) {
      radio.addEventListener("change", () => this.updateMode());
    }
    document.getElementById("pg-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) this.mask.load(file).catch((error) => showError(this.error, error));
    });
    document.getElementById("pg-clear-mask").addEventListener("click", () => this.mask.clear());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.updateMode();
  }

  mode() {
    return this.form.querySelector('input[name="mode"]:checked').value;
  }

  setMode(mode) {
    this.form.querySelector(`input[name="mode"][value="${mode}"]`).checked = true;
    this.updateMode();
  }

  updateMode() {
    const mode = this.mode();
    document.getElementById("pg-prompt-row").hidden = mode === "variation";
    document.getElementById("pg-source").hidden = mode === "generate";
    document.getElementById("pg-mask-tools").hidden = mode !== "edit";
    this.submit.textContent = LABELS[mode];
  }

  async refreshModels() {
    try {
      const { data } = await api("GET", "/v1/models");
      const models = list(data.data).filter((m) => list(m.capabilities).includes("image_generation"));
      const current = this.model.value;
      const options = models.map((m) =>
        h("option", { value: m.id }, m.details && m.details.native_size ? `${m.id} (native ${m.details.native_size})` : m.id),
      );
      if (!options.length) options.push(h("option", { value: "" }, "(no image model online)"));
      this.model.replaceChildren(...options);
      if (models.some((m) => m.id === current)) this.model.value = current;
    } catch (error) {
      showError(this.error, error);
    }
  }

  fields() {
    const form = new FormData(this.form);
    const out = { model: form.get("model"), size: form.get("size"), n: form.get("n") || "1" };
    for (const name of ["steps", "seed"]) {
      if (String(form.get(name) || "").trim() !== "") out[name] = String(form.get(name)).trim();
    }
    if (this.mode() !== "variation") out.prompt = String(form.get("prompt") || "");
    if (!out.model) delete out.model;
    return out;
  }

  async body(mode, fields) {
    if (mode === "generate") {
      const json = { ...fields, n: Number(fields.n), response_format: "b64_json" };
      for (const name of ["steps", "seed"]) if (name in json) json[name] = Number(json[name]);
      return json;
    }
    if (!this.mask.hasImage()) throw new Error("Choose a source image first (a file, or a result's button).");
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) form.append(name, value);
    form.append("response_format", "b64_json");
    form.append("image", await this.mask.imageBlob(), "image.png");
    if (mode === "edit") {
      const mask = await this.mask.maskBlob();
      if (mask) form.append("mask", mask, "mask.png");
    }
    return form;
  }

  async run() {
    const mode = this.mode();
    showError(this.error, null);
    let body;
    const fields = this.fields();
    try {
      body = await this.body(mode, fields);
    } catch (error) {
      showError(this.error, error);
      return;
    }
    this.submit.disabled = true;
    this.running = { model: fields.model, started: performance.now() };
    this.status.textContent = "working...";
    try {
      const answer = await api("POST", PATHS[mode], body);
      this.show(mode, fields, answer);
      this.status.textContent = `done in ${seconds(answer.ms / 1000)}`;
    } catch (error) {
      showError(this.error, error);
      this.status.textContent = "";
    } finally {
      this.running = null;
      this.submit.disabled = false;
    }
  }

  // The progress of a running job, from the nodes' view (polled by the live views).
  showProgress(nodes) {
    if (!this.running) return;
    const jobs = nodes.flatMap((node) => list(node.jobs));
    const job = jobs.find((j) => !this.running.model || j.model === this.running.model);
    const elapsed = seconds((performance.now() - this.running.started) / 1000);
    this.status.textContent = job
      ? `working... ${elapsed}: step ${job.step}/${job.steps}, image ${job.image}/${job.images}`
      : `working... ${elapsed}`;
  }

  show(mode, fields, answer) {
    const timing = [`${seconds(answer.ms / 1000)} total`];
    for (const [name, value] of answer.headers.entries()) {
      if (name.startsWith("x-llmlb-")) timing.push(`${name.slice(8)}: ${value}`);
    }
    const cards = list(answer.data.data).map((item) => {
      this.counter += 1;
      const src = item.b64_json ? `data:image/png;base64,${item.b64_json}` : item.url;
      const image = h("img", { src, alt: `${mode} result ${this.counter}`, class: "result-image" });
      const use = (next) => async () => {
        await this.mask.load(src);
        this.setMode(next);
      };
      return h(
        "div",
        { class: "result", "data-mode": mode },
        image,
        h("p", {}, h("b", {}, LABELS[mode]), ` ${fields.size || ""}`, item.seed !== undefined ? ` seed ${item.seed}` : ""),
        h("p", { class: "timing" }, timing.join(" - ")),
        fields.prompt ? h("p", { class: "muted" }, fields.prompt) : null,
        h("button", { type: "button", class: "use-edit", onclick: use("edit") }, "Edit this"),
        " ",
        h("button", { type: "button", class: "use-variation", onclick: use("variation") }, "Variations"),
      );
    });
    this.results.prepend(...cards);
  }
}
