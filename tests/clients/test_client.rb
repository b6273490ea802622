# Tests tools/clients/qdup_client.rb against a real qdup-daemon (tests/clients/run.sh
# starts it on a store holding q1, q2, q3 of tests/clients/questions.tsv).
# usage: ruby test_client.rb SOCKET CLIENT_DIR TMPDIR
sock_path, client_dir, tmp = ARGV
require File.join(client_dir, "qdup_client")

$failures = 0
def check(cond, what)
  puts "#{cond ? "ok  " : "FAIL"} #{what}"
  $failures += 1 unless cond
end

def raises(code)
  yield
  false
rescue Qdup::Error => e
  e.code == code
end

c = Qdup::Client.new(sock_path, timeout: 10)
c.ping
check(true, "ping")

hits = c.query("How do I learn Python quickly?", k: 3)
check(hits.size == 3 && hits[0]["id"] == "q1" && hits[0]["score"] > 0.99,
      "query: the stored question itself comes first with score 1")
check(c.query("How do I learn Python quickly?", k: 3, min_score: 0.999).size == 1,
      "query: min_score cuts the list")

text = "naïve café, \"quotes\", back\\slash\nand a newline 🙂"
row = c.add("c1", text)
check(row.is_a?(Integer), "add returns the row")
got = c.get("c1")
check(got["id"] == "c1" && got["text"] == text, "get returns the exact text (escaping, UTF-8)")
check(raises("duplicate_id") { c.add("c1", "another text") }, "add twice: duplicate_id")

r = c.check("c2", "What is the capital of France", min_score: 0.9)
check(r["stored"] && !r["duplicates"].empty? && r["duplicates"][0]["id"] == "q2",
      "check finds the duplicate and stores the post")
check(c.get("c2")["id"] == "c2", "the checked post is stored")
r = c.check("c3", "How can I bake bread at home", store: false)
check(!r["stored"] && r["duplicates"][0]["id"] == "q3", "check with store: false")
check(raises("not_found") { c.get("c3") }, "... and does not store")
r = c.check("c4", "How can I bake bread at home?")
check(r["stored"] && r["duplicates"][0]["id"] == "q3" && r["duplicates"][0]["p_duplicate"] == 1 &&
      r["duplicate"] == true, "check of a stored text: a repost, stored, the original with p_duplicate 1")
c.remove("c4")

c.remove("c1")
check(raises("not_found") { c.get("c1") }, "remove, then get: not_found")
check(raises("not_found") { c.remove("c1") }, "remove twice: not_found")

many = c.query_many(["How do I learn Python quickly?", "How can I bake bread at home?"], k: 1)
check(many.map { _1[0]["id"] } == %w[q1 q3], "query_many: one list per text")

st = c.stats
check(st["questions"] == 4 && st["requests"]["add"] >= 2, "stats counts questions and requests")
check(raises("bad_request") { c.request({ op: "query", text: "x", k: 0 }) },
      "a bad request raises bad_request; the connection stays usable")
c.ping
c.close

# A daemon that accepts and never answers: the call times out.
silent_path = File.join(tmp, "silent.sock")
srv = UNIXServer.new(silent_path)
check(raises("timeout") { Qdup::Client.new(silent_path, timeout: 0.2).ping }, "timeout")
srv.close
check(raises("connection") { Qdup::Client.new(File.join(tmp, "none.sock")).ping },
      "no daemon: connection error")

puts "#{$failures} failure(s)"
exit($failures.zero? ? 0 : 1)
