"""Prometheus text exposition format (0.0.4) for tests: a strict little parser and scrapers.

Standard library only.

    m = prom.scrape("http://127.0.0.1:9090/metrics")      # -> Exposition
    m.value("rstwatch_incidents_total", cause="idle_close_race", client_pod="web-0")
    for s in m.samples_of("rstwatch_resets_total"): s.name, s.labels (ordered pairs), s.value
    h = m.histogram("rstwatch_idle_before_failure_seconds", server_port="8080")
    h.count, h.sum, h.buckets  # [(le, cumulative count)], le a float (inf for +Inf)

Labels are kept as written: `Sample.labels` is a tuple of (name, value) pairs in the order
of the exposition, so tests can assert label order.  Parse errors raise PromParseError
naming the line.
"""

import http.client
import math
import re
import ssl
import urllib.parse

CONTENT_TYPE_004 = "text/plain; version=0.0.4"

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromParseError(ValueError):
    pass


class Sample:
    __slots__ = ("name", "labels", "value", "timestamp", "line")

    def __init__(self, name, labels, value, timestamp=None, line=0):
        self.name = name
        self.labels = tuple(labels)  # ((name, value), ...) in written order
        self.value = value
        self.timestamp = timestamp
        self.line = line

    @property
    def label_names(self):
        return tuple(k for k, _ in self.labels)

    @property
    def labels_dict(self):
        return dict(self.labels)

    def matches(self, **want):
        d = dict(self.labels)
        return all(d.get(k) == v for k, v in want.items())

    def __repr__(self):
        return "%s{%s} %r" % (self.name, ",".join('%s="%s"' % kv for kv in self.labels),
                              self.value)


