#!/usr/bin/env python3
"""RainStorm's demo operators for the Traffic Signs dataset, as one operator program.

Usage (the worker starts it once per task; see docs/OPERATORS.md for the protocol):

    traffic_signs.py app1-filter <pattern>           stateless, like grep:<pattern>
    traffic_signs.py app1-project                    stateless, like project:OBJECTID,Sign_Type
    traffic_signs.py app2-filter <sign_post_value>   stateless, like column:Sign_Post=<value>,
                                                     but key = the row's Category
    traffic_signs.py app2-count                      stateful, like count:Category (counts by key)

Python 3 standard library only. Its outputs are byte-identical to the Rust programs
app1-filter, app1-project, app2-filter and app2-count (apps/tests/programs.rs checks it):
rows are split with the csv module (quoted commas, doubled quotes), leniently like the
built-ins' split_record, and joined with the same minimal quoting as join_record.

Exit codes: 0 when the worker closes stdin, 1 on a protocol or operator error (the reason on
stderr, which goes to the task's log), 2 on bad arguments.
"""

import csv
import json
import sys

PROTOCOL_VERSION = 1
U64_MAX = 2**64 - 1
# Rust's char::is_whitespace (Unicode White_Space), which the built-ins trim header names with;
# str.strip() alone would also drop U+001C..U+001F.
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# Fields may be long: the protocol allows 16 MiB lines. 2**30 fits a C long everywhere.
csv.field_size_limit(1 << 30)


class OperatorError(Exception):
    """An error of the operator itself (bad column, malformed state): ends the program."""


def split_record(line):
    """Splits one physical line into fields like the built-ins' split_record.

    The csv module's default (excel) dialect with strict=False matches it: quoting only at the
    start of a field, "" inside quotes, text after a closing quote appended, and an unterminated
    quoted field running to the end of the line. Two differences are bridged here: csv treats
    an unquoted CR or LF as the end of the record (split_record keeps them as text), so CR, LF
    and NUL are swapped for private-use characters absent from the line and swapped back; and
    csv gives [] for an empty line where split_record gives [""].
    """
    specials = [c for c in "\r\n\0" if c in line]
    swap = {}
    if specials:
        unused = (chr(p) for p in range(0xE000, 0xF900) if chr(p) not in line)
        swap = {c: next(unused) for c in specials}
        for c, placeholder in swap.items():
            line = line.replace(c, placeholder)
    fields = next(csv.reader([line], strict=False), None) or [""]
    for c, placeholder in swap.items():
        fields = [f.replace(placeholder, c) for f in fields]
    return fields


def join_record(fields):
    """Joins fields like the built-ins' join_record: a field holding a comma, quote, CR or LF
    is quoted with its quotes doubled; nothing else is. (csv.writer differs: it leaves CR
    unquoted with lineterminator="\\n" and writes a lone empty field as "".)"""
    out = []
    for f in fields:
        if any(c in f for c in ',"\r\n'):
            f = '"' + f.replace('"', '""') + '"'
        out.append(f)
    return ",".join(out)


def column(header, name):
    """The 0-based position of column `name`, resolved like the built-ins (a leading BOM and
    surrounding whitespace of header names ignored, case-sensitive, first match)."""
    if header is None:
        raise OperatorError(f"column `{name}` is named but the input has no header")
    clean = [h.lstrip("\ufeff").strip(WHITESPACE) for h in header]
    if name not in clean:
        raise OperatorError(f"unknown column `{name}`; available columns: {', '.join(clean)}")
    return clean.index(name)


def field(fields, i):
    return fields[i] if i < len(fields) else ""


def app1_filter(pattern):
    if not pattern:
        raise ValueError("the pattern must not be empty")

    def setup(header):
        def process(tuples, state):
            return [[t] if pattern in t["value"] else [] for t in tuples]

        return process

    return False, setup


def app1_project():
    def setup(header):
        columns = [column(header, "OBJECTID"), column(header, "Sign_Type")]

        def process(tuples, state):
            out = []
            for t in tuples:
                fields = split_record(t["value"])
                out.append([{"key": t["key"], "value": join_record([field(fields, i) for i in columns])}])
            return out

        return process

    return False, setup


def app2_filter(wanted):
    def setup(header):
        post, category = column(header, "Sign_Post"), column(header, "Category")

        def process(tuples, state):
            out = []
            for t in tuples:
                fields = split_record(t["value"])
                if post < len(fields) and fields[post] == wanted:
                    out.append([{"key": field(fields, category), "value": t["value"]}])
                else:
                    out.append([])
            return out

        return process

    return False, setup


def parse_count(key, text):
    if not text or not all("0" <= c <= "9" for c in text) or int(text) > U64_MAX:
        raise OperatorError(f"state {json.dumps(text)} of key {json.dumps(key)} is not a decimal count")
    return int(text)


def app2_count():
    def setup(header):
        def process(tuples, state):
            out = []
            for t in tuples:
                key = t["key"]
                count = parse_count(key, state[key]) + 1 if key in state else 1
                if count > U64_MAX:
                    raise OperatorError(f"the count of key {json.dumps(key)} overflows")
                state[key] = str(count)
                out.append([{"key": key, "value": join_record([key, state[key]])}])
            return out

        return process

    return True, setup


APPS = {
    "app1-filter": (app1_filter, "<pattern>"),
    "app1-project": (app1_project, ""),
    "app2-filter": (app2_filter, "<sign_post_value>"),
    "app2-count": (app2_count, ""),
}


def write(message):
    # ASCII-only JSON: valid UTF-8 whatever the locale; then flush, so the worker sees it now.
    sys.stdout.buffer.write(json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n")
    sys.stdout.buffer.flush()


def read():
    """The next message, or None when the worker has closed stdin."""
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise OperatorError("the input ended in the middle of a line")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise OperatorError("expected a JSON object")
    return message


def serve(stateful, setup):
    hello = read()
    if hello is None:
        raise OperatorError("the input ended before the hello")
    version = hello.get("rainstorm")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise OperatorError(f"protocol version {json.dumps(version)} is not supported; this program speaks 1")
    process = setup(hello.get("header"))
    write({"rainstorm": PROTOCOL_VERSION, "stateful": stateful})
    while True:
        request = read()
        if request is None:
            return
        tuples = request["tuples"]
        before = request.get("state") or {}
        state = dict(before)
        outputs = process(tuples, state)
        reply = {"batch": request["batch"], "outputs": outputs}
        changed = {k: v for k, v in state.items() if before.get(k) != v}
        if changed:
            reply["state"] = changed
        write(reply)


def main(argv):
    if len(argv) < 2 or argv[1] not in APPS:
        names = " | ".join(f"{name} {usage}".strip() for name, (_, usage) in APPS.items())
        print(f"usage: {argv[0]} {{ {names} }}", file=sys.stderr)
        return 2
    name = argv[1]
    make, usage = APPS[name]
    args = argv[2:]
    try:
        if len(args) != usage.count("<"):
            raise ValueError(f"expected {usage.count('<')} argument(s), got {len(args)}")
        stateful, setup = make(*args)
    except ValueError as e:
        print(f"{name}: {e}\nusage: {argv[0]} {name} {usage}".rstrip(), file=sys.stderr)
        return 2
    try:
        serve(stateful, setup)
    except BrokenPipeError:
        print(f"{name}: the worker closed our stdout", file=sys.stderr)
        return 1
    except (OperatorError, ValueError, KeyError, TypeError) as e:
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
        print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
