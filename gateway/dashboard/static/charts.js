// A tiny SVG chart renderer: line charts and stacked bars over a time axis, nothing else.
// Hand-written so that the page needs no charting library, no build step and no CDN.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 220, PAD = {l: 64, r: 36, t: 10, b: 26};
  const PALETTE = ["#2f6fed", "#e8a33d", "#1f9d55", "#9b59b6", "#d64545", "#16a2b8", "#7f8c8d", "#c0392b"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
    return 10 * p;
  }

  // half: domain padding on each side, in x units (bars centred on their x need half a step).
  function frame(target, xs, yMax, yFormat, half) {
    target.textContent = "";
    const svg = el("svg", {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img"}, target);
    const x0 = xs[0] - (half || 0);
    const x1 = Math.max(x0 + 1, xs[xs.length - 1] + (half || 0));
    const sx = (x) => PAD.l + (x - x0) / (x1 - x0) * (W - PAD.l - PAD.r);
    const sy = (y) => H - PAD.b - y / yMax * (H - PAD.t - PAD.b);
    for (let i = 0; i <= 4; i++) {
      const y = yMax * i / 4;
      el("line", {x1: PAD.l, x2: W - PAD.r, y1: sy(y), y2: sy(y), stroke: "#e2e5eb"}, svg);
      el("text", {x: PAD.l - 6, y: sy(y) + 4, "text-anchor": "end"}, svg).textContent = yFormat(y);
    }
    const ticks = Math.min(6, xs.length);
    for (let i = 0; i < ticks; i++) {
      const x = xs[Math.round(i * (xs.length - 1) / Math.max(1, ticks - 1))];
      const label = new Date(x * 1000);
      const text = (x1 - x0) > 86400 ? label.toLocaleDateString([], {month: "short", day: "numeric"}) + " " +
        label.toLocaleTimeString([], {hour: "2-digit"}) : label.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
      el("text", {x: sx(x), y: H - 8, "text-anchor": "middle"}, svg).textContent = text;
    }
    return {svg, sx, sy};
  }

  function legend(target, names) {
    const box = document.createElement("div");
    box.className = "legend";
    names.forEach((name, i) => {
      const item = document.createElement("span");
      item.innerHTML = `<i style="background:${PALETTE[i % PALETTE.length]}"></i>`;
      item.appendChild(document.createTextNode(name));
      box.appendChild(item);
    });
    target.appendChild(box);
  }

  // series: [{name, values: [y per x], fill?: bool}]
  function lines(target, xs, series, yFormat) {
    const yMax = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
    const {svg, sx, sy} = frame(target, xs, yMax, yFormat);
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const points = s.values.map((y, j) => `${sx(xs[j])},${sy(y)}`).join(" ");
      if (s.fill) el("polygon", {points: `${sx(xs[0])},${sy(0)} ${points} ${sx(xs[xs.length - 1])},${sy(0)}`,
                                 fill: color, opacity: 0.12}, svg);
      el("polyline", {points, fill: "none", stroke: color, "stroke-width": 2}, svg);
    });
    legend(target, series.map((s) => s.name));
  }

  // stacks: [{name, values: [count per x]}], drawn bottom-up in order.
  function stacked(target, xs, stacks, yFormat) {
    const totals = xs.map((_, j) => stacks.reduce((sum, s) => sum + s.values[j], 0));
    const yMax = niceMax(Math.max(0, ...totals));
    const half = xs.length > 1 ? (xs[1] - xs[0]) / 2 : 30;
    const {svg, sx, sy} = frame(target, xs, yMax, yFormat, half);
    const step = sx(xs[0] + 2 * half) - sx(xs[0]);
    const width = Math.max(1, step * 0.8);
    xs.forEach((x, j) => {
      let base = 0;
      stacks.forEach((s, i) => {
        const v = s.values[j];
        if (v > 0) {
          const rect = el("rect", {x: sx(x) - width / 2, y: sy(base + v), width, height: sy(base) - sy(base + v),
                                   fill: PALETTE[i % PALETTE.length]}, svg);
          el("title", {}, rect).textContent = `${s.name}: ${v}`;
        }
        base += v;
      });
    });
    legend(target, stacks.map((s) => s.name));
  }

  window.Charts = {lines, stacked, PALETTE};
})();
