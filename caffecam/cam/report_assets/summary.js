"use strict";
// The run's line under the title and the Summary: accuracy, per-class table, confusion matrix, failures. Every
// number comes from report/data.js as Python computed it (localization: LocalizationTally, as eval_loc.py).
window.CamReport = window.CamReport || {};
(function () {
  const R = window.CAM_REPORT, C = window.CamReport;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }
  C.el = el;
  C.pct = (p) => (p === null || p === undefined ? "–" : p > 0 && p < 0.0005 ? "< 0.1 %" : (100 * p).toFixed(1) + " %");
  C.className = (c) => R.classes[c] !== undefined ? R.classes[c] : "class " + c;

  function table(caption, head, rows) {
    const t = el("table", {}, el("caption", {}, caption));
    t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))));
    const body = el("tbody");
    for (const r of rows) body.append(el("tr", {}, el("th", { scope: "row" }, r[0]), ...r.slice(1).map((v) => el("td", {}, v))));
    t.append(body);
    return el("div", { class: "scroll" }, t);
  }

  function runInfo() {
    const parts = [`${R.items.length.toLocaleString("en")} images`, `box threshold ${R.threshold}`, `written ${R.created}`];
    for (const [k, v] of Object.entries(R.info || {})) parts.push(`${k}: ${v}`);
    if (R.failures.length) parts.push(`${R.failures.length} could not be read (listed under the per-class numbers)`);
    document.getElementById("run-info").textContent = parts.join(" · ");
  }

  function overview(body) {
    const cls = R.classification, loc = R.localization;
    if (cls) {
      body.append(el("p", { id: "s-accuracy" }, `Top-1 accuracy: ${C.pct(cls.accuracy)} (${cls.right} of ${cls.images} labelled images right).`));
    } else {
      body.append(el("p", {}, "No true classes: give a list file (`path label` per line) as the input for accuracy."));
    }
    if (loc) {
      body.append(el("p", { id: "s-localization" },
        `Top-1 localization: ${C.pct(loc.loc_accuracy)}, GT-known localization: ${C.pct(loc.gt_known_loc_accuracy)} ` +
        `(IoU ≥ ${loc.iou_threshold} with a ground-truth box, box threshold ${loc.threshold}; ${loc.images} images scored` +
        (loc.unscored ? `, ${loc.unscored} without a box` : "") + ")."));
    }
  }

  function perClass(body) {
    const cls = R.classification, loc = R.localization;
    const byClass = new Map(((loc && loc.per_class) || []).map((p) => [p.class_id, p]));
    const head = ["Class", "Predicted"];
    if (cls) head.push("True", "Right", "Accuracy");
    if (loc) head.push("Top-1 loc.", "GT-known loc.");
    const rows = R.classes.map((name, c) => {
      const row = [name, String(R.predicted[c])];
      if (cls) {
        const p = cls.per_class[c];
        row.push(String(p.images), String(p.right), C.pct(p.accuracy));
      }
      if (loc) {
        const p = byClass.get(c);
        row.push(p ? C.pct(p.loc_accuracy) : "–", p ? C.pct(p.gt_known_loc_accuracy) : "–");
      }
      return row;
    });
    const t = table("Per class (images by true class; localization at the box threshold above)", head, rows);
    t.id = "s-per-class";
    body.append(t);
  }

  // Rows: true class; columns: predicted. A cell's button shows those images in the grid.
  function confusion(body) {
    const m = R.classification.confusion;
    const t = el("table", { id: "s-confusion", class: "confusion" },
      el("caption", {}, "Confusion matrix: rows are true classes, columns predicted ones; choose a count to see its images"));
    t.append(el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "true \\ predicted"),
      ...R.classes.map((n) => el("th", { scope: "col" }, n)))));
    const tb = el("tbody");
    m.forEach((row, i) => {
      const tr = el("tr", {}, el("th", { scope: "row" }, R.classes[i]));
      row.forEach((n, j) => {
        const td = el("td", { class: n === 0 ? "zero" : i === j ? "right" : "wrong" });
        if (n > 0) {
          const b = el("button", { type: "button", "aria-label": `${n} images of ${R.classes[i]} predicted as ${R.classes[j]}` }, String(n));
          b.addEventListener("click", () => C.showPair(i, j));
          td.append(b);
        } else td.append("0");
        tr.append(td);
      });
      tb.append(tr);
    });
    t.append(tb);
    body.append(el("div", { class: "scroll" }, t));
  }

  function failures(body) {
    if (!R.failures.length) return;
    const list = el("ul", { id: "s-failures" });
    for (const [, message] of R.failures) list.append(el("li", {}, message));
    body.append(el("h3", {}, `Not in the report: ${R.failures.length} image(s) that failed`), list);
  }

  C.renderSummary = function () {
    runInfo();
    overview(document.getElementById("overview"));
    const body = document.getElementById("summary-body");
    perClass(body);
    if (R.classification) confusion(body);
    failures(body);
  };
})();
