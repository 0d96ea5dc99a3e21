#!/usr/bin/env python3
"""Reads what the table scenarios of scripts/bench measure and prints it as
one flat JSON line (scripts/bench reads it with json_get), so the shell never
parses logs or JSON itself.

  tablestats.py counts [--sum N] [--keys K] [--each C]   < `fstream-lua table` output
  tablestats.py tables LOG                   the worker's final "tables:" line
  tablestats.py recovery LOG T0 PARTITIONS   "recovered table" lines; T0 = epoch
                                             seconds the worker was started at
  tablestats.py rss PID [LOG]                /proc/PID/status memory lines (and the
                                             last "lua heap" line of LOG)
"""
import datetime
import json
import re
import sys


def out(obj):
    print(json.dumps(obj, separators=(",", ":")))


# The worker stamps lines with local time to the millisecond; parsing them
# back with the same local zone gives epoch seconds comparable with T0.
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}) (\w+)\s+(.*)$")


def stamped(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = STAMP.match(line.rstrip("\n"))
            if m:
                ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                yield ts, m.group(2), m.group(3)


def counts(args):
    want = {}
    while args:
        flag, val = args[0], int(args[1])
        want[flag.lstrip("-")] = val
        args = args[2:]
    rows = total = 0
    per_key = {}
    parts = {}
    bad = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        v = r.get("value")
        if not isinstance(v, int):
            bad += 1
            continue
        rows += 1
        total += v
        k = r["key"]
        per_key[k] = per_key.get(k, 0) + v
        parts.setdefault(k, set()).add(r["partition"])
    # A key in two partitions means the input was not co-partitioned with
    # the table: each partition then holds a piece of the count.
    split = sum(1 for p in parts.values() if len(p) > 1)
    vals = per_key.values()
    res = {
        "rows": rows, "keys": len(per_key), "sum": total,
        "min": min(vals) if per_key else None, "max": max(vals) if per_key else None,
        "split_keys": split, "non_integer": bad,
    }
    why = []
    if "sum" in want and total != want["sum"]:
        why.append("sum %d != %d" % (total, want["sum"]))
    if "keys" in want and len(per_key) != want["keys"]:
        why.append("%d keys, expected %d" % (len(per_key), want["keys"]))
    if "each" in want:
        off = sum(1 for v in vals if v != want["each"])
        if off:
            why.append("%d keys differ from %d" % (off, want["each"]))
    if split:
        why.append("%d keys in more than one partition" % split)
    if bad:
        why.append("%d non-integer values" % bad)
    res["pass"] = not why
    res["why"] = "; ".join(why)
    out(res)


TABLES = re.compile(r"tables: (\d+) changelog records and (\d+) LMDB writes for (\d+) events; "
                    r"(\d+) records recovered")


def tables(args):
    found = None
    for _, _, msg in stamped(args[0]):
        m = TABLES.search(msg)
        if m:
            found = [int(x) for x in m.groups()]
    if not found:
        out({"found": False})
        return
    cl, lw, ev, rec = found
    out({
        "found": True, "changelog_records": cl, "lmdb_writes": lw, "events": ev, "recovered": rec,
        "changelog_per_1000": round(1000.0 * cl / ev, 3) if ev else None,
        "lmdb_per_1000": round(1000.0 * lw / ev, 3) if ev else None,
    })


RECOVERING = re.compile(r"recovering table (\S+)\[(\d+)\]: (\d+) changelog records")
RECOVERED = re.compile(r"recovered table (\S+)\[(\d+)\]: (\d+) records in ([\d.]+) s")


def recovery(args):
    path, t0, nparts = args[0], float(args[1]), int(args[2])
    started = assigned = first = last = None
    secs = {}
    records = {}
    for ts, _, msg in stamped(path):
        if started is None and msg.startswith("worker started"):
            started = ts
        elif assigned is None and msg.startswith("assigned "):
            assigned = ts
        elif first is None and RECOVERING.search(msg):
            first = ts
        m = RECOVERED.search(msg)
        if m:
            p = int(m.group(2))
            records[p] = int(m.group(3))
            secs[p] = float(m.group(4))
            last = ts

    def rel(ts):
        return round(ts - t0, 3) if ts is not None else None

    out({
        "partitions": len(secs), "expected_partitions": nparts, "done": len(secs) >= nparts,
        "records": sum(records.values()),
        "sum_s": round(sum(secs.values()), 3), "max_s": max(secs.values()) if secs else None,
        "worker_started_s": rel(started), "assigned_s": rel(assigned),
        "first_recovering_s": rel(first), "last_recovered_s": rel(last),
        # Assignment to the last partition done: the part recovery owns,
        # without process start-up and the group join before it.
        "assigned_to_done_s": round(last - assigned, 3) if last and assigned else None,
    })


LUA_HEAP = re.compile(r"lua heap: ([\d.]+) MiB")


def rss(args):
    pid = args[0]
    want = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmData")
    res = {}
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in want:
                res[k + "_kib"] = int(v.split()[0])
    res["excl_page_cache_kib"] = res.get("RssAnon_kib", 0) + res.get("RssShmem_kib", 0)
    res["excl_page_cache_mib"] = round(res["excl_page_cache_kib"] / 1024.0, 1)
    if len(args) > 1:
        # The app's last report (bench/wordcount.lua, BENCH_LUA_MEM): the Lua
        # share of RssAnon, garbage not yet collected included.
        heap = None
        for _, _, msg in stamped(args[1]):
            m = LUA_HEAP.search(msg)
            if m:
                heap = float(m.group(1))
        res["lua_heap_mib"] = heap
    out(res)


def main():
    cmds = {"counts": counts, "tables": tables, "recovery": recovery, "rss": rss}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.stderr.write(__doc__)
        return 2
    cmds[sys.argv[1]](sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
