'use strict';
// Server-Sent Events: one stream of events; messages are sent with POST.
(() => {
  let attempt = 0;
  function connect() {
    if (Chat.leaving) return;
    const cursor = Chat.lastId ? `&lastReceived=${encodeURIComponent(Chat.lastId)}` : '';
    const es = new EventSource(`/sse/room/events?room=${encodeURIComponent(Chat.room)}${cursor}`);
    es.onopen = () => {
      if (attempt > 0) Chat.refreshMembers();
      attempt = 0;
      Chat.status('live', 'connected');
    };
    es.onmessage = (e) => Chat.handle([JSON.parse(e.data)]);
    es.addEventListener('cutoff', (e) => {
      Chat.status('reconnecting', JSON.parse(e.data).reason);
    });
    let ended = false;
    es.addEventListener('left', (e) => {
      // This session left the room (maybe in another tab): stop, do not rejoin.
      ended = true;
      es.close();
      Chat.status('error', JSON.parse(e.data).reason);
    });
    es.onerror = () => {
      // Reconnect ourselves, from our own last id, with backoff and jitter.
      es.close();
      if (Chat.leaving || ended) return;
      Chat.status('reconnecting', 'reconnecting…');
      setTimeout(connect, Chat.backoff(attempt++));
    };
  }
  Chat.onSubmit((text, clientId) => Chat.postMessage(text, clientId));
  connect();
})();
