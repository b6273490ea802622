<?php
// Tests tools/clients/qdup_client.php against a real qdup-daemon (tests/clients/run.sh
// starts it on a store holding q1, q2, q3 of tests/clients/questions.tsv).
// usage: php test_client.php SOCKET CLIENT_DIR TMPDIR
[$_, $sockPath, $clientDir, $tmp] = $argv;
require "$clientDir/qdup_client.php";

$failures = 0;
function check(bool $cond, string $what): void
{
    global $failures;
    echo ($cond ? 'ok   ' : 'FAIL ') . "$what\n";
    if (!$cond) {
        $failures++;
    }
}
function raises(string $code, callable $fn): bool
{
    try {
        $fn();
    } catch (QdupException $e) {
        return $e->qdupCode === $code;
    }
    return false;
}

$c = new QdupClient($sockPath, 10);
$c->ping();
check(true, 'ping');

$hits = $c->query('How do I learn Python quickly?', 3);
check(count($hits) === 3 && $hits[0]['id'] === 'q1' && $hits[0]['score'] > 0.99,
      'query: the stored question itself comes first with score 1');
check(count($c->query('How do I learn Python quickly?', 3, 0.999)) === 1,
      'query: min_score cuts the list');

$text = "naïve café, \"quotes\", back\\slash\nand a newline 🙂";
$row = $c->add('c1', $text);
check(is_int($row), 'add returns the row');
$got = $c->get('c1');
check($got['id'] === 'c1' && $got['text'] === $text, 'get returns the exact text (escaping, UTF-8)');
check(raises('duplicate_id', fn() => $c->add('c1', 'another text')), 'add twice: duplicate_id');

$r = $c->check('c2', 'What is the capital of France', null, 0.9);
check($r['stored'] && $r['duplicates'] && $r['duplicates'][0]['id'] === 'q2',
      'check finds the duplicate and stores the post');
check($c->get('c2')['id'] === 'c2', 'the checked post is stored');
$r = $c->check('c3', 'How can I bake bread at home', store: false);
check(!$r['stored'] && $r['duplicates'][0]['id'] === 'q3', 'check with store: false');
check(raises('not_found', fn() => $c->get('c3')), '... and does not store');
$r = $c->check('c4', 'How can I bake bread at home?');
check($r['stored'] && $r['duplicates'][0]['id'] === 'q3' && $r['duplicates'][0]['p_duplicate'] == 1 &&
      $r['duplicate'] === true, 'check of a stored text: a repost, stored, the original with p_duplicate 1');
$c->remove('c4');

$c->remove('c1');
check(raises('not_found', fn() => $c->get('c1')), 'remove, then get: not_found');
check(raises('not_found', fn() => $c->remove('c1')), 'remove twice: not_found');

$many = $c->queryMany(['How do I learn Python quickly?', 'How can I bake bread at home?'], 1);
check(array_map(fn($m) => $m[0]['id'], $many) === ['q1', 'q3'], 'queryMany: one list per text');

$st = $c->stats();
check($st['questions'] === 4 && $st['requests']['add'] >= 2, 'stats counts questions and requests');
check(raises('bad_request', fn() => $c->request(['op' => 'query', 'text' => 'x', 'k' => 0])),
      'a bad request throws bad_request; the connection stays usable');
$c->ping();
$c->close();

// A daemon that accepts and never answers: the call times out.
$silentPath = "$tmp/silent.sock";
$srv = stream_socket_server("unix://$silentPath");
check(raises('timeout', fn() => (new QdupClient($silentPath, 0.2))->ping()), 'timeout');
fclose($srv);
check(raises('connection', fn() => (new QdupClient("$tmp/none.sock"))->ping()),
      'no daemon: connection error');

echo "$failures failure(s)\n";
exit($failures ? 1 : 0);
