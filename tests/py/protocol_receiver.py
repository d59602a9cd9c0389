#!/usr/bin/env python3
"""Independent receiver for the oodmon alarm protocol, version 4, written from PROTOCOL.md alone.

Usage: protocol_receiver.py FILE|-      decode raw wire bytes, print one JSON event per line
       protocol_receiver.py --self-test check against the worked examples in PROTOCOL.md

Standard library only. Rule 6 (silence) needs time and is not applied.
"""
import json
import struct
import sys
from collections import deque

VERSION = 4
HEADER_LEN, CRC_LEN = 18, 4
MAX_ENCODED = 36  # "Largest frame on the wire: 37 bytes including the delimiter"
STATES = {0: "OK", 1: "OOD", 2: "FAULT"}
# code: (name, states it may accompany); code 0 "none" goes with no state, so it is rejected
REASONS = {
    1: ("ood_frames", {1}), 2: ("cleared", {0}), 3: ("no_frames", {2}),
    4: ("frozen_camera", {2}), 5: ("inference_error", {2}), 6: ("non_finite_score", {2}),
    7: ("bad_frames", {2}), 8: ("output_error", {2}), 9: ("starting", {2}), 10: ("stopping", {2}),
    11: ("frames_dropped", {2}), 12: ("camera_dark", {2}), 13: ("camera_overexposed", {2}),
    14: ("camera_low_contrast", {2}), 15: ("camera_occluded", {2}), 16: ("camera_noisy", {2}),
    17: ("camera_blurred", {2}),
    18: ("camera_oversaturated", {2}),
}
TYPES = {1: ("heartbeat", 4), 2: ("state_change", 6), 3: ("score", 13)}
PAYLOAD_FMT = {1: "<BBH", 2: "<BBf", 3: "<ffHBH"}
WINDOW, MAX_REJECTED = 100, 2

def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # 0x1EDC6F41 reflected
        table.append(c)
    return table

_TABLE = _make_table()

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF

class Reject(Exception):
    def __init__(self, why, version=None):
        super().__init__(why)
        self.why, self.version = why, version

def cobs_decode(enc):
    out, i = bytearray(), 0
    while i < len(enc):
        c = enc[i]
        if c == 0 or i + c > len(enc):  # a zero inside, or a code running past the frame's end
            raise Reject("cobs")
        out += enc[i + 1:i + c]
        i += c
        if c < 255 and i < len(enc):
            out.append(0)
    return bytes(out)

def cobs_encode(data):
    out, block = bytearray(), bytearray()
    for b in data:
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block
                block = bytearray()
    return bytes(out + bytes([len(block) + 1]) + block)

def decode_frame(enc):
    """Encoded frame (without the 0x00 delimiter) -> dict of fields, or raise Reject."""
    if len(enc) > MAX_ENCODED:
        raise Reject("too_long")
    msg = cobs_decode(enc)
    if len(msg) < CRC_LEN + 1:
        raise Reject("length")
    if crc32c(msg[:-CRC_LEN]) != struct.unpack_from("<I", msg, len(msg) - CRC_LEN)[0]:
        raise Reject("crc")
    if msg[0] != VERSION:
        raise Reject("version", msg[0])
    if len(msg) < HEADER_LEN + CRC_LEN:
        raise Reject("length")
    _, mtype, session, seq, ts = struct.unpack_from("<BBIIQ", msg, 0)
    if mtype not in TYPES:
        raise Reject("type")
    if len(msg) - HEADER_LEN - CRC_LEN != TYPES[mtype][1]:
        raise Reject("length")
    f = {"type": mtype, "session": session, "sequence": seq, "timestamp_ms": ts,
         "state": None, "reason": None, "period_ms": None}
    vals = struct.unpack_from(PAYLOAD_FMT[mtype], msg, HEADER_LEN)
    if mtype in (1, 2):
        state, reason = vals[0], vals[1]
        if state not in STATES or reason not in REASONS or state not in REASONS[reason][1]:
            raise Reject("value")  # unknown state or reason, or a reason not of this state
        f["state"], f["reason"] = state, reason
    if session == 0 or (mtype == 1 and vals[2] == 0):
        raise Reject("value")  # session 0, heartbeat period 0
    if mtype == 1:
        f["period_ms"] = vals[2]
    elif mtype == 2:
        f["score"] = vals[2]
    else:
        f.update(score=vals[0], threshold=vals[1], cluster=vals[2], decision=vals[3],
                 p_value=vals[4])
    return f

