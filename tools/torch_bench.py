#!/usr/bin/python3
"""PyTorch side of qdup-bench: the reference the C encoder and trainer are measured against.

qdup-bench (tools/bench.c) tokenizes the questions with qdup's own tokenizer and the
model's vocabulary, writes the token rows to a file (format below), runs this script on
it and reads back the one line on standard output that starts with "RESULT " (a JSON
object). Progress goes to standard error. So both sides see exactly the same token ids;
only the model code differs.

    torch_bench.py encode --model M.qdm --tokens T [--threads N] [--batch 512] [--runs 3]
                          [--check K --check-out FILE]
        Inference speed of the model in a .qdm file (torch_ref.read_qdm; format version 2
        pooling included):
        torch.inference_mode, torch.set_num_threads(N), questions sorted by length and
        cut into batches of 512, each padded to its longest question (time-major), LSTM,
        masked mean, normalize. One warm-up pass, then --runs timed passes; the median
        and the best are reported. The padded batches are built before the clock starts (their cost is
        reported apart, as prep_seconds), so the rate is the model's alone. With --check,
        the vectors of the first K questions (in file order) are written to FILE as
        float32, for qdup-bench to compare with its own.

    torch_bench.py train --train T --valid T --test T --rows R [--emb 128] [--hidden 128]
                         [--epochs 8] [--batch 256] [--lr 0.01] [--margin 0.25]
                         [--threads 2] [--seed 1] [--lstm packed|padded]
        The course's recipe: torch_ref.Encoder with PyTorch's default initialization,
        the course's triplet loss (torch_ref.triplet_loss), Adam, batches of B duplicate
        pairs of the training file shuffled every epoch (the last incomplete batch
        dropped, as qdup does), anchors and positives encoded in one batch, padded to its
        longest question, the LSTM run over it as a PackedSequence (--lstm packed, the
        default: padding steps skipped) or over the whole padded batch. After
        each epoch: training pairs per second (validation excluded) and the validation
        ROC AUC of the cosine similarity. At the end the best epoch by validation AUC is
        restored and scored on the test file (ROC AUC, accuracy at cosine 0.7).

Token file (written by qdup-bench, little-endian):
    "QDTOKS01", u32 0x01020304 (byte order check), u32 header size (48),
    u64 n questions, u64 ntok tokens, u64 nrows embedding rows, u64 nlabels,
    u32 qoff[n + 1], u32 toff[ntok + 1], i32 rows[nrows], u8 labels[nlabels]
Question q has tokens qoff[q] .. qoff[q+1]-1; token t is the mean of the embedding rows
rows[toff[t] .. toff[t+1]-1] (qdup's qd_tokseqs). A pair file holds 2 n questions,
pair i being questions 2i and 2i+1, and one label per pair.

OMP_WAIT_POLICY defaults to PASSIVE (threads sleep while they wait; see the note at the
imports); set it in the environment to override.

Exit status: 0 on success, 2 for bad arguments or files, 3 when PyTorch or NumPy cannot
be imported (qdup-bench then reports the C side alone).
"""
import argparse
import copy
import json
import os
import struct
import sys
import time

