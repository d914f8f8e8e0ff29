'use strict';
// JWT verification against a key set, by kid, with node's built-in crypto (no dependency).
// The key set is a JWKS ({"keys": [...]}) as twinme_ops writes it into the twinme-jwt-keys
// Secret: during a rotation's overlap it holds the new key and the previous one, and a token
// signed with either is accepted; a key removed from the set no longer verifies anything.
const crypto = require('node:crypto');
const fs = require('node:fs');

const ALGORITHMS = {
  ES256: { kty: 'EC', hash: 'sha256', dsaEncoding: 'ieee-p1363' },
  RS256: { kty: 'RSA', hash: 'sha256' },
};

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// kid -> { alg, key } for every usable key of a JWKS
function loadKeySet(jwks) {
  const keys = new Map();
  for (const jwk of (jwks && jwks.keys) || []) {
    const alg = ALGORITHMS[jwk.alg];
    if (!jwk.kid || !alg || jwk.kty !== alg.kty) continue;
    keys.set(jwk.kid, { alg: jwk.alg, key: crypto.createPublicKey({ key: jwk, format: 'jwk' }) });
  }
  return keys;
}

// the key set from TWINME_JWT_KEYS_FILE (the mounted Secret's jwks.json); empty without it
function keySetFromEnv(env = process.env) {
  const file = env.TWINME_JWT_KEYS_FILE;
  if (!file) return new Map();
  return loadKeySet(JSON.parse(fs.readFileSync(file, 'utf8')));
}

// { ok: true, kid, claims } or { ok: false, reason }
function verifyToken(token, keys, nowS = Date.now() / 1000) {
  const parts = String(token || '').split('.');
  if (parts.length !== 3) return { ok: false, reason: 'malformed token' };
  let header;
  let claims;
  try {
    header = b64urlJson(parts[0]);
    claims = b64urlJson(parts[1]);
  } catch {
    return { ok: false, reason: 'malformed token' };
  }
  const entry = keys.get(header.kid);
  if (!entry) return { ok: false, reason: 'unknown kid' };
  if (header.alg !== entry.alg) return { ok: false, reason: 'algorithm mismatch' };
  const alg = ALGORITHMS[entry.alg];
  const data = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  const key = alg.dsaEncoding ? { key: entry.key, dsaEncoding: alg.dsaEncoding } : entry.key;
  if (!crypto.verify(alg.hash, data, key, signature)) return { ok: false, reason: 'bad signature' };
  if (typeof claims.exp === 'number' && claims.exp <= nowS) return { ok: false, reason: 'expired' };
  if (typeof claims.nbf === 'number' && claims.nbf > nowS) return { ok: false, reason: 'not yet valid' };
  return { ok: true, kid: header.kid, claims };
}

module.exports = { loadKeySet, keySetFromEnv, verifyToken };
