'use strict';
// Long Polling: ask for events after the last id; the server holds the request up to 25 s.
(() => {
  async function poll() {
    for (let attempt = 0; !Chat.leaving;) {
      const cursor = Chat.lastId ? `&lastReceived=${encodeURIComponent(Chat.lastId)}` : '';
      // A poll is open (it may wait 25 s for news): the page is connected. After a failure
      // it stays "reconnecting" until an answer comes back.
      if (attempt === 0) Chat.status('live', 'connected');
      try {
        const r = await fetch(`/longpolling/room/messages?room=${encodeURIComponent(Chat.room)}${cursor}`,
          { cache: 'no-store' });
        if (r.status === 401 || r.status === 409 || r.status === 410) {
          const body = await r.json();
          Chat.status('error', body.reason);
          return;
        }
        if (!r.ok) throw new Error(`error ${r.status}`);
        const events = await r.json();
        if (Chat.leaving) return;
        if (attempt > 0) Chat.refreshMembers();
        attempt = 0;
        Chat.status('live', 'connected');
        Chat.handle(events);
      } catch (_) {
        Chat.status('reconnecting', 'reconnecting…');
        await Chat.sleep(Chat.backoff(attempt++));
      }
    }
  }
  Chat.onSubmit((text, clientId) => Chat.postMessage(text, clientId));
  poll();
})();
