// Node.js with the `ws` package: the naive broadcast loop from the ws README.
// Every text message any client sends goes to every open client.
// Usage: node server.js --port P   (binds 127.0.0.1 only; exits on SIGTERM)
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const i = process.argv.indexOf('--port');
const port = i >= 0 ? Number(process.argv[i + 1]) : NaN;
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js --port P');
  process.exit(2);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port, backlog: 1024 });

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: false });
    }
  });
});

wss.on('error', (err) => {
  console.error(err);
  process.exit(1);
});

function shutdown() {
  for (const client of wss.clients) client.close(1001, 'server shutdown');
  wss.close(() => process.exit(0));
  // clients that do not answer the close handshake are not waited for long
  setTimeout(() => {
    for (const client of wss.clients) client.terminate();
  }, 1000).unref();
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
