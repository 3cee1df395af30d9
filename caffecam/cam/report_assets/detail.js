"use strict";
// One image in detail: the original and its class maps side by side (the top-k, and the true class's map when the
// net did not rank it), heat-map opacity, the CAM box on/off, and a threshold slider that recomputes each box from
// the raw map (boxes.js) with its IoU against the ground-truth boxes. The maps of CHUNK images come in one script
// file, loaded when one of them is first opened.
window.CamReport = window.CamReport || {};
(function () {
  const R = window.CAM_REPORT, C = window.CamReport, B = C.boxes;
  const $ = (id) => document.getElementById(id);
  const HEAT_SIZE = 512;  // heat maps are drawn at most this many pixels wide or high; boxes use the full size
  const SVG = "http://www.w3.org/2000/svg";
  const chunks = new Map(), waiting = new Map();
  let current = null;  // position of the open image
  let panels = [];
  let gridScroll = 0;
  let queued = false;

  window.CAM_REPORT_CHUNK = (n, entries) => { if (waiting.has(n)) waiting.get(n)(entries); };

  function chunk(n) {
    if (!chunks.has(n)) {
      chunks.set(n, new Promise((resolve, reject) => {
        waiting.set(n, resolve);
        const s = document.createElement("script");
        s.src = `report/maps/${String(n).padStart(4, "0")}.js`;
        s.onerror = () => { chunks.delete(n); reject(new Error(`cannot load ${s.src}`)); };
        document.head.append(s);
      }));
    }
    return chunks.get(n);
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function setRect(rect, b) {
    rect.setAttribute("x", b[0]);
    rect.setAttribute("y", b[1]);
    rect.setAttribute("width", b[2] - b[0]);
    rect.setAttribute("height", b[3] - b[1]);
  }

  // A panel: the image, the heat map of `map` (none for the original) on a canvas above it, boxes in an SVG whose
  // user units are the original image's pixels.
  function panel(it, entry, title, map) {
    const W = it.w, H = it.h, p = { title, map };
    const stage = C.el("div", { class: "stage" });
    stage.style.aspectRatio = `${W} / ${H}`;
    stage.append(C.el("img", { src: `report/images/${entry.file}.jpg`, alt: map ? "" : `Original image ${it.name}` }));
    if (map) {
      const s = Math.min(1, HEAT_SIZE / Math.max(W, H));
      const dw = Math.max(1, Math.round(W * s)), dh = Math.max(1, Math.round(H * s));
      p.canvas = C.el("canvas", { class: "heat", width: dw, height: dh });
      p.canvas.getContext("2d").putImageData(B.heat(B.upsample(map, entry.map_w, entry.map_h, dw, dh), dw, dh), 0, 0);
      stage.append(p.canvas);
      p.full = B.upsample(map, entry.map_w, entry.map_h, W, H);
      stage.setAttribute("role", "img");
    }
    const layer = svg("svg", { class: "boxes", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    for (const g of entry.gt || []) {
      const r = svg("rect", { class: "gt" });
      setRect(r, g);
      layer.append(r);
    }
    if (map) layer.append(p.rect = svg("rect", { class: "box" }));
    stage.append(layer);
    p.boxText = C.el("span", { class: "p-box" });
    p.iouText = C.el("span", { class: "p-iou" });
    const caption = C.el("figcaption", {}, C.el("strong", { class: "p-title" }, title), p.boxText, p.iouText);
    if (!map && entry.gt) p.boxText.textContent = `ground truth ${entry.gt.map((g) => `[${g.join(", ")}]`).join(" ")}`;
    p.stage = stage;
    p.node = C.el("figure", { class: map ? "panel map" : "panel" }, stage, caption);
    p.node.style.setProperty("--ratio", W / H);
    return p;
  }

  // Recompute every box at the slider's threshold; show or hide boxes and set the heat maps' opacity.
  function update() {
    queued = false;
    const t = +$("d-threshold").value, it = C.items[current];
    $("d-threshold-value").textContent = t.toFixed(2);
    $("d-opacity-value").textContent = `${Math.round(100 * $("d-opacity").value)} %`;
    const t0 = performance.now();
    for (const p of panels) {
      p.stage.querySelectorAll("rect.gt").forEach((r) => { r.style.display = $("d-gt").checked ? "" : "none"; });
      if (!p.map) continue;
      p.canvas.style.opacity = $("d-opacity").value;
      const box = B.mapBox(p.full, it.w, it.h, t);
      setRect(p.rect, box);
      p.rect.style.display = $("d-box").checked ? "" : "none";
      p.boxText.textContent = `box [${box.join(", ")}] at threshold ${t.toFixed(2)}`;
      let label = `Class activation map of ${p.title} over the image; box from (${box[0]}, ${box[1]}) to (${box[2]}, ${box[3]})`;
      if (p.gt) {
        const v = B.bestIou(box, p.gt);
        p.iouText.textContent = `IoU ${v.toFixed(3)} with the ground truth: ${v >= R.iou_threshold ? "hit" : "miss"}`;
        label += `, IoU ${v.toFixed(2)} with the ground truth`;
      }
      p.stage.setAttribute("aria-label", label);
    }
    C.timings.boxes = performance.now() - t0;
  }

  function schedule() {
    if (!queued) { queued = true; requestAnimationFrame(update); }
  }

  function meta(it, entry) {
    const parts = [entry.image, `${it.w} × ${it.h} px`, `predicted ${C.className(it.pred)} (${C.pct(it.prob)})`];
    if (it.label !== null) parts.push(`true class ${C.className(it.label)}: ${it.wrong ? "wrong" : "right"}`);
    const stem = encodeURIComponent(it.name);
    $("d-meta").replaceChildren(parts.join(" · ") + " · files: ",
      C.el("a", { href: `${stem}_cam.png` }, `${it.name}_cam.png`), ", ",
      C.el("a", { href: `${stem}_cam.json` }, `${it.name}_cam.json`));
  }

  function list() {
    return C.view.some((it) => it.pos === current) ? C.view : C.items;
  }

  async function show(pos) {
    const t0 = performance.now();
    current = pos;
    const it = C.items[pos], order = list(), i = order.findIndex((x) => x.pos === pos);
    $("d-title").textContent = it.name;
    $("d-position").textContent = `${i + 1} of ${order.length}` + (order === C.view ? "" : " (all images)");
    $("d-prev").disabled = i === 0;
    $("d-next").disabled = i === order.length - 1;
    $("d-panels").replaceChildren(C.el("p", {}, "Loading the maps…"));
    let entries;
    try {
      entries = await chunk(Math.floor(pos / R.chunk));
    } catch (err) {
      $("d-panels").replaceChildren(C.el("p", { class: "warn" }, `${err.message}: the report is incomplete; run cam.py again.`));
      return;
    }
    if (current !== pos) return;  // another image was asked for meanwhile
    const entry = entries[pos % R.chunk];
    meta(it, entry);
    const maps = B.decodeMaps(entry.maps, entry.ids.length, entry.map_w, entry.map_h);
    panels = [panel(it, entry, "original", null)];
    entry.ids.forEach((c, k) => panels.push(panel(it, entry, `#${k + 1} ${C.className(c)} ${C.pct(entry.probs[k])}`, maps[k])));
    if (entry.label_map) {
      const m = B.decodeMaps(entry.label_map, 1, entry.map_w, entry.map_h)[0];
      panels.push(panel(it, entry, `true class ${C.className(it.label)} (not in the top ${entry.ids.length})`, m));
    }
    for (const p of panels) p.gt = entry.gt;
    $("d-panels").replaceChildren(...panels.map((p) => p.node));
    update();
    C.afterPaint(() => { C.timings.detail = performance.now() - t0; });
  }

  C.openDetail = function (pos) {
    if ($("detail").hidden) {
      gridScroll = window.scrollY;
      $("browse").hidden = true;
      $("detail").hidden = false;
      show(pos).then(() => $("d-title").focus());
    } else show(pos);
  };

  C.closeDetail = function () {
    if ($("detail").hidden) return;
    $("detail").hidden = true;
    $("browse").hidden = false;
    window.scrollTo(0, gridScroll);
    if (current !== null) C.focusCard(current);
  };

  function go(delta) {
    const order = list(), i = order.findIndex((x) => x.pos === current) + delta;
    if (i < 0 || i >= order.length) return;
    history.replaceState(null, "", `#image=${order[i].pos}`);
    show(order[i].pos);
  }

  function back() {
    history.replaceState(null, "", location.pathname + location.search);
    C.closeDetail();
  }

  function onKey(e) {
    if ($("detail").hidden || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "Escape") back();
    else if (/^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) return;  // sliders take the arrow keys
    else if (e.key === "ArrowLeft") go(-1);
    else if (e.key === "ArrowRight") go(1);
    else return;
    e.preventDefault();
  }

  C.initDetail = function () {
    $("d-threshold").value = R.threshold;
    $("d-opacity").value = R.alpha;
    $("d-gt-label").hidden = !R.has_boxes;
    for (const id of ["d-threshold", "d-opacity", "d-box", "d-gt"]) $(id).addEventListener("input", schedule);
    $("d-back").addEventListener("click", back);
    $("d-prev").addEventListener("click", () => go(-1));
    $("d-next").addEventListener("click", () => go(1));
    document.addEventListener("keydown", onKey);
  };
})();
