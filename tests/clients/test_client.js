// Tests tools/clients/qdup_client.js against a real qdup-daemon (tests/clients/run.sh
// starts it on a store holding q1, q2, q3 of tests/clients/questions.tsv).
// usage: node test_client.js SOCKET CLIENT_DIR TMPDIR
'use strict';
const net = require('net');
const path = require('path');
const [sockPath, clientDir, tmp] = process.argv.slice(2);
const { Client, QdupError } = require(path.resolve(clientDir, 'qdup_client.js'));

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures++;
}
async function raises(code, fn) {
  try {
    await fn();
  } catch (e) {
    return e instanceof QdupError && e.code === code;
  }
  return false;
}

async function main() {
  const c = new Client(sockPath, { timeout: 10000 });
  await c.ping();
  check(true, 'ping');

  const hits = await c.query('How do I learn Python quickly?', { k: 3 });
  check(hits.length === 3 && hits[0].id === 'q1' && hits[0].score > 0.99,
        'query: the stored question itself comes first with score 1');
  check((await c.query('How do I learn Python quickly?', { k: 3, minScore: 0.999 })).length === 1,
        'query: min_score cuts the list');

  const text = 'naïve café, "quotes", back\\slash\nand a newline 🙂';
  const row = await c.add('c1', text);
  check(Number.isInteger(row), 'add returns the row');
  const got = await c.get('c1');
  check(got.id === 'c1' && got.text === text, 'get returns the exact text (escaping, UTF-8)');
  check(await raises('duplicate_id', () => c.add('c1', 'another text')), 'add twice: duplicate_id');

  let r = await c.check('c2', 'What is the capital of France', { minScore: 0.9 });
  check(r.stored && r.duplicates.length > 0 && r.duplicates[0].id === 'q2',
        'check finds the duplicate and stores the post');
  check((await c.get('c2')).id === 'c2', 'the checked post is stored');
  r = await c.check('c3', 'How can I bake bread at home', { store: false });
  check(!r.stored && r.duplicates[0].id === 'q3', 'check with store: false');
  check(await raises('not_found', () => c.get('c3')), '... and does not store');
  r = await c.check('c4', 'How can I bake bread at home?');
  check(r.stored && r.duplicates[0].id === 'q3' && r.duplicates[0].p_duplicate === 1 &&
        r.duplicate === true, 'check of a stored text: a repost, stored, the original with p_duplicate 1');
  await c.remove('c4');

  await c.remove('c1');
  check(await raises('not_found', () => c.get('c1')), 'remove, then get: not_found');
  check(await raises('not_found', () => c.remove('c1')), 'remove twice: not_found');

  const many = await c.queryMany(['How do I learn Python quickly?', 'How can I bake bread at home?'], { k: 1 });
  check(JSON.stringify(many.map((m) => m[0].id)) === '["q1","q3"]', 'queryMany: one list per text');
  // Calls made together are answered in order on the one connection.
  const ids = await Promise.all(['c2', 'q1', 'q3'].map((id) => c.get(id).then((g) => g.id)));
  check(JSON.stringify(ids) === '["c2","q1","q3"]', 'concurrent calls get their own replies');

  const st = await c.stats();
  check(st.questions === 4 && st.requests.add >= 2, 'stats counts questions and requests');
  check(await raises('bad_request', () => c.request({ op: 'query', text: 'x', k: 0 })),
        'a bad request rejects with bad_request; the connection stays usable');
  await c.ping();
  c.close();

  // A daemon that accepts and never answers: the call times out.
  const silentPath = path.join(tmp, 'silent.sock');
  const srv = net.createServer(() => {});
  await new Promise((res) => srv.listen(silentPath, res));
  const slow = new Client(silentPath, { timeout: 200 });
  check(await raises('timeout', () => slow.ping()), 'timeout');
  slow.close();
  srv.close();
  check(await raises('connection', () => new Client(path.join(tmp, 'none.sock')).ping()),
        'no daemon: connection error');

  console.log(`${failures} failure(s)`);
  process.exit(failures ? 1 : 0);
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