def encode_message(f):
    """Fields -> message bytes (header | payload | CRC), before COBS."""
    head = struct.pack("<BBIIQ", VERSION, f["type"], f["session"], f["sequence"],
                       f["timestamp_ms"])
    t = f["type"]
    if t == 1:
        pay = struct.pack(PAYLOAD_FMT[1], f["state"], f["reason"], f["period_ms"])
    elif t == 2:
        pay = struct.pack(PAYLOAD_FMT[2], f["state"], f["reason"], f["score"])
    else:
        pay = struct.pack(PAYLOAD_FMT[3], f["score"], f["threshold"], f["cluster"],
                          f["decision"], f["p_value"])
    body = head + pay
    return body + struct.pack("<I", crc32c(body))

class Receiver:
    def __init__(self, emit):
        self.emit = emit
        self.buf = bytearray()
        self.session = None
        self.previous = None  # the session before the current one (rule 2)
        self.expected = None
        self.window = deque(maxlen=WINDOW)  # True = rejected
        self.unreliable = False
        self.counts = {"messages": 0, "lost": 0, "stale": 0, "restarts": 0, "rejected": 0}

    def feed(self, data):
        for b in data:
            if b != 0:
                self.buf.append(b)
            elif self.buf:  # an empty frame (0x00 0x00) is skipped, not counted
                enc, self.buf = bytes(self.buf), bytearray()
                self.frame(enc)

    def _outcome(self, rejected):
        self.window.append(rejected)
        n = sum(self.window)
        if n > MAX_REJECTED and not self.unreliable:
            self.unreliable = True
            self.emit({"event": "unreliable", "rejected": n})
        elif n <= MAX_REJECTED and self.unreliable:
            self.unreliable = False
            self.emit({"event": "reliable"})

    def frame(self, enc):
        try:
            m = decode_frame(enc)
        except Reject as r:
            self.counts["rejected"] += 1
            self.emit({"event": "rejected", "why": r.why, "version": r.version})
            self._outcome(True)
            return
        seq = m["sequence"]
        if self.session is None:  # rule 1
            self.session = m["session"]
        elif m["session"] != self.session and m["session"] == self.previous:  # rule 2: late
            self.emit({"event": "stale", "sequence": seq})
            self.counts["stale"] += 1
            self._outcome(False)
            return
        elif m["session"] != self.session:  # rule 2
            self.emit({"event": "restart", "previous": self.session, "session": m["session"],
                       "lost_at_start": seq})
            self.counts["restarts"] += 1
            self.counts["lost"] += seq
            self.previous = self.session
            self.session = m["session"]
        else:
            d = (seq - self.expected) % 2 ** 32
            if 1 <= d <= 2 ** 31 - 1:  # rule 4
                self.emit({"event": "lost", "lost": d, "expected": self.expected, "got": seq})
                self.counts["lost"] += d
            elif d != 0:  # rule 5
                self.emit({"event": "stale", "sequence": seq})
                self.counts["stale"] += 1
                self._outcome(False)
                return
        self.expected = (seq + 1) % 2 ** 32
        self.counts["messages"] += 1
        self.emit({"event": "message", "session": m["session"], "sequence": seq,
                   "type": TYPES[m["type"]][0],
                   "state": STATES.get(m["state"]) if m["state"] is not None else None,
                   "reason": REASONS[m["reason"]][0] if m["reason"] is not None else None,
                   "period_ms": m["period_ms"]})
        self._outcome(False)

    def summary(self):
        return dict({"event": "summary"}, **self.counts)

