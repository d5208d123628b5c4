/* Warren's management UI (written for Warren; plain JS, no libraries).
 *
 * A single page: the hash (#/queues, #/queue/<vhost>/<name>, #/nodes/<name>, ...) picks a view, each view reads
 * the node's HTTP API (/api, the RabbitMQ-compatible management API) and refreshes itself
 * every 5 s while shown. Credentials are checked against /api/whoami at login and kept in
 * sessionStorage (gone when the tab closes); every API call sends them as HTTP Basic auth with
 * credentials: "omit", so the browser never pops up its own login dialog. Errors show the
 * API's "reason". Endpoints a node may not have (connections, channels, consumers, definitions
 * import, quorum membership) are probed and the views degrade to an explanatory empty state. */
'use strict';

const REFRESH_MS = 5000;
const HISTORY = 60; /* chart samples kept (5 min at one per 5 s) */
const state = { auth: null, user: null, timer: null, overviewHist: [], queueHist: {}, caps: {}, exchangeTypes: null };

/* ---------------------------------------------------------------- helpers */

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel, root) => (root || document).querySelector(sel);
/* el.append that skips null / undefined / false (optional parts of a view). */
function app(el, ...kids) {
  el.append(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  return el;
}
const enc = encodeURIComponent;
const clear = (el) => { while (el.firstChild) el.removeChild(el.firstChild); return el; };

function fmtNum(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US');
}
function fmtRate(r) {
  if (r === undefined || r === null) return '–';
  const a = Math.abs(r);
  return (a >= 100 ? r.toFixed(0) : a >= 10 ? r.toFixed(1) : r.toFixed(2)) + '/s';
}
function fmtBytes(b) {
  if (b === undefined || b === null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + ' ' + u[i];
}
function fmtUptime(ms) {
  if (!ms && ms !== 0) return '–';
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}
const rateOf = (o, k) => (o && o[k + '_details'] ? o[k + '_details'].rate : undefined);
const vhostLabel = (v) => (v === '/' ? '/' : v);

function flash(text, isError) {
  const box = $('#flash');
  const m = h('div', { class: 'msg' + (isError ? ' error' : '') }, text);
  app(box, m);
  setTimeout(() => m.remove(), isError ? 9000 : 4000);
}

/* ---------------------------------------------------------------- API */

class ApiError extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

async function api(method, path, body, opts) {
  const headers = Object.assign({ Authorization: 'Basic ' + (opts && opts.auth || state.auth) }, opts && opts.headers);
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch('/api' + path, init);
  } catch (e) {
    throw new ApiError(0, 'The node did not answer (' + e.message + '). Is it running?');
  }
  const text = await res.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch (e) { data = text; } }
  if (!res.ok) {
    let reason = data && typeof data === 'object' ? (data.reason || data.error) : null;
    if (typeof reason === 'object') reason = JSON.stringify(reason);
    if (!reason) reason = res.status === 401 ? 'Not authorised' : res.status === 404 ? 'Not found' : `HTTP ${res.status} ${res.statusText}`;
    const err = new ApiError(res.status, reason);
    if (res.status === 401 && !(opts && opts.auth) && (reason === 'Login failed' || !text)) {
      logout('Your session is no longer valid: ' + reason);
    }
    throw err;
  }
  return data;
}
const GET = (p) => api('GET', p);

/* Does the node have this endpoint? The router answers an unknown path 404 and a known one
 * (with another method) 405 before asking for credentials, so an OPTIONS-like probe is cheap. */
async function hasEndpoint(key, method, path) {
  if (key in state.caps) return state.caps[key];
  let ok = false;
  try {
    const res = await fetch('/api' + path, { method, credentials: 'omit', headers: { Authorization: 'Basic ' + state.auth } });
    ok = res.status !== 404;
  } catch (e) { ok = false; }
  state.caps[key] = ok;
  return ok;
}

/* Runs an action from a button or form, showing its outcome. */
async function act(fn, okText, el) {
  if (el) el.disabled = true;
  try {
    const r = await fn();
    if (okText) flash(typeof okText === 'function' ? okText(r) : okText);
    return r;
  } catch (e) {
    flash(e.message, true);
    return undefined;
  } finally {
    if (el) el.disabled = false;
  }
}

/* ---------------------------------------------------------------- login */

function showLogin(message) {
  stopTimer();
  $('#top').hidden = true;
  const err = h('div', { class: 'inline-error', id: 'login-error' }, message || '');
  const user = h('input', { type: 'text', id: 'login-user', name: 'username', autocomplete: 'username', autofocus: true });
  const pass = h('input', { type: 'password', id: 'login-pass', name: 'password', autocomplete: 'current-password' });
  const btn = h('button', { type: 'submit', id: 'login-submit' }, 'Log in');
  const form = h('form', { class: 'card login stack', id: 'login-form', onsubmit: async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    btn.disabled = true;
    const auth = btoa(unescape(encodeURIComponent(user.value + ':' + pass.value)));
    try {
      const who = await api('GET', '/whoami', undefined, { auth });
      state.auth = auth;
      state.user = who;
      sessionStorage.setItem('warren.auth', auth);
      start();
    } catch (e) {
      err.textContent = e.status === 401 ? 'Login failed: ' + e.message : e.message;
    } finally { btn.disabled = false; }
  } },
  h('h1', {}, 'Warren'),
  h('p', { class: 'muted' }, 'Log in with a broker user that has a management tag.'),
  h('label', {}, h('span', { class: 'lbl' }, 'Username'), user),
  h('label', {}, h('span', { class: 'lbl' }, 'Password'), pass),
  btn, err);
  clear($('#main')).append(form);
  user.focus();
}

function logout(message) {
  sessionStorage.removeItem('warren.auth');
  state.auth = null;
  state.user = null;
  state.caps = {};
  if (location.hash && location.hash !== '#/') history.replaceState(null, '', '#/');
  showLogin(message);
}

async function start() {
  $('#top').hidden = false;
  if (!state.user) {
    try { state.user = await api('GET', '/whoami'); } catch (e) { return; }
  }
  $('#who-label').textContent = `${state.user.name} (${(state.user.tags || []).join(', ') || 'no tags'})`;
  GET('/cluster-name').then((c) => { $('#cluster-label').textContent = c.name + ' ·'; }).catch(() => {});
  route();
}

/* ---------------------------------------------------------------- routing */

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

/* Shows a view: build(main) returns an optional refresh function, polled every 5 s. */
async function show(navKey, build) {
  stopTimer();
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === navKey);
  const main = clear($('#main'));
  const token = {};
  state.view = token;
  let refresh;
  try {
    refresh = await build(main);
  } catch (e) {
    app(main, h('div', { class: 'card inline-error' }, e.message));
    return;
  }
  if (typeof refresh === 'function' && state.view === token) {
    const tick = async () => {
      if (state.view !== token || document.hidden) return;
      try {
        await refresh();
        setOffline(null);
      } catch (e) {
        setOffline(e.status === 0 ? e.message : null); /* the next tick retries */
      }
    };
    await tick();
    state.timer = setInterval(tick, REFRESH_MS);
  }
}

/* A banner while the node does not answer (it may be restarting); cleared by the next answer. */
function setOffline(message) {
  let el = $('#offline');
  if (!message) { if (el) el.remove(); return; }
  if (!el) {
    el = h('div', { id: 'offline', class: 'msg error' });
    $('#main').prepend(el);
  }
  el.textContent = message + ' Retrying every 5 s.';
}

