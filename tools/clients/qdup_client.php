<?php
/*
 * qdup_client.php - a qdup-daemon client for PHP 8, standard library only.
 *
 * Copy this one file into your forum's code and require it. The daemon speaks one JSON
 * object per line each way over a Unix socket (see `man qdup-protocol`); the client
 * keeps one connection open, sends one request at a time and waits for its reply, with
 * a timeout on every step. A reply with "ok": false throws QdupException whose
 * qdupCode is the daemon's stable code ("not_found", "duplicate_id", "busy", ...); a
 * connection that fails or a reply that does not arrive in time throws it with the code
 * "connection" or "timeout", and the connection is dropped (the next call reconnects).
 *
 *   require 'qdup_client.php';
 *   $qdup = new QdupClient('/run/qdup/qdup.sock');
 *   $dups = $qdup->check('post-42', 'How do I learn Python quickly?')['duplicates'];
 *   if ($dups)
 *       echo "possible duplicate of {$dups[0]['id']} ({$dups[0]['score']})\n";
 */

class QdupException extends RuntimeException
{
    /** The daemon's error code, or "connection", "timeout", "protocol". */
    public string $qdupCode;

    public function __construct(string $code, string $message)
    {
        parent::__construct("$code: $message");
        $this->qdupCode = $code;
    }
}

class QdupClient
{
    private $sock = null;

    public function __construct(private string $path = '/run/qdup/qdup.sock',
                                private float $timeout = 10.0)
    {
    }

    public function __destruct()
    {
        $this->close();
    }

    public function close(): void
    {
        if ($this->sock) {
            fclose($this->sock);
        }
        $this->sock = null;
    }

    private function fail(string $code, string $message): never
    {
        $this->close();
        throw new QdupException($code, $message);
    }

    /** Sends one request array and returns the reply array (its "ok" is true). */
    public function request(array $req): array
    {
        $line = json_encode($req, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES
                                  | JSON_THROW_ON_ERROR) . "\n";
        if (!$this->sock) {
            $s = @stream_socket_client("unix://{$this->path}", $errno, $errstr, $this->timeout);
            if (!$s) {
                $this->fail('connection', "{$this->path}: $errstr");
            }
            $sec = (int)$this->timeout;
            stream_set_timeout($s, $sec, (int)(($this->timeout - $sec) * 1e6));
            $this->sock = $s;
        }
        for ($off = 0; $off < strlen($line); $off += $n) {
            $n = @fwrite($this->sock, substr($line, $off));
            if ($n === false || $n === 0) {
                if (stream_get_meta_data($this->sock)['timed_out']) {
                    $this->fail('timeout', "could not send to {$this->path} within {$this->timeout}s");
                }
                $this->fail('connection', "{$this->path}: write failed");
            }
        }
        $reply = fgets($this->sock);
        if ($reply === false || substr($reply, -1) !== "\n") {
            if (stream_get_meta_data($this->sock)['timed_out']) {
                $this->fail('timeout', "no reply from {$this->path} within {$this->timeout}s");
            }
            $this->fail('connection', "{$this->path}: the daemon closed the connection");
        }
        $obj = json_decode($reply, true);
        if (!is_array($obj)) {
            $this->fail('protocol', 'reply is not JSON: ' . json_last_error_msg());
        }
        if (empty($obj['ok'])) {
            $e = $obj['error'] ?? [];
            throw new QdupException($e['code'] ?? 'internal', $e['message'] ?? '');
        }
        return $obj;
    }

    private static function opts(array $req, ?int $k, ?float $minScore): array
    {
        if ($k !== null) {
            $req['k'] = $k;
        }
        if ($minScore !== null) {
            $req['min_score'] = $minScore;
        }
        return $req;
    }

    /** The stored questions most like $text: a list of ['id','text','score']. */
    public function query(string $text, ?int $k = null, ?float $minScore = null): array
    {
        return $this->request(self::opts(['op' => 'query', 'text' => $text], $k, $minScore))['results'];
    }

    /** One result list per text, searched in one batch. */
    public function queryMany(array $texts, ?int $k = null, ?float $minScore = null): array
    {
        return $this->request(self::opts(['op' => 'query', 'texts' => array_values($texts)],
                                         $k, $minScore))['results'];
    }

    /** Duplicates of a new post, then stores it unless $store is false:
     *  ['duplicates' => [...], 'stored' => bool, ...]. */
    public function check(string $id, string $text, ?int $k = null, ?float $minScore = null,
                          bool $store = true): array
    {
        $req = self::opts(['op' => 'check', 'id' => $id, 'text' => $text], $k, $minScore);
        if (!$store) {
            $req['store'] = false;
        }
        return $this->request($req);
    }

    /** Stores a question; returns its row number. */
    public function add(string $id, string $text): int
    {
        return $this->request(['op' => 'add', 'id' => $id, 'text' => $text])['row'];
    }

    public function remove(string $id): void
    {
        $this->request(['op' => 'remove', 'id' => $id]);
    }

    /** ['id','text','row','created']; QdupException "not_found" if there is none. */
    public function get(string $id): array
    {
        return $this->request(['op' => 'get', 'id' => $id]);
    }

    public function stats(): array
    {
        return $this->request(['op' => 'stats'])['stats'];
    }

    public function ping(): void
    {
        $this->request(['op' => 'ping']);
    }
}
