'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { createMetrics, countRequest, renderMetrics } = require('../src/server.js');

test('metrics are rendered in the Prometheus text format', () => {
  const metrics = createMetrics();
  countRequest(metrics, '/health', 200);
  countRequest(metrics, '/health', 200);
  const text = renderMetrics(metrics);
  assert.match(text, /^# TYPE twinme_http_requests_total counter$/m);
  assert.match(text, /^twinme_http_requests_total\{route="\/health",status="200"\} 2$/m);
  assert.match(text, /^twinme_process_uptime_seconds \d+(\.\d+)?$/m);
  assert.ok(text.endsWith('\n'));
});
