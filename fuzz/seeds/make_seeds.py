#!/usr/bin/env python3
"""Writes hand-made seed inputs into fuzz/corpus/<target>/ (valid messages of every
kind, so the fuzzer starts from the formats instead of discovering the magic numbers).
The layouts follow net/PROTOCOL.md, engine/src/kv.rs and the harness docs in
net/src/fuzzing.rs and wal/src/fuzzing.rs. Run from the repository root."""
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(__file__), "..", "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


def frame(msg_type, payload, flags=0):
    fields = struct.pack("<BBHI", 1, msg_type, flags, len(payload))
    crc = zlib.crc32(payload + fields) & 0xFFFFFFFF
    return b"TALY" + fields + struct.pack("<I", crc) + payload


def u64(*v):
    return struct.pack("<" + "Q" * len(v), *v)


common = u64(1, 2, 9)
append = (common + u64(10, 3, 9, 77, 1234) + struct.pack("<I", 2)
          + u64(11, 4) + b"\x00" + struct.pack("<I", 0)
          + u64(12, 4) + b"\x01" + struct.pack("<I", 3) + b"abc")
response = common + b"\x00" + u64(0, 10) + b"\x01\x01" + u64(3, 7, 12) + u64(5, 6)
vote = common + u64(5, 2) + b"\x01"
# Configuration::encode: voters, outgoing voters, learners, each u32 count + u64 ids.
config = struct.pack("<I", 3) + u64(1, 2, 3) + struct.pack("<I", 0) + struct.pack("<I", 1) + u64(4)
snapshot = (common + u64(100, 7, 4096) + b"\x01" + struct.pack("<II", 5, len(config))
            + config + b"chunk")
messages = {
    1: append, 2: response, 3: vote, 4: common + b"\x01", 5: vote, 6: common + b"\x00",
    7: common, 8: snapshot, 9: common + u64(100),
}

# 1. frames: [limit selector, seed lo, seed hi] + stream
stream = b"".join(frame(t, p) for t, p in list(messages.items())[:4]) + frame(0xF1, b"")
write("frame", "stream", b"\x04\x01\x02" + stream)
write("frame", "one", b"\x05\x00\x00" + frame(7, common))
write("frame", "truncated", b"\x07\x03\x00" + stream[:-5])

# 2. Raft codec: [msg type, limit (255 = default)] + payload
for t, p in messages.items():
    write("raft_codec", "type%d" % t, bytes([t, 255]) + p)

# 3. handshake: [node id] + HELLO or REJECT payload
hello_v2 = struct.pack("<I", 2) + u64(7, 1, 2) + struct.pack("<H", 14) + b"127.0.0.1:6379"
hello_v1 = struct.pack("<I", 1) + u64(7, 3, 2)
write("handshake", "hello2", b"\x02" + hello_v2)
write("handshake", "hello1", b"\x02" + hello_v1)
write("handshake", "reject", b"\x00" + b"\x03dialed node 2 but reached node 1")

# 4. RESP: [limits/chunk selector, seed lo, seed hi] + stream
resp = (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\nPING\r\n*0\r\n*-1\r\n"
        b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n\r\nSET  a   b\n")
write("resp", "requests", b"\x05\x11\x22" + resp)
write("resp", "requests-small-limits", b"\x04\x33\x44" + resp)
write("resp", "replies", b"\x03\x01\x00"
      + b"*7\r\n+OK\r\n-NOTLEADER 127.0.0.1:6379\r\n:-42\r\n$4\r\na\r\nb\r\n$-1\r\n*-1\r\n*0\r\n")

# 6. KV log payloads: [limits selector] + payload
def kv(client, seq, op, *args, counted=False, pairs=False):
    out = b"\x01" + u64(client, seq) + bytes([op])
    if counted:
        out += struct.pack("<I", len(args) // (2 if pairs else 1))
    for a in args:
        out += struct.pack("<I", len(a)) + a
    return out

write("kv_request", "set", b"\x00" + kv(5, 1, 1, b"key", b"value"))
write("kv_request", "get", b"\x01" + kv(0, 0, 2, b"key"))
write("kv_request", "del", b"\x00" + kv(5, 2, 3, b"a", b"b", counted=True))
write("kv_request", "exists", b"\x01" + kv(0, 0, 4, b"a", counted=True))
write("kv_request", "incr", b"\x00" + kv(5, 3, 5, b"n"))
write("kv_request", "mget", b"\x01" + kv(0, 0, 6, b"a", b"b", b"c", counted=True))
write("kv_request", "mset", b"\x00" + kv(5, 4, 7, b"a", b"1", b"b", b"2", counted=True, pairs=True))
write("kv_request", "cas", b"\x00" + kv(5, 5, 8, b"k", b"old", b"new"))

# 5. WAL recovery: a program (see wal/src/fuzzing.rs); op byte low 2 bits = kind,
# high bits = template segment.
write("wal_recovery", "templates", bytes([0, 0, 0, 0, 4, 0, 0, 8, 0, 0, 12, 0, 0]))
write("wal_recovery", "bitflip", bytes([0, 0, 1, 100, 0, 3, 0, 4, 0, 0]))
write("wal_recovery", "appended-batch", bytes([0, 0, 0, 0, 2, 2, 2, 21, 3, 0, 21, 2, 0, 5, 0, 2, 0, 7]))
write("wal_recovery", "fresh", bytes([1, 3, 0, 1, 0, 1, 0, 1, 1, 0, 1, 2, 0, 1, 0, 1, 0, 3, 0]))
write("wal_recovery", "raw", bytes([0, 1, 1, 4]) + b"LOCK" + bytes([16, 0]) + b"garbage garbage!")
