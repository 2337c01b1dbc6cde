'use strict';
// Active Refresh: the page works without JavaScript (form POST, reload). With it, the
// thread and member list are fetched again every 5 s without a full reload.
(() => {
  const parser = new DOMParser();
  let busy = false;

  function adopt(html) {
    const doc = parser.parseFromString(html, 'text/html');
    const thread = doc.getElementById('thread');
    const members = doc.getElementById('members');
    if (!thread || !members) return false;
    // Server-rendered, autoescaped markup: only text nodes carry what users typed.
    const stick = Chat.nearBottom();
    Chat.thread.replaceChildren(...[...thread.children].map((li) => document.adoptNode(li)));
    document.getElementById('members').replaceChildren(...[...members.children].map((li) => document.adoptNode(li)));
    Chat.decorate();
    if (stick) Chat.scrollDown();
    return true;
  }

  async function refresh() {
    if (busy || Chat.leaving) return;
    busy = true;
    try {
      const r = await fetch(location.pathname + location.search, { cache: 'no-store' });
      if (r.redirected && !r.url.includes('/refresh/room')) { location.href = r.url; return; }
      if (r.ok && adopt(await r.text())) {
        Chat.status('live', `updated ${new Date().toLocaleTimeString()}`);
      }
    } catch (_) {
      Chat.status('reconnecting', 'offline: retrying');
    } finally {
      busy = false;
    }
  }

  Chat.onSubmit(async (text, clientId) => {
    const body = new URLSearchParams({ message: text, csrf: Chat.csrf, client_id: clientId });
    const r = await fetch(Chat.form.action, { method: 'POST', body, cache: 'no-store' });
    const html = await r.text();
    if (!r.ok) {
      const doc = parser.parseFromString(html, 'text/html');
      const error = doc.getElementById('error');
      throw new Error(error && error.textContent ? error.textContent : `error ${r.status}`);
    }
    adopt(html);
    Chat.scrollDown();
  });
  Chat.status('static', 'refreshes every 5 s');
  setInterval(refresh, 5000);
})();
