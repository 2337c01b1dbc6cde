'use strict';
// Long Polling: the tabs of this browser share one poll (share.js), which asks for the
// events after each room's last id; the server holds it up to 25 s. Messages are POSTed.
(() => {
  Chat.onSubmit((text, clientId) => Chat.postMessage(text, clientId));
  Share.connect();
})();
