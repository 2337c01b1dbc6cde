'use strict';
// Active Refresh: the page works without JavaScript (form POST, reload). With it, the
// thread and member list are fetched again every 5 s without a full reload.
(() => {
  const parser = new DOMParser();
  let busy = false;

  const adoptAll = (nodes) => [...nodes].map((node) => document.adoptNode(node));

  // The fresh panel's newest events join the thread: only what came since the last look is
  // appended, so the live log announces just that, and the history scrolled back to stays.
  function adopt(html) {
    const doc = parser.parseFromString(html, 'text/html');
    const thread = doc.getElementById('thread');
    const members = doc.getElementById('members');
    const edge = doc.getElementById('history-edge');
    if (!thread || !members || !edge) return false;
    // Server-rendered, autoescaped markup: only text nodes carry what users typed.
    const stick = Chat.nearBottom();
    const fresh = [...thread.children];
    const shown = [...Chat.thread.children].filter((li) => li.dataset.id);
    const last = shown.length ? shown[shown.length - 1].dataset.id : null;
    const at = fresh.findIndex((li) => li.dataset.id === last);
    if (last === null || at >= 0) {
      Chat.thread.append(...adoptAll(fresh.slice(at + 1)));
    } else {
      // More came than one panel holds, or the room's history started afresh: this panel
      // starts the thread again, and scrolling back starts again from its first event.
      Chat.thread.replaceChildren(...adoptAll(fresh));
      document.getElementById('older').replaceChildren();
      document.getElementById('history-edge').replaceChildren(...adoptAll(edge.childNodes));
      document.getElementById('history-edge').dataset.before = edge.dataset.before;
      const gap = document.getElementById('history-gap');
      if (gap) gap.remove();
    }
    document.getElementById('members').replaceChildren(...adoptAll(members.children));
    Chat.decorate();
    if (stick) Chat.scrollDown();
    return true;
  }

  async function refresh() {
    if (busy || Chat.leaving) return;
    busy = true;
    try {
      // the newest panel, also on a page of older history (?before=)
      const r = await fetch(`${location.pathname}?room=${encodeURIComponent(Chat.room)}`, { cache: 'no-store' });
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
