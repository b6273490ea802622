"""The command line as a new user meets it (issue 12's sharp edges 4 and 6):

- every qdup-index subcommand's --help says what it does and lists each option its
  usage line names, on a line of its own;
- `qdup-index build`/`add` check that the dumps can be read before loading the model:
  with a missing dump and a missing model, the error names the dump.

usage: cli_test.py BIN_DIR
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, finish  # noqa: E402

bin_dir = sys.argv[1]
index = os.path.join(bin_dir, "qdup-index")


top = subprocess.run([index, "--help"], capture_output=True, text=True)
cmds = re.findall(r"^  ([a-z]+) {2,}\S", top.stdout, re.M)
check(top.returncode == 0 and len(cmds) >= 8, "qdup-index --help lists its commands: %s" % cmds)
for cmd in cmds:
    r = subprocess.run([index, cmd, "--help"], capture_output=True, text=True)
    out = r.stdout
    lines = out.splitlines()
    usage = lines[0] if lines else ""
    prose = [l for l in lines[1:] if l and not l.startswith(" ")]
    opts = sorted(set(re.findall(r"--[a-z][a-z-]*", usage)))
    undocumented = [o for o in opts if not re.search(r"^ +(-\w, )?%s\b" % re.escape(o), out, re.M)]
    check(r.returncode == 0 and usage.startswith("usage: qdup-index %s" % cmd) and prose
          and not undocumented,
          "qdup-index %s --help: what it does, and its options %s%s"
          % (cmd, opts, " (not described: %s)" % undocumented if undocumented else ""))

with tempfile.TemporaryDirectory(prefix="qdup-cli.") as tmp:
    missing_dump = os.path.join(tmp, "nonexistent.tsv")
    missing_model = os.path.join(tmp, "nonexistent.qdm")
    r = subprocess.run([index, "build", "--model", missing_model, "--db",
                        os.path.join(tmp, "x.db"), missing_dump], capture_output=True, text=True)
    check(r.returncode != 0 and missing_dump in r.stderr and missing_model not in r.stderr,
          "build: the missing dump is named before the model is looked at (%s)"
          % r.stderr.strip().replace("\n", " | "))
    check(not os.path.exists(os.path.join(tmp, "x.db")), "build: nothing written")
    r = subprocess.run([index, "build", "--model", missing_model, "--db",
                        os.path.join(tmp, "x.db"), tmp], capture_output=True, text=True)
    check(r.returncode != 0 and "is a directory" in r.stderr, "build: a directory is not a dump")

    # A store moved with the model beside it still finds it (the path is remembered
    # relative to the store's directory); a missing one is named where it was looked for.
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    os.mkdir(a)
    src_model = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                             "fwd_pool.qdm")
    with open(src_model, "rb") as f, open(os.path.join(a, "m.qdm"), "wb") as g:
        g.write(f.read())
    questions = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients",
                             "questions.tsv")
    r = subprocess.run([index, "build", "--model", os.path.join(a, "m.qdm"), "--db",
                        os.path.join(a, "q.db"), questions], capture_output=True, text=True)
    check(r.returncode == 0, "a store built with the model beside it")
    os.rename(a, b)
    r = subprocess.run([index, "info", "--db", os.path.join(b, "q.db")], capture_output=True,
                       text=True)
    check(r.returncode == 0 and os.path.join(b, "m.qdm") in r.stdout,
          "moved with its model, the store finds it there")
    os.rename(os.path.join(b, "m.qdm"), os.path.join(b, "elsewhere.qdm"))
    r = subprocess.run([index, "info", "--db", os.path.join(b, "q.db")], capture_output=True,
                       text=True)
    check(r.returncode != 0 and os.path.join(b, "m.qdm") in r.stderr and
          "relative to the index's directory" in r.stderr,
          "a missing model: the error says where it looked (%s)" % r.stderr.strip())

    # The import summary counts empty texts as empty (not malformed); a JSON Lines
    # line of white space is skipped like a blank one.
    model = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures",
                         "fwd_pool.qdm")
    dumps = {"s.tsv": "qid\tquestion\n1\tHow do I learn Python?\n2\t\n3\t   \n"
                      "4\tWhat is love?\n",
             "s.jsonl": '{"id":"1","text":"a b"}\n   \t\n\n{"id":"2","text":""}\n'
                        '{"id":"3","text":"c d"}\n'}
    want = {"s.tsv": "4 records read from 1 file, 2 indexed, 2 skipped (0 malformed, 0 "
                     "duplicate id, 0 duplicate text, 2 empty)",
            "s.jsonl": "3 records read from 1 file, 2 indexed, 1 skipped (0 malformed, 0 "
                       "duplicate id, 0 duplicate text, 1 empty)"}
    for name, content in dumps.items():
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(content)
        r = subprocess.run([index, "build", "--model", model, "--db",
                            os.path.join(tmp, name + ".db"), path], capture_output=True, text=True)
        check(r.returncode == 0 and want[name] in r.stderr and "invalid JSON" not in r.stderr,
              "summary of %s: %s" % (name, want[name]))

finish()
