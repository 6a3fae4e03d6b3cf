// Draws the dashboard's charts with plotly.js from the JSON each page embeds next to its chart.
function chartData(id) { return JSON.parse(document.getElementById(id + "-data").textContent); }
const layout = (extra) => Object.assign({ margin: { t: 20, r: 20, b: 80, l: 60 } }, extra);

const charts = {
  means(id) {
    const { rows, colours } = chartData(id);
    const names = rows.map(r => r.generator + ":" + r.version);
    const lows = rows.map(r => r.mean_low ?? r.mean), highs = rows.map(r => r.mean_high ?? r.mean);
    Plotly.newPlot(id, [{
      type: "scatter", mode: "markers", x: names, y: rows.map(r => r.mean),
      marker: { size: 9, color: names.map(name => colours[name]) },
      error_y: { type: "data", symmetric: false, color: "#555",
        array: rows.map((r, i) => highs[i] - r.mean), arrayminus: rows.map((r, i) => r.mean - lows[i]) },
    }], layout({ xaxis: { range: [-0.5, rows.length - 0.5] },
      yaxis: { title: "mean (95 % interval)", range: paddedRange([...lows, ...highs]) } }),
    { displayModeBar: false });
  },
  // A is drawn in the colour of its A badge and B in B's, whichever sorts first by name.
  distributions(id) {
    const histograms = chartData(id), chart = document.getElementById(id), style = getComputedStyle(chart);
    const sides = [[chart.dataset.a, "--colour-a"], [chart.dataset.b, "--colour-b"]];
    const traces = sides.map(([version, colour]) => ({ type: "bar", name: version, x: histograms.centres,
      y: histograms.counts[version], width: histograms.width, opacity: 0.6,
      marker: { color: style.getPropertyValue(colour).trim() } }));
    Plotly.newPlot(id, traces, layout({ barmode: "overlay", xaxis: { title: "score" } }), { displayModeBar: false });
  },
  trend(id) {
    const series = chartData(id);
    const traces = Object.entries(series).map(([version, s]) => ({ type: "scatter", mode: "lines+markers",
      name: version, x: s.days, y: s.means, marker: { color: s.colour }, line: { color: s.colour } }));
    Plotly.newPlot(id, traces, layout({ xaxis: dayAxis(Object.values(series).flatMap(s => s.days)),
      yaxis: { title: "daily mean", range: paddedRange(Object.values(series).flatMap(s => s.means)) },
      showlegend: true }), { displayModeBar: false });
  },
};

// A value axis from the lowest to the highest value with a sixth of their span (or of the value) beyond each, so no
// point or interval end sits on the plot's edge.
function paddedRange(values) {
  const low = Math.min(...values), high = Math.max(...values);
  const margin = (high - low || Math.abs(high) || 1) / 6;
  return [low - margin, high + margin];
}

// A date axis over whole days, padded by a day each side: one day of data shows as that day between its neighbours,
// not as milliseconds around midnight; a few days get one tick each.
const DAY_MS = 86400000;
function dayAxis(days) {
  const times = days.map(day => Date.parse(day + "T00:00:00Z"));
  const first = Math.min(...times), last = Math.max(...times);
  const iso = (ms) => new Date(ms).toISOString().slice(0, 10);
  const axis = { type: "date", range: [iso(first - DAY_MS), iso(last + DAY_MS)], tickformat: "%Y-%m-%d" };
  return (last - first) / DAY_MS <= 14 ? Object.assign(axis, { dtick: DAY_MS, tick0: iso(first) }) : axis;
}

// The leaderboard's picks, in the order they were made: the first is A, the second B.
function pickVersions(form) {
  const boxes = [...document.querySelectorAll(`input[form="${form.id}"][name="version"]`)];
  const picked = boxes.filter(box => box.checked).map(box => box.value);
  const button = form.querySelector("button"), status = document.getElementById("picked-count");
  const update = () => {
    button.disabled = picked.length !== 2;
    status.textContent = [
      "pick two versions: the first you pick is A, the second B",
      `A: ${picked[0]} · now pick B`,
      `A: ${picked[0]} · B: ${picked[1]}`,
    ][picked.length] ?? `pick only two versions (${picked.length} picked)`;
  };
  boxes.forEach(box => box.addEventListener("change", () => {
    const at = picked.indexOf(box.value);
    if (box.checked && at < 0) picked.push(box.value);
    if (!box.checked && at >= 0) picked.splice(at, 1);
    update();
  }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (picked.length !== 2) return;
    const query = new URLSearchParams({ a: picked[0], b: picked[1], scorer: form.elements.scorer.value });
    window.location.assign(form.action + "?" + query);
  });
  update();
}

document.querySelectorAll("[data-chart]").forEach(el => charts[el.dataset.chart](el.id));
const pickForm = document.getElementById("pick");
if (pickForm) pickVersions(pickForm);
