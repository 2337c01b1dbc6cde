'use strict';
// Server-Sent Events: the tabs of this browser share one stream of events (share.js);
// messages are sent with POST.
(() => {
  Chat.onSubmit((text, clientId) => Chat.postMessage(text, clientId));
  Share.connect();
})();
