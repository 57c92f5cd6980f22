/* bollmin dashboard charts on TradingView Lightweight Charts (static/vendor/lightweight-charts/):
   the price chart (candles, UP/MID/DN, fills, live price), time-value line charts (equity curves)
   and a daily histogram. Colours follow the page's CSS variables, light or dark. Times come in as
   epoch milliseconds (UTC) and are shown in the browser's local time; days are UTC days. */
(function () {
  'use strict';
  const LW = window.LightweightCharts;
  const B = window.Bollmin;
  const charts = [];

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue('--' + name).trim();
  }
  function baseOptions() {
    return {
      autoSize: true,
      layout: {
        background: { type: 'solid', color: css('card') }, textColor: css('muted'), fontSize: 11,
        fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, "PingFang SC", "Microsoft YaHei", sans-serif',
        // The chart's own logo injects an inline <style> (refused by our CSP) and puts the page's
        // address in its link; the footer carries the attribution and the link instead.
        attributionLogo: false,
      },
      grid: { vertLines: { color: css('line') }, horzLines: { color: css('line') } },
      rightPriceScale: { borderColor: css('line') },
      timeScale: { borderColor: css('line'), timeVisible: true, secondsVisible: false, rightOffset: 2,
        tickMarkFormatter: tickMark },
      crosshair: { mode: LW.CrosshairMode.Normal },
      localization: { locale: B.LANG === 'en' ? 'en-US' : 'zh-CN', timeFormatter: localTime },
      // A vertical swipe on a phone scrolls the page, not the chart.
      handleScroll: { mouseWheel: true, pressedMouseMove: true, horzTouchDrag: true, vertTouchDrag: false },
      handleScale: { axisPressedMouseMove: true, mouseWheel: true, pinch: true },
    };
  }
  function asDate(t) {  // a chart time: seconds (UTCTimestamp) or 'YYYY-MM-DD' (a UTC day)
    return typeof t === 'string' ? new Date(t + 'T00:00:00Z') : new Date(t * 1000);
  }
  function localTime(t) {
    if (typeof t === 'string') return t;
    const d = asDate(t);
    return d.getFullYear() + '-' + B.pad2(d.getMonth() + 1) + '-' + B.pad2(d.getDate()) + ' ' +
      B.pad2(d.getHours()) + ':' + B.pad2(d.getMinutes());
  }
  function tickMark(t, type) {
    const d = asDate(t);
    const utc = typeof t === 'string';
    const mm = B.pad2((utc ? d.getUTCMonth() : d.getMonth()) + 1);
    const dd = B.pad2(utc ? d.getUTCDate() : d.getDate());
    if (type === 0) return String(utc ? d.getUTCFullYear() : d.getFullYear());
    if (type === 1) return (utc ? d.getUTCFullYear() : d.getFullYear()) + '-' + mm;
    if (type === 2) return mm + '-' + dd;
    return B.pad2(d.getHours()) + ':' + B.pad2(d.getMinutes());
  }
  const sec = (ms) => Math.floor(ms / 1000);
  const priceFormat = (v) => {
    const d = B.priceDigits(v || 1);
    return { type: 'price', precision: d, minMove: Math.pow(10, -d) };
  };
  function retheme() {
    charts.forEach((c) => { c.chart.applyOptions(baseOptions()); c.theme(); });
  }
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', retheme);

  // ---- price: candles, bands, fills, the live price ------------------------------------------
  function priceChart(box, readout) {
    const chart = LW.createChart(box, baseOptions());
    const candles = chart.addSeries(LW.CandlestickSeries, { borderVisible: false, priceLineVisible: false,
      lastValueVisible: false });
    const line = { lineWidth: 1, priceLineVisible: false, crosshairMarkerVisible: false, lastValueVisible: true };
    const up = chart.addSeries(LW.LineSeries, line);
    const mid = chart.addSeries(LW.LineSeries, Object.assign({}, line, { lineStyle: LW.LineStyle.Dashed }));
    const dn = chart.addSeries(LW.LineSeries, line);
    const marks = LW.createSeriesMarkers(candles, []);
    const live = candles.createPriceLine({ price: 0, lineWidth: 1, lineStyle: LW.LineStyle.Dashed,
      axisLabelVisible: false, title: '' });
    let data = null;
    let fillsAt = new Map();
    let moved = false;  // the user zoomed or panned: keep their view across reloads
    let formingTime = null;

    function theme() {
      candles.applyOptions({ upColor: css('pos'), downColor: css('neg'), wickUpColor: css('pos'),
        wickDownColor: css('neg') });
      up.applyOptions({ color: css('band') });
      dn.applyOptions({ color: css('band') });
      mid.applyOptions({ color: css('mid') });
      live.applyOptions({ color: css('accent') });
      if (data) marks.setMarkers(markerList(data));
    }
    function markerList(d) {
      const step = d.interval_ms || 0;
      const first = d.candles.length ? d.candles[0][0] : 0;
      return (d.markers || []).filter((m) => typeof m.price === 'number' && m.time_ms >= first).map((m) => {
        const bar = step ? Math.floor(m.time_ms / step) * step : m.time_ms;
        const open = m.action.startsWith('open');
        const long = m.action === 'open_long';
        return {
          time: sec(bar), price: m.price, size: m.paper ? 1 : 1.4,
          position: open ? (long ? 'atPriceBottom' : 'atPriceTop') : 'atPriceMiddle',
          shape: open ? (long ? 'arrowUp' : 'arrowDown') : 'circle',
          color: open ? (long ? css('pos') : css('neg')) : css('text'),
        };
      }).sort((a, b) => a.time - b.time);
    }
    function defaultRange() {
      const n = data ? data.candles.length : 0;
      const w = box.clientWidth;
      const show = w < 500 ? 60 : w < 1000 ? 120 : 200;
      chart.timeScale().setVisibleLogicalRange({ from: Math.max(0, n - show), to: n + 2 });
    }
    function set(d) {
      const prev = data;
      const range = chart.timeScale().getVisibleLogicalRange();
      data = d;
      const n = d.candles.length;
      candles.setData(d.candles.map((k) => ({ time: sec(k[0]), open: k[1], high: k[2], low: k[3], close: k[4] })));
      const bands = (i) => d.bands.map((b, j) => (b ? { time: sec(d.candles[j][0]), value: b[i] } : null))
        .filter(Boolean);
      up.setData(bands(0));
      mid.setData(bands(1));
      dn.setData(bands(2));
      if (n) {
        const pf = priceFormat(d.candles[n - 1][4]);
        [candles, up, mid, dn].forEach((s) => s.applyOptions({ priceFormat: pf }));
      }
      fillsAt = new Map();
      (d.markers || []).forEach((m) => {
        const bar = d.interval_ms ? Math.floor(m.time_ms / d.interval_ms) * d.interval_ms : m.time_ms;
        const key = sec(bar);
        fillsAt.set(key, (fillsAt.get(key) || []).concat([m]));
      });
      marks.setMarkers(markerList(d));
      formingTime = n && d.interval_ms ? sec(d.candles[n - 1][0] + d.interval_ms) : null;
      // Keep what the user was looking at; new candles push the view along with them.
      if (moved && range && prev && prev.candles.length) {
        const lastBefore = prev.candles[prev.candles.length - 1][0];
        const at = d.candles.findIndex((k) => k[0] === lastBefore);
        const shift = at < 0 ? 0 : at - (prev.candles.length - 1);
        chart.timeScale().setVisibleLogicalRange({ from: range.from + shift, to: range.to + shift });
      } else {
        defaultRange();
      }
      show(null);
      box.dataset.drawn = String(n);
    }
    function setLive(s) {
      // The live price and the bands the bot computes with it, at the forming candle.
      const same = data && s && s.symbol === data.symbol && s.interval === data.interval && s.bot !== 'backtest';
      live.applyOptions({ price: same && typeof s.price === 'number' ? s.price : 0, axisLabelVisible: !!same,
        lineVisible: !!same });
      if (same && formingTime && typeof s.up === 'number') {
        up.update({ time: formingTime, value: s.up });
        mid.update({ time: formingTime, value: s.mid });
        dn.update({ time: formingTime, value: s.dn });
      }
    }
    function show(param) {
      if (!readout || !data || !data.candles.length) return;
      let k = null;
      let t = null;
      if (param && param.time !== undefined) {
        const c = param.seriesData.get(candles);
        if (c) { k = [c.time * 1000, c.open, c.high, c.low, c.close]; t = c.time; }
      }
      if (!k) { k = data.candles[data.candles.length - 1]; t = sec(k[0]); }
      const i = data.candles.findIndex((c) => sec(c[0]) === t);
      const b = i >= 0 ? data.bands[i] : null;
      let text = B.fmt('tshort', k[0]) + '  O ' + B.fmt('price', k[1]) + '  H ' + B.fmt('price', k[2]) + '  L ' +
        B.fmt('price', k[3]) + '  C ' + B.fmt('price', k[4]);
      if (b) text += '  ·  UP ' + B.fmt('price', b[0]) + '  MID ' + B.fmt('price', b[1]) + '  DN ' + B.fmt('price', b[2]);
      (fillsAt.get(t) || []).forEach((m) => {
        text += '  ·  ' + B.tr(m.action, m.action) + ' @ ' + B.fmt('price', m.price) + (m.paper ? '' : ' (' + B.T.live + ')');
      });
      readout.textContent = text;
    }
    chart.subscribeCrosshairMove(show);
    const markMoved = () => { moved = true; };
    box.addEventListener('wheel', markMoved, { passive: true });
    box.addEventListener('pointerdown', markMoved);
    box.addEventListener('touchstart', markMoved, { passive: true });
    const api = { chart, theme, set, setLive, reset() { moved = false; defaultRange(); } };
    charts.push(api);
    theme();
    return api;
  }

  // ---- lines over time (equity curves) -----------------------------------------------------------
  function lineChart(box) {
    const chart = LW.createChart(box, baseOptions());
    const lines = new Map();
    const colors = new Map();
    let zero = null;
    function theme() {
      lines.forEach((s, key) => s.applyOptions({ color: colors.get(key)() }));
      if (zero) zero.applyOptions({ color: css('muted') });
    }
    function set(key, points, color, title) {
      let s = lines.get(key);
      if (!s) {
        s = chart.addSeries(LW.LineSeries, { lineWidth: 2, lineType: LW.LineType.WithSteps, priceLineVisible: false,
          title: title || '', priceFormat: { type: 'price', precision: 2, minMove: 0.01 } });
        lines.set(key, s);
        if (!zero) zero = s.createPriceLine({ price: 0, lineWidth: 1, lineStyle: LW.LineStyle.Dotted,
          axisLabelVisible: false, title: '' });
      }
      colors.set(key, typeof color === 'function' ? color : () => color);
      s.applyOptions({ color: colors.get(key)() });
      s.setData(points.map((p) => ({ time: sec(p[0]), value: p[1] })));
    }
    function fit() { chart.timeScale().fitContent(); box.dataset.drawn = String(lines.size); }
    const api = { chart, theme, set, fit };
    charts.push(api);
    return api;
  }

  // ---- one bar per UTC day ------------------------------------------------------------------------
  function dailyChart(box) {
    const opts = baseOptions();
    opts.timeScale.timeVisible = false;
    const chart = LW.createChart(box, opts);
    const bars = chart.addSeries(LW.HistogramSeries, { priceLineVisible: false,
      priceFormat: { type: 'price', precision: 2, minMove: 0.01 } });
    let rows = [];
    function theme() { set(rows); }
    function set(days) {
      rows = days || [];
      bars.setData(rows.map((d) => ({ time: new Date(d.day_ms).toISOString().slice(0, 10), value: d.net_pnl_usdt,
        color: d.net_pnl_usdt >= 0 ? css('pos') : css('neg') })));
      chart.timeScale().fitContent();
      box.dataset.drawn = String(rows.length);
    }
    const api = { chart, theme, set, series: bars };
    charts.push(api);
    return api;
  }

  window.BollCharts = { priceChart, lineChart, dailyChart, css };
})();
