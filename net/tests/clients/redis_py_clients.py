"""Drives a Tally member through redis-py with its default settings (RESP3 via HELLO 3).

Usage: python3 redis_py_clients.py PORT
Exits 0 when every check passed; prints the failing check otherwise. Run by
net/tests/redis_clients.rs; needs `pip install redis` (8.x).
"""

import sys
import time

import redis


def check(what, got, expected):
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


def wait_until(what, probe, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def main():
    port = int(sys.argv[1])
    r = redis.Redis(port=port)  # default settings: redis-py 8 opens with HELLO 3
    check("ping", r.ping(), True)
    hello = r.execute_command("HELLO", "3")
    check("hello proto", hello[b"proto"], 3)
    check("hello server", hello[b"server"], b"redis")
    info = r.info()
    for field in ("redis_version", "redis_mode", "arch_bits", "connected_clients"):
        if field not in info:
            raise AssertionError(f"INFO lacks {field}: {sorted(info)}")
    check("cluster_enabled", r.info("cluster")["cluster_enabled"], 0)
    check("version parses", all(p.isdigit() for p in str(info["redis_version"]).split(".")), True)

    # Strings.
    check("flushdb", r.flushdb(), True)
    check("set", r.set("s", "v"), True)
    check("get", r.get("s"), b"v")
    check("get missing (RESP3 null)", r.get("missing"), None)
    check("incrby", r.incrby("n", 5), 5)
    check("decr", r.decr("n"), 4)
    check("decrby", r.decrby("n", 10), -6)
    check("incrbyfloat", r.incrbyfloat("f", 10.5), 10.5)
    check("incrbyfloat again", r.incrbyfloat("f", 0.1), 10.6)
    check("append", r.append("s", "w"), 2)
    check("strlen", r.strlen("s"), 2)
    check("getrange", r.getrange("s", 0, -1), b"vw")
    check("setrange", r.setrange("s", 3, "x"), 4)
    check("padded", r.get("s"), b"vw\x00x")
    check("getset", r.getset("s", "new"), b"vw\x00x")
    check("getdel", r.getdel("s"), b"new")
    check("getdel gone", r.exists("s"), 0)
    check("setnx", r.setnx("nx", "1"), True)
    check("setnx again", r.setnx("nx", "2"), False)
    check("set nx", r.set("nx", "3", nx=True), None)
    check("set xx get", r.set("nx", "4", xx=True, get=True), b"1")
    check("msetnx", r.msetnx({"m1": "a", "m2": "b"}), True)
    check("msetnx clash", r.msetnx({"m2": "c", "m3": "d"}), False)
    check("mget", r.mget("m1", "m2", "m3"), [b"a", b"b", None])
    check("unlink", r.unlink("m1", "m2", "m3"), 2)
    check("type", r.type("nx"), b"string")
    check("type none", r.type("missing"), b"none")
    check("rename", r.rename("nx", "renamed"), True)
    check("renamenx", r.renamenx("renamed", "n"), False)
    try:
        r.rename("missing", "x")
        raise AssertionError("rename of a missing key succeeded")
    except redis.ResponseError as error:
        check("rename missing", str(error), "no such key")
    try:
        r.hset("h", "f", "v")
        raise AssertionError("HSET succeeded")
    except redis.ResponseError as error:
        check("hset unknown", str(error).lower().startswith("unknown command 'hset', with args beginning with: "), True)

    # Expiry.
    check("set ex", r.set("t", "v", ex=100), True)
    ttl = r.ttl("t")
    check("ttl in range", 0 < ttl <= 100, True)
    check("pttl in range", 0 < r.pttl("t") <= 100_000, True)
    check("persist", r.persist("t"), True)
    check("ttl after persist", r.ttl("t"), -1)
    check("ttl missing", r.ttl("missing"), -2)
    check("expire", r.expire("t", 100), True)
    check("expire nx refused", r.expire("t", 5, nx=True), False)
    check("setex", r.execute_command("SETEX", "short", 1, "v"), True)
    check("psetex", r.psetex("shorter", 200, "v"), True)
    check("getex px", r.getex("t", px=300), b"v")
    wait_until("keys expire", lambda: r.get("short") is None and r.get("t") is None)
    check("expired exists", r.exists("short", "shorter", "t"), 0)
    check("expireat past deletes", r.set("old", "v") and r.expireat("old", 1), True)
    check("old gone", r.get("old"), None)

    # Keyspace.
    r.flushdb()
    r.mset({f"key:{i}": str(i) for i in range(25)})
    check("dbsize", r.dbsize(), 25)
    check("keys", sorted(r.keys("key:1*")), sorted(f"key:1{s}".encode() for s in ["", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]))
    scanned = list(r.scan_iter(match="key:*", count=4))
    check("scan returns every key once", sorted(scanned), sorted(f"key:{i}".encode() for i in range(25)))
    check("flushall", r.flushall(), True)
    check("dbsize after flush", r.dbsize(), 0)
    now = r.time()
    check("time", len(now) == 2 and now[0] > 1_600_000_000, True)

    # Connection commands.
    check("client id", isinstance(r.client_id(), int), True)
    check("client setname", r.client_setname("tester"), True)
    check("client getname", r.client_getname(), "tester")
    check("client info name", r.client_info()["name"], "tester")
    check("command count", r.command_count() > 20, True)

    # A transaction pipeline: MULTI ... EXEC, one log entry.
    pipe = r.pipeline()  # transaction=True by default
    pipe.set("a", "1").incr("a").get("a")
    check("transaction", pipe.execute(), [True, 2, b"2"])
    # A runtime error inside EXEC is that command's reply; the others apply.
    pipe = r.pipeline()
    pipe.set("b", "x").incr("b").set("c", "y")
    results = pipe.execute(raise_on_error=False)
    check("exec first", results[0], True)
    check("exec error", isinstance(results[1], redis.ResponseError), True)
    check("exec last", results[2], True)
    check("c applied", r.get("c"), b"y")

    # WATCH: a change by another client after WATCH makes EXEC answer nil.
    other = redis.Redis(port=port)
    with r.pipeline() as pipe:
        pipe.watch("w")
        other.set("w", "changed")
        pipe.multi()
        pipe.set("w", "mine")
        try:
            pipe.execute()
            raise AssertionError("EXEC succeeded although the watched key changed")
        except redis.WatchError:
            pass
    check("watched value kept", r.get("w"), b"changed")
    # Unchanged watched key: EXEC applies.
    with r.pipeline() as pipe:
        pipe.watch("w")
        current = pipe.get("w")
        pipe.multi()
        pipe.set("w", current + b"+1")
        check("watch exec", pipe.execute(), [True])
    check("watched update", r.get("w"), b"changed+1")

    # The same through RESP2.
    r2 = redis.Redis(port=port, protocol=2)
    check("resp2 get missing", r2.get("missing"), None)
    pipe = r2.pipeline()
    pipe.set("r2", "1").incr("r2")
    check("resp2 transaction", pipe.execute(), [True, 2])
    print("redis-py checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - report any failure with its text
        print(f"FAILED: {type(error).__name__}: {error}")
        sys.exit(1)
