/* fdpo report: draws the charts listed in #fdpo-charts with the inlined Chart.js, then sets
 * <body data-charts-ready="N"> (N = charts created) so a headless browser can check it. */
(function () {
  'use strict';
  var body = document.body;
  function fail(msg) {
    body.setAttribute('data-charts-error', msg);
    var el = document.getElementById('js-status');
    if (el) { el.textContent = 'Charts could not be drawn: ' + msg; el.hidden = false; }
  }
  if (typeof Chart === 'undefined') { fail('Chart.js did not load'); return; }
  var specs;
  try {
    specs = JSON.parse(document.getElementById('fdpo-charts').textContent);
  } catch (e) { fail('chart data: ' + e); return; }

  function fmt(v) {
    if (typeof v !== 'number' || !isFinite(v)) return String(v);
    var a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Math.round(v * 1e4) / 1e4);
  }
  function axis(a) {
    var ax = {
      type: a.log ? 'logarithmic' : 'linear',
      title: { display: true, text: a.title, font: { size: 13 } }
    };
    /* linear axes keep Chart.js's own tick labels (precision follows the tick spacing);
       log axes label 1, 2, 5 x 10^k only */
    if (a.log) {
      ax.ticks = {
        callback: function (v) {
          var m = v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9));
          if ([1, 2, 5].indexOf(Math.round(m)) < 0 || Math.abs(m - Math.round(m)) > 1e-6) return '';
          return fmt(v);
        }
      };
    }
    return ax;
  }

  var DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3]];
  var made = 0, errors = [];
  try {
    Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  } catch (e) { errors.push('Chart.defaults: ' + e); }
  specs.forEach(function (s) {
    var canvas = document.getElementById(s.id);
    if (!canvas) { errors.push(s.id + ': no canvas'); return; }
    try {
      var datasets = s.series.map(function (d) {
        var many = d.points.length > 12;
        return {
          label: d.label,
          data: d.points.map(function (p) { return { x: p[0], y: p[1] }; }),
          showLine: d.line,
          borderColor: d.color,
          backgroundColor: d.color,
          borderDash: DASHES[(d.dash === true ? 1 : d.dash || 0) % DASHES.length],
          borderWidth: 2,
          pointRadius: d.line && many ? 0 : 4,
          pointHoverRadius: 5,
          tension: 0,
          fdpoTips: d.tips || null,
          fdpoNoLegend: !!d.nolegend
        };
      });
      new Chart(canvas, {
        type: 'scatter',
        data: { datasets: datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          parsing: false,
          normalized: true,
          scales: { x: axis(s.x), y: axis(s.y) },
          plugins: {
            legend: {
              position: 'bottom',
              labels: {
                boxWidth: 14,
                filter: function (item, data) { return !data.datasets[item.datasetIndex].fdpoNoLegend; }
              }
            },
            tooltip: {
              callbacks: {
                label: function (ctx) {
                  var tips = ctx.dataset.fdpoTips;
                  if (tips && tips[ctx.dataIndex]) return tips[ctx.dataIndex];
                  return ctx.dataset.label + ': (' + fmt(ctx.parsed.x) + ', ' + fmt(ctx.parsed.y) + ')';
                }
              }
            }
          }
        }
      });
      made++;
    } catch (e) {
      errors.push(s.id + ': ' + e);
    }
  });
  if (errors.length) { console.error('fdpo report: ' + errors.join('; ')); fail(errors.join('; ')); }
  body.setAttribute('data-charts-ready', String(made));
})();
