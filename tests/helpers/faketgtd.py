"""A model of tgtd 1.0.85 behind its real management-socket protocol, for tests.

The wrapper speaks tgtd's binary management protocol (struct tgtadm_req + "key=value" text,
answer struct tgtadm_rsp + text; tgt usr/tgtadm.c, usr/mgmt.c).  FakeTgtd serves that protocol
on a unix socket from a thread and keeps tgtd's state: targets (LUN 0 controller + disks with
SCSI id/serial, thin provisioning, online flag, size), ACLs, CHAP accounts and which targets
they are bound to, sessions.  Error codes and the show format follow tgtd's source (target.c,
mgmt.c, iscsi/target.c); tests/functional/test_wrapper_tgtd.py runs the same exports against a
real tgtd and compares what show-exports reports, so the model cannot drift unnoticed.

`login()` answers the question the security tests ask: could an initiator at ADDR with these
credentials (or none) read this LUN?
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

REQ = "=ii64sIiQQIIIIII"
REQ_SIZE = struct.calcsize(REQ)
MODE_TARGET, MODE_DEVICE, MODE_ACCOUNT = 1, 2, 7
OP_NEW, OP_DELETE, OP_SHOW, OP_BIND, OP_UNBIND, OP_UPDATE = 0, 1, 2, 3, 4, 5
(E_OK, E_UNKNOWN, _NOMEM, _NODRV, E_NO_TARGET, E_NO_LUN, _NOSESS, _NOCONN, _NOBIND,
 E_TARGET_EXIST, E_LUN_EXIST, _BINDEXIST, E_ACL_EXIST, E_ACL_NOEXIST, E_USER_EXIST,
 E_NO_USER, _TOOMANY, E_INVALID, _OUTEXIST, E_TARGET_ACTIVE, E_LUN_ACTIVE, _DRVACTIVE,
 E_UNSUPPORTED, E_UNKNOWN_PARAM, _PREVENT) = range(25)


@dataclass
class FLun:
    lun: int
    path: str | None
    size: int
    scsi_id: str
    scsi_sn: str
    thin: bool = False
    online: bool = True
    mode_pages: list[str] = field(default_factory=list)
    active: int = 0          # commands in flight (tests set it)


@dataclass
class FTarget:
    tid: int
    iqn: str
    luns: dict[int, FLun] = field(default_factory=dict)
    acls: list[str] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    sessions: int = 0


def _params(body: str) -> dict[str, str]:
    if body.startswith("targetOps"):
        body = body[10:]
    out: dict[str, str] = {}
    for item in body.split(","):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return out


def _bind(items: list[str], value: str, op: int, exists: int, missing: int) -> tuple[int, str]:
    """OP_BIND/OP_UNBIND of an ACL address or an account on a target's list."""
    if op == OP_BIND:
        if value in items:
            return exists, ""
        items.append(value)
        return E_OK, ""
    if op == OP_UNBIND:
        if value not in items:
            return missing, ""
        items.remove(value)
        return E_OK, ""
    return E_UNSUPPORTED, ""