EXAMPLES = [  # (message hex, wire hex, expected fields) from PROTOCOL.md "Worked examples"
    ("04 01 e3 91 5c 2a 00 00 00 00 00 70 c2 c7 9a 01 00 00 02 09 c8 00 1b 8c d6 ea",
     "07 04 01 e3 91 5c 2a 01 01 01 01 06 70 c2 c7 9a 01 01 04 02 09 c8 05 1b 8c d6 ea 00",
     {"type": 1, "session": 0x2A5C91E3, "sequence": 0, "timestamp_ms": 1764288000000,
      "state": 2, "reason": 9, "period_ms": 200}),
    ("04 02 e3 91 5c 2a 01 00 00 00 fa 70 c2 c7 9a 01 00 00 01 01 00 00 20 3f c3 10 58 f4",
     "08 04 02 e3 91 5c 2a 01 01 01 07 fa 70 c2 c7 9a 01 01 03 01 01 01 07 20 3f c3 10 58 f4 00",
     {"type": 2, "session": 0x2A5C91E3, "sequence": 1, "timestamp_ms": 1764288000250,
      "state": 1, "reason": 1, "period_ms": None, "score": 0.625}),
    ("04 03 e3 91 5c 2a 02 00 00 00 2c 71 c2 c7 9a 01 00 00 00 00 20 3f 00 00 00 3f 03 00 01 "
     "33 03 41 21 72 10",
     "08 04 03 e3 91 5c 2a 02 01 01 07 2c 71 c2 c7 9a 01 01 01 01 03 20 3f 01 01 03 3f 03 08 "
     "01 33 03 41 21 72 10 00",
     {"type": 3, "session": 0x2A5C91E3, "sequence": 2, "timestamp_ms": 1764288000300,
      "state": None, "reason": None, "period_ms": None, "score": 0.625, "threshold": 0.5,
      "cluster": 3, "decision": 1, "p_value": round(0.0125 * 65534)}),
]

def self_test():
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append("%s: got %r, want %r" % (what, got, want))

    check("crc32c('123456789')", hex(crc32c(b"123456789")), hex(0xE3069283))
    for i, (msg_hex, wire_hex, want) in enumerate(EXAMPLES, 1):
        msg, wire = bytes.fromhex(msg_hex), bytes.fromhex(wire_hex)
        check("example %d: wire ends with the delimiter" % i, wire[-1:], b"\x00")
        check("example %d: COBS decode" % i, cobs_decode(wire[:-1]), msg)
        try:
            got = decode_frame(wire[:-1])
        except Reject as r:
            failures.append("example %d rejected: %s" % (i, r.why))
            continue
        check("example %d: fields" % i, got, want)
        check("example %d: re-encoded message" % i, encode_message(want).hex(), msg.hex())
        check("example %d: re-encoded wire" % i, (cobs_encode(msg) + b"\x00").hex(), wire.hex())
    events = []
    rx = Receiver(events.append)
    rx.feed(b"".join(bytes.fromhex(w) for _, w, _ in EXAMPLES))
    check("receiver events", [(e["event"], e["sequence"], e["type"], e["state"], e["reason"],
                               e["period_ms"]) for e in events],
          [("message", 0, "heartbeat", "FAULT", "starting", 200),
           ("message", 1, "state_change", "OOD", "ood_frames", None),
           ("message", 2, "score", None, None, None)])
    check("summary", rx.summary(), {"event": "summary", "messages": 3, "lost": 0, "stale": 0,
                                    "restarts": 0, "rejected": 0})
    print("".join("FAIL %s\n" % f for f in failures), end="", file=sys.stderr)
    print("self-test: %s" % ("FAILED (%d)" % len(failures) if failures else "passed"))
    return 1 if failures else 0

def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data = sys.stdin.buffer.read() if argv[1] == "-" else open(argv[1], "rb").read()
    rx = Receiver(lambda event: print(json.dumps(event)))
    rx.feed(data)  # trailing bytes without a closing 0x00 are not a frame and are ignored
    print(json.dumps(rx.summary()))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
