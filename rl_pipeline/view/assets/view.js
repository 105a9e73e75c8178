// rlp view: draws one run's curves, samples, recipe and report from the JSON embedded in the page
// (rl_pipeline/view/page.py). No network: Chart.js is inlined above. Texts from the run are set
// with textContent only (a completion is data, never markup). The selection lives in the URL's
// hash, so a reload (`rlp view --serve` reloads when the run moves on) keeps it.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("run-data").textContent);
  const PREFERRED = ["reward/total/mean", "eval/accuracy", "eval/pass@4", "policy/kl_ref", "rollout/response_length/mean",
    "policy/entropy", "rollout/logprob_diff_mean", "loss", "eval/loss", "train/accuracy", "tokens_per_s"];
  const state = Object.assign({stage: null, step: null, kind: "all", colour: "gap", prompt: "", curves: null},
    readHash());
  const KIND_NAMES = {train: "trained on", eval: "held-out", distill: "distillation answers"};
  const charts = [];
  let stage = null;

  function readHash() {
    const out = {};
    new URLSearchParams(location.hash.slice(1)).forEach((v, k) => { out[k] = v; });
    if (out.stage !== undefined) out.stage = Number(out.stage);
    if (out.step !== undefined) out.step = Number(out.step);
    if (out.curves !== undefined) out.curves = out.curves ? out.curves.split(",") : [];
    return out;
  }

  function writeHash() {
    const params = new URLSearchParams({stage: state.stage, kind: state.kind, colour: state.colour,
      prompt: state.prompt, curves: (state.curves || []).join(",")});
    if (state.step !== null) params.set("step", state.step);
    history.replaceState(null, "", "#" + params.toString());
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => { if (k === "class") node.className = v; else node.setAttribute(k, v); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined) return "-";
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(digits === undefined ? 3 : digits);
  }

  function small(value) {  // a logprob gap: float32 noise (1e-7) reads as such, not as 0.00000
    return typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3 ? value.toExponential(1) : fmt(value, 4);
  }

  function tick(value) {  // 4e-7 rather than 4.00000000E-7; 0.95 and 12,000 as they are
    return value !== 0 && Math.abs(value) < 1e-3 ? value.toExponential(1) : Number(value.toPrecision(6)).toLocaleString("en");
  }

  // ------------------------------------------------------------------ stages
  function showStages() {
    document.getElementById("run-name").textContent = DATA.run;
    document.getElementById("made").textContent = "written " + DATA.written + (DATA.serve ? " · refreshes while the run goes" : "");
    const nav = document.getElementById("stages");
    DATA.stages.forEach((s, i) => {
      const button = el("button", {type: "button"}, s.name);
      button.addEventListener("click", () => { state.stage = i; state.step = null; state.curves = null; showStage(); });
      nav.appendChild(button);
    });
    if (!(Number.isInteger(state.stage) && state.stage >= 0 && state.stage < DATA.stages.length)) {  // the last stage with samples (GRPO's), else the last
      const withSamples = DATA.stages.map((s, i) => s.samples.length ? i : -1).filter((i) => i >= 0);
      state.stage = withSamples.length ? withSamples[withSamples.length - 1] : DATA.stages.length - 1;
    }
  }

  function showStage() {
    stage = DATA.stages[state.stage];
    Array.from(document.getElementById("stages").children).forEach((b, i) => b.classList.toggle("active", i === state.stage));
    const keys = Object.keys(stage.curves.series);
    if (!state.curves || !state.curves.every((k) => keys.includes(k))) {
      state.curves = PREFERRED.filter((k) => keys.includes(k));
      if (!state.curves.length) state.curves = keys.filter((k) => !k.startsWith("time/")).slice(0, 6);
    }
    showCurves();
    showTimes();
    showStepControls();
    showFollow();
    document.getElementById("recipe").textContent = stage.recipe || "(no recipe.yaml in this stage's folder)";
    document.getElementById("report").textContent = DATA.report || "(no report.md in this run directory)";
    document.getElementById("report-section").hidden = !DATA.report;
    writeHash();
  }

  // ------------------------------------------------------------------ curves
  function points(key) {
    const values = stage.curves.series[key] || [];
    return stage.curves.steps.map((x, i) => ({x: x, y: values[i]})).filter((p) => p.y !== null && p.y !== undefined);
  }

  function showCurves() {
    charts.splice(0).forEach((c) => c.destroy());
    const box = document.getElementById("curves");
    box.replaceChildren();
    state.curves.forEach((key) => {
      const holder = el("div", {class: "chart-box"});
      const remove = el("button", {class: "remove", title: "remove this curve", type: "button"}, "\u00d7");
      remove.addEventListener("click", () => { state.curves = state.curves.filter((k) => k !== key); showCurves(); writeHash(); });
      const canvas = el("canvas");
      holder.append(remove, canvas);
      box.appendChild(holder);
      const data = points(key);
      charts.push(new Chart(canvas, {
        type: "line",
        data: {datasets: [{label: key, data: data, borderColor: "#4f8cff", backgroundColor: "#4f8cff",
          borderWidth: 1.5, pointRadius: data.length < 40 ? 2 : 0, tension: 0}]},
        options: {animation: false, maintainAspectRatio: false, parsing: false, normalized: true,
          interaction: {mode: "nearest", intersect: false, axis: "x"},
          plugins: {legend: {display: false}, title: {display: true, text: key}},
          scales: {x: {type: "linear", title: {display: true, text: "step"}}, y: {ticks: {callback: tick}}},
          onClick: (event, active) => { if (active.length) goToStep(data[active[0].index].x); }},
      }));
    });
    const picker = document.getElementById("add-curve");
    picker.replaceChildren(el("option", {value: ""}, "(choose a metric)"));
    Object.keys(stage.curves.series).filter((k) => !state.curves.includes(k))
      .forEach((k) => picker.appendChild(el("option", {value: k}, k)));
    picker.onchange = () => {
      if (picker.value) { state.curves.push(picker.value); showCurves(); writeHash(); }
    };
  }

  function showTimes() {
    const keys = Object.keys(stage.curves.series).filter((k) => k.startsWith("time/") && k !== "time/step");
    const section = document.getElementById("time-section");
    section.hidden = !keys.length;
    if (!keys.length) return;
    const palette = ["#4f8cff", "#f5a623", "#50c878", "#e94f64", "#9b6bff", "#2bb6c4", "#8d6e63", "#b0b7c3"];
    charts.push(new Chart(document.getElementById("time-chart"), {
      type: "bar",
      data: {labels: stage.curves.steps, datasets: keys.map((k, i) => ({label: k.slice(5),
        data: stage.curves.series[k].map((v) => v === null ? 0 : v), backgroundColor: palette[i % palette.length]}))},
      options: {animation: false, maintainAspectRatio: false,
        scales: {x: {stacked: true, title: {display: true, text: "step"}}, y: {stacked: true}},
        onClick: (event, active) => { if (active.length) goToStep(stage.curves.steps[active[0].index]); }},
    }));
  }

  // ------------------------------------------------------------------ samples of one step
  function sampleSteps() {
    return Array.from(new Set(stage.samples.map((r) => r.step))).sort((a, b) => a - b);
  }

  function goToStep(step) {
    const steps = sampleSteps();
    if (!steps.length) return;
    state.step = steps.reduce((best, s) => Math.abs(s - step) < Math.abs(best - step) ? s : best, steps[0]);
    showStep();
    document.getElementById("samples-section").scrollIntoView({behavior: "smooth"});
  }

  function showStepControls() {
    const steps = sampleSteps();
    const slider = document.getElementById("step-slider");
    const select = document.getElementById("step-select");
    select.replaceChildren(...steps.map((s) => el("option", {value: s}, s)));
    slider.max = Math.max(steps.length - 1, 0);
    slider.oninput = () => { state.step = steps[Number(slider.value)]; showStep(); };
    select.onchange = () => { state.step = Number(select.value); showStep(); };
    document.getElementById("prev-step").onclick = () => move(-1);
    document.getElementById("next-step").onclick = () => move(+1);
    const kind = document.getElementById("kind-select");
    const kinds = Array.from(new Set(stage.samples.map((r) => r.kind)));
    kind.replaceChildren(el("option", {value: "all"}, "all"), ...kinds.map((k) => el("option", {value: k}, KIND_NAMES[k] || k)));
    if (state.kind !== "all" && !kinds.includes(state.kind)) state.kind = "all";
    kind.value = state.kind;
    kind.onchange = () => { state.kind = kind.value; showStep(); };
    const colour = document.getElementById("colour-select");
    colour.value = state.colour;
    colour.onchange = () => { state.colour = colour.value; showStep(); showFollow(); };
    if (state.step === null || !steps.includes(state.step)) state.step = steps.length ? steps[steps.length - 1] : null;
    showStep();

    function move(delta) {
      const i = steps.indexOf(state.step) + delta;
      if (i >= 0 && i < steps.length) { state.step = steps[i]; showStep(); }
    }
  }

  function showStep() {
    const steps = sampleSteps();
    const box = document.getElementById("samples");
    box.replaceChildren();
    const note = [];
    if (!steps.length) note.push("This stage logged no samples (GRPO logs them: grpo.log_samples_every).");
    if (stage.samples_left_out) note.push(stage.samples_left_out + " logged steps left out to keep the page small (samples.jsonl has them all).");
    document.getElementById("samples-note").textContent = note.join(" ");
    document.querySelector("#samples-section .controls").hidden = !steps.length;
    if (state.step === null) { writeHash(); return; }
    document.getElementById("step-slider").value = steps.indexOf(state.step);
    document.getElementById("step-select").value = state.step;
    const rows = stage.samples.filter((r) => r.step === state.step && (state.kind === "all" || r.kind === state.kind));
    if (!rows.length) box.appendChild(el("p", {class: "empty"}, "nothing of this kind at step " + state.step));
    rows.forEach((row) => box.appendChild(groupCard(row)));
    writeHash();
  }

  function groupCard(row) {
    const card = el("div", {class: "group"});
    const titles = {train: "step " + row.step + " · group " + row.group + " (trained on)",
      eval: "step " + row.step + " · held-out prompt (greedy)",
      distill: "shard " + row.step + " · " + row.group + " answers to problem " + row.problem_id + " (kept or why not)"};
    card.append(el("div", {class: "group-title"}, titles[row.kind] || "step " + row.step + " · " + row.kind),
      el("pre", {class: "prompt"}, row.prompt));
    const table = el("table");
    const head = el("tr");
    const verdicts = row.completions.some((c) => c.verdict !== undefined);
    ["#", "reward", verdicts ? "verdict" : "advantage", "length", "finish", "logprob gap", "version", "tool calls", "completion"]
      .forEach((h) => head.appendChild(el("th", {}, h)));
    table.appendChild(head);
    row.completions.forEach((c, i) => {
      const tr = el("tr");
      const components = Object.entries(c.components || {}).map(([k, v]) => k + " " + fmt(v)).join(", ");
      [i + 1, fmt(c.reward), verdicts ? c.verdict : fmt(c.advantage), c.length, c.finish_reason, small(c.logprob_gap),
        fmt(c.policy_version), (c.tool_calls || []).map((t) => t.name + ":" + t.status).join(" ")]
        .forEach((v, j) => { const td = el("td", {class: j < 7 && j !== 2 ? "num" : ""}, v); if (j === 1 && components) td.title = components; tr.appendChild(td); });
      const text = el("td");
      text.appendChild(completionNode(c));
      tr.appendChild(text);
      table.appendChild(tr);
    });
    card.appendChild(table);
    return card;
  }

  // A completion as its tokens, each coloured by the chosen value; as plain text without tokens.
  function completionNode(c) {
    const node = el("div", {class: "completion"});
    if (!c.tokens || state.colour === "none") {
      node.textContent = c.text || "";
      if (state.colour === "advantage" && typeof c.advantage === "number") node.style.background = advantageColour(c.advantage);
      return node;
    }
    c.tokens.forEach((token, i) => {
      const gap = c.token_gap ? c.token_gap[i] : null;
      const advantage = c.token_advantage ? c.token_advantage[i] : c.advantage;
      const span = el("span", {class: gap === null && c.token_gap ? "t tool" : "t"}, token);
      span.title = "token " + JSON.stringify(token) + " · gap " + small(gap) + " · advantage " + fmt(advantage);
      const colour = state.colour === "gap" ? gapColour(gap) : advantageColour(advantage);
      if (colour) span.style.background = colour;
      node.appendChild(span);
    });
    return node;
  }

  function gapColour(gap) {  // |sampler - trainer|: 1e-3 faint, 1e-2 clear, >= 1 full red
    if (gap === null || gap === undefined) return null;
    const alpha = Math.min(1, Math.log10(1 + Math.abs(gap) * 1000) / 3);
    return alpha < 0.02 ? null : "rgba(233, 79, 100, " + alpha.toFixed(3) + ")";
  }

  function advantageColour(advantage) {  // blue pushed up, red pushed down
    if (typeof advantage !== "number" || advantage === 0) return null;
    const alpha = Math.min(1, Math.abs(advantage) / 2) * 0.6;
    return advantage > 0 ? "rgba(79, 140, 255, " + alpha.toFixed(3) + ")" : "rgba(233, 79, 100, " + alpha.toFixed(3) + ")";
  }

  // ------------------------------------------------------------------ one prompt over time
  function showFollow() {
    const byPrompt = new Map();
    stage.samples.forEach((row) => {
      const key = row.kind + "\u0000" + row.prompt;
      if (!byPrompt.has(key)) byPrompt.set(key, []);
      byPrompt.get(key).push(row);
    });
    const repeated = Array.from(byPrompt.entries()).filter(([, rows]) => new Set(rows.map((r) => r.step)).size > 1);
    const section = document.getElementById("follow-section");
    section.hidden = !repeated.length;
    if (!repeated.length) return;
    const select = document.getElementById("follow-select");
    select.replaceChildren(...repeated.map(([key, rows]) => el("option", {value: key},
      (rows[0].kind === "eval" ? "held-out: " : "train: ") + rows[0].prompt.replace(/\s+/g, " ").slice(0, 90) +
      " (" + rows.length + " steps)")));
    if (!repeated.some(([key]) => key === state.prompt)) state.prompt = repeated[0][0];
    select.value = state.prompt;
    select.onchange = () => { state.prompt = select.value; showFollow(); writeHash(); };
    const box = document.getElementById("follow");
    box.replaceChildren();
    let before = null;
    byPrompt.get(state.prompt).slice().sort((a, b) => a.step - b.step).forEach((row) => {
      const first = row.completions[0] || {text: ""};
      const item = el("div", {class: "follow-step"});
      item.appendChild(el("div", {class: "meta"}, "step " + row.step + " · reward " + fmt(first.reward) + " · length " + first.length));
      item.appendChild(before === null ? el("div", {class: "completion"}, first.text) : diffNode(before, first.text || ""));
      box.appendChild(item);
      before = first.text || "";
    });
  }

  // Word-level diff (longest common subsequence): inserted words green, removed ones struck through.
  function diffNode(oldText, newText) {
    const node = el("div", {class: "completion"});
    const a = oldText.split(/(\s+)/), b = newText.split(/(\s+)/);
    if (a.length * b.length > 4e6) { node.textContent = newText; return node; }
    const lcs = Array.from({length: a.length + 1}, () => new Uint16Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i--)
      for (let j = b.length - 1; j >= 0; j--)
        lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    let i = 0, j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) { node.appendChild(document.createTextNode(b[j])); i++; j++; }
      else if (j < b.length && (i === a.length || lcs[i][j + 1] >= lcs[i + 1][j])) node.appendChild(el("span", {class: "diff-add"}, b[j++]));
      else node.appendChild(el("span", {class: "diff-del"}, a[i++]));
    }
    return node;
  }

  // ------------------------------------------------------------------ --serve: reload when the run moved on
  function watch() {
    if (!DATA.serve) return;
    setInterval(() => {
      fetch(DATA.serve.stamp_file, {cache: "no-store"}).then((r) => r.ok ? r.text() : null)
        .then((stamp) => { if (stamp !== null && stamp.trim() !== DATA.serve.stamp) location.reload(); })
        .catch(() => {});  // the server stopped: keep showing what we have
    }, DATA.serve.every_s * 1000);
  }

  showStages();
  showStage();
  watch();
})();
