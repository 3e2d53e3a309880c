// The live views: nodes, endpoints, models, and the queue/request-rate chart, refreshed by
// polling the public API: GET /v0/status (nodes, endpoints, models, queue) and /metrics.

import { api, h, list, relativeTime, seconds, statusBadge } from "./api.js";
import { Chart } from "./chart.js";

// Requests served on the OpenAI-compatible routes (/v1/...), summed over the series of the
// router's request counter; null when the exposition has none.
export function apiRequestCount(exposition) {
  let total = null;
  for (const line of String(exposition).split("\n")) {
    const match = /^llmlb_requests_total\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!match) continue;
    total = (total || 0) + (/(^|,)route="\/v1\//.test(match[1]) ? Number(match[2]) : 0);
  }
  return total;
}

function jobCell(jobs) {
  return list(jobs).map((job) =>
    h(
      "div",
      { class: "job" },
      h("progress", { max: Math.max(1, job.steps || 0), value: job.step || 0 }),
      `${job.model}: step ${job.step}/${job.steps}` +
        (job.images > 1 ? ` (image ${job.image}/${job.images})` : "") +
        ` - ${seconds(job.elapsed_s)}`,
    ),
  );
}

function renderNodes(nodes, endpointIds) {
  const rows = nodes
    .filter((node) => !endpointIds.has(node.id))
    .map((node) =>
      h(
        "tr",
        { "data-node": node.name },
        h("td", {}, h("b", {}, node.name), h("br"), h("small", {}, `${node.id} - ${node.base_url}`),
          h("br"), h("small", {}, list(node.runtime_types).join(", "))),
        h("td", {}, statusBadge(node.status), node.suspect ? h("small", {}, " suspect") : null),
        h("td", {}, `${node.active_jobs ?? "-"} / ${node.slots ?? "-"}`, h("br"),
          h("small", {}, `${node.free_slots ?? "-"} free`)),
        h("td", {}, String(node.queued_jobs ?? 0)),
        h("td", {}, list(node.loaded_models).join(", ") || "-"),
        h("td", {}, list(node.models).map((m) => m.id).join(", ") || "-"),
        h("td", {}, jobCell(node.jobs)),
        h("td", {}, String(node.completed ?? 0), h("br"),
          h("small", {}, node.avg_duration_s ? `avg ${seconds(node.avg_duration_s)}` : "")),
        h("td", {}, relativeTime(node.last_seen_at)),
      ),
    );
  document.querySelector("#nodes-table tbody").replaceChildren(...rows);
  document.getElementById("nodes-empty").hidden = rows.length > 0;
}

function renderEndpoints(endpoints) {
  const rows = endpoints.map((ep) =>
    h(
      "tr",
      {},
      h("td", {}, h("b", {}, ep.name)),
      h("td", {}, statusBadge(ep.status)),
      h("td", {}, ep.url),
      h("td", {}, ep.kind),
      h("td", {}, list(ep.served_models).map((m) => m.id).join(", ") || "-"),
      h("td", {}, `${ep.inflight ?? 0} / ${ep.slots ?? "-"}`),
      h("td", {}, ep.last_error || "-"),
    ),
  );
  document.querySelector("#endpoints-table tbody").replaceChildren(...rows);
  document.getElementById("endpoints-empty").hidden = rows.length > 0;
}

function detailText(details) {
  return Object.entries(details || {})
    .filter(([, v]) => ["string", "number", "boolean"].includes(typeof v) ||
      (Array.isArray(v) && v.length <= 4 && v.every((x) => typeof x !== "object")))
    .slice(0, 6)
    .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join("x") : v}`)
    .join(", ");
}

// The models as /v0/models lists them: every model the router knows, with where it runs.
function renderModels(models) {
  const byId = new Map(models.map((m) => [m.id, m]));
  const rows = [...byId.values()].sort((a, b) => a.id.localeCompare(b.id)).map((m) => {
    const where = Array.isArray(m.nodes)
      ? m.nodes.map((p) => h("div", {}, `${p.node_name || p.node_id} `, statusBadge(p.status),
          p.status !== "online" && p.last_seen_at ? h("small", {}, ` ${relativeTime(p.last_seen_at)}`) : null))
      : "-";
    return h(
      "tr",
      { "data-model": m.id },
      h("td", {}, h("b", {}, m.id), m.registered ? h("small", {}, " registered") : null),
      h("td", {}, statusBadge(m.status || "-")),
      h("td", {}, list(m.capabilities).join(", ")),
      h("td", {}, where),
      h("td", {}, detailText(m.details)),
      h("td", {}, m.description || ""),
    );
  });
  document.querySelector("#models-table tbody").replaceChildren(...rows);
  document.getElementById("models-empty").hidden = rows.length > 0;
}

export class LiveViews {
  constructor(intervalMs) {
    this.intervalMs = intervalMs;
    this.chart = new Chart(document.getElementById("chart"));
    this.lastCount = null;
    this.lastTime = null;
    this.listeners = [];
  }

  // fn(nodes) after each refresh (the playground shows its job's progress from it).
  onNodes(fn) {
    this.listeners.push(fn);
  }

  start() {
    const tick = async () => {
      try {
        await this.refresh();
        document.getElementById("conn-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (error) {
        document.getElementById("conn-status").textContent = `update failed: ${error.message}`;
      }
      setTimeout(tick, this.intervalMs);
    };
    tick();
  }

  async refresh() {
    const [status, metrics] = await Promise.all([api("GET", "/v0/status"), api("GET", "/metrics")]);
    const nodeList = list(status.data.nodes);
    const endpointList = list(status.data.endpoints);
    renderNodes(nodeList, new Set(endpointList.map((ep) => ep.node_id)));
    renderEndpoints(endpointList);
    renderModels(list(status.data.models));
    this.sample(status.data.queue_depth, apiRequestCount(metrics.data));
    const online = nodeList.filter((n) => n.status === "online");
    document.getElementById("stat-nodes").textContent = `${online.length} / ${nodeList.length}`;
    const busy = online.reduce((sum, n) => sum + (n.active_jobs || 0), 0);
    const slots = online.reduce((sum, n) => sum + (n.slots || 0), 0);
    document.getElementById("stat-slots").textContent = `${busy} / ${slots}`;
    for (const fn of this.listeners) fn(nodeList);
  }

  sample(queueDepth, count) {
    const now = performance.now() / 1000;
    let rate = null;
    if (count !== null && this.lastCount !== null && now > this.lastTime) {
      rate = Math.max(0, (count - this.lastCount) / (now - this.lastTime));
    }
    this.lastCount = count;
    this.lastTime = now;
    const queue = typeof queueDepth === "number" ? queueDepth : null;
    this.chart.add({ queue, rate });
    document.getElementById("stat-queue").textContent = queue === null ? "-" : String(queue);
    document.getElementById("stat-rate").textContent = rate === null ? "-" : rate.toFixed(2);
  }
}
