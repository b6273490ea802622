#!/usr/bin/python3
"""PyTorch reference of qdup's encoder: the course's Siamese LSTM.

The model is what the course built: nn.Embedding -> nn.LSTM -> mean over the real
tokens -> L2 normalize. A token may stand for several embedding rows (hashed
character n-grams), averaged, which nn.EmbeddingBag(mode="mean") does.

This module is imported by the other reference scripts in tools/ and can write and read
qdup model files (.qdm, see include/qdup/model.h), so that PyTorch and the C code can be
compared on the same weights.

    /usr/bin/python3 tools/torch_ref.py fixtures OUTDIR   # forward-pass fixtures

Needs Debian's python3-torch; neither the tests nor CI run it: its outputs are committed.
"""
import struct
import sys
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

MAGIC = b"QDUPMODL"
VERSION = 2
HEADER_SIZE = 128
ENDIAN = 0x0A0B0C0D
FLOATCHECK = -1.75
PAD, UNK = 0, 1


POOL_MAX, POOL_EMB = 1, 2


class Encoder(nn.Module):
    """Embedding (mean of a token's rows) -> LSTM -> masked mean -> normalize.

    pool bits (format version 2) append the max of the hidden states (POOL_MAX) and
    the mean of the token embeddings (POOL_EMB) to the mean before normalizing."""

    def __init__(self, rows, emb_dim, hidden, pool=0):
        super().__init__()
        self.emb = nn.EmbeddingBag(rows, emb_dim, mode="mean")
        self.lstm = nn.LSTM(emb_dim, hidden, batch_first=True)
        self.pool = pool

    def forward(self, questions):
        """questions: list of questions, each a list of tokens, each a list of rows."""
        flat = [tok for q in questions for tok in q]
        rows = torch.tensor([r for tok in flat for r in tok], dtype=torch.long)
        offsets = torch.tensor([0] + [len(t) for t in flat[:-1]], dtype=torch.long).cumsum(0)
        x = self.emb(rows, offsets)
        lens = [len(q) for q in questions]
        T = max(lens)
        batch = torch.zeros(len(questions), T, x.shape[1])
        pos = 0
        for i, n in enumerate(lens):
            batch[i, :n] = x[pos:pos + n]
            pos += n
        h, _ = self.lstm(batch)
        mask = torch.zeros(len(questions), T, 1)
        for i, n in enumerate(lens):
            mask[i, :n] = 1
        count = torch.tensor(lens, dtype=torch.float32).unsqueeze(1)
        parts = [(h * mask).sum(1) / count]
        if self.pool & POOL_MAX:
            parts.append(h.masked_fill(mask == 0, float("-inf")).max(1).values)
        if self.pool & POOL_EMB:
            parts.append((batch * mask).sum(1) / count)
        return F.normalize(torch.cat(parts, 1), dim=1)


def write_qdm(path, enc, words, max_tokens=64, ngram=(0, 0, 0)):
    """Writes enc with vocabulary `words` (ids 2.. in order) as a .qdm file."""
    emb = enc.emb.weight.detach().float()
    wx = enc.lstm.weight_ih_l0.detach().float()
    wh = enc.lstm.weight_hh_l0.detach().float()
    b = (enc.lstm.bias_ih_l0 + enc.lstm.bias_hh_l0).detach().float()
    E, H = emb.shape[1], wh.shape[1]
    V = len(words) + 2
    nmin, nmax, buckets = ngram
    assert emb.shape[0] == V + buckets
    vocab = b"".join(bytes([len(w.encode())]) + w.encode() for w in words)
    params = torch.cat([emb.reshape(-1), wx.reshape(-1), wh.reshape(-1), b.reshape(-1)])
    version = 2 if enc.pool else 1
    hdr = MAGIC + struct.pack("<IIIf", version, HEADER_SIZE, ENDIAN, FLOATCHECK)
    hdr += struct.pack("<10I", E, H, V, 1, enc.pool, max_tokens, nmin, nmax, buckets, 0)
    hdr += struct.pack("<QQ", len(vocab), params.numel())
    hdr += b"\0" * (HEADER_SIZE - len(hdr))
    body = hdr + vocab + params.numpy().astype("<f4").tobytes()
    with open(path, "wb") as f:
        f.write(body + struct.pack("<I", zlib.crc32(body)))


