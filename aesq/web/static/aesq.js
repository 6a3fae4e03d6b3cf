// Draws the dashboard's charts with plotly.js from the JSON each page embeds next to its chart.
function chartData(id) { return JSON.parse(document.getElementById(id + "-data").textContent); }
const layout = (extra) => Object.assign({ margin: { t: 20, r: 20, b: 80, l: 60 } }, extra);

const charts = {
  means(id) {
    const rows = chartData(id);
    Plotly.newPlot(id, [{
      type: "scatter", mode: "markers",
      x: rows.map(r => r.generator + ":" + r.version), y: rows.map(r => r.mean),
      error_y: { type: "data", symmetric: false,
        array: rows.map(r => r.mean_high === null ? 0 : r.mean_high - r.mean),
        arrayminus: rows.map(r => r.mean_low === null ? 0 : r.mean - r.mean_low) },
    }], layout({ yaxis: { title: "mean (95 % interval)" } }), { displayModeBar: false });
  },
  distributions(id) {
    const histograms = chartData(id);
    const traces = Object.entries(histograms.counts).map(([version, counts]) => (
      { type: "bar", name: version, x: histograms.centres, y: counts, width: histograms.width, opacity: 0.6 }));
    Plotly.newPlot(id, traces, layout({ barmode: "overlay", xaxis: { title: "score" } }), { displayModeBar: false });
  },
  trend(id) {
    const series = chartData(id);
    const traces = Object.entries(series).map(([version, s]) => ({ type: "scatter", mode: "lines+markers", name: version, x: s.days, y: s.means }));
    Plotly.newPlot(id, traces, layout({ yaxis: { title: "daily mean" } }), { displayModeBar: false });
  },
};
document.querySelectorAll("[data-chart]").forEach(el => charts[el.dataset.chart](el.id));