function route() {
  if (!state.auth) return showLogin();
  const parts = (location.hash.replace(/^#\/?/, '') || 'overview').split('/').map((p) => decodeURIComponent(p));
  const [page, a, b] = parts;
  switch (page) {
    case 'overview': return show('overview', viewOverview);
    case 'nodes': return show('overview', (m) => viewNode(m, a));
    case 'queues': return show('queues', viewQueues);
    case 'queue': return show('queues', (m) => viewQueue(m, a, b));
    case 'exchanges': return show('exchanges', viewExchanges);
    case 'exchange': return show('exchanges', (m) => viewExchange(m, a, b));
    case 'connections': return show('connections', (m) => viewOptionalList(m, 'Connections', '/connections', connectionColumns));
    case 'channels': return show('channels', (m) => viewOptionalList(m, 'Channels', '/channels', channelColumns));
    case 'admin': return show('admin', (m) => viewAdmin(m, a || 'users'));
    case 'definitions': return show('definitions', viewDefinitions);
    default: return show('', (m) => { m.append(h('div', { class: 'card' }, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.'))); });
  }
}

/* ---------------------------------------------------------------- chart */

const COLORS = ['#2b7bb9', '#e07b24', '#2f9e5a', '#c0392b', '#8e44ad', '#7f8c8d'];

/* A line chart of samples [{t, v: {series: value}}] on a canvas. */
function drawChart(canvas, samples, series, unit) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, hgt = canvas.clientHeight || 180;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, hgt);
  const padL = 54, padR = 8, padT = 8, padB = 20;
  let max = 0;
  for (const s of samples) for (const k of series) max = Math.max(max, Math.abs(s.v[k.key] || 0));
  if (max <= 0) max = 1;
  const mag = Math.pow(10, Math.floor(Math.log10(max)));
  max = [1, 2, 4, 8, 10].map((k) => k * mag).find((v) => v >= max * 0.999) || 10 * mag; /* quarters stay round */
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#5f6b7a';
  g.strokeStyle = '#e3e8ee';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = padT + (hgt - padT - padB) * i / 4;
    g.beginPath(); g.moveTo(padL, y); g.lineTo(w - padR, y); g.stroke();
    const val = max * (4 - i) / 4;
    g.fillText((val >= 10 || val === 0 ? val.toFixed(0) : val >= 1 ? val.toFixed(1) : String(+val.toPrecision(2))) + unit, 4, y + 4);
  }
  const now = Date.now(), span = HISTORY * REFRESH_MS;
  g.fillText('-5 min', padL, hgt - 4);
  g.fillText('now', w - padR - 22, hgt - 4);
  const x = (t) => padL + (w - padL - padR) * (1 - Math.min(span, now - t) / span);
  const y = (v) => padT + (hgt - padT - padB) * (1 - v / max);
  series.forEach((k, i) => {
    g.strokeStyle = COLORS[i % COLORS.length];
    g.lineWidth = 2;
    g.beginPath();
    let first = true;
    for (const s of samples) {
      const v = s.v[k.key];
      if (v === undefined) continue;
      if (first) g.moveTo(x(s.t), y(v)); else g.lineTo(x(s.t), y(v));
      first = false;
    }
    g.stroke();
  });
  if (samples.length < 2) {
    g.fillStyle = '#5f6b7a';
    g.fillText('collecting samples (every 5 s)…', padL + 10, padT + 16);
  }
}

function chartCard(title, id, series, unit) {
  const canvas = h('canvas', { class: 'chart', id });
  const legend = h('div', { class: 'legend' });
  const card = h('div', { class: 'card' }, h('h2', {}, title), canvas, legend);
  const update = (samples) => {
    app(clear(legend), ...series.map((k, i) => {
      const last = samples.length ? samples[samples.length - 1].v[k.key] : undefined;
      return h('span', {}, h('i', { style: `background:${COLORS[i % COLORS.length]}` }), `${k.label}: `,
        h('b', {}, last === undefined ? '–' : unit === '/s' ? fmtRate(last) : fmtNum(last)));
    }));
    drawChart(canvas, samples, series, unit);
  };
  return { card, update };
}

function pushSample(hist, v) {
  hist.push({ t: Date.now(), v });
  while (hist.length > HISTORY) hist.shift();
}

/* ---------------------------------------------------------------- generic list */

/* A table over a listing endpoint, using the API's sort / page / page_size / name parameters
 * (and doing the same in the browser when an endpoint answers a plain array). */
function listView(opts) {
  const st = { page: 1, size: opts.pageSize || 20, sort: opts.sort || '', rev: false, name: '' };
  const root = h('div', { class: 'list', id: opts.id });
  const filter = h('input', { type: 'text', placeholder: 'Filter by name (regular expressions allowed)', class: 'filter', 'aria-label': 'Filter' });
  const regex = h('input', { type: 'checkbox' });
  const count = h('span', { class: 'muted count' });
  const table = h('table', { class: 'data' });
  const pager = h('div', { class: 'pager' });
  const error = h('div', { class: 'inline-error' });
  let debounce;
  filter.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(() => { st.name = filter.value; st.page = 1; refresh(); }, 250); });
  regex.addEventListener('change', () => { st.page = 1; refresh(); });
  /* opts.byVhost: a virtual host selector; the listing's path gets "/<vhost>" (RabbitMQ's
   * per-vhost listings), remembered for the tab. */
  let vhostSel = null;
  if (opts.byVhost) {
    vhostSel = h('select', { class: 'vhost-filter', 'aria-label': 'Virtual host', onchange: () => {
      sessionStorage.setItem('warren.vhost', vhostSel.value);
      st.page = 1;
      refresh();
    } }, h('option', { value: '' }, 'All virtual hosts'));
    GET('/vhosts?columns=name').then((vs) => {
      app(vhostSel, (Array.isArray(vs) ? vs : vs.items || []).map((v) => h('option', { value: v.name }, 'Virtual host ' + v.name)));
      const saved = sessionStorage.getItem('warren.vhost');
      if (saved && [...vhostSel.options].some((o) => o.value === saved)) { vhostSel.value = saved; refresh(); }
    }).catch(() => {});
  }
  if (opts.filter !== false) app(root, h('div', { class: 'toolbar' }, vhostSel, filter, h('label', { class: 'muted' }, regex, ' regex'), count, h('span', { class: 'spacer' }), opts.tools || null));
  app(root, error, table, pager);

  function cellValue(col, row) {
    return col.sortKey ? col.sortKey.split('.').reduce((o, k) => (o == null ? undefined : o[k]), row) : undefined;
  }

  function renderRows(items, total) {
    const head = h('tr', {}, opts.columns.map((c) => {
      const th = h('th', { class: (c.num ? 'num ' : '') + (c.sortKey ? 'sortable' : ''), title: c.sortKey ? 'Sort' : null }, c.label);
      if (c.sortKey) {
        if (st.sort === c.sortKey) th.classList.add('sorted', ...(st.rev ? ['desc'] : []));
        th.addEventListener('click', () => {
          if (st.sort === c.sortKey) st.rev = !st.rev; else { st.sort = c.sortKey; st.rev = !!c.num; }
          refresh();
        });
      }
      return th;
    }));
    const body = h('tbody', {}, items.map((row) => h('tr', { 'data-name': row.name || '' },
      opts.columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.render(row))))));
    app(clear(table), h('thead', {}, head), body);
    if (!items.length) {
      app(table, h('tbody', {}, h('tr', {}, h('td', { colspan: opts.columns.length, class: 'empty' },
        st.name ? 'Nothing matches the filter.' : opts.emptyText || 'Nothing here yet.'))));
    }
    count.textContent = total === undefined ? '' : `${fmtNum(total)} item${total === 1 ? '' : 's'}`;
  }

  function renderPager(page, pages) {
    clear(pager);
    if (pages <= 1 && st.size === (opts.pageSize || 20)) return;
    const sizeSel = h('select', { 'aria-label': 'Page size', onchange: () => { st.size = +sizeSel.value; st.page = 1; refresh(); } },
      [20, 50, 100, 500].map((n) => h('option', { value: n, selected: n === st.size ? 'selected' : null }, n)));
    app(pager, 
      h('button', { class: 'secondary small', disabled: page <= 1, onclick: () => { st.page = page - 1; refresh(); } }, '‹ Prev'),
      `Page ${page} of ${Math.max(pages, 1)}`,
      h('button', { class: 'secondary small', disabled: page >= pages, onclick: () => { st.page = page + 1; refresh(); } }, 'Next ›'),
      h('span', {}, 'Per page '), sizeSel);
  }

  async function refresh() {
    const q = new URLSearchParams({ page: st.page, page_size: st.size });
    if (st.name) { q.set('name', st.name); q.set('use_regex', regex.checked ? 'true' : 'false'); }
    if (st.sort) { q.set('sort', st.sort); q.set('sort_reverse', st.rev ? 'true' : 'false'); }
    let data;
    try {
      const v = vhostSel && vhostSel.value;
      const base = !v ? opts.path : opts.vhostPath ? opts.vhostPath(v) : `${opts.path}/${enc(v)}`;
      data = await GET(base + '?' + q.toString());
    } catch (e) {
      if (e.status === 400 && st.page > 1) { st.page = 1; return refresh(); } /* page_out_of_range */
      error.textContent = e.message;
      if (opts.onError) opts.onError(e);
      return;
    }
    error.textContent = '';
    if (Array.isArray(data)) { /* an endpoint without RabbitMQ's pagination */
      let items = data;
      if (st.name) {
        let re = null;
        try { re = regex.checked ? new RegExp(st.name) : null; } catch (e) { re = null; }
        items = items.filter((r) => (re ? re.test(r.name || '') : String(r.name || '').includes(st.name)));
      }
      const col = opts.columns.find((c) => c.sortKey === st.sort);
      if (col) {
        items = items.slice().sort((x, y) => {
          const a = cellValue(col, x), b = cellValue(col, y);
          return (a > b ? 1 : a < b ? -1 : 0) * (st.rev ? -1 : 1);
        });
      }
      const pages = Math.max(1, Math.ceil(items.length / st.size));
      if (st.page > pages) st.page = pages;
      renderRows(items.slice((st.page - 1) * st.size, st.page * st.size), data.length);
      renderPager(st.page, pages);
      if (opts.onData) opts.onData(items);
    } else {
      renderRows(data.items || [], data.filtered_count);
      renderPager(data.page || 1, data.page_count || 1);
      if (opts.onData) opts.onData(data.items || []);
    }
  }
  return { root, refresh };
}

/* ---------------------------------------------------------------- forms */

function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'lbl' }, label), input, hint ? h('span', { class: 'muted' }, ' ' + hint) : null);
}

async function vhostSelect(id) {
  const sel = h('select', { id });
  let vhosts = [];
  try { vhosts = await GET('/vhosts?columns=name'); } catch (e) { vhosts = [{ name: '/' }]; }
  if (!Array.isArray(vhosts)) vhosts = vhosts.items || [];
  for (const v of vhosts) app(sel, h('option', { value: v.name }, vhostLabel(v.name)));
  if (vhosts.some((v) => v.name === '/')) sel.value = '/';
  return sel;
}

/* A <datalist> of the names a listing returns (suggestions for a name field). */
function namesList(id, path) {
  const dl = h('datalist', { id });
  GET(path).then((items) => app(dl, (Array.isArray(items) ? items : items.items || [])
    .filter((o) => o.name).map((o) => h('option', { value: o.name })))).catch(() => {});
  return dl;
}

/* Key / value / type rows for x-arguments, with one-click hints for the common ones. */
function argsEditor(id, hints) {
  const rows = h('div', { class: 'rows' });
  const addRow = (k, v, t) => {
    const key = h('input', { type: 'text', placeholder: 'key', class: 'arg-key', value: k || '' });
    const val = h('input', { type: 'text', placeholder: 'value', class: 'arg-value', value: v === undefined ? '' : v });
    const type = h('select', { class: 'arg-type' }, ['String', 'Number', 'Boolean', 'List'].map((x) => h('option', { value: x }, x)));
    type.value = t || 'String';
    const row = h('div', { class: 'arg-row' }, key, h('span', {}, '='), val, type,
      h('button', { type: 'button', class: 'secondary small', title: 'Remove', onclick: () => row.remove() }, '×'));
    app(rows, row);
    key.addEventListener('input', () => { if (rows.lastChild === row && key.value) addRow(); });
    return row;
  };
  addRow();
  const hintBox = h('div', { class: 'hints' }, 'Add: ', (hints || []).map(([k, t, v]) => h('button', { type: 'button', class: 'link', onclick: () => {
    const last = rows.lastChild;
    if (last && !$('.arg-key', last).value) last.remove();
    const r = addRow(k, v, t);
    $('.arg-value', r).focus();
    addRow();
  } }, k)));
  const root = h('div', { class: 'args', id }, rows, hintBox);
  root.values = () => {
    const out = {};
    for (const row of rows.children) {
      const k = $('.arg-key', row).value.trim();
      if (!k) continue;
      const raw = $('.arg-value', row).value;
      const t = $('.arg-type', row).value;
      if (t === 'Number') {
        if (raw.trim() === '' || Number.isNaN(Number(raw))) throw new Error(`Argument ${k}: "${raw}" is not a number`);
        out[k] = Number(raw);
      } else if (t === 'Boolean') {
        if (!/^(true|false)$/i.test(raw.trim())) throw new Error(`Argument ${k}: use true or false`);
        out[k] = /^true$/i.test(raw.trim());
      } else if (t === 'List') {
        out[k] = raw.split(',').map((s) => s.trim()).filter(Boolean);
      } else out[k] = raw;
    }
    return out;
  };
  root.reset = () => { clear(rows); addRow(); };
  return root;
}

