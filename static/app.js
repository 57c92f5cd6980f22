/* bollmin dashboard: keeps the page fresh from the JSON API (no reload) and draws the chart.
   Text that came from the database only ever reaches the page through textContent. */
(function () {
  'use strict';
  const T = JSON.parse(document.getElementById('i18n').textContent);
  const LANG = document.body.dataset.lang === 'en' ? 'en' : 'zh';
  const CSRF = document.querySelector('meta[name=csrf-token]').content;
  const $ = (sel) => document.querySelector(sel);
  const HDR = { 'X-Bollmin': '1', 'Accept': 'application/json' };
  let status = null;
  let chart = null;
  let layout = null;
  let lastOrderId; // undefined until the first status: the first one always loads everything
  let lastCandleMs;
  let ticks = 0;
  let timer = null;
  const query = new URLSearchParams(location.search);
  const trades = { paper: query.get('paper') || '', page: Math.max(1, parseInt(query.get('page'), 10) || 1) };

  // ---- formats (the same as fmt() in dashboard.py) ----------------------------------------
  const nfCache = {};
  const nf = (d) => nfCache[d] || (nfCache[d] = new Intl.NumberFormat('en-US',
    { minimumFractionDigits: d, maximumFractionDigits: d }));
  const pad2 = (n) => String(n).padStart(2, '0');
  function ftime(ms, seconds) {
    const d = new Date(ms);
    return pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' + pad2(d.getHours()) + ':' +
      pad2(d.getMinutes()) + (seconds === false ? '' : ':' + pad2(d.getSeconds()));
  }
  function fdur(v) {
    const n = Math.max(0, Math.floor(v));
    if (n >= 86400) return Math.floor(n / 86400) + 'd ' + Math.floor(n % 86400 / 3600) + 'h';
    if (n >= 3600) return Math.floor(n / 3600) + 'h ' + Math.floor(n % 3600 / 60) + 'm';
    return n >= 60 ? Math.floor(n / 60) + 'm ' + (n % 60) + 's' : n + 's';
  }
  const FMT = {
    text: (v) => String(v),
    price: (v) => { const a = Math.abs(v); return nf(a >= 100 ? 2 : a >= 1 ? 4 : 6).format(v); },
    qty: (v) => v.toFixed(6).replace(/\.?0+$/, '') || '0',
    usd: (v) => (v < 0 ? '-' : '+') + nf(2).format(Math.abs(v)),
    money: (v) => nf(2).format(v),
    pct: (v) => v.toFixed(1) + '%',
    pct0: (v) => v.toFixed(0) + '%',
    bytes: (v) => {
      const units = ['B', 'KB', 'MB', 'GB', 'TB'];
      let i = 0;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
      return i ? v.toFixed(1) + ' ' + units[i] : v.toFixed(0) + ' B';
    },
    age: fdur,
    dur: fdur,
    time: (v) => ftime(v, true),
    tshort: (v) => ftime(v, false),
  };
  function fmt(kind, v) {
    if (v === null || v === undefined || v === '') return '—';
    if (kind !== 'text' && typeof v !== 'number') return String(v);
    return (FMT[kind] || FMT.text)(v);
  }
  const signClass = (v) => (typeof v !== 'number' || v === 0 ? '' : v > 0 ? 'pos' : 'neg');
  const tr = (key, fallback) => (Object.prototype.hasOwnProperty.call(T, key) ? T[key] : fallback);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  const get = (obj, path) => path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
  const base = () => (status && status.symbol && status.symbol.endsWith('USDT') ? status.symbol.slice(0, -4) : '');

  // ---- fetching ----------------------------------------------------------------------------
  async function getJSON(url) {
    const r = await fetch(url, { headers: HDR, credentials: 'same-origin', cache: 'no-store' });
    if (r.status === 401) { location.href = '/login'; throw new Error('login'); }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.error) || ('HTTP ' + r.status));
    return body;
  }
  function offline(err) {
    const b = $('#banner-offline');
    b.hidden = !err;
    if (err) b.textContent = T.offline + (err.message && err.message !== 'Failed to fetch' ? ': ' + err.message : '');
  }

  // ---- status ------------------------------------------------------------------------------
  function orderLine(box, o) {
    box.replaceChildren();
    if (!o) { box.append(el('span', 'muted', T.none_yet)); return; }
    box.append(el('b', 'act-' + o.action, tr(o.action, o.action)), ' ' + tr(o.reason, o.reason) + ' @ ' +
      fmt('price', o.price) + ' ', el('span', 'muted', '· ' + fmt('qty', o.qty) + ' · ' +
      (o.paper ? 'PAPER' : 'LIVE') + ' · ' + tr('st_' + o.status, o.status) + ' · ' + fmt('time', o.time_ms)));
  }
  function transitionLine(box, t) {
    box.replaceChildren();
    if (!t) { box.append(el('span', 'muted', T.none_yet)); return; }
    box.append(t.from_state + ' → ', el('b', '', t.to_state), ' @ ' + fmt('price', t.price) + ' ',
      el('span', 'muted', '· ' + fmt('time', t.time_ms)));
  }
  function applyStatus(s) {
    status = s;
    document.querySelectorAll('[data-k]').forEach((e) => {
      const v = get(s, e.dataset.k);
      e.textContent = fmt(e.dataset.f || 'text', v);
      if (e.dataset.f === 'usd') e.className = signClass(v);
    });
    $('#state-label').textContent = (LANG === 'en' ? s.state_label_en : s.state_label) || '—';
    const mode = $('#mode');
    mode.textContent = s.mode || '—';
    mode.className = 'badge mode-' + String(s.mode || '').toLowerCase();
    $('#bot').className = 'bot bot-' + s.bot;
    $('#bot-text').textContent = tr('bot_' + s.bot, s.bot);
    $('#hb-age').textContent = s.heartbeat_age_s != null && s.bot !== 'backtest' ? fmt('age', s.heartbeat_age_s) : '';
    $('#banner-waiting').hidden = s.db !== 'missing';
    $('#banner-backtest').hidden = s.bot !== 'backtest';
    const b = s.backtest;
    $('#bt-summary').textContent = b ? (b.file || '') + ' · ' + fmt('qty', b.trades) + ' ' + T.bt_trades + ' · ' +
      T.win_rate + ' ' + fmt('pct', b.win_rate == null ? null : b.win_rate * 100) + ' · ' + T.net_pnl + ' ' +
      fmt('usd', b.net_pnl_usdt) + ' USDT · ' + T.max_dd + ' ' + fmt('money', b.max_drawdown_usdt) : '';
    $('#banner-stale').hidden = s.bot !== 'stopped';
    $('#paused').hidden = !s.entries_paused;
    const pos = $('#position');
    pos.className = 'side-' + s.position_side;
    pos.textContent = s.position_side === 'flat' ? T.flat : s.position == null ? tr(s.position_side, '—')
      : T[s.position_side] + ' ' + fmt('qty', Math.abs(s.position)) + ' ' + base();
    $('#data-age').textContent = s.bot === 'running' || s.bot === 'stopped' ? fmt('age', s.data_age_s) : '—';
    const conn = $('#conn');
    conn.className = 'conn-' + (s.connection || 'none');
    conn.textContent = s.connection ? tr('conn_' + s.connection, s.connection) : '—';
    orderLine($('#last-order'), s.last_order);
    transitionLine($('#last-transition'), s.last_transition);
    const sy = s.system || {};
    $('#health').classList.toggle('hot', Math.max(sy.cpu_pct || 0, sy.mem_pct || 0, sy.disk_pct || 0) >= 90);
    $('#m-cpu').value = sy.cpu_pct || 0;
    $('#m-mem').value = sy.mem_pct || 0;
    $('#m-disk').value = sy.disk_pct || 0;
    $('#load').textContent = sy.load ? sy.load.join(' ') : '—';
    $('#bot-proc').textContent = sy.bot ? 'CPU ' + fmt('pct', sy.bot.cpu_pct) + ' · RSS ' + fmt('bytes', sy.bot.rss_bytes) : '—';
    $('#bot-uptime').textContent = sy.bot ? fmt('dur', sy.bot.uptime_s) : '—';
    const entries = $('#entries');
    entries.className = s.entries_paused ? 'warn-text' : 'ok-text';
    entries.textContent = s.entries_paused ? T.entries_paused + (s.pause_reason ? ' (' + s.pause_reason + ')' : '')
      : T.entries_active;
    const off = s.db !== 'ok' || s.bot === 'backtest';
    // Offer only what makes sense now; the bot re-checks every command anyway.
    const useless = { pause: s.entries_paused, resume: !s.entries_paused, close_position: s.position_side === 'flat' };
    document.querySelectorAll('form.ctl').forEach((f) => { f.querySelector('button').disabled = off || useless[f.dataset.cmd]; });
    if (off) $('#ctl-msg').textContent = T.controls_off;
    const cmds = $('#commands');
    cmds.replaceChildren();
    (s.commands || []).forEach((c) => {
      const li = el('li');
      li.append(el('span', '', tr(c.command, c.command)), ' ', el('span', 'badge cmd-' + c.status,
        tr('cmd_' + c.status, c.status)), ' ', el('span', 'muted', (c.result || '') + ' · ' + fmt('time', c.created_ms)));
      cmds.append(li);
    });
    if (!cmds.children.length) cmds.append(el('li', 'muted', T.none_yet));
    $('#updated').textContent = fmt('time', s.server_time_ms);
    document.body.dataset.updated = String(s.server_time_ms);
    const orderId = s.last_order ? s.last_order.id : null;
    const changed = orderId !== lastOrderId || s.last_candle_ms !== lastCandleMs;
    lastOrderId = orderId;
    lastCandleMs = s.last_candle_ms;
    return changed;
  }

  async function tick() {
    clearTimeout(timer);
    try {
      const changed = applyStatus(await getJSON('/api/status'));
      offline(null);
      ticks++;
      if (changed || ticks % 15 === 0) loadChart();
      else drawChart();
      if (changed || ticks % 3 === 0) { loadTrades(); loadEvents(); }
    } catch (err) {
      offline(err);
    }
    timer = setTimeout(tick, document.hidden ? 15000 : 2000);
  }

  // ---- trades ------------------------------------------------------------------------------
  async function loadTrades() {
    const q = new URLSearchParams({ page: String(trades.page) });
    if (trades.paper !== '') q.set('paper', trades.paper);
    let d;
    try { d = await getJSON('/api/trades?' + q); } catch (err) { return; }
    trades.page = d.page;
    const body = $('#trade-rows');
    body.replaceChildren();
    d.rows.forEach((o) => {
      const row = el('tr', 'st-' + o.status);
      const act = el('td');
      act.append(el('b', 'act-' + o.action, tr(o.action, o.action)), ' ', el('small', '', tr(o.reason, o.reason)));
      const kind = el('td');
      kind.append(el('span', 'badge ' + (o.paper ? 'paper' : 'live'), o.paper ? T.paper : T.live));
      if (o.status !== 'filled') kind.append(' ', el('small', 'st', tr('st_' + o.status, o.status)));
      if (o.error_message) kind.title = o.error_message;
      row.append(el('td', '', fmt('tshort', o.time_ms)), act, el('td', 'num', fmt('price', o.price)),
        el('td', 'num opt', fmt('qty', o.qty)), el('td', 'num opt', fmt('money', o.fee_usdt)),
        el('td', 'num ' + signClass(o.realized_pnl_usdt), fmt('usd', o.realized_pnl_usdt)), kind);
      body.append(row);
    });
    if (!d.rows.length) {
      const td = el('td', 'muted center', T.no_trades);
      td.colSpan = 7;
      const row = el('tr');
      row.append(td);
      body.append(row);
    }
    document.querySelectorAll('#trade-filter a').forEach((a) => a.classList.toggle('on', a.dataset.paper === trades.paper));
    $('#prev').hidden = d.page <= 1;
    $('#next').hidden = d.page >= d.pages;
    $('#page-info').textContent = d.page + ' / ' + d.pages + ' ' + T.page + ' · ' + d.total;
    body.dataset.src = 'js';
  }
  document.querySelectorAll('#trade-filter a').forEach((a) => a.addEventListener('click', (ev) => {
    ev.preventDefault();
    trades.paper = a.dataset.paper;
    trades.page = 1;
    loadTrades();
  }));
  $('#prev').addEventListener('click', (ev) => { ev.preventDefault(); trades.page = Math.max(1, trades.page - 1); loadTrades(); });
  $('#next').addEventListener('click', (ev) => { ev.preventDefault(); trades.page += 1; loadTrades(); });

  // ---- events ------------------------------------------------------------------------------
  async function loadEvents() {
    let d;
    try { d = await getJSON('/api/events?limit=50' + ($('#errors-only').checked ? '&level=warning' : '')); } catch (err) { return; }
    const list = $('#event-rows');
    list.replaceChildren();
    d.rows.forEach((e) => {
      const li = el('li', 'lvl-' + String(e.level).toLowerCase());
      li.append(el('time', '', fmt('time', e.time_ms)), ' ', el('span', 'lvl', e.level), ' ', el('span', 'msg', e.message));
      list.append(li);
    });
    if (!d.rows.length) list.append(el('li', 'muted', T.no_events));
    list.dataset.src = 'js';
  }
  $('#errors-only').addEventListener('change', loadEvents);

  // ---- chart -------------------------------------------------------------------------------
  async function loadChart() {
    try { chart = await getJSON('/api/candles?limit=100'); } catch (err) { return; }
    drawChart();
  }
  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
    return out;
  }
  function drawChart() {
    const cv = $('#chart');
    if (!chart) return;
    const candles = chart.candles || [];
    const n = candles.length;
    $('#chart-empty').hidden = n > 0;
    const w = cv.clientWidth;
    const h = w < 500 ? 240 : w < 900 ? 300 : 340;
    cv.style.height = h + 'px';
    const dpr = window.devicePixelRatio || 1;
    cv.width = Math.round(w * dpr);
    cv.height = Math.round(h * dpr);
    const c = cv.getContext('2d');
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, w, h);
    layout = null;
    if (!n || w < 50) return;
    const css = getComputedStyle(document.documentElement);
    const col = (k) => css.getPropertyValue('--' + k).trim();
    const P = { l: 4, r: 64, t: 8, b: 20 };
    const pw = w - P.l - P.r;
    const ph = h - P.t - P.b;
    const sw = pw / (n + 1); // one more slot on the right: the forming candle, "now"
    const sameMarket = status && status.symbol === chart.symbol && status.interval === chart.interval;
    const live = sameMarket && status.bot !== 'backtest' ? status : null;
    let lo = Infinity;
    let hi = -Infinity;
    candles.forEach((k) => { lo = Math.min(lo, k[3]); hi = Math.max(hi, k[2]); });
    chart.bands.forEach((b) => { if (b) { lo = Math.min(lo, b[2]); hi = Math.max(hi, b[0]); } });
    if (live) [live.price, live.up, live.dn].forEach((v) => { if (typeof v === 'number') { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    const span = hi - lo || Math.abs(hi) * 0.01 || 1;
    lo -= span * 0.04;
    hi += span * 0.04;
    const y = (p) => P.t + (hi - p) / (hi - lo) * ph;
    const x = (i) => P.l + (i + 0.5) * sw;
    c.font = '11px system-ui, sans-serif';
    c.lineWidth = 1;
    // price grid and axis
    c.textBaseline = 'middle';
    c.textAlign = 'left';
    niceTicks(lo, hi, h < 260 ? 4 : 6).forEach((v) => {
      const yy = Math.round(y(v)) + 0.5;
      c.strokeStyle = col('line');
      c.beginPath(); c.moveTo(P.l, yy); c.lineTo(w - P.r, yy); c.stroke();
      c.fillStyle = col('muted');
      c.fillText(fmt('price', v), w - P.r + 5, yy);
    });
    // time axis
    const step = n > 1 ? candles[1][0] - candles[0][0] : 0;
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(pw / 80))));
    c.textBaseline = 'top';
    c.textAlign = 'center';
    c.fillStyle = col('muted');
    for (let i = n - 1; i >= 0; i -= every) {
      const d = new Date(candles[i][0]);
      const label = d.getHours() === 0 && d.getMinutes() === 0 ? pad2(d.getMonth() + 1) + '-' + pad2(d.getDate())
        : pad2(d.getHours()) + ':' + pad2(d.getMinutes());
      if (x(i) > P.l + 16) c.fillText(label, x(i), h - P.b + 5);
    }
    // bands: shaded channel, UP/DN lines, dashed MID
    const bandPts = [];
    chart.bands.forEach((b, i) => { if (b) bandPts.push([i, b]); });
    if (live && typeof live.up === 'number') bandPts.push([n, [live.up, live.mid, live.dn]]);
    if (bandPts.length > 1) {
      c.beginPath();
      bandPts.forEach(([i, b], j) => (j ? c.lineTo(x(i), y(b[0])) : c.moveTo(x(i), y(b[0]))));
      for (let j = bandPts.length - 1; j >= 0; j--) c.lineTo(x(bandPts[j][0]), y(bandPts[j][1][2]));
      c.closePath();
      c.globalAlpha = 0.08;
      c.fillStyle = col('band');
      c.fill();
      c.globalAlpha = 1;
      const line = (idx, color, dash) => {
        c.beginPath();
        c.setLineDash(dash);
        c.strokeStyle = color;
        c.lineWidth = 1.4;
        bandPts.forEach(([i, b], j) => (j ? c.lineTo(x(i), y(b[idx])) : c.moveTo(x(i), y(b[idx]))));
        c.stroke();
        c.setLineDash([]);
      };
      line(0, col('band'), []);
      line(2, col('band'), []);
      line(1, col('mid'), [4, 3]);
    }
    // candles
    const bw = Math.max(1, Math.min(12, sw * 0.62));
    candles.forEach((k, i) => {
      const upC = k[4] >= k[1];
      c.strokeStyle = c.fillStyle = upC ? col('pos') : col('neg');
      c.lineWidth = 1;
      const xx = Math.round(x(i)) + 0.5;
      c.beginPath(); c.moveTo(xx, y(k[2])); c.lineTo(xx, y(k[3])); c.stroke();
      const top = y(Math.max(k[1], k[4]));
      c.fillRect(xx - bw / 2, top, bw, Math.max(1, y(Math.min(k[1], k[4])) - top));
    });
    // entries (triangles pointing at the fill price) and exits (rings)
    const t0 = candles[0][0];
    (chart.markers || []).forEach((m) => {
      if (typeof m.fill_price !== 'number') return;
      const i = Math.min(n, step ? Math.floor((m.time_ms - t0) / step) : n);
      if (i < 0) return;
      const xx = x(i);
      const yy = y(m.fill_price);
      c.beginPath();
      if (m.action === 'open_long') {
        c.moveTo(xx, yy + 2); c.lineTo(xx - 6, yy + 12); c.lineTo(xx + 6, yy + 12);
        c.fillStyle = col('pos');
      } else if (m.action === 'open_short') {
        c.moveTo(xx, yy - 2); c.lineTo(xx - 6, yy - 12); c.lineTo(xx + 6, yy - 12);
        c.fillStyle = col('neg');
      } else {
        c.arc(xx, yy, 3.5, 0, Math.PI * 2);
        c.fillStyle = col('card');
        c.fill();
        c.lineWidth = 1.5;
        c.strokeStyle = col('text');
        c.stroke();
        return;
      }
      c.closePath();
      c.fill();
    });
    // the live price
    if (live && typeof live.price === 'number') {
      const yy = Math.round(y(live.price)) + 0.5;
      c.setLineDash([3, 3]);
      c.strokeStyle = col('accent');
      c.lineWidth = 1;
      c.beginPath(); c.moveTo(P.l, yy); c.lineTo(w - P.r, yy); c.stroke();
      c.setLineDash([]);
      c.fillStyle = col('accent');
      c.fillRect(w - P.r + 1, yy - 8, P.r - 1, 16);
      c.fillStyle = col('on-accent');
      c.textBaseline = 'middle';
      c.textAlign = 'left';
      c.fillText(fmt('price', live.price), w - P.r + 5, yy);
    }
    layout = { P, sw, n };
    cv.dataset.drawn = String(n);
    readout(n - 1);
  }
  function readout(i) {
    const box = $('#chart-readout');
    if (!chart || !chart.candles.length) { box.textContent = '\u00a0'; return; }
    i = Math.max(0, Math.min(chart.candles.length - 1, i));
    const k = chart.candles[i];
    const b = chart.bands[i];
    box.textContent = ftime(k[0], false) + '  O ' + fmt('price', k[1]) + '  H ' + fmt('price', k[2]) + '  L ' +
      fmt('price', k[3]) + '  C ' + fmt('price', k[4]) + (b ? '  ·  UP ' + fmt('price', b[0]) + '  MID ' +
      fmt('price', b[1]) + '  DN ' + fmt('price', b[2]) : '');
  }
  const cv = $('#chart');
  cv.addEventListener('pointermove', (ev) => {
    if (!layout) return;
    const r = cv.getBoundingClientRect();
    readout(Math.floor((ev.clientX - r.left - layout.P.l) / layout.sw));
  });
  cv.addEventListener('pointerleave', () => { if (layout) readout(layout.n - 1); });
  window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => drawChart());
  let resizeQueued = false;
  window.addEventListener('resize', () => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => { resizeQueued = false; drawChart(); });
  });

  // ---- controls: confirm, then POST with the CSRF token -----------------------------------
  document.querySelectorAll('form.ctl').forEach((f) => f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const cmd = f.dataset.cmd;
    if (!window.confirm(T['confirm_' + cmd])) return;
    const msg = $('#ctl-msg');
    try {
      const r = await fetch(f.action, {
        method: 'POST', credentials: 'same-origin', headers: Object.assign({ 'X-CSRF-Token': CSRF }, HDR),
        body: new URLSearchParams({ csrf_token: CSRF, confirm: '1' }),
      });
      let d = null;
      try { d = await r.json(); } catch (e) { d = null; }
      msg.textContent = r.ok ? T.queued : ((d && d.error) || 'HTTP ' + r.status);
    } catch (err) {
      msg.textContent = T.offline;
    }
    tick();
  }));

  // ---- language: remembered in a cookie (read by the server) and localStorage -------------
  const langLink = $('#lang');
  function remember(lang) {
    document.cookie = 'lang=' + lang + '; path=/; max-age=31536000; SameSite=Strict';
    try { localStorage.setItem('bollmin.lang', lang); } catch (e) { /* private mode */ }
  }
  langLink.addEventListener('click', (ev) => {
    ev.preventDefault();
    remember(langLink.dataset.to);
    const u = new URL(location.href);
    u.searchParams.delete('lang');
    location.replace(u.toString());
  });
  if (!/(?:^|; )lang=/.test(document.cookie)) {
    let saved = null;
    try { saved = localStorage.getItem('bollmin.lang'); } catch (e) { saved = null; }
    if ((saved === 'en' || saved === 'zh') && !new URLSearchParams(location.search).get('lang')) {
      remember(saved);
      if (saved !== LANG) location.reload();
    }
  }

  document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });
  tick();
})();
