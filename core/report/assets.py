"""The report page's style sheet and script: plain CSS and a little vanilla JavaScript, inline,
so the page needs no network and no framework.

The script filters the cards by label and by text, sorts them by score or path, and keeps that
state in the URL fragment (``report.html#label=猫&sort=score-desc&q=beach``), so a filtered view
can be bookmarked or opened directly. It only sets ``hidden``, ``textContent`` and element order:
no user text is ever parsed as HTML.
"""

CSS = """
:root { color-scheme: light dark; --card: #fff; --line: #d0d4da; --muted: #5f6b7a; --bad: #b3261e; }
@media (prefers-color-scheme: dark) { :root { --card: #1e2227; --line: #3a414a; --muted: #9aa5b1; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", "PingFang SC",
       "Microsoft YaHei", sans-serif; }
header { position: sticky; top: 0; z-index: 1; padding: 10px 16px; background: Canvas;
         border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 16px 0 8px; }
.summary { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 0 0 8px; color: var(--muted); }
.summary div { display: flex; gap: 4px; } .summary dt { font-weight: 600; } .summary dd { margin: 0; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; }
main { padding: 0 16px 24px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 6px; overflow: hidden;
        content-visibility: auto; contain-intrinsic-size: 200px 320px; }
.card[hidden] { display: none; }
.thumb { display: flex; align-items: center; justify-content: center; height: 180px; background: #0001; }
.thumb img { max-width: 100%; max-height: 180px; object-fit: contain; }
.nothumb { color: var(--muted); padding: 8px; text-align: center; }
figcaption { padding: 6px 8px 8px; }
.path { font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.scores { list-style: none; margin: 4px 0 0; padding: 0; }
.scores li { display: grid; grid-template-columns: minmax(0, 1fr) 60px 44px; gap: 6px; align-items: center; }
.scores li.top .label { font-weight: 700; }
.label { overflow-wrap: anywhere; } .score { text-align: right; font-variant-numeric: tabular-nums; }
meter { width: 60px; }
.caption { margin: 4px 0 0; }
.card.error { border-color: var(--bad); }
.card.error .err { color: var(--bad); overflow-wrap: anywhere; margin: 4px 0 0; }
.note { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
"""

JS = """
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var grids = Array.prototype.slice.call(document.querySelectorAll(".grid"));
  var label = document.getElementById("label"), sort = document.getElementById("sort");
  var q = document.getElementById("q"), shown = document.getElementById("shown");
  function state() {
    var p = new URLSearchParams(location.hash.slice(1));
    return { label: p.get("label") || "", sort: p.get("sort") || "file", q: p.get("q") || "" };
  }
  function key(card, how) {
    if (how === "path") { return card.dataset.path; }
    var s = card.dataset.score === "" ? NaN : Number(card.dataset.score);
    return isNaN(s) ? (how === "score-asc" ? Infinity : -Infinity) : s;
  }
  function order(how) {
    grids.forEach(function (grid) {
      var items = Array.prototype.slice.call(grid.children);
      items.sort(function (a, b) {
        if (how === "file") { return Number(a.dataset.order) - Number(b.dataset.order); }
        var x = key(a, how), y = key(b, how);
        if (how === "path") { return x < y ? -1 : x > y ? 1 : 0; }
        var d = how === "score-asc" ? x - y : y - x;
        return d || Number(a.dataset.order) - Number(b.dataset.order);
      });
      items.forEach(function (item) { grid.appendChild(item); });
    });
  }
  function apply() {
    var s = state(), n = 0;
    label.value = s.label; sort.value = s.sort; q.value = s.q;
    cards.forEach(function (card) {
      var labels = JSON.parse(card.dataset.labels);
      var ok = (!s.label || labels.indexOf(s.label) >= 0) && (!s.q || card.dataset.text.indexOf(s.q.toLowerCase()) >= 0);
      card.hidden = !ok;
      if (ok) { n += 1; }
    });
    order(s.sort);
    shown.textContent = n + " of " + cards.length + " shown";
  }
  function update() {
    var p = new URLSearchParams();
    if (label.value) { p.set("label", label.value); }
    if (sort.value !== "file") { p.set("sort", sort.value); }
    if (q.value) { p.set("q", q.value); }
    history.replaceState(null, "", "#" + p.toString());
    apply();
  }
  label.addEventListener("change", update);
  sort.addEventListener("change", update);
  q.addEventListener("input", update);
  window.addEventListener("hashchange", apply);
  apply();
})();
"""
