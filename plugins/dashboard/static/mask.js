// The edit source and its mask, painted in the browser. The canvas shows the image at its own
// pixel size (scaled by CSS) with the painted area in translucent red; the mask sent is
// OpenAI's: a PNG of the image's size, opaque, fully transparent (alpha 0) where painted.

export class MaskCanvas {
  constructor(canvas, brush) {
    this.canvas = canvas;
    this.brush = brush; // <input type=range>: the brush radius in screen pixels
    this.image = null;
    this.paint = document.createElement("canvas");
    this.painted = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (event) => this.down(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(type, () => {
        this.last = null;
      });
    }
  }

  // Show `source` (a File, a Blob or a data: URL) and clear the mask.
  async load(source) {
    const url = typeof source === "string" ? source : URL.createObjectURL(source);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      this.image = image;
    } finally {
      if (typeof source !== "string") URL.revokeObjectURL(url);
    }
    this.canvas.width = this.image.naturalWidth;
    this.canvas.height = this.image.naturalHeight;
    this.paint.width = this.canvas.width;
    this.paint.height = this.canvas.height;
    this.clear();
  }

  clear() {
    this.paint.getContext("2d").clearRect(0, 0, this.paint.width, this.paint.height);
    this.painted = false;
    this.draw();
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (this.image) ctx.drawImage(this.image, 0, 0);
    ctx.globalAlpha = 0.55;
    ctx.drawImage(this.paint, 0, 0);
    ctx.globalAlpha = 1;
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / rect.width;
    return {
      x: (event.clientX - rect.left) * scale,
      y: (event.clientY - rect.top) * scale,
      radius: Math.max(0.5, Number(this.brush.value) * scale),
    };
  }

  down(event) {
    if (!this.image) return;
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last, this.last);
  }

  move(event) {
    if (!this.last) return;
    const next = this.point(event);
    this.stroke(this.last, next);
    this.last = next;
  }

  stroke(from, to) {
    const ctx = this.paint.getContext("2d");
    ctx.strokeStyle = "#ff2020";
    ctx.fillStyle = "#ff2020";
    ctx.lineCap = "round";
    ctx.lineWidth = to.radius * 2;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(to.x, to.y, to.radius, 0, Math.PI * 2);
    ctx.fill();
    this.painted = true;
    this.draw();
  }

  hasImage() {
    return this.image !== null;
  }

  // The source image as a PNG (whatever format it came in).
  imageBlob() {
    const out = document.createElement("canvas");
    out.width = this.canvas.width;
    out.height = this.canvas.height;
    out.getContext("2d").drawImage(this.image, 0, 0);
    return toPng(out);
  }

  // The mask as a PNG, or null when nothing is painted (the whole image is redrawn).
  maskBlob() {
    if (!this.painted) return Promise.resolve(null);
    const out = document.createElement("canvas");
    out.width = this.paint.width;
    out.height = this.paint.height;
    const ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.globalCompositeOperation = "destination-out";
    ctx.drawImage(this.paint, 0, 0);
    return toPng(out);
  }
}

function toPng(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("could not encode a PNG"))), "image/png");
  });
}