def read_qdm(path):
    """Reads a .qdm file into (Encoder, words, header dict)."""
    data = open(path, "rb").read()
    assert data[:8] == MAGIC, "not a qdup model"
    version, hsize, endian, fcheck = struct.unpack_from("<IIIf", data, 8)
    assert version in (1, VERSION) and endian == ENDIAN and fcheck == FLOATCHECK
    E, H, V, dirs, pool, max_tokens, nmin, nmax, buckets, _ = struct.unpack_from("<10I", data, 24)
    vbytes, nparams = struct.unpack_from("<QQ", data, 64)
    assert zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0], "bad checksum"
    words, p = [], hsize
    for _ in range(V - 2):
        n = data[p]
        words.append(data[p + 1:p + 1 + n].decode("utf-8", "surrogateescape"))
        p += 1 + n
    w = torch.frombuffer(bytearray(data[p:p + 4 * nparams]), dtype=torch.float32)
    rows = V + buckets
    enc = Encoder(rows, E, H, pool)
    sizes = [rows * E, 4 * H * E, 4 * H * H, 4 * H]
    parts = torch.split(w, sizes)
    with torch.no_grad():
        enc.emb.weight.copy_(parts[0].view(rows, E))
        enc.lstm.weight_ih_l0.copy_(parts[1].view(4 * H, E))
        enc.lstm.weight_hh_l0.copy_(parts[2].view(4 * H, H))
        enc.lstm.bias_ih_l0.copy_(parts[3])
        enc.lstm.bias_hh_l0.zero_()
    hdr = dict(E=E, H=H, V=V, max_tokens=max_tokens, ngram=(nmin, nmax, buckets))
    return enc, words, hdr


def triplet_loss(v1, v2, margin=0.25):
    """The course's TripletLoss: v1 anchors, v2 positives, other positives negatives."""
    scores = v1 @ v2.T
    B = scores.shape[0]
    positive = torch.diagonal(scores)
    eye = torch.eye(B)
    neg_zero = scores * (1.0 - eye)
    mean_neg = neg_zero.sum(1) / (B - 1)
    mask = ((eye == 1) | (neg_zero > positive[:, None])).float()
    closest = (neg_zero - 2.0 * mask).max(1).values
    loss1 = F.relu(margin - positive + closest)
    loss2 = F.relu(margin - positive + mean_neg)
    return (loss1 + loss2).mean()


def flat_params(enc):
    """The model's weights in .qdm order, the bias as b_ih + b_hh."""
    l = enc.lstm
    return torch.cat([enc.emb.weight.reshape(-1), l.weight_ih_l0.reshape(-1),
                      l.weight_hh_l0.reshape(-1), (l.bias_ih_l0 + l.bias_hh_l0).reshape(-1)])


def flat_grads(enc):
    l = enc.lstm
    return torch.cat([enc.emb.weight.grad.reshape(-1), l.weight_ih_l0.grad.reshape(-1),
                      l.weight_hh_l0.grad.reshape(-1), l.bias_ih_l0.grad.reshape(-1)])


