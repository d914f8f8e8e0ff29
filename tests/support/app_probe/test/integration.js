'use strict';
// The integration tests' part: the throwaway PostgreSQL and Redis the runner gives this commit,
// reached through DATABASE_URL and REDIS_URL with nothing but Node (a SCRAM-SHA-256 login and
// simple queries in test/pgwire.js, Redis's text protocol). Prints what it found; exits 1 if
// a server cannot be used.
const net = require('node:net');
const { query } = require('./pgwire.js');

function redisPing(url) {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port) }, () => {
      socket.write('*1\r\n$4\r\nPING\r\n');
    });
    socket.setTimeout(5000, () => reject(new Error('redis timeout')));
    socket.on('data', (data) => {
      socket.destroy();
      resolve(data.toString().trim());
    });
    socket.on('error', reject);
  });
}

(async () => {
  const url = process.env.DATABASE_URL;
  const [row] = await query(
    url,
    "SELECT current_user, current_database(), " +
      "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), " +
      "(SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension)",
  );
  console.log(`PG ${row.join(' ')}`);
  await query(url, 'CREATE TABLE embeddings (id int, v vector(3))');
  await query(url, "INSERT INTO embeddings VALUES (1, '[1,2,3]')");
  const [nearest] = await query(url, "SELECT id FROM embeddings ORDER BY v <-> '[1,2,4]' LIMIT 1");
  console.log(`PG vector-nearest ${nearest[0]}`);
  try {
    await query(url, "COPY (SELECT 1) TO PROGRAM 'id'");
    console.log('PG copy-to-program ALLOWED');
  } catch (err) {
    console.log(`PG copy-to-program REFUSED ${err.message}`);
  }
  console.log(`REDIS ${await redisPing(process.env.REDIS_URL)}`);
})().catch((err) => {
  console.log(`integration FAILED: ${err.message}`);
  process.exit(1);
});