const QUEUE_ARG_HINTS = [['x-message-ttl', 'Number'], ['x-expires', 'Number'], ['x-max-length', 'Number'],
  ['x-max-length-bytes', 'Number'], ['x-overflow', 'String', 'reject-publish'], ['x-dead-letter-exchange', 'String'],
  ['x-dead-letter-routing-key', 'String'], ['x-single-active-consumer', 'Boolean', 'true'], ['x-max-priority', 'Number'],
  ['x-quorum-initial-group-size', 'Number', '3'], ['x-delivery-limit', 'Number']];

/* Publish form: to an exchange with a routing key, or straight to a queue (default exchange). */
function publishForm(vhost, exchange, fixedKey) {
  const key = h('input', { type: 'text', id: 'pub-key', value: fixedKey || '' });
  const persistent = h('select', { id: 'pub-mode' }, h('option', { value: '2' }, 'Persistent'), h('option', { value: '1' }, 'Non-persistent'));
  const headers = argsEditor('pub-headers', []);
  const props = h('input', { type: 'text', id: 'pub-props', placeholder: 'e.g. content_type=text/plain, correlation_id=42' });
  const payload = h('textarea', { id: 'pub-payload', placeholder: 'Message body' });
  const b64 = h('select', { id: 'pub-enc' }, h('option', { value: 'string' }, 'String'), h('option', { value: 'base64' }, 'Base64'));
  const btn = h('button', { type: 'submit', id: 'pub-submit' }, 'Publish message');
  const form = h('form', { class: 'stack', id: 'publish-form', onsubmit: async (ev) => {
    ev.preventDefault();
    let properties;
    try {
      properties = { delivery_mode: +persistent.value, headers: headers.values() };
      for (const kv of props.value.split(',')) {
        if (!kv.trim()) continue;
        const i = kv.indexOf('=');
        if (i < 0) throw new Error(`Property "${kv.trim()}": write name=value`);
        const k = kv.slice(0, i).trim(), v = kv.slice(i + 1).trim();
        properties[k] = k === 'priority' ? Number(v) : v;
      }
    } catch (e) { flash(e.message, true); return; }
    await act(() => api('POST', `/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`,
      { properties, routing_key: key.value, payload: payload.value, payload_encoding: b64.value }),
    (r) => (r && r.routed === false ? 'Message published, but it was not routed to any queue.' : 'Message published.'), btn);
  } },
  fixedKey !== undefined ? h('p', { class: 'muted' }, 'Publishes through the default exchange with this queue\'s name as the routing key.') : field('Routing key', key),
  field('Delivery mode', persistent),
  h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Headers'), headers),
  field('Properties', props),
  field('Payload encoding', b64),
  h('div', { class: 'field' }, payload), btn);
  if (fixedKey !== undefined) key.value = fixedKey;
  return form;
}

/* ---------------------------------------------------------------- overview */

async function viewOverview(main) {
  const head = h('h1', {}, 'Overview', h('small', { id: 'ov-sub' }));
  const totals = h('div', { class: 'stats', id: 'ov-totals' });
  const msgs = h('div', { class: 'stats', id: 'ov-messages' });
  const rateChart = chartCard('Message rates', 'chart-rates', [
    { key: 'publish', label: 'Publish' }, { key: 'deliver_get', label: 'Deliver / get' },
    { key: 'ack', label: 'Ack' }, { key: 'confirm', label: 'Confirm' }, { key: 'redeliver', label: 'Redeliver' }], '/s');
  const depthChart = chartCard('Queued messages', 'chart-depth', [
    { key: 'messages', label: 'Total' }, { key: 'messages_ready', label: 'Ready' }, { key: 'messages_unacknowledged', label: 'Unacked' }], '');
  const nodesBox = h('div', { id: 'ov-nodes' });
  const health = h('div', { id: 'ov-health', class: 'row' });
  app(main, head,
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'Totals'), totals),
      h('div', { class: 'card' }, h('h2', {}, 'Messages'), msgs),
      h('div', { class: 'card' }, h('h2', {}, 'Health checks'), health)),
    h('div', { class: 'grid' }, rateChart.card, depthChart.card),
    h('div', { class: 'card' }, h('h2', {}, 'Nodes'), nodesBox));
  const stat = (label, v, id) => h('div', { class: 'stat', id }, h('b', {}, v), h('span', {}, label));

  return async () => {
    const o = await GET('/overview');
    $('#ov-sub').textContent = `cluster ${o.cluster_name} · this node ${o.node} · ${o.product_name || 'Warren'} ${o.product_version || ''}`;
    const t = o.object_totals || {};
    app(clear(totals), stat('Connections', fmtNum(t.connections)), stat('Channels', fmtNum(t.channels)),
      stat('Exchanges', fmtNum(t.exchanges)), stat('Queues', fmtNum(t.queues)), stat('Consumers', fmtNum(t.consumers)));
    const q = o.queue_totals || {}, ms = o.message_stats || {};
    app(clear(msgs), stat('Total', fmtNum(q.messages), 'ov-msg-total'), stat('Ready', fmtNum(q.messages_ready)),
      stat('Unacked', fmtNum(q.messages_unacknowledged)), stat('Publish', fmtRate(rateOf(ms, 'publish'))),
      stat('Deliver / get', fmtRate(rateOf(ms, 'deliver_get'))));
    pushSample(state.overviewHist, {
      publish: rateOf(ms, 'publish') || 0, deliver_get: rateOf(ms, 'deliver_get') || 0, ack: rateOf(ms, 'ack') || 0,
      confirm: rateOf(ms, 'confirm') || 0, redeliver: rateOf(ms, 'redeliver') || 0,
      messages: q.messages || 0, messages_ready: q.messages_ready || 0, messages_unacknowledged: q.messages_unacknowledged || 0,
    });
    rateChart.update(state.overviewHist);
    depthChart.update(state.overviewHist);
    if (o.exchange_types) state.exchangeTypes = o.exchange_types.map((x) => x.name);

    const checks = [['Alarms', '/health/checks/alarms'], ['Local alarms', '/health/checks/local-alarms'],
      ['Virtual hosts', '/health/checks/virtual-hosts'], ['Quorum critical', '/health/checks/node-is-quorum-critical']];
    const results = await Promise.all(checks.map(async ([label, path]) => {
      try { await GET(path); return h('span', { class: 'badge ok', title: path }, '✓ ' + label); } catch (e) {
        return h('span', { class: 'badge bad', title: e.message }, '✗ ' + label + ': ' + e.message);
      }
    }));
    app(clear(health), ...results);

    let nodes;
    try { nodes = await GET('/nodes'); } catch (e) {
      app(clear(nodesBox), h('div', { class: 'empty' }, e.status === 401 ? 'Listing nodes needs the monitoring or administrator tag.' : e.message));
      return;
    }
    const running = nodes.filter((n) => n.running).length;
    const rows = nodes.map((n) => {
      const memPct = n.mem_limit ? Math.min(100, 100 * n.mem_used / n.mem_limit) : 0;
      const alarms = [n.mem_alarm ? 'memory alarm' : null, n.disk_free_alarm ? 'disk alarm' : null].filter(Boolean);
      return h('tr', { class: 'node-row', 'data-name': n.name, 'data-running': n.running ? 'true' : 'false' },
        h('td', {}, h('a', { href: nodeHref(n.name), class: 'node-link' }, h('b', {}, n.name)), n.name === o.node ? h('span', { class: 'muted' }, ' (this node)') : null),
        h('td', {}, h('span', { class: 'badge ' + (n.running ? 'ok' : 'bad') }, n.running ? 'running' : 'not running'),
          alarms.map((a) => h('span', { class: 'badge bad' }, a))),
        h('td', {}, n.mem_used !== undefined ? [fmtBytes(n.mem_used) + ' / ' + fmtBytes(n.mem_limit),
          h('div', { class: 'bar' + (memPct > 80 ? ' hot' : '') }, h('i', { style: `width:${memPct}%` }))] : '–'),
        h('td', {}, n.disk_free !== undefined ? fmtBytes(n.disk_free) + ' free' : '–'),
        h('td', { class: 'num' }, n.fd_used !== undefined ? `${fmtNum(n.fd_used)} / ${fmtNum(n.fd_total)}` : '–'),
        h('td', { class: 'num' }, fmtUptime(n.uptime)));
    });
    app(clear(nodesBox), h('p', { id: 'nodes-summary' }, `${running} of ${nodes.length} node${nodes.length === 1 ? '' : 's'} running`),
      h('table', { id: 'nodes-table' }, h('thead', {}, h('tr', {}, ['Name', 'State', 'Memory', 'Disk', 'File descriptors', 'Uptime'].map((x, i) => h('th', { class: i > 3 ? 'num' : null }, x)))),
        h('tbody', {}, rows)));
  };
}

/* ---------------------------------------------------------------- node */

const nodeHref = (name) => `#/nodes/${enc(name)}`;
const pct = (used, total) => (total ? Math.min(100, 100 * used / total) : 0);

/* A figure with a bar: "used / total", the bar filled by share (hot past hotPct). */
function usageCell(used, total, fmt, hotPct, extra) {
  if (used === undefined || used === null) return '–';
  const p = pct(used, total);
  return [h('span', { class: 'usage' }, total ? `${fmt(used)} / ${fmt(total)}` : fmt(used), total ? h('span', { class: 'muted' }, ` (${p.toFixed(p < 10 ? 1 : 0)}%)`) : null),
    total ? h('div', { class: 'bar wide' + (p > hotPct ? ' hot' : '') }, h('i', { style: `width:${p}%` })) : null, extra || null];
}

/* The queues a node serves: quorum queues it leads or holds a replica of, classic queues homed
 * on it. Its "rates" are those of the queues it leads / homes (each queue's rate counts once). */
function nodeQueues(queues, name) {
  const quorum = [], classic = [];
  for (const q of queues) {
    if (q.type === 'quorum' && (q.leader === name || (q.members || []).includes(name))) quorum.push(q);
    else if (q.type !== 'quorum' && q.node === name) classic.push(q);
  }
  const served = [...quorum.filter((q) => q.leader === name), ...classic];
  const sum = (k) => served.reduce((a, q) => a + (rateOf(q.message_stats, k) || 0), 0);
  const depth = (k) => served.reduce((a, q) => a + (q[k] || 0), 0);
  return { quorum, classic, leads: quorum.filter((q) => q.leader === name).length,
    rates: { publish: sum('publish'), deliver_get: sum('deliver_get'), ack: sum('ack'), redeliver: sum('redeliver') },
    messages: depth('messages'), ready: depth('messages_ready'), unacked: depth('messages_unacknowledged') };
}

