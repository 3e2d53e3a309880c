// Keys: the list (GET /v0/keys), create (POST /v0/keys; the key is shown once) and revoke
// (DELETE /v0/keys/{id}, after a second click on the same button).

import { api, h, isoTime, list, relativeTime, showError, statusBadge } from "./api.js";

function keyState(key) {
  if (key.revoked) return "revoked";
  if (key.expires_at && key.expires_at * 1000 <= Date.now()) return "expired";
  return "active";
}

export class KeysView {
  constructor() {
    this.form = document.getElementById("key-form");
    this.error = document.getElementById("key-error");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
  }

  async refresh() {
    try {
      const { data } = await api("GET", "/v0/keys");
      this.render(list(data.data));
      showError(this.error, null);
    } catch (error) {
      showError(this.error, error);
    }
  }

  render(keys) {
    const rows = keys.map((key) => {
      const state = keyState(key);
      const revoke = h("button", { type: "button", class: "danger", "data-revoke": key.id }, "Revoke");
      revoke.addEventListener("click", () => this.revoke(key, revoke));
      return h(
        "tr",
        { "data-key": key.id },
        h("td", {}, key.name),
        h("td", {}, h("code", {}, key.id)),
        h("td", {}, h("code", {}, `${key.prefix}...`)),
        h("td", {}, list(key.scopes).join(", ")),
        h("td", {}, key.node_id || "-"),
        h("td", {}, isoTime(key.created_at)),
        h("td", {}, key.expires_at ? relativeTime(key.expires_at) : "never"),
        h("td", {}, statusBadge(state)),
        h("td", {}, state === "revoked" ? "" : revoke),
      );
    });
    document.querySelector("#keys-table tbody").replaceChildren(...rows);
  }

  async create() {
    const form = new FormData(this.form);
    const body = { name: String(form.get("name") || "").trim(), scopes: form.getAll("scope") };
    const nodeId = String(form.get("node_id") || "").trim();
    if (nodeId) body.node_id = nodeId;
    const days = Number(form.get("expires_days"));
    if (days > 0) body.expires_in_s = days * 86400;
    try {
      const { data } = await api("POST", "/v0/keys", body);
      document.getElementById("new-key-name").textContent = data.info.name;
      document.getElementById("new-key-value").textContent = data.key;
      document.getElementById("new-key").hidden = false;
      this.form.reset();
      await this.refresh();
    } catch (error) {
      showError(this.error, error);
    }
  }

  async revoke(key, button) {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = `Revoke "${key.name}"?`;
      return;
    }
    button.disabled = true;
    try {
      await api("DELETE", `/v0/keys/${encodeURIComponent(key.id)}`);
      await this.refresh();
    } catch (error) {
      showError(this.error, error);
      button.disabled = false;
    }
  }

  // The new key is shown once: leaving the tab forgets it.
  hideNewKey() {
    document.getElementById("new-key").hidden = true;
    document.getElementById("new-key-value").textContent = "";
  }
}
