'use strict';
// A WebSocket client on Node's `ws`, driven by tests/transports/test_websocket_interop.py.
//
//   node ws_interop_client.js URL ORIGIN COOKIE WS_PACKAGE_DIR
//
// Commands come one JSON object a line on stdin ({"op": "text", "data": "..."},
// {"op": "binary" | "ping", "data": base64}, {"op": "close", "code": 1000, "reason": "..."});
// what happens goes out one JSON object a line on stdout, payloads in base64 so every
// byte is seen as it came. The process ends when the connection has closed.

const path = require('path');
const readline = require('readline');

const [url, origin, cookie, wsDir] = process.argv.slice(2);
const WebSocket = require(path.join(wsDir, 'node_modules', 'ws'));

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const b64 = (data) => Buffer.from(data).toString('base64');

const ws = new WebSocket(url, { origin, headers: { Cookie: cookie } });
ws.on('open', () => out({ event: 'open', extensions: ws.extensions }));
ws.on('message', (data, isBinary) => out({ event: isBinary ? 'binary' : 'text', data: b64(data) }));
ws.on('ping', (data) => out({ event: 'ping', data: b64(data) }));
ws.on('pong', (data) => out({ event: 'pong', data: b64(data) }));
ws.on('unexpected-response', (request, response) => {
  out({ event: 'refused', status: response.statusCode });
  process.exit(1);
});
ws.on('error', (error) => out({ event: 'error', message: String(error) }));
ws.on('close', (code, reason) => {
  out({ event: 'close', code, reason: reason.toString() });
  process.exit(0);
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line);
  if (command.op === 'text') {
    ws.send(command.data); // a string goes as a text frame
  } else if (command.op === 'binary') {
    ws.send(Buffer.from(command.data, 'base64'));
  } else if (command.op === 'ping') {
    ws.ping(Buffer.from(command.data, 'base64'));
  } else if (command.op === 'close') {
    ws.close(command.code, command.reason);
  }
});
