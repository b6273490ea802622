#!/usr/bin/env python3
"""Writes N synthetic questions (qid<TAB>question TSV with a header) for load tests.

The questions are drawn from a word bigram model of a real question dump (default
../shared/data/quora/questions.tsv), so their length, vocabulary and punctuation look
like forum questions without repeating them. Deterministic for a given --seed.

    tools/synth_questions.py -n 1000000 -o $TMPDIR/synth-1m.tsv
"""
import argparse
import os
import random
import sys
from collections import defaultdict


def main():
    data = os.environ.get("QDUP_DATA", "../shared/data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000000, help="questions to write")
    ap.add_argument("-o", "--out", required=True, help="output TSV")
    ap.add_argument("--source", default=os.path.join(data, "quora", "questions.tsv"),
                    help="question dump to learn the bigrams from")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    follow = defaultdict(list)  # word -> words seen after it ("" starts and ends)
    with open(args.source, encoding="utf-8", errors="replace") as f:
        next(f)  # header
        for line in f:
            text = line.rstrip("\n").split("\t", 1)[-1]
            words = text.split()
            if not words:
                continue
            prev = ""
            for w in words:
                follow[prev].append(w)
                prev = w
            follow[prev].append("")
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write("qid\tquestion\n")
        for i in range(1, args.n + 1):
            words, prev = [], ""
            while len(words) < 40:
                w = rng.choice(follow[prev])
                if not w:
                    break
                words.append(w)
                prev = w
            if not words:
                words = ["Why?"]
            out.write("s%d\t%s\n" % (i, " ".join(words)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