class FakeTgtd:
    """tgtd's state + request semantics; serve() puts it behind a unix socket."""

    def __init__(self, size_of: Callable[[str], int | None] | None = None) -> None:
        self.targets: dict[int, FTarget] = {}
        self.accounts: dict[str, str] = {}
        self.requests: list[tuple[int, int, int, int, str]] = []   # mode, op, tid, lun, body
        self.lock = threading.RLock()
        self.size_of = size_of or self._file_size
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.path: str | None = None

    @staticmethod
    def _file_size(path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    # -- state changes (what tgtd does) -------------------------------------------------------

    def by_iqn(self, iqn: str) -> FTarget | None:
        return next((t for t in self.targets.values() if t.iqn == iqn), None)

    def handle(self, mode: int, op: int, tid: int, lun: int, body: str,
               force: int = 0) -> tuple[int, str]:
        with self.lock:
            self.requests.append((mode, op, tid, lun, body))
            return self._handle(mode, op, tid, lun, body, force)

    def _handle(self, mode, op, tid, lun, body, force):
        p = _params(body)
        t = self.targets.get(tid)
        if mode == MODE_TARGET:
            if op == OP_SHOW:
                return E_OK, self.show_text()
            if op == OP_NEW:
                if t is not None or self.by_iqn(p.get("targetname", "")):
                    return E_TARGET_EXIST, ""
                self.targets[tid] = FTarget(tid, p["targetname"])
                return E_OK, ""
            if t is None:
                return E_NO_TARGET, ""
            if op == OP_DELETE:
                if t.sessions and not force:
                    return E_TARGET_ACTIVE, ""
                del self.targets[tid]
                return E_OK, ""
            return _bind(t.acls, body.partition("initiator-address=")[2], op, E_ACL_EXIST,
                         E_ACL_NOEXIST)
        if mode == MODE_DEVICE:
            if t is None:
                return E_NO_TARGET, ""
            if op == OP_NEW:
                if lun in t.luns or lun == 0:
                    return E_LUN_EXIST, ""
                size = self.size_of(p.get("path", ""))
                if size is None:
                    return E_INVALID, ""
                t.luns[lun] = FLun(lun, p["path"], size, f"IET     {tid:04x}{lun:04x}",
                                   f"beaf{tid}{lun}")
                return E_OK, ""
            lu = t.luns.get(lun)
            if lu is None:
                return E_NO_LUN, ""
            if op == OP_DELETE:
                if lu.active:
                    return E_LUN_ACTIVE, ""
                del t.luns[lun]
                return E_OK, ""
            if op == OP_UPDATE:
                for item in (body[10:] if body.startswith("targetOps") else body).split(","):
                    if not item:
                        continue
                    k, _, v = item.partition("=")
                    if k == "scsi_id":
                        lu.scsi_id = v[:36]
                    elif k == "scsi_sn":
                        lu.scsi_sn = v[:36]
                    elif k == "thin_provisioning":
                        lu.thin = v == "1"
                    elif k == "mode_page":
                        lu.mode_pages.append(v)
                    elif k == "online":
                        lu.online = v == "1"
                    elif k == "path":
                        if lu.online:
                            return E_INVALID, ""
                        size = self.size_of(v)
                        if size is None:
                            return E_INVALID, ""
                        lu.path, lu.size = v, size
                    else:
                        return E_INVALID, ""
                return E_OK, ""
        if mode == MODE_ACCOUNT:
            if op == OP_SHOW:
                return E_OK, "Account list:\n" + "".join(f"    {u}\n" for u in self.accounts)
            user = p.get("user")
            if user is None:
                return E_INVALID, ""
            if op == OP_NEW:
                if user in self.accounts:
                    return E_USER_EXIST, ""
                self.accounts[user] = p.get("password", "")
                return E_OK, ""
            if op == OP_DELETE:
                if user not in self.accounts:
                    return E_NO_USER, ""
                del self.accounts[user]
                for tt in self.targets.values():
                    if user in tt.accounts:
                        tt.accounts.remove(user)
                return E_OK, ""
            if t is None:
                return E_NO_TARGET, ""
            if user not in self.accounts:
                return E_NO_USER, ""
            return _bind(t.accounts, user, op, E_USER_EXIST, E_NO_USER)
        return E_UNSUPPORTED, ""

    def show_text(self) -> str:
        out = []
        for tid in sorted(self.targets):
            t = self.targets[tid]
            out.append(f"Target {tid}: {t.iqn}\n    System information:\n        Driver: iscsi\n"
                       "        State: ready\n    I_T nexus information:\n")
            out.extend(f"        I_T nexus: {i + 1}\n" for i in range(t.sessions))
            out.append("    LUN information:\n")
            luns = [FLun(0, None, 0, f"IET     {tid:04x}0000", f"beaf{tid}0"),
                    *(t.luns[n] for n in sorted(t.luns))]
            for lu in luns:
                kind = "controller" if lu.lun == 0 else "disk"
                out.append(
                    f"        LUN: {lu.lun}\n            Type: {kind}\n"
                    f"            SCSI ID: {lu.scsi_id}\n            SCSI SN: {lu.scsi_sn}\n"
                    f"            Size: {(lu.size + 500000) // 1000000} MB, Block size: "
                    f"{1 if lu.lun == 0 else 512}\n"
                    f"            Online: {'Yes' if lu.online else 'No'}\n"
                    "            Removable media: No\n            Prevent removal: No\n"
                    "            Readonly: No\n            SWP: No\n"
                    f"            Thin-provisioning: {'Yes' if lu.thin else 'No'}\n"
                    f"            Backing store type: {'null' if lu.lun == 0 else 'rdwr'}\n"
                    f"            Backing store path: {lu.path or 'None'}\n"
                    "            Backing store flags: \n")
            out.append("    Account information:\n")
            out.extend(f"        {u}\n" for u in t.accounts)
            out.append("    ACL information:\n")
            out.extend(f"        {a}\n" for a in t.acls)
        return "".join(out)

    # -- what an initiator could do -----------------------------------------------------------

    def login(self, iqn: str, addr: str = "192.0.2.10", user: str | None = None,
              secret: str | None = None) -> bool:
        """Would tgtd let this initiator log in to iqn (and so read its LUNs)?"""
        with self.lock:
            t = self.by_iqn(iqn)
            if t is None or not ("ALL" in t.acls or addr in t.acls):
                return False
            if not t.accounts:
                return True
            return user in t.accounts and self.accounts.get(user) == secret

    def snapshot(self) -> dict:
        """Everything observable, for 'nothing foreign changed' comparisons."""
        with self.lock:
            return {
                "targets": {t.iqn: (t.tid, tuple(sorted(
                    (lu.lun, lu.path, lu.size, lu.scsi_id, lu.scsi_sn, lu.thin, lu.online,
                     tuple(lu.mode_pages)) for lu in t.luns.values())),
                    tuple(t.acls), tuple(t.accounts), t.sessions)
                    for t in self.targets.values()},
                "accounts": dict(self.accounts)}

    # -- the socket ---------------------------------------------------------------------------

    def serve(self, path: str) -> FakeTgtd:
        self.path = path
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(16)
        srv.settimeout(0.2)
        self._server = srv
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faketgtd", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                try:
                    self._one(conn)
                except (OSError, struct.error, ValueError):
                    pass

    @staticmethod
    def _recv(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ValueError("short request")
            buf += chunk
        return buf

    def _one(self, conn: socket.socket) -> None:
        hdr = self._recv(conn, REQ_SIZE)
        (mode, op, lld, length, tid, _sid, lun, _cid, _host, _typ, _acdir, _pack,
         force) = struct.unpack(REQ, hdr)
        body = self._recv(conn, length - REQ_SIZE) if length > REQ_SIZE else b""
        assert lld.rstrip(b"\0") == b"iscsi"
        text_body = body.rstrip(b"\0").decode("ascii")
        err, text = self.handle(mode, op, tid, lun, text_body, force)
        data = text.encode() + b"\0" if (text and not err) else b""
        conn.sendall(struct.pack("=II", err, 8 + len(data)) + data)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