def write_step_fixture(outdir, name, seed, V, E, H, B):
    """One training step: the loss of a batch of pairs, its gradient w.r.t. every weight,
    and the weights after one Adam step (lr 0.01) taken with that gradient."""
    torch.manual_seed(seed)
    enc = Encoder(V, E, H)
    with torch.no_grad():
        for p in enc.lstm.parameters():
            p.uniform_(-0.6, 0.6)
    words = ["w%d" % i for i in range(2, V)]
    write_qdm("%s/%s.qdm" % (outdir, name), enc, words, max_tokens=64)
    g = torch.Generator().manual_seed(seed + 100)
    lens = [int(x) for x in torch.randint(1, 9, (2 * B,), generator=g)]
    qs = [[[int(torch.randint(1, V, (1,), generator=g))] for _ in range(n)] for n in lens]
    v = enc(qs)
    loss = triplet_loss(v[:B], v[B:], 0.25)
    loss.backward()
    grads = flat_grads(enc)
    # Adam on the weights as qdup stores them (one merged bias), with these gradients.
    w = flat_params(enc).detach().clone().requires_grad_(True)
    w.grad = grads.detach().clone()
    opt = torch.optim.Adam([w], lr=0.01)
    opt.step()
    with open("%s/%s.txt" % (outdir, name), "w") as f:
        f.write("# %s: written by tools/torch_ref.py fixtures (PyTorch %s)\n"
                % (name, torch.__version__))
        f.write("# q/t: %d anchors then %d positives; loss: the course's triplet loss, "
                "margin 0.25;\n# grad: dL/dweights in .qdm order; adam: weights after one "
                "Adam step, lr 0.01\n" % (B, B))
        for q in qs:
            f.write("q %d\n" % len(q))
            for tok in q:
                f.write("t %s\n" % " ".join(str(r) for r in tok))
        f.write("loss %.9g\n" % loss.item())
        f.write("grad %s\n" % fmt(grads.tolist()))
        f.write("adam %s\n" % fmt(w.detach().tolist()))


def fmt(values):
    return " ".join("%.9g" % v for v in values)


def write_forward_fixture(outdir, name, seed, V, E, H, buckets, questions, pool=0):
    """A small random model plus questions and the vectors PyTorch gives them."""
    torch.manual_seed(seed)
    enc = Encoder(V + buckets, E, H, pool)
    with torch.no_grad():  # livelier than the default init, so errors show
        enc.emb.weight.uniform_(-1, 1)
        for p in enc.lstm.parameters():
            p.uniform_(-0.6, 0.6)
    words = ["w%d" % i for i in range(2, V)]
    ngram = (3, 4, buckets) if buckets else (0, 0, 0)
    write_qdm("%s/%s.qdm" % (outdir, name), enc, words, max_tokens=64, ngram=ngram)
    with torch.no_grad():
        out = enc(questions)
    with open("%s/%s.txt" % (outdir, name), "w") as f:
        f.write("# %s: written by tools/torch_ref.py fixtures (PyTorch %s)\n"
                % (name, torch.__version__))
        f.write("# q N: a question of N tokens; t ROWS: one token's embedding rows;\n")
        f.write("# v ...: the unit vector PyTorch computes for the question\n")
        for q, v in zip(questions, out):
            f.write("q %d\n" % len(q))
            for tok in q:
                f.write("t %s\n" % " ".join(str(r) for r in tok))
            f.write("v %s\n" % fmt(v.tolist()))


def make_fixtures(outdir):
    g = torch.Generator().manual_seed(7)

    def rand_question(n, V, buckets):
        q = []
        for _ in range(n):
            tok = [int(torch.randint(1, V, (1,), generator=g))]
            if buckets:
                k = int(torch.randint(0, 4, (1,), generator=g))
                tok += [V + int(torch.randint(0, buckets, (1,), generator=g)) for _ in range(k)]
            q.append(tok)
        return q

    # Lengths chosen to mix: equal lengths, a single token, a long one, unsorted order.
    lengths = [5, 1, 12, 5, 3, 9, 2, 7, 7, 1, 30, 4]
    plain = [rand_question(n, 40, 0) for n in lengths]
    write_forward_fixture(outdir, "fwd_plain", 1, 40, 16, 12, 0, plain)
    ngram = [rand_question(n, 30, 50) for n in lengths]
    write_forward_fixture(outdir, "fwd_ngram", 2, 30, 8, 10, 50, ngram)
    write_forward_fixture(outdir, "fwd_pool", 4, 30, 8, 10, 50, ngram, pool=POOL_MAX | POOL_EMB)
    write_step_fixture(outdir, "step_tiny", 3, 12, 6, 5, 6)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fixtures":
        make_fixtures(sys.argv[2])
    else:
        sys.exit(__doc__)
