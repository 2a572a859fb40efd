// earmark console, upload page: each chosen file is sent to /lookup (what the cache holds for
// it, with the fuzzy evidence; never runs the engine), then to /recognize (the answer), one file
// at a time, and its card shows the tier, transcript, entry, score, time taken and the engine
// time spent or saved. No framework: the page works from the JSON API like any client.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  const chosen = document.getElementById("chosen");
  const go = document.getElementById("go");
  const results = document.getElementById("results");
  const noResults = document.getElementById("no-results");
  const template = document.getElementById("result-template");
  const minWindow = (window.EARMARK || {}).minWindowScore || 0.74;
  const HITS = ["exact", "canonical", "fuzzy", "negative"];
  let pending = [];

  function setFiles(list) {
    pending = Array.from(list || []);
    go.disabled = pending.length === 0;
    chosen.textContent = pending.length === 0 ? "" :
      pending.length === 1 ? "Chosen: " + pending[0].name : pending.length + " files chosen: " + pending.map(f => f.name).join(", ");
  }

  input.addEventListener("change", () => setFiles(input.files));
  ["dragenter", "dragover"].forEach(kind => drop.addEventListener(kind, event => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "dragend", "drop"].forEach(kind => drop.addEventListener(kind, () => drop.classList.remove("over")));
  drop.addEventListener("drop", event => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      setFiles(event.dataTransfer.files);
      run();
    }
  });
  document.getElementById("clear").addEventListener("click", () => {
    results.innerHTML = "";
    noResults.hidden = false;
  });
  form.addEventListener("submit", event => {
    event.preventDefault();
    run();
  });

  function options() {
    const fields = {};
    for (const name of ["language", "use_itn", "hotwords", "prompt"]) {
      const element = form.elements.namedItem(name);
      if (element && element.value.trim() !== "") fields[name] = element.value.trim();
    }
    return fields;
  }

  function headers() {
    const key = form.elements.namedItem("api_key");
    return key && key.value ? {"Authorization": "Bearer " + key.value} : {};
  }

  async function call(path, file, fields) {
    const body = new FormData();
    body.append("file", file, file.name);
    for (const [name, value] of Object.entries(fields)) body.append(name, value);
    const response = await fetch(path, {method: "POST", body: body, headers: headers()});
    let json = null;
    try { json = await response.json(); } catch (error) { json = null; }
    if (!response.ok || !json || json.code !== 0) {
      const message = json && json.msg ? json.msg : "HTTP " + response.status;
      throw new Error(message);
    }
    return json;
  }

  async function run() {
    const files = pending;
    if (!files.length) return;
    setFiles([]);
    input.value = "";
    noResults.hidden = true;
    const fields = options();
    const cards = files.map(file => {
      const card = template.content.firstElementChild.cloneNode(true);
      card.querySelector(".file-name").textContent = file.name;
      card.querySelector(".tier").hidden = true;
      results.prepend(card);
      return card;
    });
    for (let i = 0; i < files.length; i++) {
      await recognizeOne(files[i], cards[i], fields);
    }
  }

  function status(card, text, busy) {
    card.querySelector(".status-text").textContent = text;
    card.querySelector(".progress").hidden = !busy;
    card.setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function recognizeOne(file, card, fields) {
    const started = performance.now();
    card.classList.add("working");
    status(card, "Checking the cache…", true);
    let timer = null;
    try {
      const evidence = await call("/lookup", file, fields);
      if (evidence.cache.tier === "miss" || evidence.cache.tier === "bypass") {
        const note = evidence.cache.tier === "bypass" ? "The cache store is unreachable: " : "Not in the cache: ";
        timer = setInterval(() => status(card, note + "the engine is transcribing… " +
          ((performance.now() - started) / 1000).toFixed(0) + " s", true), 1000);
        status(card, note + "the engine is transcribing…", true);
      } else {
        status(card, "In the cache (" + evidence.cache.tier + "): fetching the answer…", true);
      }
      const answer = await call("/recognize", file, fields);
      show(card, answer, evidence, (performance.now() - started) / 1000);
    } catch (error) {
      card.classList.add("failed");
      status(card, "Refused: " + error.message, false);
    } finally {
      if (timer) clearInterval(timer);
      card.classList.remove("working");
    }
  }

  function fact(list, term, value, node) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    if (node) dd.appendChild(node); else dd.textContent = value;
    list.append(dt, dd);
  }

  function seconds(value) {
    return value == null ? "–" : (value < 10 ? value.toFixed(2) : value.toFixed(1)) + " s";
  }

  function show(card, answer, evidence, wallSeconds) {
    const cache = answer.cache, result = answer.result || {};
    const tier = card.querySelector(".tier");
    tier.hidden = false;
    tier.textContent = cache.tier;
    tier.className = "tier badge tier-" + cache.tier;
    card.dataset.tier = cache.tier;
    card.dataset.entry = cache.entry || "";
    status(card, HITS.includes(cache.tier) ? "Answered from the cache." :
      cache.tier === "partial" ? "Cached recordings found inside it were reused; the engine heard the rest." :
      cache.tier === "miss" ? "Transcribed by the engine and cached." : "Transcribed by the engine; nothing was cached.", false);
    card.querySelector(".status").classList.add("done");
    card.querySelector(".answer").hidden = false;
    const transcript = card.querySelector(".transcript");
    if (result.error === "no_speech") {
      transcript.textContent = "No speech in this recording.";
      transcript.classList.add("muted");
    } else {
      transcript.textContent = result.text || "";
    }
    const facts = card.querySelector(".facts");
    if (cache.entry) {
      const link = document.createElement("a");
      link.href = "/console/entry/" + cache.entry;
      link.className = "entry-link mono";
      link.textContent = cache.entry;
      fact(facts, "Entry", "", link);
    } else {
      fact(facts, "Entry", "none (not cached)");
    }
    fact(facts, "Verified score", cache.score == null ? "–" : cache.score.toFixed(4));
    fact(facts, "Time taken", (cache.elapsed_ms / 1000).toFixed(2) + " s on the server (" + wallSeconds.toFixed(2) + " s here)");
    if (HITS.includes(cache.tier)) {
      fact(facts, "Engine time saved", seconds(cache.engine_seconds));
    } else if (cache.tier === "partial") {
      fact(facts, "Engine time spent", seconds(cache.engine_seconds) + " on the audio no cached recording covers");
      fact(facts, "Engine time saved", seconds(cache.engine_seconds_saved) + " by " + cache.spans.length +
        " reused recording" + (cache.spans.length === 1 ? "" : "s"));
    } else {
      fact(facts, "Engine time spent", seconds(cache.engine_seconds));
    }
    fact(facts, "Audio", seconds(result.duration_s) + (result.language ? " · " + result.language : ""));
    const segments = result.segments || [];
    if (segments.length > 1 || (segments.length === 1 && segments[0].text !== result.text)) {
      const body = card.querySelector(".segment-table tbody");
      for (const segment of segments) {
        const row = body.insertRow();
        row.insertCell().textContent = segment.start.toFixed(2);
        row.insertCell().textContent = segment.end.toFixed(2);
        row.insertCell().textContent = segment.text;
      }
      card.querySelector(".segments").hidden = false;
    }
    const candidates = (evidence.cache.candidates || []);
    if (cache.tier === "fuzzy") showEvidence(card, cache, evidence, candidates);
    if (cache.tier === "partial" && result.duration_s) showSpans(card, cache.spans, result.duration_s);
  }

  // A partial answer's recording as a bar: the stretches answered from cached recordings (each
  // linking to its entry, with its verified score) and the rest, which the engine heard.
  function showSpans(card, spans, duration) {
    const NS = "http://www.w3.org/2000/svg";
    const width = 560, height = 62, left = 8, right = 8, top = 8, bar = 24;
    const x = t => left + (t / duration) * (width - left - right);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("class", "chart timeline-bar");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", spans.length + " stretch" + (spans.length === 1 ? "" : "es") + " of " +
      duration.toFixed(1) + " s answered from the cache: " +
      spans.map(s => s.start_s.toFixed(1) + "-" + s.end_s.toFixed(1) + " s").join(", "));
    function add(parent, tag, attrs, text) {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text != null) node.textContent = text;
      parent.appendChild(node);
      return node;
    }
    add(svg, "rect", {x: left, y: top, width: width - left - right, height: bar, class: "heard"});
    for (const span of spans) {
      const link = add(svg, "a", {href: "/console/entry/" + span.entry});
      add(link, "rect", {x: x(span.start_s), y: top, width: Math.max(2, x(span.end_s) - x(span.start_s)), height: bar,
                         class: "reused"});
      add(link, "title", {}, "Entry " + span.entry + ", " + span.start_s.toFixed(2) + "-" + span.end_s.toFixed(2) +
        " s, score " + span.score.toFixed(4));
    }
    for (const t of [0, duration]) {
      add(svg, "text", {x: x(t), y: height - 8, "text-anchor": t ? "end" : "start", class: "axis"}, t.toFixed(1) + " s");
    }
    const figure = card.querySelector(".timeline");
    figure.prepend(svg);
    figure.querySelector("figcaption").textContent = "Blue: answered from cached recordings (" +
      spans.map(s => s.start_s.toFixed(1) + "-" + s.end_s.toFixed(1) + " s, score " + s.score.toFixed(2)).join("; ") +
      "). Grey: heard by the engine.";
    figure.hidden = false;
  }

  function showEvidence(card, cache, evidence, candidates) {
    const box = card.querySelector(".evidence");
    box.hidden = false;
    const accepted = candidates.find(c => c.accepted && c.entry === cache.entry) || candidates.find(c => c.accepted);
    const reason = box.querySelector(".reason");
    if (!accepted) {
      reason.textContent = "These bytes were matched before; the verdict then (score " +
        (cache.score == null ? "–" : cache.score.toFixed(4)) + ") was reused.";
      box.querySelector(".curve").hidden = true;
    } else {
      reason.textContent = accepted.reason;
      const figure = box.querySelector(".curve");
      if (accepted.stretches && accepted.stretches.length) {
        figure.prepend(curve(accepted.stretches, minWindow));
        figure.querySelector("figcaption").textContent = "Score of every ~1 s stretch of the query against the entry (" +
          accepted.stretches.length + " stretches); the copy is accepted only when the worst stretch stays above the threshold (" +
          minWindow.toFixed(2) + ").";
      } else {
        figure.hidden = true;
      }
    }
    const body = box.querySelector(".candidates tbody");
    for (const candidate of candidates) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.className = "mono";
      cell.textContent = candidate.entry.slice(0, 12) + "…";
      row.insertCell().textContent = candidate.score.toFixed(4);
      row.insertCell().textContent = candidate.embedding_similarity.toFixed(4);
      row.insertCell().textContent = candidate.accepted ? "accepted" : candidate.reason.split(":")[0].replace(/_/g, " ");
    }
  }

  // The per-stretch score curve as an inline SVG: x = where the stretch starts in the query (s),
  // y = its score; the dashed line is the window threshold, the lowest point is marked.
  function curve(stretches, threshold) {
    const NS = "http://www.w3.org/2000/svg";
    const width = 560, height = 170, left = 40, right = 12, top = 12, bottom = 30;
    const end = Math.max(stretches[stretches.length - 1].at_s + 1, 1);
    const low = Math.min(0.5, threshold - 0.1, ...stretches.map(s => s.score));
    const x = t => left + (t / end) * (width - left - right);
    const y = v => top + (1 - (v - low) / (1 - low)) * (height - top - bottom);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("class", "chart");
    svg.setAttribute("role", "img");
    const worst = stretches.reduce((a, b) => (b.score < a.score ? b : a));
    svg.setAttribute("aria-label", "Stretch scores from " + Math.min(...stretches.map(s => s.score)).toFixed(3) +
      " to " + Math.max(...stretches.map(s => s.score)).toFixed(3) + "; worst at " + worst.at_s.toFixed(2) + " s");
    function add(tag, attrs, text) {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text != null) node.textContent = text;
      svg.appendChild(node);
      return node;
    }
    for (const tick of [low, (low + 1) / 2, 1]) {
      add("line", {x1: left, x2: width - right, y1: y(tick), y2: y(tick), class: "grid"});
      add("text", {x: left - 6, y: y(tick) + 4, "text-anchor": "end", class: "axis"}, tick.toFixed(2));
    }
    const step = end > 20 ? 10 : end > 8 ? 2 : 1;
    for (let t = 0; t <= end; t += step) {
      add("text", {x: x(t), y: height - 10, "text-anchor": "middle", class: "axis"}, t + " s");
    }
    add("line", {x1: left, x2: width - right, y1: y(threshold), y2: y(threshold), class: "threshold"});
    add("text", {x: width - right, y: y(threshold) - 5, "text-anchor": "end", class: "axis threshold-label"}, "threshold " + threshold.toFixed(2));
    const points = stretches.map(s => x(s.at_s).toFixed(1) + "," + y(s.score).toFixed(1)).join(" ");
    add("polyline", {points: points, class: "line"});
    for (const s of stretches) {
      const dot = add("circle", {cx: x(s.at_s), cy: y(s.score), r: s === worst ? 4.5 : 3, class: s === worst ? "dot worst" : "dot"});
      const title = document.createElementNS(NS, "title");
      title.textContent = s.at_s.toFixed(2) + " s: " + s.score.toFixed(3);
      dot.appendChild(title);
    }
    return svg;
  }
})();
