"use strict";
// The grid: filters, sorting and search over every image, cards added a page at a time as the list scrolls (the
// DOM holds what was scrolled to, not 10,000 cards), lazy thumbnails, arrow-key moves, and the #image=N route.
window.CamReport = window.CamReport || {};
(function () {
  const R = window.CAM_REPORT, C = window.CamReport;
  const PAGE = 120;
  const $ = (id) => document.getElementById(id);
  const collator = new Intl.Collator("en", { numeric: true });
  C.timings = {};

  const items = R.items.map((row, pos) => {
    const [file, name, pred, prob, label, w, h] = row;
    const it = { pos, file, name, pred, prob, label: label < 0 ? null : label, w, h };
    it.wrong = it.label !== null && it.label !== it.pred;
    it.text = [name, C.className(pred), it.label === null ? "" : C.className(it.label)].join(" ").toLowerCase();
    return it;
  });
  C.items = items;
  C.view = [];  // the matching items, in the chosen order
  let shown = 0;

  const SORTS = {
    input: (a, b) => a.pos - b.pos,
    "prob-desc": (a, b) => b.prob - a.prob || a.pos - b.pos,
    "prob-asc": (a, b) => a.prob - b.prob || a.pos - b.pos,
    name: (a, b) => collator.compare(a.name, b.name) || a.pos - b.pos,
  };

  function matching() {
    const show = $("f-show").value, pred = +$("f-pred").value, truth = +$("f-true").value;
    const q = $("f-search").value.trim().toLowerCase();
    return items.filter((it) =>
      (show === "all" || (show === "wrong" ? it.wrong : it.label !== null && !it.wrong)) &&
      (pred < 0 || it.pred === pred) && (truth < 0 || it.label === truth) && (!q || it.text.includes(q)));
  }

  C.describe = function (it) {
    let s = `${it.name}: predicted ${C.className(it.pred)}, ${C.pct(it.prob)}`;
    if (it.label !== null) s += it.wrong ? `; true class ${C.className(it.label)}, wrong` : "; right";
    return s;
  };

  function card(it) {
    const s = Math.min(1, 192 / Math.max(it.w, it.h));
    const img = C.el("img", { src: `report/thumbs/${it.file}.jpg`, alt: C.describe(it), loading: "lazy",
      decoding: "async", width: Math.max(1, Math.round(it.w * s)), height: Math.max(1, Math.round(it.h * s)) });
    const link = C.el("a", { href: `#image=${it.pos}`, "data-pos": it.pos, class: "card-link" },
      C.el("span", { class: "thumb" }, img), C.el("span", { class: "name" }, it.name),
      C.el("span", { class: "pred" }, `${C.className(it.pred)} ${C.pct(it.prob)}`));
    if (it.label !== null) {
      link.append(C.el("span", { class: "truth" }, `true: ${C.className(it.label)}`));
      link.append(C.el("span", { class: it.wrong ? "mark wrong" : "mark right" }, it.wrong ? "✗ wrong" : "✓ right"));
    }
    return C.el("li", { class: it.wrong ? "card is-wrong" : "card" }, link);
  }

  function showMore() {
    const end = Math.min(C.view.length, shown + PAGE), frag = document.createDocumentFragment();
    for (let i = shown; i < end; i++) frag.append(card(C.view[i]));
    $("grid").append(frag);
    shown = end;
    const left = C.view.length - shown;
    $("more").hidden = left === 0;
    $("more").textContent = `Show more (${left.toLocaleString("en")} left)`;
    $("count").textContent = `${C.view.length.toLocaleString("en")} of ${items.length.toLocaleString("en")} images` +
      (C.view.length > shown ? ` (the first ${shown.toLocaleString("en")} shown; more load as you scroll)` : "");
  }

  // Runs `fn` once the browser has painted what the current task changed (the bench's timer).
  C.afterPaint = (fn) => requestAnimationFrame(() => setTimeout(fn, 0));

  function apply() {
    const t0 = performance.now();
    C.view = matching().sort(SORTS[$("f-sort").value]);
    $("grid").replaceChildren();
    shown = 0;
    showMore();
    C.afterPaint(() => { C.timings.filter = performance.now() - t0; });
  }

  C.showPair = function (truth, pred) {
    $("f-show").value = "all";
    $("f-true").value = String(truth);
    $("f-pred").value = String(pred);
    $("f-search").value = "";
    apply();
    $("grid").scrollIntoView();
  };

  // Arrow keys move the focus between cards; up and down keep the column.
  function onGridKey(e) {
    const link = e.target.closest && e.target.closest(".card-link");
    if (!link) return;
    const cards = Array.from($("grid").children);
    const i = cards.indexOf(link.parentElement);
    const columns = getComputedStyle($("grid")).gridTemplateColumns.split(" ").length || 1;
    const steps = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns };
    let j;
    if (e.key === "Home") j = 0;
    else if (e.key === "End") j = cards.length - 1;
    else if (e.key in steps) j = i + steps[e.key];
    else return;
    e.preventDefault();
    if (j >= cards.length && shown < C.view.length) showMore();
    const now = $("grid").children;
    j = Math.max(0, Math.min(now.length - 1, j));
    now[j].firstChild.focus();
  }

  C.focusCard = function (pos) {
    let i = C.view.findIndex((it) => it.pos === pos);
    if (i < 0) return;
    while (i >= shown) showMore();
    const link = $("grid").children[i].firstChild;
    link.focus();
    link.scrollIntoView({ block: "nearest" });
  };

  function route() {
    const m = /^#image=(\d+)$/.exec(location.hash);
    if (m && +m[1] < items.length) C.openDetail(+m[1]);
    else C.closeDetail();
  }

  function init() {
    const options = (id) => R.classes.forEach((n, c) => $(id).append(C.el("option", { value: c }, n)));
    options("f-pred");
    options("f-true");
    if (!R.has_labels) {
      $("f-show").closest("label").hidden = true;
      $("f-true").closest("label").hidden = true;
    }
    for (const id of ["f-show", "f-pred", "f-true", "f-sort"]) $(id).addEventListener("change", apply);
    $("f-search").addEventListener("input", apply);
    $("more").addEventListener("click", showMore);
    $("grid").addEventListener("keydown", onGridKey);
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((es) => { if (es.some((e) => e.isIntersecting) && shown < C.view.length) showMore(); },
        { rootMargin: "600px" }).observe($("more"));
    }
    C.renderSummary();
    C.initDetail();
    apply();
    window.addEventListener("hashchange", route);
    route();
    C.afterPaint(() => { C.timings.firstPaint = performance.now(); C.ready = true; });
  }

  document.addEventListener("DOMContentLoaded", init);
})();
