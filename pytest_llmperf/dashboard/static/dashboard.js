/* pytest-llmperf dashboard: filters on the overview, uPlot charts on series pages.
   Every text from the history goes in through textContent, never as HTML. */
window.LLMPerf = (function () {
  "use strict";
  const charts = [];

  function overview() {
    const selects = Array.from(document.querySelectorAll("select[data-filter]"));
    const rows = Array.from(document.querySelectorAll("#overview tbody tr"));
    const shown = document.getElementById("shown");
    function apply() {
      let count = 0;
      rows.forEach(function (row) {
        const keep = selects.every(function (s) { return !s.value || row.dataset[s.dataset.filter] === s.value; });
        row.hidden = !keep;
        if (keep) { count += 1; }
      });
      shown.textContent = count + " of " + rows.length + " series shown";
    }
    selects.forEach(function (s) { s.addEventListener("change", apply); });
    apply();
  }

  function format(value, unit) {
    if (value === null || value === undefined) { return "-"; }
    if (unit === "bytes") {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let v = value, i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
      return v.toFixed(2) + " " + units[i];
    }
    const v = Number(value);
    if (Math.abs(v) >= 10000) { return (v / 1000).toPrecision(4) + "k " + unit; }
    return v.toPrecision(4) + " " + unit;
  }

  function element(tag, text, cls) {
    const el = document.createElement(tag);
    if (text !== undefined) { el.textContent = text; }
    if (cls) { el.className = cls; }
    return el;
  }

  function markers(s) {
    /* change points (dashed, with their size) and out-of-memory runs (red), drawn over the plot */
    return {
      hooks: {
        draw: [function (u) {
          const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
          ctx.save();
          ctx.font = (11 * devicePixelRatio) + "px sans-serif";
          s.changepoints.forEach(function (c) {
            const x = Math.round(u.valToPos(c.x, "x", true));
            ctx.strokeStyle = "#d29922";
            ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
            ctx.fillStyle = "#9a6700";
            ctx.fillText((c.change >= 0 ? "+" : "") + (100 * c.change).toFixed(1) + "%", x + 4, top + 12 * devicePixelRatio);
          });
          ctx.setLineDash([]);
          ctx.fillStyle = "#cf222e";
          s.oom.forEach(function (t) {
            const x = Math.round(u.valToPos(t, "x", true));
            ctx.fillText("oom", x - 8, top + height - 4);
          });
          ctx.restore();
        }],
      },
    };
  }

  function runOf(s, i) {
    const page = window.LLMPERF_PAGE, row = page.runs[s.run[i]], env = page.envs[row[3]];
    return { id: row[0], date: row[1], commit: row[2], env: env.device, versions: env.versions, reproduce: row[4] };
  }

  function exportSeries(s, kind) {
    /* the series as a file, made here from the page's data: nothing else has to be served */
    const rows = s.x.map(function (x, i) {
      const run = runOf(s, i);
      return { run_id: run.id, started_at: run.date, commit: run.commit, branch: s.branch, value: s.y[i],
               q1: s.q1[i], q3: s.q3[i] };
    });
    let text, type;
    if (kind === "json") {
      text = JSON.stringify({ series_key: s.key, test_id: s.test, model_id: s.model, backend: s.backend,
                              variant: s.variant, dtype: s.dtype, world_size: s.world_size, batch_size: s.batch,
                              metric: s.metric, unit: s.unit, device: s.device, branch: s.branch, points: rows },
                            null, 1);
      type = "application/json";
    } else {
      const columns = Object.keys(rows[0] || { run_id: 0 });
      const quote = function (v) {
        const t = v === null || v === undefined ? "" : String(v);
        return /[",\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t;
      };
      text = [columns.join(",")].concat(rows.map(function (r) {
        return columns.map(function (c) { return quote(r[c]); }).join(",");
      })).join("\n") + "\n";
      type = "text/csv";
    }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: type }));
    a.download = s.metric + "-" + s.key.slice(0, 12) + "-" + s.branch.replace(/[^A-Za-z0-9_.-]+/g, "_") + "." + kind;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  function tooltip(s) {
    const tip = document.getElementById("tooltip");
    return {
      hooks: {
        setCursor: [function (u) {
          const i = u.cursor.idx;
          if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
          const run = runOf(s, i);
          tip.textContent = "";
          [
            s.metric + ": " + format(s.y[i], s.unit) + (s.q1[i] !== null ? "  (IQR " + format(s.q1[i], s.unit) +
              " – " + format(s.q3[i], s.unit) + ")" : ""),
            run.date + " · branch " + s.branch + " · commit " + (run.commit || "-"),
            run.env + " · " + Object.entries(run.versions).filter(function (kv) { return kv[1]; })
              .map(function (kv) { return kv[0] + " " + kv[1]; }).join(", "),
            "reproduce: " + run.reproduce,
          ].forEach(function (line) { tip.appendChild(element("div", line)); });
          const box = u.over.getBoundingClientRect();
          tip.style.left = (window.scrollX + box.left + u.cursor.left + 12) + "px";
          tip.style.top = (window.scrollY + box.top + u.cursor.top + 12) + "px";
          tip.hidden = false;
        }],
      },
    };
  }

  function chart(parent, s) {
    const section = element("section", undefined, "chart");
    const title = element("h2", s.metric + " (" + s.unit + ", " + (s.better === "higher" ? "higher" : "lower") +
                          " is better)");
    section.appendChild(title);
    const links = element("p", undefined, "links");
    ["csv", "json"].forEach(function (kind) {
      const button = element("button", "export " + kind, "export");
      button.type = "button";
      button.dataset.kind = kind;
      button.addEventListener("click", function () { exportSeries(s, kind); });
      links.appendChild(button);
      links.appendChild(document.createTextNode(" "));
    });
    if (s.changepoints.length) {
      links.appendChild(element("span", s.changepoints.map(function (c) {
        return "change point " + (c.change >= 0 ? "+" : "") + (100 * c.change).toFixed(1) + "% between " +
               (c.from || "?") + " and " + (c.to || "?");
      }).join("; "), "cp"));
    }
    if (s.recent) {
      links.appendChild(element("span", "recent shift " + (s.recent.change >= 0 ? "+" : "") +
        (100 * s.recent.change).toFixed(1) + "% in the newest " + (s.recent.window === 1 ? "run" :
        s.recent.window + " runs") + " (" + s.recent.commits + ")", "recent " +
        (s.recent.outcome === "regressed" ? "worse" : "better")));
    }
    section.appendChild(links);
    parent.appendChild(section);
    const q1 = s.q1.map(function (v, i) { return v === null ? s.y[i] : v; });
    const q3 = s.q3.map(function (v, i) { return v === null ? s.y[i] : v; });
    const data = [s.x, s.y, q1, q3];
    const series = [
      {},
      { label: "median", stroke: "#1f6feb", width: 2, points: { show: s.x.length < 200 } },
      { label: "q1", stroke: "rgba(31,111,235,0.25)" },
      { label: "q3", stroke: "rgba(31,111,235,0.25)" },
    ];
    if (s.budget !== null) {
      data.push(s.x.map(function () { return s.budget; }));
      series.push({ label: "budget", stroke: "#cf222e", dash: [6, 4] });
    }
    const width = Math.max(480, Math.min(1100, parent.clientWidth - 20));
    const plot = new uPlot({
      width: width, height: 240, series: series, bands: [{ series: [3, 2], fill: "rgba(31,111,235,0.12)" }],
      axes: [{}, { values: function (u, ticks) { return ticks.map(function (t) { return format(t, s.unit); }); },
                   size: 110 }],
      plugins: [markers(s), tooltip(s)],
    }, data, section);
    charts.push({ metric: s.metric, branch: s.branch, points: s.x.length, plot: plot });
  }

  function siblings(parent, list, branch) {
    const mine = list.filter(function (s) { return s.branch === branch; });
    if (mine.length < 2) {
      parent.appendChild(element("p", "no other backend of this model has measured this configuration on " +
                                      branch + " yet"));
      return;
    }
    const xs = Array.from(new Set([].concat.apply([], mine.map(function (s) { return s.x; })))).sort(
      function (a, b) { return a - b; });
    const data = [xs].concat(mine.map(function (s) {
      const at = new Map(s.x.map(function (x, i) { return [x, s.y[i]]; }));
      return xs.map(function (x) { return at.has(x) ? at.get(x) : null; });
    }));
    const colours = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a3069", "#bf3989"];
    const plot = new uPlot({
      width: Math.max(480, Math.min(1100, parent.clientWidth - 20)), height: 260,
      series: [{}].concat(mine.map(function (s, i) {
        return { label: s.label, stroke: colours[i % colours.length], width: 2, spanGaps: true };
      })),
    }, data, parent);
    charts.push({ metric: "siblings", branch: branch, points: xs.length, plot: plot });
  }

  function seriesPage() {
    const page = window.LLMPERF_PAGE;
    const select = document.getElementById("branch");
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted && Array.from(select.options).some(function (o) { return o.value === wanted; })) {
      select.value = wanted;
    }
    function draw() {
      charts.splice(0).forEach(function (c) { c.plot.destroy(); });
      const container = document.getElementById("charts");
      const others = document.getElementById("siblings");
      container.textContent = "";
      others.textContent = "";
      page.series.filter(function (s) { return s.branch === select.value; })
        .forEach(function (s) { chart(container, s); });
      siblings(others, page.siblings, select.value);
    }
    select.addEventListener("change", draw);
    draw();
  }

  return { overview: overview, seriesPage: seriesPage, charts: charts };
}());
