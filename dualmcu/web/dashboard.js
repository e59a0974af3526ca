// The page of `dualmcu fleet --serve`: one server-sent event per change carries the whole board
// (summary and log), and the page redraws from it, so a page opened late shows everything.
// Every value from the server goes in as text, never as HTML.
"use strict";

const COUNTS = ["devices", "eligible", "offered", "confirmed", "rolled_back", "rolled_back_confirmed_old"];
const RATES = [
  ["trial_rate", "trial", "#4c78a8"],
  ["confirm_rate", "confirm", "#54a24b"],
  ["rollback_rate", "rollback", "#e45756"],
  ["download_limit_rate", "download limit", "#f58518"],
];
const PALETTE = ["#e45756", "#f58518", "#72b7b2", "#b279a2", "#9d755d", "#4c78a8", "#eeca3b", "#54a24b"];
let ended = false;

const $ = (id) => document.getElementById(id);

function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    text(td, typeof c === "object" && c !== null ? c.text : c);
    if (c && c.cls) td.className = c.cls;
    tr.appendChild(td);
  }
  return tr;
}

function pairs(obj) { return Object.entries(obj || {}).map(([k, v]) => `${k} ${v}`).join(", "); }

const charts = {};
function makeCharts() {
  const common = { animation: false, responsive: true, maintainAspectRatio: false };
  charts.states = new Chart($("chart-states"), {
    type: "bar", data: { labels: [], datasets: [{ label: "devices", data: [], backgroundColor: "#4c78a8" }] },
    options: { ...common, indexAxis: "y", plugins: { legend: { display: false } } },
  });
  charts.rates = new Chart($("chart-rates"), {
    type: "line",
    data: { datasets: RATES.map(([, label, color]) => ({ label, data: [], borderColor: color, backgroundColor: color })) },
    options: { ...common, parsing: false,
      scales: { x: { type: "linear", min: 0, suggestedMax: 1, title: { display: true, text: "day" },
        ticks: { callback: (v) => Number(v).toFixed(1) } }, y: { min: 0, max: 1 } } },
  });
  charts.reasons = new Chart($("chart-reasons"), {
    type: "bar", data: { labels: [], datasets: [] },
    options: { ...common, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
}

function render(board) {
  const s = board.summary || {};
  if (!s.state) return;
  text($("version"), s.version);
  const st = $("state");
  text(st, s.state);
  st.className = "state " + s.state;
  text($("paused-by"), s.paused_by ? `by the ${s.paused_by}` : "");
  text($("rollout-days"), (s.rollout_seconds / 86400).toFixed(2));
  text($("wall-seconds"), s.wall_seconds);
  text($("workers"), s.workers);
  for (const k of COUNTS) text($("count-" + k), s[k]);

  const states = s.device_states || {};
  const stBody = $("device-states").tBodies[0];
  stBody.replaceChildren(...Object.entries(states).map(([k, v]) => {
    const tr = row([k, v]);
    tr.dataset.state = k;
    return tr;
  }));
  charts.states.data.labels = Object.keys(states);
  charts.states.data.datasets[0].data = Object.values(states);
  charts.states.update("none");

  const split = [["hardware revision", s.by_hw_rev || {}], ["population group", s.by_group || {}]];
  $("breakdown").tBodies[0].replaceChildren(...split.flatMap(([by, parts]) => Object.entries(parts).map(([k, v]) => {
    const tr = row([by, k, v.offered, v.confirm_rate, v.rollback_rate]);
    tr.dataset.split = by;
    tr.dataset.value = k;
    return tr;
  })));

  const waves = s.waves || [];
  $("waves").tBodies[0].replaceChildren(...waves.map((w) => row([
    w.wave, w.name, w.devices, (w.start_seconds / 86400).toFixed(2),
    pairs(w.outcomes), pairs(w.rollback_reasons), pairs(w.failure_reasons || {}), w.trial_rate, w.confirm_rate, w.rollback_rate,
    w.download_limit_rate, { text: w.gate + (w.gate_reason ? ` (${w.gate_reason})` : ""), cls: "gate-" + w.gate },
  ])));
  RATES.forEach(([key], i) => {
    charts.rates.data.datasets[i].data = waves.map((w) => ({ x: (w.start_seconds + w.update_seconds) / 86400, y: w[key] }));
  });
  charts.rates.update("none");
  const reasons = [...new Set(waves.flatMap((w) => Object.keys(w.rollback_reasons || {})))].sort();
  charts.reasons.data.labels = waves.map((w) => w.name);
  charts.reasons.data.datasets = reasons.map((r, i) => ({
    label: r, data: waves.map((w) => (w.rollback_reasons || {})[r] || 0), backgroundColor: PALETTE[i % PALETTE.length],
  }));
  charts.reasons.update("none");

  $("log").replaceChildren(...(board.log || []).filter((e) => !["wave_start", "fleet", "dashboard"].includes(e.event)).map((e) => {
    const li = document.createElement("li");
    const day = e.at_seconds !== undefined ? `day ${(e.at_seconds / 86400).toFixed(2)}: ` : "";
    let what;
    // A pause is said once, by its gate event: the wave's own line names only a gate passed.
    if (e.event === "wave") what = `wave ${e.wave} (${e.name}): ${e.devices} devices` + (e.gate === "pass" ? ", gate passed" : "");
    else if (e.event === "gate") what = `gate: ${e.decision} — ${e.reason}`;
    else if (e.event === "operator") what = `operator (${e.source}): ${e.action}${e.build ? " " + e.build : ""}`;
    else if (e.event === "blocklisted") what = `build ${e.build} is blocklisted: rollout stopped`;
    else what = JSON.stringify(e);
    li.dataset.event = e.event;
    text(li, day + what);
    return li;
  }));

  ended = board.ended;
  for (const id of ["pause", "resume", "stop", "blocklist"]) $(id).disabled = ended;
  $("pause").disabled ||= s.state !== "running";
  $("resume").disabled ||= s.state !== "paused" || s.paused_by !== "operator";
  document.body.dataset.seq = board.seq;
  document.body.dataset.ended = board.ended;
}

async function act(action) {
  text($("request"), `${action}…`);
  try {
    const r = await fetch("/api/" + action, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
    const body = await r.json();
    text($("request"), r.ok ? `${action} requested: it takes effect between waves` : body.error);
  } catch (err) {
    text($("request"), `${action} not sent: ${err}`);
  }
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("board", (ev) => {
    text($("connection"), "");
    render(JSON.parse(ev.data));
  });
  source.onerror = () => {
    if (ended) {
      source.close();
      text($("connection"), "the command has ended: this is its last state");
    } else {
      text($("connection"), "reconnecting…");
    }
  };
}

makeCharts();
for (const id of ["pause", "resume", "stop", "blocklist"]) $(id).addEventListener("click", () => act(id));
connect();
