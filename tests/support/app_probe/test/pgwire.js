'use strict';
// Just enough of PostgreSQL's wire protocol (v3) for the probe: startup, SCRAM-SHA-256 or
// trust, simple queries returning rows of text. No dependency, so npm ci needs no registry.
const crypto = require('node:crypto');
const net = require('node:net');

function message(type, body) {
  const head = Buffer.alloc(type ? 5 : 4);
  if (type) head.write(type);
  head.writeInt32BE(body.length + 4, type ? 1 : 0);
  return Buffer.concat([head, body]);
}

const cstr = (s) => Buffer.from(`${s}\0`);
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();
const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const xor = (a, b) => Buffer.from(a.map((x, i) => x ^ b[i]));

function query(url, sql) {
  const u = new URL(url);
  const user = decodeURIComponent(u.username);
  const password = decodeURIComponent(u.password);
  const database = u.pathname.slice(1);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port || 5432) });
    socket.setTimeout(10000, () => reject(new Error('postgres timeout')));
    let buffer = Buffer.alloc(0);
    let clientFirstBare = '';
    let nonce = '';
    const rows = [];
    let error = null;
    socket.on('error', reject);
    socket.on('connect', () => {
      const params = Buffer.concat([cstr('user'), cstr(user), cstr('database'), cstr(database), cstr('')]);
      const version = Buffer.alloc(4);
      version.writeInt32BE(196608);
      socket.write(message('', Buffer.concat([version, params])));
    });
    socket.on('data', (data) => {
      buffer = Buffer.concat([buffer, data]);
      while (buffer.length >= 5) {
        const type = String.fromCharCode(buffer[0]);
        const length = buffer.readInt32BE(1);
        if (buffer.length < length + 1) break;
        const body = buffer.subarray(5, length + 1);
        buffer = buffer.subarray(length + 1);
        if (type === 'R') {
          const code = body.readInt32BE(0);
          if (code === 10) {
            nonce = crypto.randomBytes(18).toString('base64');
            clientFirstBare = `n=*,r=${nonce}`;
            const first = Buffer.from(`n,,${clientFirstBare}`);
            const len = Buffer.alloc(4);
            len.writeInt32BE(first.length);
            socket.write(message('p', Buffer.concat([cstr('SCRAM-SHA-256'), len, first])));
          } else if (code === 11) {
            const serverFirst = body.subarray(4).toString();
            const attrs = Object.fromEntries(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
            const salted = crypto.pbkdf2Sync(password, Buffer.from(attrs.s, 'base64'), Number(attrs.i), 32, 'sha256');
            const clientKey = hmac(salted, 'Client Key');
            const withoutProof = `c=biws,r=${attrs.r}`;
            const auth = `${clientFirstBare},${serverFirst},${withoutProof}`;
            const proof = xor(clientKey, hmac(sha256(clientKey), auth)).toString('base64');
            socket.write(message('p', Buffer.from(`${withoutProof},p=${proof}`)));
          } else if (code !== 0 && code !== 12) {
            reject(new Error(`unsupported authentication ${code}`));
          }
        } else if (type === 'Z') {
          if (!socket.sentQuery) {
            socket.sentQuery = true;
            socket.write(message('Q', cstr(sql)));
          } else {
            socket.end(message('X', Buffer.alloc(0)));
            if (error) reject(error);
            else resolve(rows);
          }
        } else if (type === 'D') {
          const row = [];
          let at = 2;
          for (let i = 0; i < body.readInt16BE(0); i++) {
            const n = body.readInt32BE(at);
            at += 4;
            row.push(n < 0 ? null : body.subarray(at, at + n).toString());
            at += Math.max(n, 0);
          }
          rows.push(row);
        } else if (type === 'E') {
          const fields = body.toString().split('\0');
          const text = (fields.find((f) => f.startsWith('M')) || 'Munknown').slice(1);
          error = new Error(text);
          if (!socket.sentQuery) reject(error);
        }
      }
    });
  });
}

module.exports = { query };
