"""A strict reader of the Prometheus text exposition format (version 0.0.4), for tests.

parse(text) returns {family name: Family(type, help, samples)}, each sample a tuple
(sample name, {label: value}, float value), or raises ValueError naming the line and
what is wrong. Beyond the grammar (metric and label names, quoted and escaped label
values, Go-style floats and +Inf/-Inf/NaN, an optional integer timestamp) it enforces
what a scraper relies on: text ending in a newline, no blank or other comment lines,
one HELP and one TYPE per family, TYPE before the family's samples, a family's samples
together, no sample twice, sample names that belong to their family (histogram:
_bucket/_sum/_count; counter names ending in _total), and for each histogram series
buckets with an "le" label in increasing order, cumulative counts that never decrease,
a "+Inf" bucket equal to _count, and a _sum.
"""
import math
import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)$")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []
        self.closed = False  # another family's samples came after ours


def _value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not FLOAT.match(s):
        raise ValueError("%s: bad value %r" % (where, s))
    return float(s)


def _labels(line, i, where):
    """Parses {a="x",...} from line[i] == "{"; returns (labels, index after "}")."""
    labels = {}
    i += 1
    while True:
        if line[i:i + 1] == "}":
            return labels, i + 1
        m = LABEL.match(line, i)
        if not m:
            raise ValueError("%s: bad label name at column %d" % (where, i + 1))
        name = m.group(0)
        if name.startswith("__"):
            raise ValueError("%s: reserved label name %s" % (where, name))
        if name in labels:
            raise ValueError("%s: label %s twice" % (where, name))
        i = m.end()
        if line[i:i + 2] != '="':
            raise ValueError("%s: expected =\" after label %s" % (where, name))
        i += 2
        val = []
        while True:
            if i >= len(line):
                raise ValueError("%s: unterminated label value" % where)
            ch = line[i]
            if ch == "\\":
                nxt = line[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ValueError("%s: bad escape \\%s in label value" % (where, nxt))
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            elif ch == "\n":
                raise ValueError("%s: newline in label value" % where)
            else:
                val.append(ch)
                i += 1
        labels[name] = "".join(val)
        if line[i:i + 1] == ",":
            i += 1
        elif line[i:i + 1] != "}":
            raise ValueError("%s: expected , or } after label %s" % (where, name))


def _family_of(name, fams):
    """The family a sample name belongs to: itself, or a histogram's/summary's base."""
    if name in fams:
        return fams[name]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[:-len(suffix)] in fams:
            return fams[name[:-len(suffix)]]
    return None


def parse(text):
    if not text.endswith("\n"):
        raise ValueError("the text does not end with a newline")
    fams = {}
    order = []
    seen = set()
    current = None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d" % n
        if line == "" or line.strip() != line:
            raise ValueError("%s: blank line or surrounding white space" % where)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
                raise ValueError("%s: a comment that is not HELP or TYPE: %r" % (where, line))
            kind, name, rest = parts[1], parts[2], parts[3]
            if not NAME.fullmatch(name):
                raise ValueError("%s: bad metric name %r" % (where, name))
            fam = fams.get(name)
            if fam is None:
                fam = fams[name] = Family(name)
                order.append(name)
            if fam.samples or fam.closed:
                raise ValueError("%s: %s of %s after its samples" % (where, kind, name))
            if kind == "HELP":
                if fam.help is not None:
                    raise ValueError("%s: second HELP for %s" % (where, name))
                if re.search(r"\\[^\\n]|\\$", rest):
                    raise ValueError("%s: bad escape in HELP" % where)
                fam.help = rest.replace("\\n", "\n").replace("\\\\", "\\")
            else:
                if fam.type is not None:
                    raise ValueError("%s: second TYPE for %s" % (where, name))
                if rest not in TYPES:
                    raise ValueError("%s: unknown type %r" % (where, rest))
                fam.type = rest
            continue
        m = NAME.match(line)
        if not m:
            raise ValueError("%s: bad metric name" % where)
        name = m.group(0)
        i = m.end()
        labels = {}
        if line[i:i + 1] == "{":
            labels, i = _labels(line, i, where)
        if line[i:i + 1] != " ":
            raise ValueError("%s: expected a space before the value" % where)
        fields = line[i + 1:].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1])):
            raise ValueError("%s: expected a value and an optional integer timestamp" % where)
        value = _value(fields[0], where)
        fam = _family_of(name, fams)
        if fam is None:
            raise ValueError("%s: sample %s without a TYPE line" % (where, name))
        if fam.type is None:
            raise ValueError("%s: sample %s before its family's TYPE" % (where, name))
        if fam.closed:
            raise ValueError("%s: samples of %s are not together" % (where, fam.name))
        if current is not None and current is not fam:
            current.closed = True
        current = fam
        if fam.type in ("counter", "gauge", "untyped") and name != fam.name:
            raise ValueError("%s: %s is not a sample name of %s %s" % (where, name, fam.type, fam.name))
        if fam.type == "histogram" and name == fam.name:
            raise ValueError("%s: a histogram's samples are _bucket, _sum and _count" % where)
        if fam.type == "counter" and (not name.endswith("_total") or value < 0):
            raise ValueError("%s: counter %s must end in _total and not be negative" % (where, name))
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise ValueError("%s: sample %s%s twice" % (where, name, labels))
        seen.add(key)
        fam.samples.append((name, labels, value))
    for name in order:
        fam = fams[name]
        if fam.help is None or fam.type is None:
            raise ValueError("%s: no HELP or no TYPE" % name)
        if fam.type == "histogram":
            _check_histogram(fam)
    return fams


def _check_histogram(fam):
    series = {}
    for name, labels, value in fam.samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            if "le" not in labels:
                raise ValueError("%s: bucket without le" % fam.name)
            s["buckets"].append((_value(labels["le"], fam.name), value))
        elif "le" in labels:
            raise ValueError("%s: le on %s" % (fam.name, name))
        elif name.endswith("_sum"):
            s["sum"] = value
        else:
            s["count"] = value
    for base, s in series.items():
        bounds = [b for b, _ in s["buckets"]]
        counts = [c for _, c in s["buckets"]]
        if not bounds or bounds[-1] != math.inf:
            raise ValueError("%s%s: no +Inf bucket" % (fam.name, dict(base)))
        if any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])):
            raise ValueError("%s%s: bucket bounds not increasing" % (fam.name, dict(base)))
        if any(c2 < c1 for c1, c2 in zip(counts, counts[1:])):
            raise ValueError("%s%s: bucket counts decrease" % (fam.name, dict(base)))
        if s["count"] is None or s["sum"] is None or counts[-1] != s["count"]:
            raise ValueError("%s%s: _count missing or not the +Inf bucket" % (fam.name, dict(base)))
