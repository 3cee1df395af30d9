"use strict";
// Maps and boxes, computed as caffecam/cam/localize.py and maps.py compute them, so that the page's box at a
// threshold is the box the JSON files and the localization scores use:
//   1. the raw map (feature resolution) is upsampled to the image's size as cv2.resize(INTER_LINEAR) does
//      (maps.upsample_maps): pixel centres aligned, edge pixels clamped, first along rows, then along columns;
//   2. the box is the one around the largest 8-connected region where map >= threshold * max(map), as
//      [x1, y1, x2, y2] with x2, y2 exclusive (localize.map_box); a map with no positive value gives the whole
//      image. Both run in float64 here and float32 in OpenCV: a pixel within rounding of the threshold may differ.
window.CamReport = window.CamReport || {};
window.CamReport.boxes = (function () {
  // base64 of K×h×w little-endian float32 (what report.py writes) -> K Float32Arrays of h*w
  function decodeMaps(b64, count, w, h) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const all = new Float32Array(bytes.buffer);
    const maps = [];
    for (let k = 0; k < count; k++) maps.push(all.subarray(k * w * h, (k + 1) * w * h));
    return maps;
  }

  // For each output pixel along one axis: the source pixel and the weight of the next one (OpenCV's rule,
  // with its float32 rounding of the source position).
  function axis(src, dst) {
    const index = new Int32Array(dst), weight = new Float64Array(dst);
    const scale = src / dst;
    for (let d = 0; d < dst; d++) {
      let f = Math.fround((d + 0.5) * scale - 0.5);
      let s = Math.floor(f);
      f -= s;
      if (s < 0) { s = 0; f = 0; }
      if (s >= src - 1) { s = src - 1; f = 0; }
      index[d] = s;
      weight[d] = f;
    }
    return { index, weight };
  }

  function upsample(map, mw, mh, w, h) {
    const ax = axis(mw, w), ay = axis(mh, h);
    const rows = new Float64Array(mh * w);
    for (let y = 0; y < mh; y++) {
      for (let x = 0; x < w; x++) {
        const a = ax.index[x], b = Math.min(a + 1, mw - 1), f = ax.weight[x];
        rows[y * w + x] = map[y * mw + a] * (1 - f) + map[y * mw + b] * f;
      }
    }
    const out = new Float32Array(w * h);
    for (let y = 0; y < h; y++) {
      const a = ay.index[y] * w, b = Math.min(ay.index[y] + 1, mh - 1) * w, f = ay.weight[y];
      for (let x = 0; x < w; x++) out[y * w + x] = rows[a + x] * (1 - f) + rows[b + x] * f;
    }
    return out;
  }

  function mapBox(cam, w, h, threshold) {
    let peak = 0;  // over finite values, as localize.map_box
    for (let i = 0; i < cam.length; i++) if (Number.isFinite(cam[i]) && cam[i] > peak) peak = cam[i];
    if (!(peak > 0)) return [0, 0, w, h];
    // NumPy compares the float32 map with the threshold rounded to float32: so does this.
    const cut = Math.fround(threshold * peak);
    const keep = (i) => cam[i] >= cut && Number.isFinite(cam[i]);
    const seen = new Uint8Array(w * h), stack = new Int32Array(w * h);
    let best = null, bestArea = 0;
    for (let start = 0; start < w * h; start++) {
      if (seen[start] || !keep(start)) continue;
      // Flood fill one region. Regions are met in raster order of their first pixel; a tie keeps the first.
      let top = 0, area = 0, x1 = w, y1 = h, x2 = -1, y2 = -1;
      stack[top++] = start;
      seen[start] = 1;
      while (top > 0) {
        const p = stack[--top], px = p % w, py = (p - px) / w;
        area++;
        if (px < x1) x1 = px;
        if (px > x2) x2 = px;
        if (py < y1) y1 = py;
        if (py > y2) y2 = py;
        for (let ny = Math.max(0, py - 1); ny <= Math.min(h - 1, py + 1); ny++) {
          for (let nx = Math.max(0, px - 1); nx <= Math.min(w - 1, px + 1); nx++) {
            const q = ny * w + nx;
            if (seen[q] || !keep(q)) continue;
            seen[q] = 1;
            stack[top++] = q;
          }
        }
      }
      if (area > bestArea) { bestArea = area; best = [x1, y1, x2 + 1, y2 + 1]; }
    }
    return best;
  }

  function area(b) { return Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]); }

  function iou(a, b) {
    const iw = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), ih = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    const inter = Math.max(0, iw) * Math.max(0, ih), union = area(a) + area(b) - inter;
    return union > 0 ? inter / union : 0;
  }

  function bestIou(box, gts) { return Math.max(...gts.map((g) => iou(box, g))); }

  // OpenCV's COLORMAP_JET, as drawing.heatmap colours the overlays: blue (low) to red (high)
  function jet(t) {
    const c = (v) => Math.round(255 * Math.min(1, Math.max(0, v)));
    return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
  }

  // A map -> RGBA pixels of its heat map, scaled min..max as drawing.heatmap does (a flat map is all blue)
  function heat(cam, w, h) {
    let lo = Infinity, hi = -Infinity;
    for (const v of cam) { const x = Number.isFinite(v) ? v : 0; if (x < lo) lo = x; if (x > hi) hi = x; }
    const px = new Uint8ClampedArray(w * h * 4), span = hi > lo ? hi - lo : 1;
    for (let i = 0; i < w * h; i++) {
      const v = Number.isFinite(cam[i]) ? cam[i] : 0;
      const [r, g, b] = jet(hi > lo ? (v - lo) / span : 0);
      px[4 * i] = r; px[4 * i + 1] = g; px[4 * i + 2] = b; px[4 * i + 3] = 255;
    }
    return new ImageData(px, w, h);
  }

  return { decodeMaps, upsample, mapBox, iou, bestIou, heat };
})();