# OpenMP threads that spin while they wait (libgomp's default) collapse when the cores
# are shared: on this 2-core machine with other jobs running, training with 2 threads
# dropped from ~800 to ~30 pairs per second. Sleeping waiters avoid that. libgomp reads
# the variable when torch loads it, so it is set before the import; an explicit setting
# in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
except ImportError as e:  # qdup-bench reports this and still prints its own result
    print("torch_bench.py: cannot import PyTorch/NumPy: %s" % e, file=sys.stderr)
    sys.exit(3)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402  (the model, .qdm reader and the course's loss)

TOK_MAGIC = b"QDTOKS01"
TOK_HEADER = 48


class TokFile:
    """The token rows of a batch of questions, as numpy arrays."""

    def __init__(self, path):
        data = open(path, "rb").read()
        if len(data) < TOK_HEADER or data[:8] != TOK_MAGIC:
            raise ValueError("%s: not a qdup token file" % path)
        sentinel, hsize = struct.unpack_from("<II", data, 8)
        if sentinel != 0x01020304 or hsize != TOK_HEADER:
            raise ValueError("%s: wrong byte order or header size" % path)
        n, ntok, nrows, nlabels = struct.unpack_from("<QQQQ", data, 16)
        need = TOK_HEADER + 4 * (n + 1) + 4 * (ntok + 1) + 4 * nrows + nlabels
        if len(data) != need:
            raise ValueError("%s: %d bytes, expected %d" % (path, len(data), need))
        p = TOK_HEADER
        self.qoff = np.frombuffer(data, "<u4", n + 1, p).astype(np.int64)
        p += 4 * (n + 1)
        self.toff = np.frombuffer(data, "<u4", ntok + 1, p).astype(np.int64)
        p += 4 * (ntok + 1)
        self.rows = np.frombuffer(data, "<i4", nrows, p).astype(np.int64)
        p += 4 * nrows
        self.labels = np.frombuffer(data, "u1", nlabels, p).astype(np.int64)
        self.n = n
        self.qlen = self.qoff[1:] - self.qoff[:-1]
        nper = self.toff[1:] - self.toff[:-1]
        # One row per token (no n-grams): a plain embedding lookup on a padded id matrix.
        self.single = bool(ntok == 0 or (nper == 1).all())
        self.tok_row = self.rows[self.toff[:-1]] if self.single else None


class Batch:
    """Questions idx (numpy) laid out time-major for one forward pass."""

    def __init__(self, tf, idx):
        idx = np.asarray(idx, dtype=np.int64)
        lens = tf.qlen[idx]
        T = max(1, int(lens.max()) if len(idx) else 1)
        B = len(idx)
        steps = np.arange(T)[None, :]
        mask = steps < lens[:, None]                       # (B, T) real tokens
        tok = np.where(mask, tf.qoff[idx][:, None] + steps, 0)  # (B, T) token indices
        self.idx = torch.from_numpy(idx)
        self.shape = (B, T)
        self.mask = torch.from_numpy(mask.T.astype(np.float32)).unsqueeze(2)  # (T, B, 1)
        # A question without tokens gets the zero vector, as in qdup.
        self.lens = torch.from_numpy(np.maximum(lens, 1).astype(np.float32)).unsqueeze(1)
        if tf.single:
            ids = np.where(mask, tf.tok_row[np.minimum(tok, len(tf.tok_row) - 1)], 0)
            self.ids = torch.from_numpy(np.ascontiguousarray(ids.T))  # (T, B) rows
        else:
            # The EmbeddingBag of every real token (in question order), then scattered
            # into the padded (T * B, E) layout.
            bi, ti = np.nonzero(mask)
            toks = tok[bi, ti]
            starts = tf.toff[toks]
            ends = tf.toff[toks + 1]
            flat = np.concatenate([tf.rows[s:e] for s, e in zip(starts, ends)]) \
                if len(toks) else np.zeros(0, np.int64)
            offs = np.concatenate([[0], np.cumsum(ends - starts)[:-1]]) \
                if len(toks) else np.zeros(0, np.int64)
            self.ids = None
            self.flat = torch.from_numpy(flat)
            self.offsets = torch.from_numpy(offs.astype(np.int64))
            self.pos = torch.from_numpy(ti * B + bi)


def time_major(enc):
    """Runs enc's LSTM on (T, B, E) input: the layout its kernel works in, so no
    transposes (measured a little faster here than batch_first). Same weights."""
    enc.lstm.batch_first = False
    return enc


def forward(enc, b, packed=False):
    """The course's model on one padded batch: (B, H) unit vectors. enc must have been
    through time_major(). packed: run the LSTM over a PackedSequence, which skips the
    padding steps (the same outputs at the real tokens, so the same loss and gradients);
    worth it for batches of mixed lengths, as random training batches are."""
    B, T = b.shape
    if b.ids is not None:
        x = F.embedding(b.ids, enc.emb.weight)            # (T, B, E)
    else:
        e = enc.emb(b.flat, b.offsets)                    # (tokens, E) mean of rows
        x = e.new_zeros(T * B, e.shape[1])
        x = x.index_copy(0, b.pos, e).view(T, B, -1)
    if packed:
        lens = b.mask[:, :, 0].sum(0).long().clamp(min=1)
        h, _ = enc.lstm(pack_padded_sequence(x, lens, enforce_sorted=False))
        h, _ = pad_packed_sequence(h, total_length=T)     # (T, B, H), zeros past the end
    else:
        h, _ = enc.lstm(x)                                # (T, B, H)
    parts = [(h * b.mask).sum(0) / b.lens]                # masked mean (H)
    pool = getattr(enc, "pool", 0)                        # format version 2 (model.h)
    if pool & torch_ref.POOL_MAX:                         # + masked max (H)
        mx = h.masked_fill(b.mask == 0, float("-inf")).max(0).values
        parts.append(mx.masked_fill(torch.isinf(mx), 0.0))  # no tokens: zeros, as qdup
    if pool & torch_ref.POOL_EMB:                         # + mean of the embeddings (E)
        parts.append((x * b.mask).sum(0) / b.lens)
    return F.normalize(torch.cat(parts, 1), dim=1)


def out_dim(enc):
    """Width of the vectors forward() makes (qd_model_out_dim)."""
    pool = getattr(enc, "pool", 0)
    H, E = enc.lstm.hidden_size, enc.lstm.input_size
    return H + (H if pool & torch_ref.POOL_MAX else 0) + (E if pool & torch_ref.POOL_EMB else 0)


def sorted_batches(tf, idx, batch):
    """idx sorted by length (stable) and cut into Batch objects of `batch` questions."""
    idx = np.asarray(idx, dtype=np.int64)
    order = idx[np.argsort(tf.qlen[idx], kind="stable")]
    return [Batch(tf, order[i:i + batch]) for i in range(0, len(order), batch)]


def encode_all(enc, batches, n, H):
    out = torch.empty(n, H)
    with torch.inference_mode():
        for b in batches:
            out[b.idx] = forward(enc, b)
    return out


def roc_auc(scores, labels):
    """Mann-Whitney U with tied scores sharing their mean rank (as qdup's qd_pairs_auc)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) != 0
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        ranks[i:j] = (i + j + 1) / 2.0
        i = j
    npos = int(labels.sum())
    nneg = len(s) - npos
    if npos == 0 or nneg == 0:
        return 0.5
    rank_sum = ranks[labels[order]].sum()
    return (rank_sum - npos * (npos + 1) / 2.0) / (npos * nneg)


def pair_scores(enc, tf, batch=512):
    """Cosine of each pair (questions 2i, 2i+1) of a pair token file."""
    v = encode_all(enc, sorted_batches(tf, np.arange(tf.n), batch), tf.n, out_dim(enc))
    return (v[0::2] * v[1::2]).sum(1).numpy()


def result(obj):
    print("RESULT " + json.dumps(obj), flush=True)


def cmd_encode(a):
    torch.set_num_threads(a.threads)
    enc, words, hdr = torch_ref.read_qdm(a.model)
    time_major(enc).eval()
    tf = TokFile(a.tokens)
    rows = hdr["V"] + hdr["ngram"][2]
    if tf.n and len(tf.rows) and int(tf.rows.max()) >= rows:
        raise ValueError("%s: a token row is past the model's %d rows" % (a.tokens, rows))
    t0 = time.perf_counter()
    batches = sorted_batches(tf, np.arange(tf.n), a.batch)
    prep = time.perf_counter() - t0
    H = out_dim(enc)
    out = encode_all(enc, batches, tf.n, H)  # warm-up
    secs = []
    for r in range(a.runs):
        t0 = time.perf_counter()
        out = encode_all(enc, batches, tf.n, H)
        secs.append(time.perf_counter() - t0)
        print("torch encode run %d/%d: %.3f s, %.0f questions/s"
              % (r + 1, a.runs, secs[-1], tf.n / secs[-1]), file=sys.stderr)
    if a.check_out:
        k = min(a.check, tf.n)
        out[:k].contiguous().numpy().astype("<f4").tofile(a.check_out)
    rates = [tf.n / s for s in secs]
    result({"questions": int(tf.n), "seconds": secs, "rates": rates,
            "median_qps": float(np.median(rates)), "best_qps": max(rates),
            "prep_seconds": prep, "threads": torch.get_num_threads(), "batch": a.batch,
            "torch": torch.__version__, "E": hdr["E"], "H": hdr["H"], "dim": H,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})


def cmd_train(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, valid, test = TokFile(a.train), TokFile(a.valid), TokFile(a.test)
    for name, tf in (("train", train), ("valid", valid), ("test", test)):
        if tf.n != 2 * len(tf.labels):
            raise ValueError("%s file: %d questions for %d labels" % (name, tf.n, len(tf.labels)))
        if len(tf.rows) and int(tf.rows.max()) >= a.rows:
            raise ValueError("%s file: a token row is past --rows %d" % (name, a.rows))
    enc = time_major(torch_ref.Encoder(a.rows, a.emb, a.hidden))  # PyTorch's default init
    opt = torch.optim.Adam(enc.parameters(), lr=a.lr)
    dups = np.flatnonzero(train.labels)
    B = a.batch
    steps = len(dups) // B
    if steps == 0:
        raise ValueError("%d duplicate pairs, fewer than one batch of %d" % (len(dups), B))
    gen = torch.Generator().manual_seed(a.seed)
    epochs, best, best_auc, best_state = [], 0, -1.0, None
    t_run = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        enc.train()
        perm = dups[torch.randperm(len(dups), generator=gen).numpy()]
        t0 = time.perf_counter()
        loss_sum = 0.0
        for s in range(steps):
            sel = perm[s * B:(s + 1) * B]
            b = Batch(train, np.concatenate([2 * sel, 2 * sel + 1]))
            v = forward(enc, b, a.lstm == "packed")
            loss = torch_ref.triplet_loss(v[:B], v[B:], a.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
        dt = time.perf_counter() - t0
        enc.eval()
        auc = roc_auc(pair_scores(enc, valid), valid.labels)
        e = {"epoch": epoch, "seconds": dt, "pairs_per_s": steps * B / dt,
             "loss": loss_sum / steps, "valid_auc": auc}
        epochs.append(e)
        if auc > best_auc:
            best, best_auc, best_state = epoch, auc, copy.deepcopy(enc.state_dict())
        print("torch epoch %d/%d: loss %.4f, %.0f pairs/s, valid AUC %.4f%s"
              % (epoch, a.epochs, e["loss"], e["pairs_per_s"], auc,
                 " (best so far)" if best == epoch else ""), file=sys.stderr, flush=True)
    enc.load_state_dict(best_state)
    enc.eval()
    s = pair_scores(enc, test)
    train_secs = sum(e["seconds"] for e in epochs)
    result({"epochs": epochs, "best_epoch": best, "best_valid_auc": best_auc,
            "test_auc": roc_auc(s, test.labels),
            "test_acc_at_0_7": float(((s > 0.7) == (test.labels != 0)).mean()),
            "pairs_per_s": steps * B * len(epochs) / train_secs,
            "train_seconds": train_secs, "seconds": time.perf_counter() - t_run,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "lstm": a.lstm, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--model", required=True)
    e.add_argument("--tokens", required=True)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--batch", type=int, default=512)
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--check", type=int, default=0)
    e.add_argument("--check-out")
    t = sub.add_parser("train")
    for f in ("--train", "--valid", "--test"):
        t.add_argument(f, required=True)
    t.add_argument("--rows", type=int, required=True, help="embedding rows (V + buckets)")
    t.add_argument("--emb", type=int, default=128)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--margin", type=float, default=0.25)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--lstm", choices=("packed", "padded"), default="packed",
                   help="LSTM over packed sequences (default) or the padded batch")
    a = ap.parse_args()
    for k in ("threads", "batch", "runs", "epochs"):
        if getattr(a, k, 1) < 1:
            ap.error("--%s must be at least 1" % k)
    try:
        (cmd_encode if a.cmd == "encode" else cmd_train)(a)
    except (OSError, ValueError, AssertionError) as ex:
        print("torch_bench.py: %s" % ex, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
