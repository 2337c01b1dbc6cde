'use strict';
// One connection per technique for all the tabs of this browser.
//
// A browser opens at most 6 HTTP/1.1 connections to a host: an event stream or a parked
// poll per tab would starve the other tabs and every other page of the site. So one
// connection follows every room the tabs have open (?follow=R:C&follow=..., see
// docs/protocol.md) and hands each room's events to that room's tabs. It is held by
//   1. a SharedWorker running this same file, where the browser has SharedWorker; else
//   2. a leader tab, elected with the Web Locks API, relaying over BroadcastChannel
//      (when it closes, the next tab in line takes over); else
//   3. each tab itself, as one connection of its own.
//
// Each tab keeps its own cursor: it attaches with the id of the last event it shows and
// is told the connection's position in its room; it takes no event before that answer,
// nor from another hub. The same: every event after it is the tab's. Not the same (the
// page was rendered a moment before or after, or a new leader started from another
// tab's cursor): the tab reads what it lacks from /api/rooms/R/history, then takes the
// shared events after the newest it read, and until that one has passed, none. Nothing
// missed, nothing twice.
(() => {
  const TAB_LOCK = 'chatroom-tab-';
  // A room no tab shows any more is dropped from the connection after this: a reload
  // (pagehide, then the new page attaches) does not reconnect.
  const DROP_AFTER = 2000;
  const HISTORY_PAGE = 500;
  // What a hub tells a room's tabs (Hub.toRoom).
  const ROOM_NEWS = new Set(['events', 'state', 'left', 'error']);

  // 0.5 s doubling to 30 s, times a random factor: a restart does not bring every
  // browser back at once.
  function backoff(attempt) {
    const base = Math.min(30000, 500 * 2 ** attempt);
    return base / 2 + Math.random() * base / 2;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const forever = () => new Promise(() => {});

  function newId() {
    if (self.crypto && crypto.randomUUID) return crypto.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  // --- the hub: one technique's connections, shared by the tabs attached to it ---------

  class Hub {
    // out.room(tabs, msg): to the tabs of a room (a leader's channel reaches every tab,
    // attached or not: each message names its hub); out.tab(tab, msg): to one tab.
    constructor(technique, out) {
      this.id = newId();
      this.technique = technique;
      this.out = out;
      this.maxRooms = 32;
      // room -> {cur: the id of the last event passed on (or the cursor it started
      //          from), tabs: Set, conn, gone: it ended for this session, drop: timer}
      this.rooms = new Map();
      // tab -> its room
      this.tabs = new Map();
      this.conns = [];
      // WebSocket messages not acknowledged yet: client_id -> {tab, room, text, tries}
      this.pending = new Map();
    }

    toRoom(room, msg) {
      const r = this.rooms.get(room);
      if (r && r.tabs.size) this.out.room(r.tabs, { ...msg, hub: this.id });
    }

    handle(msg) {
      if (msg.t === 'attach') this.attach(msg.tab, msg.room, msg.cursor, msg.maxRooms, msg.round);
      else if (msg.t === 'detach') this.detach(msg.tab);
      else if (msg.t === 'say') this.say(msg.tab, msg.room, msg.text, msg.client_id);
    }

    attach(tab, room, cursor, maxRooms, round) {
      if (maxRooms > 0) this.maxRooms = maxRooms;
      if (this.tabs.has(tab) && this.tabs.get(tab) !== room) this.detach(tab);
      let r = this.rooms.get(room);
      if (!r || r.gone) {
        r = { cur: cursor, tabs: new Set(), conn: null, gone: false, drop: 0 };
        this.rooms.set(room, r);
        this.follow(room, r);
      }
      clearTimeout(r.drop);
      r.drop = 0;
      r.tabs.add(tab);
      this.tabs.set(tab, room);
      const c = r.conn;
      this.out.tab(tab, { t: 'attached', hub: this.id, round, room, cur: r.cur, state: c.state, text: c.text });
    }

    detach(tab) {
      const room = this.tabs.get(tab);
      if (room === undefined) return;
      this.tabs.delete(tab);
      for (const [clientId, p] of this.pending) if (p.tab === tab) this.pending.delete(clientId);
      const r = this.rooms.get(room);
      if (!r) return;
      r.tabs.delete(tab);
      if (!r.tabs.size && !r.drop) {
        r.drop = setTimeout(() => {
          r.drop = 0;
          if (!r.tabs.size && this.rooms.get(room) === r) this.unfollow(room);
        }, DROP_AFTER);
      }
    }

    follow(room, r) {
      let conn = this.conns.find((c) => c.rooms.size < this.maxRooms);
      if (!conn) {
        conn = new TRANSPORTS[this.technique](this);
        this.conns.push(conn);
      }
      r.conn = conn;
      conn.rooms.add(room);
      conn.changed();
    }

    unfollow(room) {
      const r = this.rooms.get(room);
      this.rooms.delete(room);
      if (!r || !r.conn.rooms.delete(room)) return;
      this.dropped(r.conn);
    }

    dropped(conn) {
      if (conn.rooms.size) {
        conn.changed();
      } else {
        conn.stop();
        this.conns = this.conns.filter((c) => c !== conn);
      }
    }

    // The query of a connection: each room with the cursor it resumes from.
    query(conn) {
      const q = new URLSearchParams();
      for (const room of conn.rooms) q.append('follow', `${room}:${this.rooms.get(room).cur || ''}`);
      return q.toString();
    }

    // Events (and resets) as the server sent them: each names its room, in id order.
    deliver(items) {
      const batches = new Map();
      for (const item of items) {
        const r = this.rooms.get(item.room);
        if (!r || r.gone) continue;
        if (item.type === 'reset') {
          // no cursor of its own; null: the stream holds nothing, resume from nothing
          if (item.id === null) r.cur = null;
        } else if (item.id) {
          r.cur = item.id;
        }
        if (!batches.has(item.room)) batches.set(item.room, []);
        batches.get(item.room).push(item);
      }
      for (const [room, events] of batches) this.toRoom(room, { t: 'events', room, events });
    }

    // A room ended for this session (its Leave, maybe in another tab): never followed
    // again until a tab of it attaches anew (after entering it again).
    ended(notice) {
      const r = this.rooms.get(notice.room);
      if (!r || r.gone) return;
      r.gone = true;
      for (const [clientId, p] of this.pending) if (p.room === notice.room) this.pending.delete(clientId);
      this.toRoom(notice.room, { t: 'left', room: notice.room, reason: notice.reason });
      if (r.conn.rooms.delete(notice.room) && !r.conn.rooms.size) this.dropped(r.conn);
    }

    state(conn, state, text, again = false) {
      if (conn.state === state && conn.text === text && !again) return;
      conn.state = state;
      conn.text = text;
      for (const room of conn.rooms) this.toRoom(room, { t: 'state', room, state, text, again });
    }

    say(tab, room, text, clientId) {
      const r = this.rooms.get(room);
      if (!r || r.gone) {
        this.out.tab(tab, { t: 'nack', client_id: clientId, reason: 'you left the room' });
        return;
      }
      if (!this.pending.has(clientId)) this.pending.set(clientId, { tab, room, text, tries: 0 });
      r.conn.say(room, text, clientId);
    }

    acked(clientId, id) {
      const p = this.pending.get(clientId);
      if (!p) return;
      this.pending.delete(clientId);
      this.out.tab(p.tab, { t: 'ack', client_id: clientId, id });
    }

    refused(clientId, reason) {
      const p = this.pending.get(clientId);
      if (!p) return;
      this.pending.delete(clientId);
      this.out.tab(p.tab, { t: 'nack', client_id: clientId, reason });
    }
  }

  // --- the connections: one per technique (and per maxRooms rooms) ----------------------

  class Conn {
    constructor(hub) {
      this.hub = hub;
      this.rooms = new Set();
      this.state = 'connecting';
      this.text = 'connecting…';
      this.attempt = 0;
      this.timer = 0;
      this.opened = false;
      this.stopped = false;
    }

    // Its rooms changed: open again with them (at once the first time, else soon, so that
    // several tabs opening together make one reconnect).
    changed() {
      if (this.stopped) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.reopen(), this.opened ? 50 : 0);
    }

    reopen() {
      this.timer = 0;
      this.close();
      if (this.stopped || !this.rooms.size) return;
      this.opened = true;
      this.open();
    }

    // After a failure: again, later, from the rooms' cursors.
    retry(text = 'reconnecting…') {
      if (this.stopped || !this.rooms.size) return;
      this.hub.state(this, 'reconnecting', text);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.reopen(), backoff(this.attempt++));
    }

    live() {
      const again = this.attempt > 0;
      this.attempt = 0;
      this.hub.state(this, 'live', 'connected', again);
    }

    stop() {
      this.stopped = true;
      clearTimeout(this.timer);
      this.close();
    }

    say() { /* only a WebSocket carries messages */ }
  }

  // Server-Sent Events: one stream; this reconnects itself, from its rooms' cursors.
  class SSEConn extends Conn {
    open() {
      const es = this.es = new EventSource(`/sse/room/events?${this.hub.query(this)}`);
      es.onopen = () => this.live();
      es.onmessage = (e) => this.hub.deliver([JSON.parse(e.data)]);
      es.addEventListener('cutoff', (e) => this.hub.state(this, 'reconnecting', JSON.parse(e.data).reason));
      es.addEventListener('left', (e) => this.hub.ended(JSON.parse(e.data)));
      es.onerror = () => {
        if (this.es !== es) return;
        es.close();
        this.es = null;
        this.retry();
      };
    }

    close() {
      if (this.es) this.es.close();
      this.es = null;
    }
  }

  // Long Polling: one poll at a time; a change of rooms aborts it and polls again.
  class PollConn extends Conn {
    open() {
      const run = this.run = {};
      this.poll(run);
    }

    async poll(run) {
      while (this.run === run && this.rooms.size) {
        // a poll is open (it may wait 25 s for news): connected, unless it failed before
        if (this.attempt === 0) this.hub.state(this, 'live', 'connected');
        const abort = this.abort = new AbortController();
        let items;
        try {
          const r = await fetch(`/longpolling/room/messages?${this.hub.query(this)}`,
            { cache: 'no-store', signal: abort.signal });
          if (r.status >= 400 && r.status < 500 && r.status !== 429) {
            const body = await r.json();
            if (this.run === run) this.hub.state(this, 'error', body.reason);
            return;
          }
          if (!r.ok) throw new Error(`error ${r.status}`);
          items = await r.json();
        } catch (_) {
          if (this.run !== run) return;
          this.hub.state(this, 'reconnecting', 'reconnecting…');
          await sleep(backoff(this.attempt++));
          continue;
        }
        // an answer to a poll of other rooms: its cursors did not move, the next gets it
        if (this.run !== run) return;
        if (this.attempt > 0) this.live();
        this.hub.deliver(items.filter((item) => item.type !== 'left'));
        for (const notice of items.filter((item) => item.type === 'left')) this.hub.ended(notice);
      }
    }

    close() {
      this.run = null;
      if (this.abort) this.abort.abort();
      this.abort = null;
    }
  }

  // WebSocket: one socket; messages name their room and are sent again after a reconnect
  // until acknowledged (the server stores a client_id once).
  class SocketConn extends Conn {
    open() {
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const ws = this.ws = new WebSocket(`${proto}//${location.host}/websocket/room/socket?${this.hub.query(this)}`);
      ws.onopen = () => {
        this.live();
        for (const [clientId, p] of this.hub.pending) if (this.rooms.has(p.room)) this.say(p.room, p.text, clientId);
      };
      ws.onmessage = (e) => {
        if (this.ws !== ws) return;
        const data = JSON.parse(e.data);
        if (data.type === 'ack') this.hub.acked(data.client_id, data.id);
        else if (data.type === 'error') this.error(data);
        else if (data.type === 'left') this.hub.ended(data);
        else this.hub.deliver([data]);
      };
      ws.onclose = (e) => {
        if (this.ws !== ws) return;
        this.ws = null;
        if (e.code === 4000 || e.code === 4009) {
          // no room left on it (each ended with its notice) or, refused whole, all of them
          for (const room of [...this.rooms]) this.hub.ended({ room, reason: e.reason || 'disconnected' });
          return;
        }
        this.retry(e.reason ? `reconnecting: ${e.reason}` : 'reconnecting…');
      };
    }

    error(data) {
      const p = data.client_id ? this.hub.pending.get(data.client_id) : null;
      if (!p) {
        for (const room of this.rooms) this.hub.toRoom(room, { t: 'error', room, reason: data.reason });
        return;
      }
      // Worth the same message again, with the same client_id (stored once whatever
      // happened): the rate allows it later; a server that lost this socket's presence
      // (a restart, an outage) has it back within its heartbeat.
      const again = data.error === 'rate_limited'
        || ((data.error === 'not_member' || data.error === 'unavailable') && ++p.tries <= 10);
      if (!again) {
        this.hub.refused(data.client_id, data.reason);
        return;
      }
      setTimeout(() => {
        if (this.hub.pending.get(data.client_id) === p) this.say(p.room, p.text, data.client_id);
      }, (data.retry_after || 2) * 1000);
    }

    say(room, text, clientId) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ room, text, client_id: clientId }));
      }
    }

    close() {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000);
    }
  }

  const TRANSPORTS = { sse: SSEConn, longpolling: PollConn, websocket: SocketConn };

  // --- in a SharedWorker: a hub per technique for every tab of the browser ---------------

  if (typeof SharedWorkerGlobalScope !== 'undefined' && self instanceof SharedWorkerGlobalScope) {
    const ports = new Map(); // tab -> MessagePort
    const send = (tab, msg) => {
      const port = ports.get(tab);
      if (port) port.postMessage({ ...msg, to: tab });
    };
    const out = { room: (tabs, msg) => { for (const tab of tabs) send(tab, msg); }, tab: send };
    const hubs = new Map(); // technique -> Hub
    function hubOf(technique) {
      if (!hubs.has(technique)) hubs.set(technique, new Hub(technique, out));
      return hubs.get(technique);
    }
    const watched = new Set();
    self.onconnect = (e) => {
      const port = e.ports[0];
      port.onmessage = (m) => {
        const msg = m.data;
        if (!msg || !TRANSPORTS[msg.technique]) return;
        const hub = hubOf(msg.technique);
        if (msg.t === 'attach') {
          ports.set(msg.tab, port);
          // A tab holds a lock of its own while it lives: granted here, it has gone
          // (closed, crashed, navigated away without a word).
          if (self.navigator.locks && !watched.has(msg.tab)) {
            watched.add(msg.tab);
            navigator.locks.request(TAB_LOCK + msg.tab, () => {
              watched.delete(msg.tab);
              ports.delete(msg.tab);
              for (const h of hubs.values()) h.detach(msg.tab);
            });
          }
        }
        hub.handle(msg);
        if (msg.t === 'detach') ports.delete(msg.tab);
      };
    };
    return;
  }

  // --- in a room page ------------------------------------------------------------------

  if (typeof Chat === 'undefined' || !document.currentScript) return;
  const SCRIPT = document.currentScript.src;
  const MAX_ROOMS = Number(document.currentScript.dataset.maxRooms) || 32;

  // Attach this page to the hub of its technique; answers {say(text, clientId)}.
  function connect() {
    const technique = Chat.technique;
    const room = Chat.room;
    const tab = newId();
    const says = new Map(); // client_id -> {text, resolve, reject}
    let post = null; // sends a message to the hub
    let hubId = null;
    // The hub that answered this tab's current attach: the room's news counts from it
    // alone, and only once it answered (null until then).
    let from = null;
    let ready = false; // this tab's lock is held (or there are no locks)
    let stopped = false; // its room ended: no more events, no attach
    let cursor = null; // the cursor of its last attach
    let round = 0; // counts attaches: a catch-up of an earlier one is void
    let syncing = null; // while catching up: the events the hub passed on meanwhile
    let waitFor = null; // the id of the newest event read; shared ones up to it are skipped

    function attach() {
      if (!ready || stopped || Chat.leaving) return;
      round++;
      from = null;
      syncing = null;
      waitFor = null;
      cursor = Chat.lastId;
      post({ t: 'attach', technique, tab, room, cursor, round, maxRooms: MAX_ROOMS });
    }

    function receive(msg) {
      if (!msg || (msg.to !== undefined && msg.to !== tab)) return;
      if (msg.room !== undefined && msg.room !== room) return;
      // A leader relays to every tab, this one too before its attach was answered (its
      // lock not granted yet, or a new leader it has not attached to yet). What came
      // before the answer is not this tab's: the answer's position covers it (the
      // catch-up reads it from this tab's own cursor). Taken, it would move that cursor
      // past events this tab never showed.
      if (ROOM_NEWS.has(msg.t) && msg.hub !== from) return;
      switch (msg.t) {
        case 'hello':
          // a new leader: attach to it
          if (msg.hub !== hubId) attach();
          break;
        case 'attached':
          // the answer to an attach that another followed: that one's answer counts
          if (msg.round !== round) break;
          hubId = from = msg.hub;
          if (!stopped) Chat.status(msg.state, msg.text);
          if (msg.cur !== cursor) catchUp(msg.cur);
          for (const [clientId, s] of says) post({ t: 'say', technique, tab, room, text: s.text, client_id: clientId });
          break;
        case 'events':
          if (!stopped) take(msg.events);
          break;
        case 'state':
          if (stopped) break;
          Chat.status(msg.state, msg.text);
          if (msg.again) Chat.refreshMembers();
          break;
        case 'left':
          // this session left the room (maybe in another tab): stop, do not rejoin
          stopped = true;
          Chat.status('error', msg.reason);
          post({ t: 'detach', technique, tab });
          for (const s of says.values()) s.reject(new Error(msg.reason));
          says.clear();
          break;
        case 'error':
          Chat.showError(msg.reason);
          break;
        case 'ack':
        case 'nack': {
          const s = says.get(msg.client_id);
          if (!s) break;
          says.delete(msg.client_id);
          if (msg.t === 'ack') s.resolve(msg);
          else s.reject(new Error(msg.reason));
          break;
        }
        default:
      }
    }

    function take(events) {
      if (syncing) {
        syncing.push(...events);
        return;
      }
      if (waitFor !== null) {
        const i = events.findIndex((ev) => ev.type === 'reset' || ev.id === waitFor);
        if (i < 0) return;
        // from a reset on, the stream starts afresh: take it all (the page shows a notice,
        // and nothing it shows already twice)
        events = events.slice(events[i].type === 'reset' ? i : i + 1);
        waitFor = null;
      }
      if (events.length) Chat.handle(events);
    }

    // The hub's position in this room (`cur`) is not this page's: read what the page
    // lacks, then take the shared events after the newest read.
    async function catchUp(cur) {
      const mine = round;
      const buffer = syncing = [];
      let newest;
      for (let attempt = 0; ; attempt++) {
        try {
          newest = await readAfter(cursor, () => round === mine);
          break;
        } catch (_) {
          if (round !== mine) return;
          await sleep(backoff(attempt));
        }
      }
      if (round !== mine || syncing !== buffer) return;
      syncing = null;
      waitFor = newest === cur ? null : newest;
      take(buffer);
    }

    // The events after `after` from the room's history, handed to the page; answers the
    // id of the newest event there is (null when the room holds none).
    async function readAfter(after, current) {
      let events = [];
      let newest = null;
      let before = null;
      let found = after === null;
      for (let page = 0; page < 100 && current(); page++) {
        const q = new URLSearchParams({ limit: String(HISTORY_PAGE) });
        if (before) q.set('before', before);
        const r = await fetch(`/api/rooms/${encodeURIComponent(room)}/history?${q}`, { cache: 'no-store' });
        if (!r.ok) throw new Error(`error ${r.status}`);
        const body = await r.json();
        if (page === 0 && body.events.length) newest = body.events[body.events.length - 1].id;
        events = body.events.concat(events);
        if (found) break;
        const i = events.findIndex((ev) => ev.id === after);
        if (i >= 0) {
          events = events.slice(i + 1);
          found = true;
          break;
        }
        if (body.events.length < HISTORY_PAGE || !body.before) break;
        before = body.before;
      }
      if (!current()) return null;
      // not kept any more (or from a stream that was lost): say so, as a reset does
      if (!found) events.unshift({ type: 'reset', room, id: events.length ? events[0].id : null });
      if (events.length) Chat.handle(events);
      return newest;
    }

    // This tab's own lock, held while it lives: the hub learns from it that the tab went.
    const held = navigator.locks
      ? new Promise((resolve) => {
        navigator.locks.request(TAB_LOCK + tab, () => { resolve(); return forever(); });
      })
      : Promise.resolve();
    held.then(() => { ready = true; attach(); });
    addEventListener('pagehide', () => post({ t: 'detach', technique, tab }));
    addEventListener('pageshow', (e) => { if (e.persisted) attach(); });

    function viaWorker() {
      const worker = new SharedWorker(SCRIPT, { name: 'chatroom' });
      worker.port.onmessage = (e) => receive(e.data);
      // a worker that cannot start: share without it
      worker.onerror = () => { if (hubId === null) withoutWorker(); };
      post = (msg) => worker.port.postMessage(msg);
      Chat.root.dataset.share = 'worker';
    }

    function viaLeader() {
      const up = `chatroom-${technique}-up`;
      const down = `chatroom-${technique}-down`;
      const toHub = new BroadcastChannel(up);
      new BroadcastChannel(down).onmessage = (e) => receive(e.data);
      post = (msg) => toHub.postMessage(msg);
      Chat.root.dataset.share = 'channel';
      attach();
      // The first tab in line leads, until it goes; then the next.
      navigator.locks.request(`chatroom-leader-${technique}`, () => {
        const out = new BroadcastChannel(down);
        const hub = new Hub(technique, {
          room: (tabs, msg) => out.postMessage(msg),
          tab: (t, msg) => out.postMessage({ ...msg, to: t }),
        });
        const watched = new Set();
        new BroadcastChannel(up).onmessage = (e) => {
          const msg = e.data;
          if (msg.t === 'attach' && !watched.has(msg.tab)) {
            watched.add(msg.tab);
            navigator.locks.request(TAB_LOCK + msg.tab, () => { watched.delete(msg.tab); hub.detach(msg.tab); });
          }
          hub.handle(msg);
        };
        Chat.root.dataset.leader = 'true';
        out.postMessage({ t: 'hello', hub: hub.id });
        return forever();
      });
    }

    function alone() {
      const hub = new Hub(technique, {
        room: (tabs, msg) => queueMicrotask(() => receive(msg)),
        tab: (t, msg) => queueMicrotask(() => receive({ ...msg, to: t })),
      });
      post = (msg) => hub.handle(msg);
      Chat.root.dataset.share = 'tab';
      attach();
    }

    function withoutWorker() {
      if (typeof BroadcastChannel === 'function' && navigator.locks) viaLeader();
      else alone();
    }

    post = () => {};
    if (typeof SharedWorker === 'function') {
      try {
        viaWorker();
      } catch (_) {
        withoutWorker();
      }
    } else {
      withoutWorker();
    }

    return {
      // WebSocket pages: a message through the shared socket, answered when stored.
      say(text, clientId) {
        return new Promise((resolve, reject) => {
          if (stopped) {
            reject(new Error('you left the room'));
            return;
          }
          says.set(clientId, { text, resolve, reject });
          post({ t: 'say', technique, tab, room, text, client_id: clientId });
        });
      },
    };
  }

  self.Share = { connect };
})();
