'use strict';
// Minimal stand-in for the TwinMe IA API, used by the release pipeline's tests: the same probe
// endpoints as the real service (/health, /ready, /metrics) and no dependencies, so `npm ci`
// works without the network. /auth/check verifies a bearer JWT against the key set mounted from
// the twinme-jwt-keys Secret (TWINME_JWT_KEYS_FILE): the JWT key rotation checks it.
const http = require('node:http');
const { keySetFromEnv, verifyToken } = require('./jwt.js');

const startedAt = Date.now();

// Latency histogram buckets (seconds); 0.2 is the SLO's threshold (deploy/monitoring/slo_rules.yml)
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5];

function createMetrics() {
  return { requests: new Map(), buckets: BUCKETS.map(() => 0), count: 0, sum: 0 };
}

function observeDuration(metrics, seconds) {
  BUCKETS.forEach((le, i) => {
    if (seconds <= le) metrics.buckets[i] += 1;
  });
  metrics.count += 1;
  metrics.sum += seconds;
}

function countRequest(metrics, route, status) {
  const key = `${route}|${status}`;
  metrics.requests.set(key, (metrics.requests.get(key) || 0) + 1);
}

// Prometheus text exposition format 0.0.4
function renderMetrics(metrics) {
  const lines = [
    '# HELP twinme_http_requests_total HTTP requests served, by route and status.',
    '# TYPE twinme_http_requests_total counter',
  ];
  for (const [key, count] of metrics.requests) {
    const [route, status] = key.split('|');
    lines.push(`twinme_http_requests_total{route="${route}",status="${status}"} ${count}`);
  }
  // the same counts under the names the SLO rules and dashboard read (status: the HTTP code)
  lines.push('# HELP http_requests_total HTTP requests served.', '# TYPE http_requests_total counter');
  for (const [key, count] of metrics.requests) {
    const [route, status] = key.split('|');
    lines.push(`http_requests_total{route="${route}",status="${status}"} ${count}`);
  }
  lines.push(
    '# HELP http_request_duration_seconds Time to answer HTTP requests.',
    '# TYPE http_request_duration_seconds histogram',
    ...BUCKETS.map((le, i) => `http_request_duration_seconds_bucket{le="${le}"} ${metrics.buckets[i]}`),
    `http_request_duration_seconds_bucket{le="+Inf"} ${metrics.count}`,
    `http_request_duration_seconds_sum ${metrics.sum}`,
    `http_request_duration_seconds_count ${metrics.count}`,
  );
  lines.push(
    '# HELP twinme_process_uptime_seconds Seconds since the process started.',
    '# TYPE twinme_process_uptime_seconds gauge',
    `twinme_process_uptime_seconds ${((Date.now() - startedAt) / 1000).toFixed(3)}`,
  );
  return lines.join('\n') + '\n';
}

function createServer(options = {}) {
  const metrics = createMetrics();
  // ready() lets a caller (or a test) report dependencies that are not reachable yet
  const ready = options.ready || (() => true);
  // the JWT key set (kid -> key), loaded once at start: a new set comes with new pods
  const keys = options.keys || new Map();
  const server = http.createServer((req, res) => {
    const start = process.hrtime.bigint();
    res.on('finish', () => observeDuration(metrics, Number(process.hrtime.bigint() - start) / 1e9));
    const route = (req.url || '/').split('?')[0];
    let status = 200;
    let body;
    let type = 'application/json';
    if (req.method !== 'GET') {
      status = 405;
      body = JSON.stringify({ error: 'method not allowed' });
    } else if (route === '/health') {
      body = JSON.stringify({ status: 'ok', uptime_s: (Date.now() - startedAt) / 1000 });
    } else if (route === '/ready') {
      const ok = ready();
      status = ok ? 200 : 503;
      body = JSON.stringify({ status: ok ? 'ready' : 'not ready' });
    } else if (route === '/auth/check') {
      const auth = req.headers.authorization || '';
      const result = auth.startsWith('Bearer ')
        ? verifyToken(auth.slice(7), keys)
        : { ok: false, reason: 'no bearer token' };
      status = result.ok ? 200 : 401;
      body = JSON.stringify(
        result.ok ? { status: 'ok', kid: result.kid, sub: result.claims.sub } : { error: result.reason },
      );
    } else if (route === '/metrics') {
      type = 'text/plain; version=0.0.4; charset=utf-8';
      countRequest(metrics, route, status);
      body = renderMetrics(metrics);
    } else {
      status = 404;
      body = JSON.stringify({ error: 'not found' });
    }
    if (route !== '/metrics') countRequest(metrics, route, status);
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
  return server;
}

module.exports = { createServer, renderMetrics, createMetrics, countRequest, observeDuration };

if (require.main === module) {
  const port = Number(process.env.PORT || 3000);
  const server = createServer({ keys: keySetFromEnv() });
  // HOST: the address to bind (tests bind 127.0.0.1); unset, every interface as in a pod
  server.listen(port, process.env.HOST, () => console.log(`twinme-api listening on :${port}`));
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
