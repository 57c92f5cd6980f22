/* bollmin dashboard, strategy-lab page: the equity curves of the best parameter sets (and the one
   looked at) from /api/lab/equity; the ranking and heat map are server-rendered. */
(function () {
  'use strict';
  const B = window.Bollmin;
  const C = window.BollCharts;
  const box = document.getElementById('lab-chart');
  const PALETTE = ['accent', 'pos', 'mid', 'demo', 'paper', 'neg'];

  async function load() {
    const ids = (box.dataset.ids || '').split(',').filter(Boolean);
    let d;
    try { d = await B.getJSON('/api/lab/equity?run=' + encodeURIComponent(box.dataset.run) + '&ids=' + ids.join(',')); }
    catch (err) { return; }
    const chart = C.lineChart(box);
    let drawn = 0;
    ids.forEach((id, i) => {
      const color = () => C.css(PALETTE[i % PALETTE.length]);
      const li = document.querySelector('#lab-legend li[data-id="' + id + '"]');
      if (li) li.querySelector('i').style.background = color();
      let points = d.curves[id] || [];
      // A set that never traded stayed at 0 from the first candle to the last.
      if (!points.length && li && li.dataset.trades === '0') points = [[+box.dataset.first, 0], [+box.dataset.last, 0]];
      if (!points.length) return;
      chart.set(id, points, color, li ? '#' + li.dataset.rank : '');
      drawn++;
    });
    chart.fit();
    document.getElementById('lab-chart-empty').hidden = drawn > 0;
    box.dataset.drawn = String(drawn);
  }
  // A click anywhere on a ranking row opens that set, like its link.
  document.querySelectorAll('table.rank tbody tr').forEach((row) => row.addEventListener('click', (ev) => {
    const a = row.querySelector('a');
    if (a && ev.target.tagName !== 'A') location.href = a.href;
  }));
  if (box) load();
  B.start(null, 5000);
})();
