// qdup_client.js - a qdup-daemon client for Node.js, standard library only.
//
// Copy this one file into your project and require it. The daemon speaks one JSON
// object per line each way over a Unix socket (see `man qdup-protocol`) and answers a
// connection's requests in order, so the client keeps one connection open, writes each
// request at once and resolves the calls' promises in the order the replies come. A
// reply with "ok": false rejects with a QdupError whose code is the daemon's stable
// code ("not_found", "duplicate_id", "busy", ...); a connection that fails or a reply
// that does not arrive within the timeout rejects every waiting call with the code
// "connection" or "timeout", and the connection is dropped (the next call reconnects).
//
//   const { Client } = require('./qdup_client');
//   const qdup = new Client('/run/qdup/qdup.sock');
//   const { duplicates } = await qdup.check('post-42', 'How do I learn Python quickly?');
//   if (duplicates.length) console.log('possible duplicate of', duplicates[0].id);
//   qdup.close();
'use strict';
const net = require('net');

// An error reply of the daemon (code is its "code"), or "connection"/"timeout".
class QdupError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'QdupError';
    this.code = code;
  }
}

class Client {
  constructor(path = '/run/qdup/qdup.sock', { timeout = 10000 } = {}) {
    this.path = path;
    this.timeout = timeout; // milliseconds a reply may take
    this._sock = null;
    this._buf = '';
    this._waiting = []; // {resolve, reject} per request sent, in order
    this._timer = null;
  }

  close() {
    this._drop(new QdupError('connection', 'client closed'));
  }

  // Rejects every waiting call with err and forgets the connection.
  _drop(err) {
    if (this._sock) this._sock.destroy();
    this._sock = null;
    this._buf = '';
    clearTimeout(this._timer);
    this._timer = null;
    const waiting = this._waiting;
    this._waiting = [];
    for (const w of waiting) w.reject(err);
  }

  // (Re)arms the timeout while replies are owed.
  _arm() {
    clearTimeout(this._timer);
    this._timer = null;
    if (this._waiting.length)
      this._timer = setTimeout(() => this._drop(new QdupError(
        'timeout', `no reply from ${this.path} within ${this.timeout} ms`)), this.timeout);
  }

  _connect() {
    const sock = net.createConnection(this.path);
    sock.setEncoding('utf8');
    sock.on('data', (chunk) => {
      this._buf += chunk;
      let nl;
      while ((nl = this._buf.indexOf('\n')) >= 0) {
        const line = this._buf.slice(0, nl);
        this._buf = this._buf.slice(nl + 1);
        const w = this._waiting.shift();
        if (!w) return this._drop(new QdupError('protocol', 'reply to no request'));
        let obj;
        try {
          obj = JSON.parse(line);
        } catch (e) {
          w.reject(new QdupError('protocol', `reply is not JSON: ${e.message}`));
          return this._drop(new QdupError('protocol', 'connection dropped'));
        }
        if (obj.ok) w.resolve(obj);
        else w.reject(new QdupError(obj.error?.code ?? 'internal', obj.error?.message ?? ''));
      }
      this._arm();
    });
    sock.on('error', (e) => this._drop(new QdupError('connection', `${this.path}: ${e.message}`)));
    sock.on('close', () => {
      if (this._sock === sock)
        this._drop(new QdupError('connection', `${this.path}: the daemon closed the connection`));
    });
    this._sock = sock;
  }

  // Sends one request object; resolves to the reply object (its ok is true).
  request(req) {
    return new Promise((resolve, reject) => {
      if (!this._sock) this._connect();
      this._waiting.push({ resolve, reject });
      if (this._waiting.length === 1) this._arm();
      this._sock.write(JSON.stringify(req) + '\n');
    });
  }

  static _opts(req, { k, minScore } = {}) {
    if (k !== undefined) req.k = k;
    if (minScore !== undefined) req.min_score = minScore;
    return req;
  }

  // The stored questions most like text: [{id, text, score}, ...].
  async query(text, opts) {
    return (await this.request(Client._opts({ op: 'query', text }, opts))).results;
  }

  // One result list per text, searched in one batch.
  async queryMany(texts, opts) {
    return (await this.request(Client._opts({ op: 'query', texts: [...texts] }, opts))).results;
  }

  // Duplicates of a new post, then stores it unless opts.store is false:
  // {duplicates: [...], stored: bool, ...}.
  async check(id, text, opts = {}) {
    const req = Client._opts({ op: 'check', id, text }, opts);
    if (opts.store === false) req.store = false;
    return this.request(req);
  }

  // Stores a question; resolves to its row number.
  async add(id, text) {
    return (await this.request({ op: 'add', id, text })).row;
  }

  async remove(id) {
    await this.request({ op: 'remove', id });
  }

  // {id, text, row, created}; rejects with QdupError "not_found" if there is none.
  async get(id) {
    return this.request({ op: 'get', id });
  }

  async stats() {
    return (await this.request({ op: 'stats' })).stats;
  }

  async ping() {
    await this.request({ op: 'ping' });
  }
}

module.exports = { Client, QdupError };
