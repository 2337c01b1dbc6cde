'use strict';
// WebSocket: history then live events; each message is a JSON text frame with a client_id.
// Unanswered messages are sent again after a reconnect: the server drops the duplicates.
(() => {
  const pending = new Map(); // client_id -> {text, resolve, reject}
  let ws = null;
  let attempt = 0;
  let stopped = false;

  function connect() {
    if (Chat.leaving) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const cursor = Chat.lastId ? `&lastReceived=${encodeURIComponent(Chat.lastId)}` : '';
    ws = new WebSocket(`${proto}//${location.host}/websocket/room/socket?room=${encodeURIComponent(Chat.room)}${cursor}`);
    ws.onopen = () => {
      if (attempt > 0) Chat.refreshMembers();
      attempt = 0;
      Chat.status('live', 'connected');
      for (const [clientId, p] of pending) ws.send(JSON.stringify({ text: p.text, client_id: clientId }));
    };
    ws.onmessage = (e) => {
      const data = JSON.parse(e.data);
      if (data.type === 'ack') {
        const p = pending.get(data.client_id);
        if (p) { pending.delete(data.client_id); p.resolve(data); }
      } else if (data.type === 'error') {
        const p = data.client_id ? pending.get(data.client_id) : null;
        // Worth the same message again, with the same client_id (stored once whatever
        // happened): the rate allows it later; a server that lost this socket's presence
        // (a restart, an outage) has it back within its heartbeat.
        const again = p && (data.error === 'rate_limited'
          || ((data.error === 'not_member' || data.error === 'unavailable') && (p.tries = (p.tries || 0) + 1) <= 10));
        if (again) {
          setTimeout(() => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ text: p.text, client_id: data.client_id })); },
            (data.retry_after || 2) * 1000);
        } else if (p) {
          pending.delete(data.client_id);
          p.reject(new Error(data.reason));
        } else {
          Chat.showError(data.reason);
        }
      } else {
        Chat.handle([data]);
      }
    };
    ws.onclose = (e) => {
      if (e.code === 4009 || e.code === 4000) {
        stopped = true;
        Chat.status('error', e.reason || 'disconnected');
        return;
      }
      if (stopped || Chat.leaving) return;
      Chat.status('reconnecting', e.reason ? `reconnecting: ${e.reason}` : 'reconnecting…');
      setTimeout(connect, Chat.backoff(attempt++));
    };
  }

  Chat.onSubmit((text, clientId) => new Promise((resolve, reject) => {
    pending.set(clientId, { text, resolve, reject });
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ text, client_id: clientId }));
  }));
  connect();
})();
