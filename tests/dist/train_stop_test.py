"""qdup-train says when early stopping ended the training (issue 12, sharp edge 7):
"epochs 30" with --patience 1 stops after the first epoch without a better validation
AUC and says so, its last epoch one after the best; without patience it runs every
epoch and says nothing of the kind. Small slices of the shared Quora pairs, a tiny
model: under a second each.

usage: train_stop_test.py BIN_DIR   (QDUP_DATA: the shared data; skipped, 77, without)
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import check, finish  # noqa: E402

bin_dir = sys.argv[1]
data = os.path.join(os.environ.get("QDUP_DATA", ""), "quora")
if not os.path.isfile(os.path.join(data, "train.tsv")):
    print("SKIPPED: no %s/train.tsv (set QDUP_DATA)" % data)
    sys.exit(77)


with tempfile.TemporaryDirectory(prefix="qdup-train.") as tmp:
    for name, lines in (("train.tsv", 401), ("valid.tsv", 201)):
        with open(os.path.join(data, name), encoding="utf-8") as f, \
                open(os.path.join(tmp, name), "w", encoding="utf-8") as out:
            for i, line in enumerate(f):
                if i == lines:
                    break
                out.write(line)

    def train(epochs, patience):
        r = subprocess.run([os.path.join(bin_dir, "qdup-train"), "--train",
                            os.path.join(tmp, "train.tsv"), "--valid",
                            os.path.join(tmp, "valid.tsv"), "--out", os.path.join(tmp, "m.qdm"),
                            "--recipe", "seed", "--epochs", str(epochs), "--patience",
                            str(patience), "--emb", "16", "--hidden", "16", "--threads", "1",
                            "--batch", "32"], capture_output=True, text=True)
        m = re.search(r"best epoch (\d+) of (\d+)", r.stdout)
        if r.returncode != 0 or not m:
            print(r.stdout + r.stderr)
            raise SystemExit("FAIL: qdup-train did not finish")
        return int(m.group(1)), int(m.group(2)), r.stdout

    best, ran, out = train(30, 1)
    said = re.search(r"stopped early after epoch (\d+) of 30: no better validation AUC for 1 "
                     r"epoch \(--patience\)", out)
    check(ran < 30 and said and int(said.group(1)) == ran and ran == best + 1,
          "--epochs 30 --patience 1: stopped after epoch %d (best %d) and said so" % (ran, best))
    best, ran, out = train(3, 0)
    check(ran == 3 and "stopped early" not in out,
          "--epochs 3 --patience 0: all 3 epochs, no early-stop line")

finish()
