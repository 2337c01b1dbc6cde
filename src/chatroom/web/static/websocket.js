'use strict';
// WebSocket: the tabs of this browser share one socket (share.js): history then live
// events; each message is a JSON text frame naming its room, with a client_id, sent
// again after a reconnect until acknowledged (the server drops the duplicates).
(() => {
  const shared = Share.connect();
  Chat.onSubmit((text, clientId) => shared.say(text, clientId));
})();
