'use strict';
// What every room page shares: rendering events (text only, never HTML), the member
// list, the connection status, reconnect backoff with jitter, and the message box.
const Chat = (() => {
  const root = document.getElementById('room');
  const thread = document.getElementById('thread');
  // the scroll box; the live log (#thread) and the history loaded above it (#older) are in it
  const box = thread.closest('.thread-wrap');
  const older = document.getElementById('older');
  const membersList = document.getElementById('members');
  const statusEl = document.getElementById('status');
  const errorEl = document.getElementById('error');
  const form = document.getElementById('say');
  const input = document.getElementById('message');
  const room = root.dataset.room;
  const me = root.dataset.user;
  const csrf = root.dataset.csrf;
  const technique = root.dataset.technique;
  let lastId = root.dataset.lastId || null;
  const seen = new Set();
  // Once the Leave button is pressed, no more polls or reconnects: the next one would
  // bring this page back into the room while the browser is on its way out.
  let leaving = false;
  const leaveForm = root.querySelector('form.leave');
  if (leaveForm) leaveForm.addEventListener('submit', () => { leaving = true; });
  for (const li of [...older.children, ...thread.children]) seen.add(li.dataset.id);

  function clock(ts) {
    return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  // One of eight colours per nickname (see style.css), the same on every page.
  function hue(name) {
    let h = 0;
    for (const ch of name) h = (Math.imul(h, 31) + ch.codePointAt(0)) >>> 0;
    return String(h % 8);
  }

  function paintMember(li) {
    const name = li.textContent.trim();
    li.dataset.hue = hue(name);
    li.dataset.initial = name ? [...name][0].toUpperCase() : '?';
  }

  // Colour the name; a message right after one of the same person's (within 5 minutes)
  // is a continuation and shows no name again.
  function paint(li) {
    const user = li.querySelector('.user');
    if (!user) return;
    user.dataset.hue = hue(user.textContent);
    const prev = li.previousElementSibling;
    if (!li.classList.contains('message') || !prev || !prev.classList.contains('message')) return;
    const time = li.querySelector('time');
    const prevTime = prev.querySelector('time');
    const close = time && prevTime && Number(time.dataset.ts) - Number(prevTime.dataset.ts) < 300000;
    if (close && prev.querySelector('.user').textContent === user.textContent) li.classList.add('cont');
  }

  // Server-rendered markup (the page, or the refresh page's new panel): local times, colours.
  function decorate() {
    for (const t of box.querySelectorAll('time[data-ts]')) t.textContent = clock(Number(t.dataset.ts));
    for (const li of [...older.children, ...thread.children]) paint(li);
    for (const li of membersList.children) paintMember(li);
    countMembers();
  }

  // The polite live region beside the member list: a join or a leave is announced as the
  // new count, once (the same text is not written again, so it is not read again).
  function countMembers() {
    const counter = document.getElementById('member-count');
    const n = membersList.children.length;
    const text = `${n} ${n === 1 ? 'person' : 'people'} here`;
    if (counter && counter.textContent !== text) counter.textContent = text;
  }
  decorate();
  scrollDown();

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function nearBottom() {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollDown() {
    box.scrollTop = box.scrollHeight;
  }

  function setMembers(names) {
    membersList.replaceChildren(...names.map((n) => {
      const li = el('li', n === me ? 'me' : '', n);
      paintMember(li);
      return li;
    }));
    countMembers();
  }

  function memberJoined(name) {
    const names = [...membersList.children].map((li) => li.textContent);
    if (!names.includes(name)) setMembers([...names, name].sort());
  }

  function memberLeft(name) {
    setMembers([...membersList.children].map((li) => li.textContent).filter((n) => n !== name));
  }

  // Events arrive in id order; a reset says the cursor could not be honoured.
  function handle(events) {
    const stick = nearBottom() || events.some((ev) => ev.type === 'message' && ev.user === me);
    for (const ev of events) {
      if (ev.type === 'reset') {
        thread.append(el('li', 'notice reset', 'Some history could not be replayed; showing what the server keeps.'));
        if (ev.id === null) lastId = null;
        continue;
      }
      if (!ev.id || seen.has(ev.id)) continue;
      seen.add(ev.id);
      lastId = ev.id;
      if (ev.type === 'join') memberJoined(ev.user); else if (ev.type === 'leave') memberLeft(ev.user);
      const li = render(ev);
      thread.append(li);
      paint(li);
    }
    if (stick) scrollDown();
  }

  // One event as a list item: text only, never HTML.
  function render(ev) {
    let li;
    if (ev.type === 'message') {
      li = el('li', ev.user === me ? 'message mine' : 'message');
      li.append(el('span', 'user', ev.user), el('span', 'text', ev.text));
      const time = el('time', '', clock(ev.timestamp));
      time.dataset.ts = String(ev.timestamp);
      li.append(time);
    } else {
      li = el('li', `notice ${ev.type}`);
      li.append(el('span', 'user', ev.user), document.createTextNode(ev.type === 'join' ? ' joined' : ' left'));
    }
    li.dataset.id = ev.id;
    return li;
  }

  // Older history: scrolling near the top (or the "Older messages" link) loads the page
  // before the oldest event shown into #older, above the live log and outside it (a screen
  // reader announces new messages, not history), and the reading position stays put.
  const edge = document.getElementById('history-edge');
  const PAGE = 50;
  let loadingOlder = false;
  let olderFailures = 0;
  const nearTop = () => box.scrollTop < box.clientHeight / 2;

  async function loadOlder() {
    const link = document.getElementById('older-link');
    if (loadingOlder || !link) return;
    loadingOlder = true;
    try {
      const shown = new Set([...older.children, ...thread.children].map((li) => li.dataset.id));
      const first = [...older.children, ...thread.children].find((li) => li.dataset.id);
      const cursor = first ? first.dataset.id : edge.dataset.before;
      const r = await fetch(`/api/rooms/${encodeURIComponent(room)}/history?before=${encodeURIComponent(cursor)}&limit=${PAGE}`,
        { cache: 'no-store' });
      if (!r.ok) throw new Error(`error ${r.status}`);
      const page = await r.json();
      const items = page.events.filter((ev) => ev.id && !shown.has(ev.id)).map((ev) => { seen.add(ev.id); return render(ev); });
      // The first event on screen stays where it is (it keeps its name: nothing below moves).
      const top = box.getBoundingClientRect().top;
      const anchor = [...older.children, ...thread.children].find((li) => li.getBoundingClientRect().bottom > top);
      const was = anchor ? anchor.getBoundingClientRect().top : 0;
      older.prepend(...items);
      for (const li of items) paint(li);
      if (anchor) box.scrollTop += anchor.getBoundingClientRect().top - was;
      if (page.events.length < PAGE) {
        const focused = document.activeElement === link;
        edge.replaceChildren(el('span', 'history-start', `This is the beginning of #${room}’s history.`));
        if (focused) box.focus({ preventScroll: true });
      } else {
        link.href = `${location.pathname}?room=${encodeURIComponent(room)}&before=${encodeURIComponent(page.before)}`;
      }
      olderFailures = 0;
    } catch (_) {
      await sleep(backoff(olderFailures++));
    } finally {
      loadingOlder = false;
    }
    if (nearTop()) loadOlder();
  }
  box.addEventListener('scroll', () => { if (nearTop()) loadOlder(); }, { passive: true });
  edge.addEventListener('click', (e) => {
    if (e.target.id !== 'older-link' || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    loadOlder();
  });
  if (nearTop()) loadOlder();

  function status(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function showError(text) {
    if (!text) { errorEl.hidden = true; errorEl.textContent = ''; return; }
    errorEl.textContent = text;
    errorEl.hidden = false;
  }

  // 0.5 s doubling to 30 s, times a random factor: a restart does not bring every client back at once.
  function backoff(attempt) {
    const base = Math.min(30000, 500 * 2 ** attempt);
    return base / 2 + Math.random() * base / 2;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function newClientId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  async function refreshMembers() {
    try {
      const r = await fetch(`/api/rooms/${encodeURIComponent(room)}/presence`, { cache: 'no-store' });
      if (r.ok) setMembers((await r.json()).members);
    } catch (_) { /* the next reconnect tries again */ }
  }

  // POST a message to the long-poll endpoint (used by Long Polling and SSE pages).
  // Retries with the same client_id until an answer arrives: nothing lost, nothing doubled.
  async function postMessage(text, clientId) {
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await fetch(`/longpolling/room/messages?room=${encodeURIComponent(room)}`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
          body: JSON.stringify({ message: text, client_id: clientId }),
          cache: 'no-store',
        });
      } catch (_) {
        await sleep(backoff(attempt));
        continue;
      }
      if (r.ok) return r.json();
      let reason = `error ${r.status}`;
      let code = '';
      try { const body = await r.json(); reason = body.reason || reason; code = body.error || ''; } catch (_) { /* not JSON */ }
      if (r.status >= 500) { await sleep(backoff(attempt)); continue; }
      if (code === 'not_member' && attempt < 3) {
        // The server lost this page's presence (a restart, an outage): a poll brings it
        // back, then the same message goes again, with the same client_id.
        try { await fetch(`/longpolling/room/messages?room=${encodeURIComponent(room)}`, { cache: 'no-store' }); } catch (_) { /* retried */ }
        continue;
      }
      throw new Error(reason);
    }
  }

  // The message box: the technique supplies send(text, clientId) -> Promise.
  function onSubmit(send) {
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      const clientId = newClientId();
      input.value = '';
      showError('');
      try {
        await send(text, clientId);
      } catch (err) {
        showError(err.message);
        if (!input.value) input.value = text;
      }
      input.focus();
    });
  }

  return {
    room, me, csrf, technique, root, thread, form, input,
    get lastId() { return lastId; },
    get leaving() { return leaving; },
    handle, status, showError, decorate, nearBottom, scrollDown, backoff, sleep, postMessage, onSubmit, refreshMembers, setMembers, el,
  };
})();
