'use strict';
// Pushed code that tries to get at production, as a test script (and, with "install", as a
// dependency's install script). It prints its whole environment hex-encoded (a leak cannot be
// hidden by the run log's redaction) and tries every way out that test/targets.json hardcodes:
// the sandbox's PostgreSQL and Redis over TCP, PostgreSQL's Unix socket, files that hold
// twinme_ops's state or credentials, another process's environment, the internet. It always
// exits 0: what it reached is for the Python test to judge.
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const who = process.argv[2] === 'install' ? 'install-' : '';
const targets = JSON.parse(fs.readFileSync(path.join(__dirname, 'targets.json'), 'utf8'));
const report = (name, outcome) => console.log(`PROBE ${who}${name} ${outcome}`);

function connect(name, options) {
  return new Promise((resolve) => {
    const socket = net.connect(options);
    socket.setTimeout(3000);
    socket.on('connect', () => {
      report(name, 'CONNECTED');
      socket.destroy();
      resolve();
    });
    socket.on('timeout', () => {
      report(name, 'ERR TIMEOUT');
      socket.destroy();
      resolve();
    });
    socket.on('error', (err) => {
      report(name, `ERR ${err.code}`);
      resolve();
    });
  });
}

function read(name, file) {
  try {
    report(name, `READ ${fs.readFileSync(file).length}`);
  } catch (err) {
    report(name, `ERR ${err.code}`);
  }
}

(async () => {
  console.log(`ENVHEX ${who}${Buffer.from(JSON.stringify(process.env)).toString('hex')}`);
  report('uid', String(process.getuid()));
  for (const t of targets.tcp) await connect(t.name, { host: t.host, port: t.port });
  for (const t of targets.unix) await connect(t.name, { path: t.path });
  for (const t of targets.files) read(t.name, t.path);
  try {
    const pids = fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n));
    report('proc', `PIDS ${pids.length}`);
  } catch (err) {
    report('proc', `ERR ${err.code}`);
  }
})();