/* #/nodes/<name>: one node's state, resources, listeners, queues and rates (read-only), as
 * RabbitMQ's node page. Figures come from GET /api/nodes/<name> (every running member answers
 * for itself); listeners from /api/overview, which lists every running member's. */
async function viewNode(main, name) {
  let n;
  try { n = await GET(`/nodes/${enc(name)}`); } catch (e) {
    app(main, h('h1', {}, 'Node ', name), h('div', { class: 'card inline-error', id: 'node-error' },
      e.status === 404 ? `There is no node ${name} in this cluster.` : e.status === 401 ? 'Node details need the monitoring or administrator tag.' : e.message),
    h('a', { href: '#/' }, '← Overview'));
    return undefined;
  }
  const badge = h('span', { id: 'node-state' });
  const details = h('table', { class: 'kv', id: 'node-details' });
  const resources = h('table', { class: 'kv', id: 'node-resources' });
  const listeners = h('div', { id: 'node-listeners' });
  const queuesBox = h('div', { id: 'node-queues' });
  const rateStats = h('div', { class: 'stats', id: 'node-rates' });
  const hist = state.nodeHist || (state.nodeHist = {});
  const samples = hist[name] || (hist[name] = []);
  const chart = chartCard('Message rates of the queues it leads or homes', 'chart-node', [
    { key: 'publish', label: 'Publish' }, { key: 'deliver_get', label: 'Deliver / get' }, { key: 'ack', label: 'Ack' },
    { key: 'redeliver', label: 'Redeliver' }], '/s');
  app(main, h('div', { class: 'row' }, h('h1', {}, 'Node ', h('span', { id: 'node-name' }, name)), badge,
    h('span', { class: 'spacer' }), h('a', { href: '#/' }, '← Overview')),
  h('div', { class: 'grid' }, h('div', { class: 'card' }, h('h2', {}, 'Status'), details),
    h('div', { class: 'card' }, h('h2', {}, 'Resources'), resources)),
  h('div', { class: 'card' }, h('h2', {}, 'Quorum queues'), queuesBox),
  h('div', { class: 'grid' }, chart.card, h('div', { class: 'card' }, h('h2', {}, 'Listeners'), listeners)));
  chart.card.insertBefore(rateStats, chart.card.children[1]); /* the figures above their chart */
  const kv = (table, rows) => app(clear(table), ...rows.map(([k, v]) => h('tr', { 'data-key': k }, h('th', {}, k), h('td', {}, v === undefined || v === null ? '–' : v))));
  const hasConns = await hasEndpoint('connections', 'GET', '/connections');

  return async () => {
    n = await GET(`/nodes/${enc(name)}`);
    const [o, queues, conns] = await Promise.all([GET('/overview'),
      GET('/queues?columns=name,vhost,type,node,leader,members,online,state,messages,messages_ready,messages_unacknowledged,message_stats').catch(() => []),
      hasConns ? GET('/connections').catch(() => null) : Promise.resolve(null)]);
    const self = o.node === name;
    app(clear(badge), h('span', { class: 'badge ' + (n.running ? 'ok' : 'bad') }, n.running ? 'running' : 'not running'),
      self ? h('span', { class: 'muted' }, ' this node') : null);
    const alarms = [n.mem_alarm ? 'memory' : null, n.disk_free_alarm ? 'disk' : null].filter(Boolean);
    kv(details, [['Running', n.running ? 'yes' : 'no'],
      ['Uptime', n.uptime !== undefined ? fmtUptime(n.uptime) : '–'],
      ['Alarms', n.running && n.mem_used !== undefined ? (alarms.length ? alarms.map((a) => h('span', { class: 'badge bad' }, a + ' alarm')) : h('span', { class: 'badge ok' }, 'none')) : '–'],
      ['Type', n.type], ['Partitions', (n.partitions || []).length ? n.partitions.join(', ') : 'none'],
      ['OS process', n.os_pid ? `pid ${n.os_pid}` : '–'],
      ['Processors', n.processors !== undefined ? fmtNum(n.processors) : '–'],
      ['Rates mode', n.rates_mode]]);
    const onNode = conns ? conns.filter((c) => c.node === name) : null;
    kv(resources, [
      ['Memory', usageCell(n.mem_used, n.mem_limit, fmtBytes, 80, h('div', { class: 'muted' }, 'used / high watermark'))],
      ['Disk free', n.disk_free !== undefined ? [h('span', { class: 'usage' }, `${fmtBytes(n.disk_free)} free, limit ${fmtBytes(n.disk_free_limit)}`),
        h('div', { class: 'bar wide' + (n.disk_free_alarm ? ' hot' : '') }, h('i', { style: `width:${n.disk_free ? pct(n.disk_free_limit, n.disk_free) : 100}%` })),
        h('div', { class: 'muted' }, 'the bar is the limit’s share of what is free')] : '–'],
      ['File descriptors', usageCell(n.fd_used, n.fd_total, fmtNum, 80, h('div', { class: 'muted' }, 'open / limit (RLIMIT_NOFILE)'))],
      ['Client connections', onNode ? [fmtNum(onNode.length), h('span', { class: 'muted' }, ` (${fmtNum(onNode.reduce((a, c) => a + (c.channels || 0), 0))} channels) — Warren’s sockets figure`)] : '–'],
      ['Processes', h('span', { class: 'muted' }, 'not applicable: one native process with an event loop, no Erlang VM')]]);

    const lst = (o.listeners || []).filter((l) => l.node === name);
    app(clear(listeners), lst.length
      ? h('table', {}, h('thead', {}, h('tr', {}, ['Protocol', 'Bound to', 'Port'].map((x, i) => h('th', { class: i === 2 ? 'num' : null }, x)))),
        h('tbody', {}, lst.map((l) => h('tr', { class: 'listener-row', 'data-protocol': l.protocol },
          h('td', {}, l.protocol), h('td', {}, l.ip_address), h('td', { class: 'num' }, String(l.port))))))
      : h('div', { class: 'empty' }, self ? 'No listeners.' : `No listeners known: ${name} did not answer.`));

    const nq = nodeQueues(queues || [], name);
    app(clear(rateStats), h('div', { class: 'stat' }, h('b', {}, fmtRate(nq.rates.publish)), h('span', {}, 'Publish')),
      h('div', { class: 'stat' }, h('b', {}, fmtRate(nq.rates.deliver_get)), h('span', {}, 'Deliver / get')),
      h('div', { class: 'stat' }, h('b', {}, fmtRate(nq.rates.ack)), h('span', {}, 'Ack')),
      h('div', { class: 'stat', id: 'node-msgs' }, h('b', {}, fmtNum(nq.messages)), h('span', {}, 'Messages queued')),
      h('p', { class: 'muted', style: 'flex-basis:100%;margin:0 0 8px' }, `Summed over the ${fmtNum(nq.leads)} quorum queue(s) it leads and the ${fmtNum(nq.classic.length)} classic queue(s) homed on it.`));
    pushSample(samples, nq.rates);
    chart.update(samples);

    const rows = nq.quorum.map((q) => {
      const online = new Set(q.online || []);
      return h('tr', { class: 'node-queue-row', 'data-name': q.name, 'data-role': q.leader === name ? 'leader' : 'follower' },
        h('td', {}, vhostLabel(q.vhost)), h('td', {}, h('a', { href: `#/queue/${enc(q.vhost)}/${enc(q.name)}` }, q.name)),
        h('td', {}, q.leader === name ? h('span', { class: 'badge leader' }, 'leader') : 'follower'),
        h('td', {}, (q.members || []).map((m) => h('a', { href: nodeHref(m), class: 'badge ' + (online.has(m) ? 'ok' : 'bad') + (m === q.leader ? ' leader' : '') }, m))),
        h('td', { class: 'num' }, fmtNum(q.messages)), h('td', { class: 'num' }, fmtRate(rateOf(q.message_stats, 'publish'))));
    });
    app(clear(queuesBox), h('p', { id: 'node-queues-summary' }, `Leader of ${nq.leads}, member of ${nq.quorum.length} quorum queue${nq.quorum.length === 1 ? '' : 's'}; ${nq.classic.length} classic queue${nq.classic.length === 1 ? '' : 's'} homed here.`),
      rows.length ? h('table', {}, h('thead', {}, h('tr', {}, ['Virtual host', 'Name', 'Role', 'Members', 'Messages', 'Publish'].map((x, i) => h('th', { class: i > 3 ? 'num' : null }, x)))), h('tbody', {}, rows))
        : h('div', { class: 'empty' }, 'No quorum queue has a replica on this node.'));
  };
}

/* ---------------------------------------------------------------- queues */

function membersCell(q) {
  if (!q.members) return '';
  const online = new Set(q.online || []);
  return q.members.map((m) => h('span', { class: 'badge ' + (online.has(m) ? 'ok' : 'bad') + (m === q.leader ? ' leader' : ''),
    title: (m === q.leader ? 'leader, ' : '') + (online.has(m) ? 'online' : 'offline') }, m));
}

const queueColumns = [
  { label: 'Virtual host', sortKey: 'vhost', render: (q) => vhostLabel(q.vhost) },
  { label: 'Name', sortKey: 'name', render: (q) => h('a', { href: `#/queue/${enc(q.vhost)}/${enc(q.name)}`, class: 'queue-link' }, q.name) },
  { label: 'Type', sortKey: 'type', render: (q) => h('span', { class: 'badge' }, q.type || 'classic') },
  { label: 'Leader / node', sortKey: 'node', render: (q) => h('span', { class: 'q-leader' }, q.type === 'quorum' ? (q.leader || h('span', { class: 'badge bad' }, 'no leader')) : (q.node || '')) },
  { label: 'Members', render: (q) => h('span', { class: 'q-members' }, membersCell(q)) },
  { label: 'Ready', sortKey: 'messages_ready', num: true, render: (q) => fmtNum(q.messages_ready) },
  { label: 'Unacked', sortKey: 'messages_unacknowledged', num: true, render: (q) => fmtNum(q.messages_unacknowledged) },
  { label: 'Total', sortKey: 'messages', num: true, render: (q) => h('span', { class: 'q-messages' }, fmtNum(q.messages)) },
  { label: 'Consumers', sortKey: 'consumers', num: true, render: (q) => fmtNum(q.consumers) },
  { label: 'Incoming', sortKey: 'message_stats.publish_details.rate', num: true, render: (q) => fmtRate(rateOf(q.message_stats, 'publish')) },
  { label: 'Deliver / get', sortKey: 'message_stats.deliver_get_details.rate', num: true, render: (q) => fmtRate(rateOf(q.message_stats, 'deliver_get')) },
  { label: 'Ack', sortKey: 'message_stats.ack_details.rate', num: true, render: (q) => fmtRate(rateOf(q.message_stats, 'ack')) },
];

