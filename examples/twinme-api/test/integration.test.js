'use strict';
// Starts the real HTTP server on a free port and probes it like the deployment verification does.
const test = require('node:test');
const assert = require('node:assert/strict');
const { createServer } = require('../src/server.js');

async function withServer(options, fn) {
  const server = createServer(options);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    await fn(base);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

test('/health and /ready answer 200, /metrics counts requests', async () => {
  await withServer({}, async (base) => {
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const ready = await fetch(`${base}/ready`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { status: 'ready' });
    const metrics = await fetch(`${base}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.headers.get('content-type'), /^text\/plain/);
    assert.match(await metrics.text(), /twinme_http_requests_total\{route="\/health",status="200"\} 1/);
  });
});

test('/ready answers 503 while a dependency is down', async () => {
  await withServer({ ready: () => false }, async (base) => {
    assert.equal((await fetch(`${base}/ready`)).status, 503);
  });
});

test('unknown routes answer 404', async () => {
  await withServer({}, async (base) => {
    assert.equal((await fetch(`${base}/nope`)).status, 404);
  });
});
