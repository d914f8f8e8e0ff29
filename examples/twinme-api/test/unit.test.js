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

test('requests are counted by status and timed in a histogram with the SLO bucket', () => {
  const { observeDuration } = require('../src/server.js');
  const metrics = createMetrics();
  countRequest(metrics, '/health', 500);
  observeDuration(metrics, 0.15);
  observeDuration(metrics, 0.3);
  const text = renderMetrics(metrics);
  assert.match(text, /^http_requests_total\{route="\/health",status="500"\} 1$/m);
  assert.match(text, /^# TYPE http_request_duration_seconds histogram$/m);
  assert.match(text, /^http_request_duration_seconds_bucket\{le="0.2"\} 1$/m);
  assert.match(text, /^http_request_duration_seconds_bucket\{le="\+Inf"\} 2$/m);
  assert.match(text, /^http_request_duration_seconds_count 2$/m);
});
