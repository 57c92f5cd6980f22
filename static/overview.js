/* bollmin dashboard, overview page: keeps the cards fresh from /api/status (no reload), and the
   price chart, equity curve, PnL per day, trades and events from their own JSON routes when
   something changed. */
(function () {
  'use strict';
  const B = window.Bollmin;
  const C = window.BollCharts;
  const { T, fmt, el, tr } = B;
  const $ = (sel) => document.querySelector(sel);
  const query = new URLSearchParams(location.search);
  const trades = { paper: query.get('paper') || '', page: Math.max(1, parseInt(query.get('page'), 10) || 1) };
  let status = null;
  let ticks = 0;
  let lastCandleMs;  // undefined until the first status: the first one always loads everything
  let ordersKey;
  let pnl = null;
  let dailyMode = null;

  const price = C.priceChart($('#price-chart'), $('#chart-readout'));
  const equity = C.lineChart($('#equity-chart'));
  const daily = C.dailyChart($('#daily-chart'));
  $('#chart-reset').addEventListener('click', () => price.reset());

  const base = () => (status && status.symbol && status.symbol.endsWith('USDT') ? status.symbol.slice(0, -4) : '');

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
    $('#state-label').textContent = (B.LANG === 'en' ? s.state_label_en : s.state_label) || '—';
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
    // Offer only what makes sense now (the server says which); the bot re-checks every command anyway.
    document.querySelectorAll('#controls form.ctl').forEach((f) => {
      f.querySelector('button').disabled = !(s.offered || {})[f.dataset.cmd];
    });
    if (!s.controls) $('#ctl-msg').textContent = T.controls_off;
    const cmds = $('#commands');
    cmds.replaceChildren();
    (s.commands || []).forEach((c) => {
      const li = el('li');
      li.append(el('span', '', tr(c.command, c.command)), ' ', el('span', 'badge cmd-' + c.status,
        tr('cmd_' + c.status, c.status)), ' ', el('span', 'muted', (c.result || '') + ' · ' + fmt('time', c.created_ms)));
      cmds.append(li);
    });
    if (!cmds.children.length) cmds.append(el('li', 'muted', T.none_yet));
    if (dailyMode === null) dailyMode = s.mode === 'PAPER' || s.mode === 'BACKTEST' ? 'paper' : 'live';
  }

  function onStatus(s) {
    applyStatus(s);
    ticks++;
    const newCandle = s.last_candle_ms !== lastCandleMs;
    const newOrder = s.orders_key !== ordersKey;
    lastCandleMs = s.last_candle_ms;
    ordersKey = s.orders_key;
    if (newCandle || newOrder || ticks % 30 === 0) loadChart();
    else price.setLive(s);
    if (newOrder || pnl === null) loadPnl();
    if (newOrder || ticks % 3 === 0) { loadTrades(); loadEvents(); }
  }

  // ---- price chart -------------------------------------------------------------------------------
  async function loadChart() {
    let d;
    try { d = await B.getJSON('/api/candles?limit=300'); } catch (err) { return; }
    $('#chart-empty').hidden = d.candles.length > 0;
    price.set(d);
    if (status) price.setLive(status);
  }

  // ---- equity and PnL per day -----------------------------------------------------------------------
  async function loadPnl() {
    try { pnl = await B.getJSON('/api/pnl'); } catch (err) { return; }
    const paper = pnl.equity.paper;
    const live = pnl.equity.live;
    equity.set('paper', paper, () => C.css('paper'), T.paper);
    equity.set('live', live, () => C.css('live'), T.live);
    equity.fit();
    $('#equity-empty').hidden = paper.length + live.length > 0;
    const total = (name) => {
      const b = $('#eq-' + name);
      const v = pnl.totals[name].net_pnl_usdt;
      b.textContent = pnl.equity[name].length ? fmt('usd', v) + ' USDT' : '—';
      b.className = pnl.equity[name].length ? B.signClass(v) : 'muted';
    };
    total('paper');
    total('live');
    drawDaily();
  }
  function drawDaily() {
    if (!pnl) return;
    const mode = dailyMode || 'paper';
    document.querySelectorAll('#daily-mode a').forEach((a) => a.classList.toggle('on', a.dataset.mode === mode));
    const days = pnl.daily[mode];
    daily.set(days);
    $('#daily-empty').hidden = days.length > 0;
    const t = pnl.totals[mode];
    $('#daily-summary').textContent = days.length ? T.total + ' ' + fmt('usd', t.net_pnl_usdt) + ' USDT · ' + T.fees +
      ' ' + fmt('money', t.fees_usdt) + ' · ' + T.days_won + ' ' + t.days_won + ' / ' + t.days : '\u00a0';
  }
  document.querySelectorAll('#daily-mode a').forEach((a) => a.addEventListener('click', (ev) => {
    ev.preventDefault();
    dailyMode = a.dataset.mode;
    drawDaily();
  }));

  // ---- trades ------------------------------------------------------------------------------------
  async function loadTrades() {
    const q = new URLSearchParams({ page: String(trades.page) });
    if (trades.paper !== '') q.set('paper', trades.paper);
    let d;
    try { d = await B.getJSON('/api/trades?' + q); } catch (err) { return; }
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
        el('td', 'num ' + B.signClass(o.realized_pnl_usdt), fmt('usd', o.realized_pnl_usdt)), kind);
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

  // ---- events ------------------------------------------------------------------------------------
  async function loadEvents() {
    let d;
    try { d = await B.getJSON('/api/events?limit=50' + ($('#errors-only').checked ? '&level=warning' : '')); } catch (err) { return; }
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

  B.start(onStatus, 2000);
})();