async function viewQueues(main) {
  const list = listView({ byVhost: true, id: 'queues-list', path: '/queues', columns: queueColumns, sort: 'name', emptyText: 'No queues yet: add one below.' });
  app(main, h('h1', {}, 'Queues'), h('div', { class: 'card' }, list.root), await declareQueueForm(list.refresh));
  return list.refresh;
}

async function declareQueueForm(after) {
  const vh = await vhostSelect('q-vhost');
  const name = h('input', { type: 'text', id: 'q-name', required: true });
  const type = h('select', { id: 'q-type' }, h('option', { value: 'classic' }, 'Classic'), h('option', { value: 'quorum' }, 'Quorum'));
  const durable = h('select', { id: 'q-durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDel = h('select', { id: 'q-autodelete' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const args = argsEditor('q-args', QUEUE_ARG_HINTS);
  type.addEventListener('change', () => {
    const qq = type.value === 'quorum';
    if (qq) { durable.value = 'true'; autoDel.value = 'false'; }
    durable.disabled = qq; autoDel.disabled = qq;
  });
  const btn = h('button', { type: 'submit', id: 'q-submit' }, 'Add queue');
  const form = h('form', { class: 'stack', id: 'declare-queue', onsubmit: async (ev) => {
    ev.preventDefault();
    if (!name.value.trim()) { flash('Give the queue a name.', true); return; }
    let a;
    try { a = args.values(); } catch (e) { flash(e.message, true); return; }
    if (type.value === 'quorum') a['x-queue-type'] = 'quorum';
    const r = await act(() => api('PUT', `/queues/${enc(vh.value)}/${enc(name.value)}`,
      { durable: durable.value === 'true', auto_delete: autoDel.value === 'true', arguments: a }).then(() => true),
    `Queue ${name.value} declared.`, btn);
    if (r) { name.value = ''; args.reset(); if (after) after(); }
  } },
  field('Virtual host', vh), field('Name', name), field('Type', type, 'quorum queues are replicated (Raft) and always durable'),
  field('Durability', durable), field('Auto delete', autoDel),
  h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Arguments'), args), btn);
  return h('details', { class: 'card', id: 'add-queue', open: true }, h('summary', {}, 'Add a new queue'), form);
}

/* Quorum queue membership over HTTP: RabbitMQ 4's endpoints, or a members resource. The first
 * whose path the node knows (any answer but 404) is used; none: the page points to warrenctl. */
const MEMBER_DIALECTS = [
  { probe: (v, q) => `/queues/quorum/${v}/${q}/replicas/add`,
    add: (v, q, node) => ['POST', `/queues/quorum/${v}/${q}/replicas/add`, { node }],
    delete: (v, q, node) => ['DELETE', `/queues/quorum/${v}/${q}/replicas/delete`, { node }] },
  { probe: (v, q) => `/queues/${v}/${q}/members`,
    add: (v, q, node) => ['POST', `/queues/${v}/${q}/members`, { node }],
    delete: (v, q, node) => ['DELETE', `/queues/${v}/${q}/members/${enc(node)}`, undefined] },
];

async function membershipDialect(vhost, name) {
  for (let i = 0; i < MEMBER_DIALECTS.length; i++) {
    const d = MEMBER_DIALECTS[i];
    if (await hasEndpoint('members' + i, 'GET', d.probe(enc(vhost), enc(name)))) return d;
  }
  return null;
}

async function viewQueue(main, vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  let q;
  try { q = await GET(path); } catch (e) {
    app(main, h('h1', {}, 'Queue ', name), h('div', { class: 'card inline-error' }, e.status === 404 ? `The queue ${name} does not exist in virtual host ${vhost}.` : e.message),
      h('a', { href: '#/queues' }, '← All queues'));
    return undefined;
  }
  const details = h('table', { class: 'kv', id: 'queue-details' });
  const members = h('div', { id: 'queue-members' });
  const bindings = h('div', { id: 'queue-bindings' });
  const consumers = h('div', { id: 'queue-consumers' });
  const hist = state.queueHist[path] || (state.queueHist[path] = []);
  const chart = chartCard('Messages', 'chart-queue', [{ key: 'messages_ready', label: 'Ready' },
    { key: 'messages_unacknowledged', label: 'Unacked' }, { key: 'publish', label: 'Publish/s' }, { key: 'deliver_get', label: 'Deliver/get/s' }], '');
  const got = h('div', { id: 'get-results' });
  const count = h('input', { type: 'number', id: 'get-count', value: '1', min: '1', style: 'min-width:80px;width:80px' });
  const ackmode = h('select', { id: 'get-ackmode' },
    h('option', { value: 'ack_requeue_true' }, 'Nack message requeue true'),
    h('option', { value: 'ack_requeue_false' }, 'Automatic ack'),
    h('option', { value: 'reject_requeue_true' }, 'Reject requeue true'),
    h('option', { value: 'reject_requeue_false' }, 'Reject requeue false'));
  const encoding = h('select', { id: 'get-encoding' }, h('option', { value: 'auto' }, 'Auto string / base64'), h('option', { value: 'base64' }, 'Base64'));
  const getBtn = h('button', { type: 'submit', id: 'get-submit' }, 'Get message(s)');
  const getForm = h('form', { class: 'stack', id: 'get-form', onsubmit: async (ev) => {
    ev.preventDefault();
    const msgs = await act(() => api('POST', path + '/get', { count: +count.value || 1, ackmode: ackmode.value, encoding: encoding.value, truncate: 50000 }), null, getBtn);
    if (!msgs) return;
    clear(got);
    if (!msgs.length) app(got, h('div', { class: 'empty', id: 'get-empty' }, 'The queue is empty.'));
    msgs.forEach((m, i) => app(got, h('div', { class: 'message' },
      h('div', { class: 'row' }, h('b', {}, `Message ${i + 1}`), h('span', { class: 'muted' },
        `exchange "${m.exchange}" · routing key "${m.routing_key}" · ${m.redelivered ? 'redelivered' : 'first delivery'} · ${fmtNum(m.message_count)} left · ${fmtBytes(m.payload_bytes)} (${m.payload_encoding})`)),
      m.properties && Object.keys(m.properties).length ? h('div', {}, h('code', {}, JSON.stringify(m.properties))) : null,
      h('pre', { class: 'msg-payload' }, m.payload))));
    refresh();
  } }, field('Ack mode', ackmode), field('Encoding', encoding), field('Messages', count), getBtn);

  const bindX = h('input', { type: 'text', id: 'bind-exchange', placeholder: 'exchange name', list: 'exchange-names' });
  const xNames = namesList('exchange-names', `/exchanges/${enc(vhost)}?columns=name`);
  const bindKey = h('input', { type: 'text', id: 'bind-key' });
  const bindArgs = argsEditor('bind-args', [['x-match', 'String', 'all']]);
  const bindForm = h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    let a; try { a = bindArgs.values(); } catch (e) { flash(e.message, true); return; }
    const ok = await act(() => api('POST', `/bindings/${enc(vhost)}/e/${enc(bindX.value)}/q/${enc(name)}`, { routing_key: bindKey.value, arguments: a }).then(() => true), 'Binding added.');
    if (ok) { bindKey.value = ''; bindArgs.reset(); refresh(); }
  } }, h('h2', {}, 'Add a binding to this queue'), field('From exchange', bindX), xNames, field('Routing key', bindKey),
  h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Arguments'), bindArgs), h('button', { type: 'submit' }, 'Bind'));

  const purgeBtn = h('button', { type: 'button', class: 'danger', id: 'purge-btn', onclick: async () => {
    if (!confirm(`Purge every message of queue ${name}?`)) return;
    await act(() => api('DELETE', path + '/contents'), 'Queue purged.', purgeBtn);
    refresh();
  } }, 'Purge messages');
  const ifEmpty = h('input', { type: 'checkbox', id: 'del-if-empty' });
  const ifUnused = h('input', { type: 'checkbox', id: 'del-if-unused' });
  const delBtn = h('button', { type: 'button', class: 'danger', id: 'delete-btn', onclick: async () => {
    if (!confirm(`Delete queue ${name}?`)) return;
    const qs = new URLSearchParams();
    if (ifEmpty.checked) qs.set('if-empty', 'true');
    if (ifUnused.checked) qs.set('if-unused', 'true');
    const ok = await act(() => api('DELETE', path + (qs.toString() ? '?' + qs : '')).then(() => true), `Queue ${name} deleted.`, delBtn);
    if (ok) location.hash = '#/queues';
  } }, 'Delete queue');

  app(main, h('div', { class: 'row' }, h('h1', {}, 'Queue ', h('span', { id: 'queue-name' }, name), h('small', {}, `virtual host ${vhost}`)), h('span', { class: 'spacer' }), h('a', { href: '#/queues' }, '← All queues')),
    h('div', { class: 'grid' }, h('div', { class: 'card' }, h('h2', {}, 'Details'), details), chart.card),
    q.type === 'quorum' ? h('div', { class: 'card' }, h('h2', {}, 'Members'), members) : null,
    h('div', { class: 'card' }, h('h2', {}, 'Consumers'), consumers),
    h('div', { class: 'card' }, h('h2', {}, 'Bindings'), bindings, bindForm),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'Publish message'), publishForm(vhost, '', name)),
      h('div', { class: 'card' }, h('h2', {}, 'Get messages'), h('p', { class: 'muted' }, 'Getting a message with a requeue mode puts it back at the head of the queue (redelivered).'), getForm, got)),
    h('div', { class: 'card' }, h('h2', {}, 'Purge / delete'), h('div', { class: 'row' }, purgeBtn,
      h('span', { class: 'spacer' }), h('label', {}, ifEmpty, ' only if empty'), h('label', {}, ifUnused, ' only if unused'), delBtn)));

  const dialect = q.type === 'quorum' ? await membershipDialect(vhost, name) : null;
  const canAdd = !!dialect, canDel = !!dialect;
  const hasConsumers = await hasEndpoint('consumers', 'GET', `/consumers/${enc(vhost)}`);
  let nodeNames = [];
  if (canAdd) { try { nodeNames = (await GET('/nodes')).map((n) => n.name); } catch (e) { nodeNames = []; } }

  let memberAdd = null, membersTable = null;

  async function changeMember(op, node, btn) {
    const [method, p, body] = dialect[op](enc(vhost), enc(name), node);
    await act(() => api(method, p, body), op === 'add' ? `Adding ${node} as a member of ${name}.` : `Removing member ${node} from ${name}.`, btn);
    refresh();
  }

  async function refresh() {
    try { q = await GET(path); } catch (e) {
      if (e.status === 404) { app(clear(details), h('tr', {}, h('td', { class: 'inline-error' }, 'This queue no longer exists.'))); }
      return;
    }
    const kv = [['Type', q.type], ['Durable', String(q.durable)], ['Auto delete', String(q.auto_delete)], ['Exclusive', String(q.exclusive)],
      ['State', q.state], [q.type === 'quorum' ? 'Leader' : 'Node', q.type === 'quorum' ? q.leader || 'none (electing)' : q.node],
      ['Messages', `${fmtNum(q.messages)} (ready ${fmtNum(q.messages_ready)}, unacked ${fmtNum(q.messages_unacknowledged)})`],
      ['Message bytes', fmtBytes(q.message_bytes)], ['Consumers', fmtNum(q.consumers)],
      ['Policy', q.policy || '–'], ['Arguments', Object.keys(q.arguments || {}).length ? JSON.stringify(q.arguments) : '–']];
    app(clear(details), ...kv.map(([k, v]) => h('tr', { 'data-key': k }, h('th', {}, k), h('td', {}, v === undefined ? '–' : v))));
    const ms = q.message_stats || {};
    pushSample(hist, { messages_ready: q.messages_ready || 0, messages_unacknowledged: q.messages_unacknowledged || 0,
      publish: rateOf(ms, 'publish') || 0, deliver_get: rateOf(ms, 'deliver_get') || 0 });
    chart.update(hist);

    if (q.type === 'quorum') {
      const online = new Set(q.online || []);
      const rows = (q.members || []).map((m) => h('tr', { class: 'member-row', 'data-node': m },
        h('td', {}, m), h('td', {}, m === q.leader ? h('span', { class: 'badge leader' }, 'leader') : 'follower'),
        h('td', {}, h('span', { class: 'badge ' + (online.has(m) ? 'ok' : 'bad') }, online.has(m) ? 'online' : 'offline')),
        h('td', {}, canDel ? h('button', { class: 'secondary small member-remove', onclick: (ev) => {
          if (confirm(`Remove ${m} from the members of ${name}?`)) changeMember('delete', m, ev.target);
        } }, 'Remove') : null)));
      /* the add-member row is built once, so the 5 s refresh keeps what the user picked */
      const addable = nodeNames.filter((n) => !(q.members || []).includes(n));
      if (!memberAdd) {
        const sel = h('select', { id: 'member-node' });
        memberAdd = h('div', { class: 'row', style: 'margin-top:8px' }, 'Add a member on ', sel,
          h('button', { type: 'button', class: 'secondary', id: 'member-add', onclick: (ev) => changeMember('add', sel.value, ev.target) }, 'Add member'));
        memberAdd.sel = sel;
      }
      const sel = memberAdd.sel;
      if ([...sel.options].map((o) => o.value).join('\n') !== addable.join('\n')) {
        const keep = sel.value;
        app(clear(sel), addable.map((n) => h('option', { value: n }, n)));
        if (addable.includes(keep)) sel.value = keep;
      }
      memberAdd.hidden = !(canAdd && addable.length);
      if (!membersTable) {
        membersTable = h('div', {});
        app(members, membersTable, memberAdd,
          !canAdd && !canDel ? h('p', { class: 'muted' }, 'This node has no membership endpoints; use warrenctl add_member / delete_member.') : null);
      }
      app(clear(membersTable), h('table', {}, h('thead', {}, h('tr', {}, ['Node', 'Role', 'State', ''].map((x) => h('th', {}, x)))), h('tbody', {}, rows)));
    }

    try {
      const bs = await GET(path + '/bindings');
      app(clear(bindings), bs.length ? h('table', {}, h('thead', {}, h('tr', {}, ['From', 'Routing key', 'Arguments', ''].map((x) => h('th', {}, x)))),
        h('tbody', {}, bs.map((b) => h('tr', {},
          h('td', {}, b.source === '' ? h('i', {}, '(default exchange)') : h('a', { href: `#/exchange/${enc(vhost)}/${enc(b.source)}` }, b.source)),
          h('td', {}, b.routing_key), h('td', {}, h('code', {}, JSON.stringify(b.arguments || {}))),
          h('td', {}, b.source === '' ? null : h('button', { class: 'secondary small', onclick: async (ev) => {
            await act(() => api('DELETE', `/bindings/${enc(vhost)}/e/${enc(b.source)}/q/${enc(name)}/${enc(b.properties_key)}`), 'Binding removed.', ev.target);
            refresh();
          } }, 'Unbind')))))) : h('div', { class: 'empty' }, 'No bindings.'));
    } catch (e) { app(clear(bindings), h('div', { class: 'inline-error' }, e.message)); }

    if (hasConsumers) {
      try {
        const cs = (await GET(`/consumers/${enc(vhost)}`)).filter((c) => c.queue && c.queue.name === name);
        app(clear(consumers), cs.length ? h('table', {}, h('thead', {}, h('tr', {}, ['Channel', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch', 'Active'].map((x) => h('th', {}, x)))),
          h('tbody', {}, cs.map((c) => h('tr', {}, h('td', {}, c.channel_details ? c.channel_details.name : '–'), h('td', {}, c.consumer_tag),
            h('td', {}, String(c.ack_required)), h('td', {}, String(c.exclusive)), h('td', {}, fmtNum(c.prefetch_count)), h('td', {}, String(c.active !== false))))))
          : h('div', { class: 'empty' }, 'No consumers.'));
      } catch (e) { app(clear(consumers), h('div', { class: 'inline-error' }, e.message)); }
    } else {
      app(clear(consumers), h('div', { class: 'empty' }, `${fmtNum(q.consumers || 0)} consumer(s). This node does not list consumer details (no /api/consumers).`));
    }
  }
  return refresh;
}

/* ---------------------------------------------------------------- exchanges */

const exchangeColumns = [
  { label: 'Virtual host', sortKey: 'vhost', render: (x) => vhostLabel(x.vhost) },
  { label: 'Name', sortKey: 'name', render: (x) => h('a', { href: `#/exchange/${enc(x.vhost)}/${enc(x.name || 'amq.default')}` }, x.name || '(AMQP default)') },
  { label: 'Type', sortKey: 'type', render: (x) => h('span', { class: 'badge' }, x.type) },
  { label: 'Features', render: (x) => [x.durable ? h('span', { class: 'badge', title: 'durable' }, 'D') : null, x.auto_delete ? h('span', { class: 'badge', title: 'auto delete' }, 'AD') : null,
    x.internal ? h('span', { class: 'badge', title: 'internal' }, 'I') : null, Object.keys(x.arguments || {}).length ? h('span', { class: 'badge', title: JSON.stringify(x.arguments) }, 'Args') : null] },
  { label: 'In', num: true, sortKey: 'message_stats.publish_in_details.rate', render: (x) => fmtRate(rateOf(x.message_stats, 'publish_in')) },
  { label: 'Out', num: true, sortKey: 'message_stats.publish_out_details.rate', render: (x) => fmtRate(rateOf(x.message_stats, 'publish_out')) },
];

async function viewExchanges(main) {
  const list = listView({ byVhost: true, id: 'exchanges-list', path: '/exchanges', columns: exchangeColumns, sort: 'name' });
  const vh = await vhostSelect('x-vhost');
  const name = h('input', { type: 'text', id: 'x-name' });
  const types = state.exchangeTypes || ['direct', 'fanout', 'headers', 'topic', 'x-delayed-message'];
  const type = h('select', { id: 'x-type' }, types.map((t) => h('option', { value: t }, t)));
  const durable = h('select', { id: 'x-durable' }, h('option', { value: 'true' }, 'Durable'), h('option', { value: 'false' }, 'Transient'));
  const autoDel = h('select', { id: 'x-autodelete' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const internal = h('select', { id: 'x-internal' }, h('option', { value: 'false' }, 'No'), h('option', { value: 'true' }, 'Yes'));
  const args = argsEditor('x-args', [['alternate-exchange', 'String'], ['x-delayed-type', 'String', 'direct']]);
  const btn = h('button', { type: 'submit', id: 'x-submit' }, 'Add exchange');
  const form = h('form', { class: 'stack', id: 'declare-exchange', onsubmit: async (ev) => {
    ev.preventDefault();
    if (!name.value.trim()) { flash('Give the exchange a name.', true); return; }
    let a; try { a = args.values(); } catch (e) { flash(e.message, true); return; }
    const ok = await act(() => api('PUT', `/exchanges/${enc(vh.value)}/${enc(name.value)}`, { type: type.value, durable: durable.value === 'true',
      auto_delete: autoDel.value === 'true', internal: internal.value === 'true', arguments: a }).then(() => true), `Exchange ${name.value} declared.`, btn);
    if (ok) { name.value = ''; args.reset(); list.refresh(); }
  } }, field('Virtual host', vh), field('Name', name), field('Type', type), field('Durability', durable), field('Auto delete', autoDel),
  field('Internal', internal), h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Arguments'), args), btn);
  app(main, h('h1', {}, 'Exchanges'), h('div', { class: 'card' }, list.root), h('details', { class: 'card', open: true }, h('summary', {}, 'Add a new exchange'), form));
  return list.refresh;
}

function bindingTable(bs, vhost, self, side, refresh) {
  if (!bs.length) return h('div', { class: 'empty' }, side === 'source' ? 'No bindings from this exchange.' : 'No bindings to this exchange.');
  return h('table', {}, h('thead', {}, h('tr', {}, [side === 'source' ? 'To' : 'From', 'Routing key', 'Arguments', ''].map((x) => h('th', {}, x)))),
    h('tbody', {}, bs.map((b) => {
      const other = side === 'source' ? b.destination : b.source;
      const kind = side === 'source' ? b.destination_type : 'exchange';
      const href = kind === 'queue' ? `#/queue/${enc(vhost)}/${enc(other)}` : `#/exchange/${enc(vhost)}/${enc(other || 'amq.default')}`;
      return h('tr', {}, h('td', {}, h('span', { class: 'muted' }, kind + ' '), h('a', { href }, other)), h('td', {}, b.routing_key),
        h('td', {}, h('code', {}, JSON.stringify(b.arguments || {}))),
        h('td', {}, h('button', { class: 'secondary small', onclick: async (ev) => {
          const d = b.destination_type === 'queue' ? 'q' : 'e';
          await act(() => api('DELETE', `/bindings/${enc(vhost)}/e/${enc(b.source)}/${d}/${enc(b.destination)}/${enc(b.properties_key)}`), 'Binding removed.', ev.target);
          refresh();
        } }, 'Unbind')));
    })));
}

async function viewExchange(main, vhost, name) {
  const path = `/exchanges/${enc(vhost)}/${enc(name)}`;
  let x;
  try { x = await GET(path); } catch (e) {
    app(main, h('h1', {}, 'Exchange ', name), h('div', { class: 'card inline-error' }, e.status === 404 ? `The exchange ${name} does not exist in virtual host ${vhost}.` : e.message),
      h('a', { href: '#/exchanges' }, '← All exchanges'));
    return undefined;
  }
  const isDefault = name === 'amq.default' || x.name === '';
  const details = h('table', { class: 'kv' });
  const src = h('div', {}), dst = h('div', {});
  const destType = h('select', { id: 'xb-dtype' }, h('option', { value: 'q' }, 'To queue'), h('option', { value: 'e' }, 'To exchange'));
  const dest = h('input', { type: 'text', id: 'xb-dest', list: 'dest-q' });
  const qNames = namesList('dest-q', `/queues/${enc(vhost)}?columns=name`);
  const xNames = namesList('dest-e', `/exchanges/${enc(vhost)}?columns=name`);
  destType.addEventListener('change', () => dest.setAttribute('list', destType.value === 'q' ? 'dest-q' : 'dest-e'));
  const key = h('input', { type: 'text', id: 'xb-key' });
  const bargs = argsEditor('xb-args', [['x-match', 'String', 'all']]);
  const bindForm = h('form', { class: 'stack', onsubmit: async (ev) => {
    ev.preventDefault();
    let a; try { a = bargs.values(); } catch (e) { flash(e.message, true); return; }
    const ok = await act(() => api('POST', `/bindings/${enc(vhost)}/e/${enc(name)}/${destType.value}/${enc(dest.value)}`, { routing_key: key.value, arguments: a }).then(() => true), 'Binding added.');
    if (ok) { key.value = ''; bargs.reset(); refresh(); }
  } }, h('h2', {}, 'Add a binding from this exchange'), field('Destination', h('span', {}, destType, ' ', dest)), qNames, xNames, field('Routing key', key),
  h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Arguments'), bargs), h('button', { type: 'submit', id: 'xb-submit' }, 'Bind'));
  const delBtn = h('button', { type: 'button', class: 'danger', onclick: async () => {
    if (!confirm(`Delete exchange ${name}?`)) return;
    const ok = await act(() => api('DELETE', path).then(() => true), `Exchange ${name} deleted.`, delBtn);
    if (ok) location.hash = '#/exchanges';
  } }, 'Delete exchange');
  app(main, h('div', { class: 'row' }, h('h1', {}, 'Exchange ', isDefault ? '(AMQP default)' : name, h('small', {}, `virtual host ${vhost}`)), h('span', { class: 'spacer' }), h('a', { href: '#/exchanges' }, '← All exchanges')),
    h('div', { class: 'card' }, h('h2', {}, 'Details'), details),
    isDefault ? h('div', { class: 'card muted' }, 'The default exchange routes to the queue named by the routing key; it cannot be bound or deleted.')
      : h('div', { class: 'card' }, h('h2', {}, 'Bindings from this exchange'), src, h('h2', { style: 'margin-top:14px' }, 'Bindings to this exchange'), dst, bindForm),
    h('div', { class: 'card' }, h('h2', {}, 'Publish message'), publishForm(vhost, name)),
    isDefault || name.startsWith('amq.') ? null : h('div', { class: 'card' }, delBtn));
  async function refresh() {
    try { x = await GET(path); } catch (e) { return; }
    const kv = [['Type', x.type], ['Durable', String(x.durable)], ['Auto delete', String(x.auto_delete)], ['Internal', String(x.internal)],
      ['Policy', x.policy || '–'], ['Arguments', Object.keys(x.arguments || {}).length ? JSON.stringify(x.arguments) : '–']];
    app(clear(details), ...kv.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v === undefined ? '–' : v))));
    if (isDefault) return;
    try { app(clear(src), bindingTable(await GET(path + '/bindings/source'), vhost, name, 'source', refresh)); } catch (e) { app(clear(src), h('div', { class: 'inline-error' }, e.message)); }
    try { app(clear(dst), bindingTable(await GET(path + '/bindings/destination'), vhost, name, 'destination', refresh)); } catch (e) { app(clear(dst), h('div', { class: 'inline-error' }, e.message)); }
  }
  return refresh;
}

/* ---------------------------------------------------------------- connections, channels */

const connectionColumns = [
  { label: 'Name', sortKey: 'name', render: (c) => [c.name, c.user_provided_name ? h('div', { class: 'muted' }, c.user_provided_name) : null] },
  { label: 'Node', sortKey: 'node', render: (c) => c.node || '–' },
  { label: 'User', sortKey: 'user', render: (c) => h('span', { class: 'c-user' }, c.user || '–') },
  { label: 'Virtual host', sortKey: 'vhost', render: (c) => c.vhost || '–' },
  { label: 'Client', render: (c) => {
    const p = c.client_properties || {};
    return [c.peer_host ? `${c.peer_host}:${c.peer_port}` : '–', p.product ? h('div', { class: 'muted' }, `${p.product} ${p.version || ''}`) : null];
  } },
  { label: 'State', sortKey: 'state', render: (c) => (c.state ? h('span', { class: 'badge ' + (c.state === 'running' ? 'ok' : 'warn') }, c.state) : '–') },
  { label: 'Protocol', sortKey: 'protocol', render: (c) => [c.protocol || '–', c.ssl ? h('span', { class: 'badge', title: c.ssl_cipher || '' }, 'TLS') : null] },
  { label: 'Channels', sortKey: 'channels', num: true, render: (c) => fmtNum(c.channels) },
  { label: 'Connected', sortKey: 'connected_at', render: (c) => (c.connected_at ? new Date(c.connected_at).toLocaleTimeString() : '–') },
  { label: '', render: (c) => h('button', { class: 'secondary small', title: 'Close this connection (the client gets 320 CONNECTION_FORCED)', onclick: async (ev) => {
    if (!confirm(`Close connection ${c.name}?`)) return;
    await act(() => api('DELETE', `/connections/${enc(c.name)}`, undefined, { headers: { 'X-Reason': 'Closed from the management UI' } }), 'Connection closed.', ev.target);
  } }, 'Close') },
];
const channelColumns = [
  { label: 'Channel', sortKey: 'name', render: (c) => c.name },
  { label: 'Connection', render: (c) => (c.connection_details ? c.connection_details.name : '–') },
  { label: 'Node', sortKey: 'node', render: (c) => c.node || '–' },
  { label: 'User', sortKey: 'user', render: (c) => c.user || '–' },
  { label: 'Virtual host', sortKey: 'vhost', render: (c) => c.vhost || '–' },
  { label: 'Mode', render: (c) => [c.confirm ? h('span', { class: 'badge', title: 'confirm' }, 'C') : null, c.transactional ? h('span', { class: 'badge', title: 'transactional' }, 'T') : null] },
  { label: 'State', sortKey: 'state', render: (c) => c.state || '–' },
  { label: 'Consumers', sortKey: 'consumer_count', num: true, render: (c) => fmtNum(c.consumer_count) },
  { label: 'Prefetch', sortKey: 'prefetch_count', num: true, render: (c) => fmtNum(c.prefetch_count) },
  { label: 'Unacked', sortKey: 'messages_unacknowledged', num: true, render: (c) => fmtNum(c.messages_unacknowledged) },
  { label: 'Publish', num: true, sortKey: 'message_stats.publish_details.rate', render: (c) => fmtRate(rateOf(c.message_stats, 'publish')) },
];

async function viewOptionalList(main, title, path, columns) {
  app(main, h('h1', {}, title));
  if (!(await hasEndpoint(path, 'GET', path))) {
    app(main, h('div', { class: 'card empty', id: 'no-endpoint' }, `This node does not list ${title.toLowerCase()} yet (${'/api' + path} is not available). The overview shows their totals.`));
    return undefined;
  }
  const list = listView({ byVhost: true, vhostPath: (v) => `/vhosts/${enc(v)}${path}`, id: title.toLowerCase() + '-list', path, columns, sort: 'name', emptyText: `No ${title.toLowerCase()}: no AMQP client is connected to the cluster.` });
  app(main, h('div', { class: 'card' }, list.root));
  return list.refresh;
}

/* ---------------------------------------------------------------- admin */

async function viewAdmin(main, sub) {
  const tabs = [['users', 'Users'], ['vhosts', 'Virtual hosts'], ['permissions', 'Permissions'], ['policies', 'Policies']];
  app(main, h('h1', {}, 'Admin'), h('div', { class: 'subnav' }, tabs.map(([k, label]) => h('a', { href: '#/admin/' + k, class: k === sub ? 'active' : null }, label))));
  const isAdmin = (state.user.tags || []).includes('administrator');
  if (!isAdmin && sub !== 'policies') {
    app(main, h('div', { class: 'card empty' }, 'Managing users, virtual hosts and permissions needs the administrator tag.'));
    return undefined;
  }
  const del = (path, what, refresh) => h('button', { class: 'secondary small', onclick: async (ev) => {
    if (!confirm(`Delete ${what}?`)) return;
    await act(() => api('DELETE', path), `Deleted ${what}.`, ev.target);
    refresh();
  } }, 'Delete');

  if (sub === 'users') {
    let list;
    const tagList = (u) => (Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',')).map((t) => t.trim()).filter(Boolean);
    const cols = [{ label: 'Name', sortKey: 'name', render: (u) => h('button', { type: 'button', class: 'link', title: 'Edit this user', onclick: () => {
      name.value = u.name;
      tags.value = tagList(u).join(', ');
      pass.value = '';
      pass.focus();
    } }, u.name) },
      { label: 'Tags', render: (u) => tagList(u).map((t) => h('span', { class: 'badge' }, t)) },
      { label: 'Password', render: (u) => (u.password_hash ? 'set' : h('span', { class: 'muted' }, 'none')) },
      { label: '', render: (u) => del(`/users/${enc(u.name)}`, `user ${u.name}`, () => list.refresh()) }];
    list = listView({ id: 'users-list', path: '/users', columns: cols, sort: 'name' });
    const name = h('input', { type: 'text', id: 'u-name' });
    const pass = h('input', { type: 'password', id: 'u-pass', autocomplete: 'new-password' });
    const tags = h('input', { type: 'text', id: 'u-tags', placeholder: 'administrator, monitoring, policymaker, management' });
    const quick = h('span', { class: 'hints' }, ['administrator', 'monitoring', 'policymaker', 'management'].map((t) => h('button', { type: 'button', class: 'link', onclick: () => {
      const cur = tags.value.split(',').map((s) => s.trim()).filter(Boolean);
      if (!cur.includes(t)) cur.push(t);
      tags.value = cur.join(', ');
    } }, t)));
    const btn = h('button', { type: 'submit', id: 'u-submit' }, 'Add / update user');
    const form = h('form', { class: 'stack', onsubmit: async (ev) => {
      ev.preventDefault();
      if (!name.value) { flash('Give the user a name.', true); return; }
      const body = { tags: tags.value.split(',').map((s) => s.trim()).filter(Boolean).join(',') };
      const ok = await act(async () => {
        if (pass.value) {
          body.password = pass.value;
        } else { /* keep an existing user's password; a new one gets none */
          let old = null;
          try { old = await GET(`/users/${enc(name.value)}`); } catch (e) { if (e.status !== 404) throw e; }
          body.password_hash = old ? old.password_hash : '';
          if (old && old.hashing_algorithm) body.hashing_algorithm = old.hashing_algorithm;
        }
        await api('PUT', `/users/${enc(name.value)}`, body);
        return true;
      }, `User ${name.value} saved.`, btn);
      if (ok) { name.value = ''; pass.value = ''; tags.value = ''; list.refresh(); }
    } }, h('p', { class: 'muted' }, 'Click a user\'s name to edit it; saving an existing name updates its password and tags.'),
    field('Username', name), field('Password', pass, 'empty: keep the current password (a new user gets none)'), field('Tags', tags), quick, btn);
    app(main, h('div', { class: 'card' }, list.root), h('details', { class: 'card', open: true }, h('summary', {}, 'Add a user'), form));
    return list.refresh;
  }
  if (sub === 'vhosts') {
    let list;
    const cols = [{ label: 'Name', sortKey: 'name', render: (v) => v.name }, { label: 'Description', render: (v) => v.description || '' },
      { label: 'Messages', num: true, sortKey: 'messages', render: (v) => fmtNum(v.messages) },
      { label: 'Publish', num: true, render: (v) => fmtRate(rateOf(v.message_stats, 'publish')) },
      { label: '', render: (v) => (v.name === '/' ? null : del(`/vhosts/${enc(v.name)}`, `virtual host ${v.name} and everything in it`, () => list.refresh())) }];
    list = listView({ id: 'vhosts-list', path: '/vhosts', columns: cols, sort: 'name' });
    const name = h('input', { type: 'text', id: 'v-name' });
    const desc = h('input', { type: 'text', id: 'v-desc' });
    const btn = h('button', { type: 'submit' }, 'Add virtual host');
    const form = h('form', { class: 'stack', onsubmit: async (ev) => {
      ev.preventDefault();
      if (!name.value) { flash('Give the virtual host a name.', true); return; }
      const ok = await act(() => api('PUT', `/vhosts/${enc(name.value)}`, { description: desc.value }).then(() => true), `Virtual host ${name.value} added.`, btn);
      if (ok) { name.value = ''; desc.value = ''; list.refresh(); }
    } }, field('Name', name), field('Description', desc), btn);
    app(main, h('div', { class: 'card' }, list.root), h('details', { class: 'card', open: true }, h('summary', {}, 'Add a virtual host'), form));
    return list.refresh;
  }
  if (sub === 'permissions') {
    let list;
    const cols = [{ label: 'User', sortKey: 'user', render: (p) => p.user }, { label: 'Virtual host', sortKey: 'vhost', render: (p) => p.vhost },
      { label: 'Configure', render: (p) => h('code', {}, p.configure) }, { label: 'Write', render: (p) => h('code', {}, p.write) }, { label: 'Read', render: (p) => h('code', {}, p.read) },
      { label: '', render: (p) => del(`/permissions/${enc(p.vhost)}/${enc(p.user)}`, `the permissions of ${p.user} on ${p.vhost}`, () => list.refresh()) }];
    list = listView({ id: 'permissions-list', path: '/permissions', columns: cols, sort: 'user', filter: false });
    const user = h('select', { id: 'p-user' });
    try { for (const u of await GET('/users')) user.append(h('option', { value: u.name }, u.name)); } catch (e) { /* shown by the list */ }
    const vh = await vhostSelect('p-vhost');
    const conf = h('input', { type: 'text', value: '.*' }), write = h('input', { type: 'text', value: '.*' }), read = h('input', { type: 'text', value: '.*' });
    const btn = h('button', { type: 'submit' }, 'Set permission');
    const form = h('form', { class: 'stack', onsubmit: async (ev) => {
      ev.preventDefault();
      const ok = await act(() => api('PUT', `/permissions/${enc(vh.value)}/${enc(user.value)}`, { configure: conf.value, write: write.value, read: read.value }).then(() => true), 'Permission set.', btn);
      if (ok) list.refresh();
    } }, field('User', user), field('Virtual host', vh), field('Configure regexp', conf), field('Write regexp', write), field('Read regexp', read), btn);
    app(main, h('div', { class: 'card' }, list.root), h('details', { class: 'card', open: true }, h('summary', {}, 'Set permissions'), form));
    return list.refresh;
  }
  if (sub === 'policies') {
    let list;
    const cols = [{ label: 'Virtual host', sortKey: 'vhost', render: (p) => p.vhost }, { label: 'Name', sortKey: 'name', render: (p) => p.name },
      { label: 'Pattern', render: (p) => h('code', {}, p.pattern) }, { label: 'Apply to', render: (p) => p['apply-to'] },
      { label: 'Definition', render: (p) => h('code', {}, JSON.stringify(p.definition)) }, { label: 'Priority', num: true, sortKey: 'priority', render: (p) => p.priority },
      { label: '', render: (p) => del(`/policies/${enc(p.vhost)}/${enc(p.name)}`, `policy ${p.name}`, () => list.refresh()) }];
    list = listView({ byVhost: true, id: 'policies-list', path: '/policies', columns: cols, sort: 'name', emptyText: 'No policies.' });
    const vh = await vhostSelect('pol-vhost');
    const name = h('input', { type: 'text', id: 'pol-name' });
    const pattern = h('input', { type: 'text', id: 'pol-pattern', placeholder: '^orders\\.' });
    const applyTo = h('select', { id: 'pol-apply' }, ['queues', 'classic_queues', 'quorum_queues', 'exchanges', 'all'].map((x) => h('option', { value: x }, x)));
    const prio = h('input', { type: 'number', id: 'pol-priority', value: '0', style: 'min-width:80px;width:80px' });
    const def = argsEditor('pol-def', [['message-ttl', 'Number'], ['max-length', 'Number'], ['dead-letter-exchange', 'String'], ['overflow', 'String', 'reject-publish'],
      ['expires', 'Number'], ['delivery-limit', 'Number'], ['alternate-exchange', 'String']]);
    const btn = h('button', { type: 'submit', id: 'pol-submit' }, 'Add / update policy');
    const form = h('form', { class: 'stack', onsubmit: async (ev) => {
      ev.preventDefault();
      let d; try { d = def.values(); } catch (e) { flash(e.message, true); return; }
      if (!name.value || !pattern.value) { flash('A policy needs a name and a pattern.', true); return; }
      const ok = await act(() => api('PUT', `/policies/${enc(vh.value)}/${enc(name.value)}`, { pattern: pattern.value, 'apply-to': applyTo.value, priority: +prio.value || 0, definition: d }).then(() => true),
        `Policy ${name.value} saved.`, btn);
      if (ok) { name.value = ''; pattern.value = ''; def.reset(); list.refresh(); }
    } }, field('Virtual host', vh), field('Name', name), field('Pattern', pattern, 'a regular expression matched against names'), field('Apply to', applyTo), field('Priority', prio),
    h('div', { class: 'field' }, h('span', { class: 'lbl' }, 'Definition'), def), btn);
    app(main, h('div', { class: 'card' }, list.root), h('details', { class: 'card', open: true }, h('summary', {}, 'Add / update a policy'), form));
    return list.refresh;
  }
  app(main, h('div', { class: 'card' }, 'No such admin page.'));
  return undefined;
}

/* ---------------------------------------------------------------- definitions */

async function viewDefinitions(main) {
  if (!(state.user.tags || []).includes('administrator')) {
    app(main, h('h1', {}, 'Definitions'), h('div', { class: 'card empty' }, 'Exporting and importing definitions needs the administrator tag.'));
    return undefined;
  }
  const exportBtn = h('button', { type: 'button', id: 'export-btn', onclick: async () => {
    const defs = await act(() => GET('/definitions'), null, exportBtn);
    if (!defs) return;
    let cluster = 'warren';
    try { cluster = (await GET('/cluster-name')).name; } catch (e) { /* keep the default */ }
    const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
    const a = h('a', { href: URL.createObjectURL(blob), download: `${cluster.replace(/[^\w.-]+/g, '_')}-definitions-${new Date().toISOString().slice(0, 10)}.json` });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    flash('Definitions exported.');
  } }, 'Download definitions');
  const file = h('input', { type: 'file', id: 'import-file', accept: '.json,application/json' });
  const importBtn = h('button', { type: 'button', id: 'import-btn', onclick: async () => {
    if (!file.files.length) { flash('Choose a definitions file first.', true); return; }
    const text = await file.files[0].text();
    try { JSON.parse(text); } catch (e) { flash('That file is not valid JSON: ' + e.message, true); return; }
    await act(async () => {
      try { return await api('POST', '/definitions', text); } catch (e) {
        if (e.status === 405 || e.status === 404) throw new Error('This node cannot import definitions over HTTP yet; use load_definitions in its configuration.');
        throw e;
      }
    }, 'Definitions imported.', importBtn);
  } }, 'Upload definitions');
  app(main, h('h1', {}, 'Definitions'),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'Export'), h('p', { class: 'muted' }, 'Users, virtual hosts, permissions, policies, exchanges, queues and bindings as one JSON file (RabbitMQ\'s format), without messages.'), exportBtn),
      h('div', { class: 'card' }, h('h2', {}, 'Import'), h('p', { class: 'muted' }, 'Merges a definitions file (RabbitMQ or Warren) into the cluster: objects that exist are kept, new ones are added.'), h('div', { class: 'row' }, file, importBtn))));
  return undefined;
}

/* ---------------------------------------------------------------- boot */

window.addEventListener('hashchange', route);
$('#logout').addEventListener('click', () => logout('You are logged out.'));
state.auth = sessionStorage.getItem('warren.auth');
if (state.auth) start(); else showLogin();
