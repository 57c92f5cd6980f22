/* bollmin dashboard, shared by every signed-in page: formats, fetching, the header, the alert
   banners, the control buttons (confirm, then a CSRF-protected POST) and the language switch.
   Text that came from the database only ever reaches the page through textContent. */
(function () {
  'use strict';
  const T = JSON.parse(document.getElementById('i18n').textContent);
  const LANG = document.body.dataset.lang === 'en' ? 'en' : 'zh';
  const CSRF = (document.querySelector('meta[name=csrf-token]') || {}).content || '';
  const HDR = { 'X-Bollmin': '1', 'Accept': 'application/json' };
  const $ = (sel) => document.querySelector(sel);

  // ---- formats (the same as fmt() in dashboard_data.py; times here are the browser's local time)
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
  const priceDigits = (v) => { const a = Math.abs(v); return a >= 100 ? 2 : a >= 1 ? 4 : 6; };
  const FMT = {
    text: (v) => String(v),
    price: (v) => nf(priceDigits(v)).format(v),
    qty: (v) => v.toFixed(6).replace(/\.?0+$/, '') || '0',
    usd: (v) => (v < 0 ? '-' : '+') + nf(2).format(Math.abs(v)),
    usd0: (v) => (v < 0 ? '-' : '+') + nf(0).format(Math.abs(v)),
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

  // ---- fetching ------------------------------------------------------------------------------
  // Several bots on one server: the page is about the instance named by ?db= (the server checks it).
  const DB = new URLSearchParams(location.search).get('db');
  function withDb(url) {
    return DB ? url + (url.includes('?') ? '&' : '?') + 'db=' + encodeURIComponent(DB) : url;
  }
  async function getJSON(url) {
    const r = await fetch(withDb(url), { headers: HDR, credentials: 'same-origin', cache: 'no-store' });
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

  // ---- alerts: rebuilt from each status; a dismissed one (by id) stays hidden in this browser --
  const DISMISSED = 'bollmin.dismissed';
  function dismissed() {
    try { return JSON.parse(localStorage.getItem(DISMISSED) || '[]'); } catch (e) { return []; }
  }
  function dismiss(id) {
    const ids = dismissed().filter((x) => x !== id).concat([id]).slice(-50);
    try { localStorage.setItem(DISMISSED, JSON.stringify(ids)); } catch (e) { /* private mode */ }
  }
  function controlForm(cmd, small) {
    const f = el('form', 'ctl inline');
    f.method = 'post';
    f.action = withDb('/control/' + cmd);
    f.dataset.cmd = cmd;
    const token = el('input');
    token.type = 'hidden';
    token.name = 'csrf_token';
    token.value = CSRF;
    const b = el('button', 'btn' + (small ? ' small' : ''), tr(cmd, cmd));
    b.type = 'submit';
    f.append(token, b);
    return f;
  }
  function renderAlerts(alerts) {
    const box = $('#alerts');
    const hidden = dismissed();
    box.replaceChildren();
    (alerts || []).forEach((a) => {
      if (a.id && hidden.includes(a.id)) return;
      const div = el('div', 'banner ' + a.level);
      div.dataset.kind = a.kind;
      div.append(el('span', 'msg', a.text));
      if (a.action) div.append(' ', controlForm(a.action, true));
      if (a.id) {
        div.dataset.id = a.id;
        const x = el('button', 'btn small ghost dismiss', T.dismiss);
        x.type = 'button';
        x.addEventListener('click', () => { dismiss(a.id); div.remove(); });
        div.append(' ', x);
      }
      box.append(div);
    });
    box.dataset.src = 'js';
  }

  // ---- the header ------------------------------------------------------------------------------
  function applyHeader(s) {
    document.querySelectorAll('[data-k]').forEach((e) => {
      const v = get(s, e.dataset.k);
      e.textContent = fmt(e.dataset.f || 'text', v);
      if (e.dataset.f === 'usd') e.className = signClass(v);
    });
    const mode = $('#mode');
    mode.textContent = s.mode || '—';
    mode.className = 'badge mode-' + String(s.mode || '').toLowerCase();
    $('#bot').className = 'bot bot-' + s.bot;
    $('#bot-text').textContent = tr('bot_' + s.bot, s.bot);
    $('#hb-age').textContent = s.heartbeat_age_s != null && s.bot !== 'backtest' ? fmt('age', s.heartbeat_age_s) : '';
    const sy = s.system || {};
    $('#health').classList.toggle('hot', Math.max(sy.cpu_pct || 0, sy.mem_pct || 0, sy.disk_pct || 0) >= 90);
    renderAlerts(s.alerts);
    $('#updated').textContent = fmt('time', s.server_time_ms);
    document.body.dataset.updated = String(s.server_time_ms);
  }

  // ---- polling: the page registers what it does with each status -----------------------------
  let timer = null;
  let onStatus = () => {};
  let period = 2000;
  async function tick() {
    clearTimeout(timer);
    try {
      const s = await getJSON('/api/status');
      offline(null);
      applyHeader(s);
      onStatus(s);
    } catch (err) {
      offline(err);
    }
    timer = setTimeout(tick, document.hidden ? 15000 : period);
  }
  function start(handler, everyMs) {
    onStatus = handler || onStatus;
    period = everyMs || period;
    document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });
    tick();
  }

  // ---- controls: confirm, then POST with the CSRF token (any form.ctl, banners included) ------
  document.addEventListener('submit', async (ev) => {
    const f = ev.target;
    if (!(f instanceof HTMLFormElement) || !f.classList.contains('ctl')) return;
    ev.preventDefault();
    const cmd = f.dataset.cmd;
    if (!window.confirm(T['confirm_' + cmd])) return;
    const msg = $('#ctl-msg');
    let text;
    try {
      const r = await fetch(f.action, {
        method: 'POST', credentials: 'same-origin', headers: Object.assign({ 'X-CSRF-Token': CSRF }, HDR),
        body: new URLSearchParams({ csrf_token: CSRF, confirm: '1' }),
      });
      let d = null;
      try { d = await r.json(); } catch (e) { d = null; }
      text = r.ok ? T.queued : ((d && d.error) || 'HTTP ' + r.status);
    } catch (err) {
      text = T.offline;
    }
    if (msg) msg.textContent = text;
    tick();
  });

  // ---- language: remembered in a cookie (read by the server) and localStorage -------------
  const langLink = $('#lang');
  function remember(lang) {
    document.cookie = 'lang=' + lang + '; path=/; max-age=31536000; SameSite=Strict' +
      (location.protocol === 'https:' ? '; Secure' : '');
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
  // The server-rendered banners: hide the dismissed ones at once (the first status rebuilds them).
  document.querySelectorAll('#alerts .banner[data-id]').forEach((b) => { if (dismissed().includes(b.dataset.id)) b.remove(); });

  window.Bollmin = { T, LANG, fmt, signClass, tr, el, get, getJSON, start, refresh: tick, priceDigits, pad2 };
})();