class Histogram:
    """One histogram series: cumulative buckets [(le, count)], sum, count."""

    def __init__(self, name, labels):
        self.name = name
        self.labels = tuple(labels)  # without le
        self.buckets = []
        self.sum = None
        self.count = None

    def bucket(self, le):
        """Cumulative count of the bucket with upper bound le (float)."""
        for b, c in self.buckets:
            if b == le:
                return c
        raise KeyError("no bucket le=%r in %s (have %s)" % (le, self.name,
                                                             [b for b, _ in self.buckets]))

    def bucket_of(self, x):
        """The smallest bucket bound >= x (where an observation x is counted first)."""
        for b, _ in self.buckets:
            if x <= b:
                return b
        return math.inf

    def check(self):
        """Structural checks: sorted bounds, +Inf last, cumulative, +Inf == _count."""
        bounds = [b for b, _ in self.buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise AssertionError("%s: bucket bounds not strictly increasing: %s" % (self.name, bounds))
        if not bounds or bounds[-1] != math.inf:
            raise AssertionError("%s: no +Inf bucket" % self.name)
        counts = [c for _, c in self.buckets]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise AssertionError("%s: buckets not cumulative: %s" % (self.name, self.buckets))
        if self.count is None or self.sum is None:
            raise AssertionError("%s%s: _count or _sum missing" % (self.name, self.labels))
        if counts[-1] != self.count:
            raise AssertionError("%s: +Inf bucket %s != _count %s" % (self.name, counts[-1],
                                                                      self.count))

    def __repr__(self):
        return "Histogram(%s %s count=%s sum=%s buckets=%s)" % (
            self.name, dict(self.labels), self.count, self.sum, self.buckets)


def _parse_value(text, lineno):
    t = text.strip()
    if t in ("+Inf", "Inf"):
        return math.inf
    if t == "-Inf":
        return -math.inf
    if t == "NaN":
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise PromParseError("line %d: bad value %r" % (lineno, text))


def _parse_labels(s, pos, lineno):
    """s[pos] == '{'; returns (labels, position after '}')."""
    assert s[pos] == "{"
    pos += 1
    labels = []
    seen = set()
    while True:
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        if pos < len(s) and s[pos] == "}":
            return labels, pos + 1
        m = _LABEL_NAME_RE.match(s, pos)
        if not m:
            raise PromParseError("line %d: bad label name at column %d: %r" % (lineno, pos + 1, s))
        name = m.group(0)
        if name in seen:
            raise PromParseError("line %d: repeated label %r" % (lineno, name))
        seen.add(name)
        pos = m.end()
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        if s[pos:pos + 2] != '="':
            raise PromParseError("line %d: expected =\" after label %r" % (lineno, name))
        pos += 2
        value = []
        while True:
            if pos >= len(s):
                raise PromParseError("line %d: unterminated label value" % lineno)
            ch = s[pos]
            if ch == "\\":
                nxt = s[pos + 1:pos + 2]
                if nxt == "n":
                    value.append("\n")
                elif nxt in ("\\", '"'):
                    value.append(nxt)
                else:
                    raise PromParseError("line %d: bad escape \\%s" % (lineno, nxt))
                pos += 2
            elif ch == '"':
                pos += 1
                break
            else:
                value.append(ch)
                pos += 1
        labels.append((name, "".join(value)))
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        if pos < len(s) and s[pos] == ",":
            pos += 1
            continue
        if pos < len(s) and s[pos] == "}":
            return labels, pos + 1
        raise PromParseError("line %d: expected , or } at column %d" % (lineno, pos + 1))


class Exposition:
    def __init__(self, text):
        self.text = text
        self.samples = []
        self.types = {}  # family name -> type
        self.helps = {}
        self._parse(text)

    def _parse(self, text):
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    if not _NAME_RE.fullmatch(name):
                        raise PromParseError("line %d: bad metric name %r" % (lineno, name))
                    rest = parts[3] if len(parts) > 3 else ""
                    if parts[1] == "TYPE":
                        if rest not in _TYPES:
                            raise PromParseError("line %d: bad type %r" % (lineno, rest))
                        if name in self.types:
                            raise PromParseError("line %d: second TYPE for %s" % (lineno, name))
                        self.types[name] = rest
                    else:
                        self.helps[name] = rest
                continue
            m = _NAME_RE.match(line)
            if not m:
                raise PromParseError("line %d: bad sample line %r" % (lineno, line))
            name = m.group(0)
            pos = m.end()
            labels = []
            if pos < len(line) and line[pos] == "{":
                labels, pos = _parse_labels(line, pos, lineno)
            rest = line[pos:].split()
            if not rest or len(rest) > 2 or (line[pos:pos + 1] not in (" ", "\t")):
                raise PromParseError("line %d: expected ' value [timestamp]': %r" % (lineno, line))
            value = _parse_value(rest[0], lineno)
            ts = None
            if len(rest) == 2:
                try:
                    ts = int(rest[1])
                except ValueError:
                    raise PromParseError("line %d: bad timestamp %r" % (lineno, rest[1]))
            self.samples.append(Sample(name, labels, value, ts, lineno))

    # -- queries
    def family_of(self, sample_name):
        """The declared family a sample name belongs to (name_bucket -> name for histograms)."""
        if sample_name in self.types:
            return sample_name
        for suffix in ("_bucket", "_sum", "_count"):
            if sample_name.endswith(suffix):
                base = sample_name[:-len(suffix)]
                if self.types.get(base) in ("histogram", "summary"):
                    return base
        return None

    def samples_of(self, name, **labels):
        """Samples named exactly `name` whose labels include `labels`."""
        return [s for s in self.samples if s.name == name and s.matches(**labels)]

    def family_samples(self, family):
        return [s for s in self.samples if self.family_of(s.name) == family]

    def value(self, name, default=None, **labels):
        """The value of the one sample named `name` with exactly these labels given
        (others must not exist: asserts a single match)."""
        found = self.samples_of(name, **labels)
        if not found:
            return default
        if len(found) > 1:
            raise AssertionError("%d samples of %s match %s: %s" % (len(found), name, labels, found))
        return found[0].value

    def total(self, name, **labels):
        """Sum over all samples of `name` matching labels (0 when none)."""
        return sum(s.value for s in self.samples_of(name, **labels))

    def histograms(self, family, **labels):
        """Histogram series of `family` whose labels (without le) include `labels`."""
        series = {}
        order = []
        for s in self.samples:
            if s.name == family + "_bucket":
                key = tuple(kv for kv in s.labels if kv[0] != "le")
                le = dict(s.labels).get("le")
                if le is None:
                    raise AssertionError("%s without le: %r" % (s.name, s))
            elif s.name in (family + "_sum", family + "_count"):
                key = s.labels
            else:
                continue
            h = series.get(key)
            if h is None:
                h = series[key] = Histogram(family, key)
                order.append(key)
            if s.name.endswith("_bucket"):
                h.buckets.append((_parse_value(le, s.line), s.value))
            elif s.name.endswith("_sum"):
                h.sum = s.value
            else:
                h.count = s.value
        out = []
        for key in order:
            h = series[key]
            if all(dict(h.labels).get(k) == v for k, v in labels.items()):
                out.append(h)
        return out

    def histogram(self, family, **labels):
        """The single histogram series matching labels, or None."""
        found = self.histograms(family, **labels)
        if not found:
            return None
        if len(found) > 1:
            raise AssertionError("%d series of %s match %s" % (len(found), family, labels))
        return found[0]


def parse(text):
    return Exposition(text)


# ---------------------------------------------------------------- HTTP

def http_get(url, timeout=5.0, headers=None, cafile=None):
    """GET url -> (status, headers (lowercase keys), body text). Raises OSError on
    connection errors (ssl.SSLError included). https:// verifies against cafile."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def scrape(url, timeout=5.0, headers=None, cafile=None):
    """GET a /metrics URL, check status 200 and the 0.0.4 content type, parse it."""
    status, headers, body = http_get(url, timeout=timeout, headers=headers, cafile=cafile)
    if status != 200:
        raise AssertionError("GET %s: HTTP %d: %s" % (url, status, body[:500]))
    ctype = headers.get("content-type", "")
    if not ctype.startswith("text/plain") or "version=0.0.4" not in ctype:
        raise AssertionError("GET %s: Content-Type %r, expected %r" % (url, ctype, CONTENT_TYPE_004))
    return parse(body)


# ---------------------------------------------------------------- self-test

_SELFTEST_TEXT = r'''# HELP rq_total Requests.
# TYPE rq_total counter
rq_total{code="200",path="/a b"} 3
rq_total{path="/x",code="500"} 1.5e1
rq_total{code="q\"u\\o\nte",path=""} 0
# TYPE up gauge
up 1
up_ts{job="j"} 2 1700000000000
# HELP lat_seconds Latency.
# TYPE lat_seconds histogram
lat_seconds_bucket{svc="b",le="0.5"} 1
lat_seconds_bucket{svc="b",le="1"} 2
lat_seconds_bucket{svc="b",le="+Inf"} 3
lat_seconds_sum{svc="b"} 4.25
lat_seconds_count{svc="b"} 3
lat_seconds_bucket{svc="a",le="0.5"} 0
lat_seconds_bucket{svc="a",le="1"} 0
lat_seconds_bucket{svc="a",le="+Inf"} 0
lat_seconds_sum{svc="a"} 0
lat_seconds_count{svc="a"} 0
nan_metric NaN
inf_metric -Inf
'''


def selftest():
    """Raises AssertionError on a parser bug; used by the unit test in test_agent.py."""
    m = parse(_SELFTEST_TEXT)
    assert m.types == {"rq_total": "counter", "up": "gauge", "lat_seconds": "histogram"}, m.types
    s = m.samples_of("rq_total", path="/x")
    assert len(s) == 1 and s[0].value == 15.0 and s[0].label_names == ("path", "code"), s
    assert m.value("rq_total", code="200") == 3
    assert m.value("rq_total", code='q"u\\o\nte') == 0
    assert m.value("rq_total", code="404") is None
    assert m.total("rq_total") == 18.0
    assert m.value("up") == 1 and m.samples_of("up_ts")[0].timestamp == 1700000000000
    h = m.histogram("lat_seconds", svc="b")
    h.check()
    assert h.count == 3 and h.sum == 4.25 and h.buckets == [(0.5, 1), (1.0, 2), (math.inf, 3)], h
    assert h.bucket(1.0) == 2 and h.bucket_of(0.7) == 1.0 and h.bucket_of(9) == math.inf
    assert h.labels == (("svc", "b"),)
    assert [x.labels for x in m.histograms("lat_seconds")] == [(("svc", "b"),), (("svc", "a"),)]
    assert m.family_of("lat_seconds_bucket") == "lat_seconds" and m.family_of("nope") is None
    assert len(m.family_samples("lat_seconds")) == 10
    assert math.isnan(m.value("nan_metric")) and m.value("inf_metric") == -math.inf
    for bad in ('x{a="1"', 'x{a=1} 2', 'x{a="1",a="2"} 1', "x 1 2 3", "x", 'x{a="\\q"} 1',
                "# TYPE x countr", "1x 2", "x{} abc"):
        try:
            parse(bad)
        except PromParseError:
            continue
        raise AssertionError("parsed malformed input %r" % bad)
    # a histogram whose +Inf bucket disagrees with _count fails check()
    bad = parse('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n')
    try:
        bad.histogram("h").check()
    except AssertionError:
        pass
    else:
        raise AssertionError("check() accepted +Inf != _count")
    return True


if __name__ == "__main__":
    selftest()
    print("prom.py self-test ok")
