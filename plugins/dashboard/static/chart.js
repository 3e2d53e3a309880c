// Queue depth and request rate over time on a canvas: two lines, each scaled to its own peak.

const KEEP = 120; // samples (one per poll: about 3 minutes)

export class Chart {
  constructor(canvas) {
    this.canvas = canvas;
    this.samples = [];
    this.colors = {
      queue: getComputedStyle(document.documentElement).getPropertyValue("--queue").trim() || "#c2410c",
      rate: getComputedStyle(document.documentElement).getPropertyValue("--rate").trim() || "#2563eb",
    };
  }

  add(sample) {
    this.samples.push(sample);
    if (this.samples.length > KEEP) this.samples.shift();
    this.draw();
  }

  draw() {
    const { canvas, samples } = this;
    const ctx = canvas.getContext("2d");
    const width = canvas.width;
    const height = canvas.height;
    const pad = 22;
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = "#dde2ea";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i += 1) {
      const y = pad + ((height - 2 * pad) * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad, y);
      ctx.lineTo(width - pad, y);
      ctx.stroke();
    }
    const series = [
      ["queue", (s) => s.queue, (v) => `${v} queued`],
      ["rate", (s) => s.rate, (v) => `${v.toFixed(2)} req/s`],
    ];
    ctx.font = "11px system-ui, sans-serif";
    series.forEach(([name, pick, label], index) => {
      const values = samples.map(pick).filter((v) => typeof v === "number");
      const peak = Math.max(1, ...values);
      ctx.strokeStyle = this.colors[name];
      ctx.fillStyle = this.colors[name];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      samples.forEach((sample, i) => {
        const value = pick(sample);
        if (typeof value !== "number") {
          started = false;
          return;
        }
        const x = pad + ((width - 2 * pad) * (i + KEEP - samples.length)) / (KEEP - 1);
        const y = height - pad - ((height - 2 * pad) * value) / peak;
        if (started) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
      ctx.fillText(`peak ${label(peak)}`, pad + index * 160, 14);
    });
  }
}
