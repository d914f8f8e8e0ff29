'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { loadKeySet, verifyToken } = require('../src/jwt.js');

function es256Key(kid) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { kid, privateKey, jwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256' } };
}

function sign(key, claims) {
  const enc = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const input = `${enc({ alg: 'ES256', typ: 'JWT', kid: key.kid })}.${enc(claims)}`;
  const sig = crypto.sign('sha256', Buffer.from(input), {
    key: key.privateKey,
    dsaEncoding: 'ieee-p1363',
  });
  return `${input}.${sig.toString('base64url')}`;
}

test('a token is verified by the key its kid names, and only by a key of the set', () => {
  const current = es256Key('new');
  const previous = es256Key('old');
  const removed = es256Key('gone');
  const keys = loadKeySet({ keys: [current.jwk, previous.jwk] });
  const exp = Date.now() / 1000 + 60;
  assert.equal(verifyToken(sign(current, { sub: 'a', exp }), keys).ok, true);
  assert.equal(verifyToken(sign(previous, { sub: 'a', exp }), keys).kid, 'old');
  assert.equal(verifyToken(sign(removed, { sub: 'a', exp }), keys).reason, 'unknown kid');
  // a key claiming another's kid does not verify
  const forged = sign({ ...removed, kid: 'new' }, { sub: 'a', exp });
  assert.equal(verifyToken(forged, keys).reason, 'bad signature');
  assert.equal(verifyToken(sign(current, { sub: 'a', exp: 1 }), keys).reason, 'expired');
  assert.equal(verifyToken('not-a-jwt', keys).reason, 'malformed token');
});
