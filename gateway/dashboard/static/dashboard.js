// The dashboard: polls /v1/gateway/dashboard/overview and /requests, renders with charts.js.
// Every figure shown carries its raw value in data-value, as the API returned it.
"use strict";
(function () {
  const KEY = "slmgw-admin-key";
  const state = {window: new URLSearchParams(location.search).get("window") || "1h", timer: null};
  const $ = (id) => document.getElementById(id);
  const usd = (v) => v === null || v === undefined ? "—" : (v < 0 ? "−$" : "$") + Math.abs(v).toFixed(6);
  const ms = (v) => v === null || v === undefined ? "—" : v.toFixed(1);
  const pct = (v) => v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%";
  const num = (v) => v === null || v === undefined ? "—" : String(v);

  async function api(path) {
    const headers = {};
    const key = sessionStorage.getItem(KEY);
    if (key) headers.authorization = "Bearer " + key;
    const answer = await fetch(path, {headers, cache: "no-store"});
    if (answer.status === 401 || answer.status === 403) {
      // Session cookie without a key in this tab (or a changed key): sign in again.
      sessionStorage.removeItem(KEY);
      await fetch("/dashboard/logout", {method: "POST"});
      location.reload();
      throw new Error("authentication needed");
    }
    if (!answer.ok) throw new Error((await answer.json()).error?.message || answer.statusText);
    return answer.json();
  }

  function cell(row, text, value, test) {
    const td = document.createElement("td");
    td.textContent = text;
    if (value !== undefined && value !== null) td.dataset.value = value;
    if (test) td.dataset.testid = test;
    row.appendChild(td);
    return td;
  }

  function table(target, headings, rows) {
    target.textContent = "";
    const head = target.createTHead().insertRow();
    for (const h of headings) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
    const body = target.createTBody();
    if (!rows.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = headings.length; td.className = "empty"; td.textContent = "no requests in this window";
    }
    return body;
  }

  function kpis(totals) {
    const items = [
      ["requests", "Requests", num(totals.requests), totals.requests, ""],
      ["cost", "Spent", usd(totals.cost_usd), totals.cost_usd, ""],
      ["reference", "Same traffic on the reference LLM", usd(totals.reference_cost_usd), totals.reference_cost_usd, ""],
      ["savings", "Saved", usd(totals.savings_usd), totals.savings_usd, totals.savings_usd >= 0 ? "good" : "bad"],
      ["escalated", "Escalated", num(totals.escalated), totals.escalated, ""],
      ["errors", "Errors", num(totals.errors), totals.errors, totals.errors ? "bad" : ""],
    ];
    const box = $("kpis");
    box.textContent = "";
    for (const [id, label, text, value, tone] of items) {
      const div = document.createElement("div");
      div.className = "kpi";
      div.innerHTML = `<div class="label"></div><div class="value ${tone}"></div>`;
      div.querySelector(".label").textContent = label;
      const v = div.querySelector(".value");
      v.textContent = text; v.dataset.value = value; v.dataset.testid = "kpi-" + id;
      box.appendChild(div);
    }
  }

  function charts(data) {
    const xs = data.series.map((p) => p.t);
    let spent = 0, reference = 0;
    const cumSpent = [], cumReference = [], cumSaved = [];
    for (const p of data.series) {
      spent += p.cost_usd; reference += p.reference_cost_usd;
      cumSpent.push(spent); cumReference.push(reference); cumSaved.push(Math.max(0, reference - spent));
    }
    Charts.lines($("cost-chart"), xs, [
      {name: "spent", values: cumSpent}, {name: "reference LLM", values: cumReference},
      {name: "saved", values: cumSaved, fill: true}], (y) => "$" + y.toPrecision(2));
    const routes = data.usage.route.map((g) => g.key);
    Charts.stacked($("route-chart"), xs,
      routes.map((r) => ({name: r, values: data.series.map((p) => p.routes[r] || 0)})),
      (y) => Number.isInteger(y) ? String(y) : y.toFixed(1));
  }

  function routesTable(groups) {
    const body = table($("routes-table"), ["route", "requests", "p50", "p95", "p99", "TTFT p50", "TTFT p95",
                                           "cost", "saved", "escalation"], groups);
    for (const g of groups) {
      const row = body.insertRow();
      row.dataset.route = g.key;
      cell(row, g.key, g.key, "route");
      cell(row, num(g.requests), g.requests, "requests");
      for (const q of ["p50", "p95", "p99"]) cell(row, ms(g.latency_ms[q]), g.latency_ms[q], "latency-" + q);
      for (const q of ["p50", "p95"]) cell(row, ms(g.ttft_ms[q]), g.ttft_ms[q], "ttft-" + q);
      cell(row, usd(g.cost_usd), g.cost_usd, "cost");
      cell(row, usd(g.savings_usd), g.savings_usd, "savings");
      cell(row, pct(g.escalation_rate), g.escalation_rate, "escalation");
    }
  }

  function bars(target, items, emptyText) {
    target.textContent = "";
    if (!items.length) { target.innerHTML = `<p class="empty"></p>`; target.firstChild.textContent = emptyText; return; }
    for (const item of items) {
      const row = document.createElement("div");
      row.className = "bar-row"; row.dataset.key = item.key;
      row.innerHTML = `<span></span><div class="bar"><span></span></div><span></span>`;
      row.children[0].textContent = item.key;
      const fill = row.children[1].firstChild;
      fill.style.width = Math.min(100, Math.max(0, 100 * item.fraction)) + "%";
      if (item.tone) fill.className = item.tone;
      row.children[2].textContent = item.text;
      row.children[2].dataset.value = item.value;
      row.children[2].dataset.testid = item.testid;
      target.appendChild(row);
    }
  }

  function panels(data) {
    bars($("cascades"), data.cascades.map((c) => ({key: c.model, fraction: c.escalation_rate, tone: "warn",
      text: `${pct(c.escalation_rate)} of ${c.requests}`, value: c.escalation_rate, testid: "escalation-rate"})),
      "no cascade in the policy");
    const spec = $("speculative");
    bars(spec, data.speculative.map((s) => ({key: s.model, fraction: s.acceptance_rate || 0,
      text: `${pct(s.acceptance_rate)} · ${s.tokens_per_target_pass === null ? "—" : s.tokens_per_target_pass.toFixed(2)} tok/pass`,
      value: s.acceptance_rate, testid: "acceptance-rate"})), "no speculative route in the policy");
    const errors = data.usage.status.filter((g) => g.key !== "ok");
    const most = Math.max(1, ...errors.map((g) => g.requests));
    bars($("errors"), errors.map((g) => ({key: g.key, fraction: g.requests / most, tone: "bad",
      text: num(g.requests), value: g.requests, testid: "error-count"})), "no errors in this window");
    bars($("keys"), data.keys.map((k) => ({key: k.name ? `${k.name} (${k.key_id})` : k.key_id,
      fraction: k.budget_usd ? (k.spent_usd || 0) / k.budget_usd : 0, tone: k.budget_usd && k.spent_usd / k.budget_usd > 0.9 ? "bad" : "",
      text: usd(k.cost_usd) + (k.budget_usd ? ` · ${pct((k.spent_usd || 0) / k.budget_usd)} of ${usd(k.budget_usd)}` : ""),
      value: k.cost_usd, testid: "key-cost"})), "no key spent anything in this window");
  }

  function requestsTable(rows) {
    const body = table($("requests-table"), ["time", "model", "route", "status", "tokens in/out", "cost", "latency",
                                             "TTFT"], rows);
    for (const r of rows) {
      const row = body.insertRow();
      row.dataset.requestId = r.request_id;
      cell(row, new Date(r.created_at * 1000).toLocaleTimeString());
      cell(row, r.public_model); cell(row, r.route || "—", r.route, "route");
      cell(row, r.status, r.status, "status").className = r.status === "ok" ? "status-ok" : "status-err";
      cell(row, `${r.prompt_tokens} / ${r.completion_tokens}`);
      cell(row, usd(r.cost_usd), r.cost_usd, "cost");
      cell(row, ms(r.latency_ms), r.latency_ms, "latency"); cell(row, ms(r.ttft_ms), r.ttft_ms, "ttft");
      row.addEventListener("click", () => openRecord(r.request_id));
    }
  }

  function facts(pairs) {
    const dl = document.createElement("dl");
    dl.className = "facts";
    for (const [name, value] of pairs) {
      if (value === undefined) continue;
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.textContent = typeof value === "object" && value !== null ?
        JSON.stringify(value) : String(value);
      dd.dataset.field = name;
      dl.append(dt, dd);
    }
    return dl;
  }

  async function openRecord(id) {
    const record = await api("/v1/gateway/requests/" + encodeURIComponent(id));
    $("detail-title").textContent = id;
    const body = $("detail-body");
    body.textContent = "";
    const extra = record.extra || {};
    body.appendChild(facts([
      ["model", record.public_model], ["route", record.route], ["status", `${record.status} (${record.http_status})`],
      ["tokens in / out", `${record.prompt_tokens} / ${record.completion_tokens}`], ["cost", usd(record.cost_usd)],
      ["wasted on unused calls", usd(record.wasted_cost_usd)], ["reference LLM cost", usd(record.reference_cost_usd)],
      ["saved", usd(record.savings_usd)], ["latency ms", ms(record.latency_ms)], ["TTFT ms", ms(record.ttft_ms)],
      ["cascade confidence", record.confidence === null ? undefined : record.confidence],
      ["escalated", record.escalated === null ? undefined : record.escalated],
      ["rule", record.rule || undefined], ["fallback", record.fallback || undefined],
      ["router decision", extra.router_decision], ["router score", extra.router_score],
      ["early exit", extra.early_exit], ["hand-off", extra.handoffs ?? extra.handoff_fallback],
      ["speculative", extra.speculative ? `${pct(extra.speculative.acceptance_rate)} accepted, ` +
        `${extra.speculative.emitted} tokens in ${extra.speculative.target_passes} target passes` : undefined],
    ]));
    const h = document.createElement("h3"); h.textContent = `Upstream calls (${record.calls.length})`;
    body.appendChild(h);
    const calls = document.createElement("table");
    calls.className = "data"; calls.id = "calls-table";
    const tbody = table(calls, ["#", "backend", "model", "purpose", "used", "status", "tokens in/out", "cost",
                                "latency", "TTFT"], record.calls);
    record.calls.forEach((c, i) => {
      const row = tbody.insertRow();
      cell(row, String(i + 1)); cell(row, c.backend, c.backend, "backend"); cell(row, c.model);
      cell(row, c.purpose, c.purpose, "purpose"); cell(row, c.used ? "yes" : "discarded", c.used, "used");
      cell(row, c.status, c.status, "status"); cell(row, `${c.prompt_tokens} / ${c.completion_tokens}`);
      cell(row, usd(c.cost_usd), c.cost_usd, "cost"); cell(row, ms(c.latency_ms)); cell(row, ms(c.ttft_ms));
    });
    body.appendChild(calls);
    const raw = document.createElement("details");
    raw.innerHTML = "<summary>full record (JSON)</summary><pre class=raw></pre>";
    raw.querySelector("pre").textContent = JSON.stringify(record, null, 2);
    body.appendChild(raw);
    $("detail").hidden = false;
  }

  async function refresh() {
    clearTimeout(state.timer);
    let delay = 5000;
    try {
      const [data, latest] = await Promise.all([
        api("/v1/gateway/dashboard/overview?window=" + state.window), api("/v1/gateway/dashboard/requests?limit=25")]);
      kpis(data.totals); charts(data); routesTable(data.usage.route); panels(data); requestsTable(latest.data);
      $("status").textContent = `updated ${new Date(data.generated_at * 1000).toLocaleTimeString()} · every ${data.refresh_s} s`;
      $("status").dataset.generatedAt = data.generated_at;
      delay = data.refresh_s * 1000;
    } catch (error) {
      $("status").textContent = "refresh failed: " + error.message;
    }
    state.timer = setTimeout(refresh, delay);
  }

  function selectWindow(name) {
    state.window = name;
    for (const b of document.querySelectorAll("#windows button")) b.classList.toggle("active", b.dataset.window === name);
    history.replaceState(null, "", "?window=" + name);
    refresh();
  }

  for (const b of document.querySelectorAll("#windows button")) b.addEventListener("click", () => selectWindow(b.dataset.window));
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  selectWindow(state.window);
})();
