// The public API, called through the dashboard's relay (/dashboard/api/<path>) with the
// session cookie; POST and DELETE carry the session's CSRF token. Plus small DOM helpers.

const CSRF = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, body) {
    const message = body && body.error && body.error.message ? body.error.message : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body;
  }
}

// One API call: resolves to {data, headers, ms}; a non-2xx answer rejects with ApiError.
// A 401 means the session ended (sign-out elsewhere, key revoked): back to the sign-in page.
export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") init.headers["x-csrf-token"] = CSRF;
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const started = performance.now();
  const response = await fetch(`/dashboard/api${path}`, init);
  const text = await response.text();
  const ms = performance.now() - started;
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson && text ? JSON.parse(text) : text;
  if (response.status === 401) {
    location.assign("/dashboard/login?ended=1");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, headers: response.headers, ms };
}

// h("td", {class: "x"}, "text", child...): an element; strings become text nodes.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function statusBadge(status) {
  return h("span", { class: `status ${String(status)}` }, String(status));
}

// "3 s ago", "in 2 days": for unix seconds.
export function relativeTime(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "-";
  const diff = unixSeconds - Date.now() / 1000;
  const abs = Math.abs(diff);
  const units = [[86400, "day"], [3600, "h"], [60, "min"], [1, "s"]];
  for (const [size, unit] of units) {
    if (abs >= size || size === 1) {
      const count = Math.round(abs / size);
      const label = unit === "day" ? `${count} day${count === 1 ? "" : "s"}` : `${count} ${unit}`;
      return diff < 0 ? `${label} ago` : `in ${label}`;
    }
  }
  return "-";
}

export function isoTime(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "-";
  return new Date(unixSeconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(value < 10 ? 2 : 1)} s` : "-";
}

export function list(value) {
  return Array.isArray(value) ? value : [];
}

export function showError(el, error) {
  el.textContent = error ? String(error.message || error) : "";
  el.hidden = !error;
}
