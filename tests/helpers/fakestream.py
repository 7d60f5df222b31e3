"""The byte plumbing of `zfs send` / `zfs receive -s` for the fake zfs binary (fakesan.py).

Not ZFS: a stream is a header line and a payload derived from the snapshot name, enough to
prove what the driver's pipe()/transfer.send() must guarantee - every byte arrives in order
(sha256), a broken stream leaves a resumable partial state with a receive_resume_token, `send
-t` continues from its offset, and `receive -A` frees the partial state.  The real OpenZFS
behaviour is proven against the SAN VM (tests/system).

State under the fake SAN's directory: recv/<ds>.partial (payload so far) + .meta (snap, total),
recv/<ds>.done ("BYTES SHA256").  Stdlib only: the fake zfs runs with `python3 -S`.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys

HEADER = b"ZFAKESTREAM %s %d %d\n"       # snap, offset, total


def _payload_block(snap: str) -> bytes:
    return hashlib.sha256(snap.encode()).digest() * 8192          # 256 KiB


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _size(d: str) -> int:
    try:
        return int(_read(os.path.join(d, "send_size")))
    except OSError:
        return 1 << 20


def _key(ds: str) -> str:
    return ds.replace("/", "%")


def _path(d: str, ds: str, ext: str) -> str:
    os.makedirs(os.path.join(d, "recv"), exist_ok=True)
    return os.path.join(d, "recv", _key(ds) + ext)


def token_for(snap: str, offset: int, total: int) -> str:
    return "1-%x-%x-%s" % (offset, total, snap.encode().hex())     # snap: 8+ characters


def parse_token(token: str):
    _v, off, total, name = token.split("-", 3)
    return bytes.fromhex(name).decode(), int(off, 16), int(total, 16)


def _kill_budget(d: str):
    p = os.path.join(d, "send_kill")
    try:
        after, times = (int(x) for x in _read(p).split())
    except OSError:
        return None
    if times <= 1:
        os.unlink(p)
    else:
        _write(p, f"{after} {times - 1}")
    return after


def send(d: str, snap: str, offset: int, total: int) -> int:
    out = sys.stdout.buffer
    out.write(HEADER % (snap.encode(), offset, total))
    kill_after = _kill_budget(d)
    block = _payload_block(snap)
    pos, sent = offset, 0
    while pos < total:
        start = pos % len(block)
        n = min(len(block) - start, total - pos)
        if kill_after is not None and sent + n > kill_after:
            out.write(block[start:start + kill_after - sent])
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        out.write(block[start:start + n])
        pos += n
        sent += n
    out.flush()
    return 0


def receive(d: str, ds: str) -> int:
    inp = sys.stdin.buffer
    head = inp.readline()
    if not head:                  # nothing sent at all (the wrapper's exec tests): no-op
        return 0
    parts = head.split()
    if len(parts) != 4 or parts[0] != b"ZFAKESTREAM":
        sys.stderr.write("cannot receive: invalid stream (bad magic number)\n")
        return 1
    snap, offset, total = parts[1].decode(), int(parts[2]), int(parts[3])
    partial, meta, done = (_path(d, ds, e) for e in (".partial", ".meta", ".done"))
    if offset:
        if not os.path.exists(meta) or os.path.getsize(partial) != offset:
            sys.stderr.write("cannot receive resume stream: kernel modules must be upgraded "
                             "to receive this stream.\n")
            return 1
    else:
        if os.path.exists(done) or os.path.exists(meta):
            sys.stderr.write(f"cannot receive new filesystem stream: destination '{ds}' "
                             "exists\n")
            return 1
        _write(partial, "")
        _write(meta, f"{snap} {total}")
    with open(partial, "ab") as f:
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            f.write(chunk)
    got = os.path.getsize(partial)
    if got < total:
        sys.stderr.write("cannot receive new filesystem stream: checksum mismatch or "
                         "incomplete stream.\nPartially received snapshot is saved.\n"
                         "A resuming stream can be generated on the sending system by "
                         "running:\n    zfs send -t %s\n" % token_for(snap, got, total))
        return 1
    h = hashlib.sha256()
    with open(partial, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _write(done, f"{got} {h.hexdigest()}")
    os.unlink(partial)
    os.unlink(meta)
    return 0


def main(d: str, a: list) -> int:
    if a[:2] == ["send", "-t"]:
        try:
            snap, offset, total = parse_token(a[2])
        except ValueError:          # a token this fake did not make: the argv was recorded
            sys.stderr.write("fake zfs: not a token of this fake SAN\n")
            return 0
        return send(d, snap, offset, total)
    if a[:1] == ["send"]:
        return send(d, a[-1], 0, _size(d))
    if a[:2] == ["receive", "-A"]:
        ds = a[2]
        if not os.path.exists(_path(d, ds, ".meta")):
            sys.stderr.write(f"'{ds}' does not have any resumable receive state to abort\n")
            return 1
        for e in (".partial", ".meta"):
            os.unlink(_path(d, ds, e))
        return 0
    if a[:1] == ["receive"]:
        return receive(d, a[-1])
    # zfs get -H -p -o name,property,value receive_resume_token DS
    ds = a[-1]
    meta = _path(d, ds, ".meta")
    if os.path.exists(meta):
        snap, total = _read(meta).split()
        value = token_for(snap, os.path.getsize(_path(d, ds, ".partial")), int(total))
    else:           # a complete or an unknown dataset (the fake zfs list says it exists)
        value = "-"
    print(f"{ds}\treceive_resume_token\t{value}")
    return 0


def received(d: str) -> dict:
    out = {}
    rd = os.path.join(d, "recv")
    for name in sorted(os.listdir(rd)) if os.path.isdir(rd) else ():
        if name.endswith(".done"):
            out[name[:-5].replace("%", "/")] = _read(os.path.join(rd, name))
    return out


def partials(d: str) -> list:
    rd = os.path.join(d, "recv")
    return sorted(n[:-5].replace("%", "/") for n in (os.listdir(rd) if os.path.isdir(rd)
                                                     else ()) if n.endswith(".meta"))


def expected(snap: str, total: int) -> str:
    """What received() shows for a complete stream of snap with total payload bytes."""
    block = _payload_block(snap)
    h = hashlib.sha256()
    pos = 0
    while pos < total:
        n = min(len(block), total - pos)
        h.update(block[:n])
        pos += n
    return f"{total} {h.hexdigest()}"
