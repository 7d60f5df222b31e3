"""Stateful property test: no sequence of allowed commands changes or exposes a foreign target
or account of the SAN's tgtd.

A hypothesis RuleBasedStateMachine drives the REAL wrapper (its grammar and main(), in-process)
against FakeTgtd, which starts with foreign targets (other IQN prefixes, and one inside our
prefix that serves a non-zvol device), foreign CHAP accounts (one bound, one not) and a foreign
open target.  The commands are everything the grammar allows for tgtd: export (random
datasets, IQNs - including the foreign ones' -, LUNs, serials, thin/thick, cache, CHAP user and
secret - including the foreign accounts' names -, initiators), unexport, resize-lun,
show-exports and restore-exports, plus a tgtd restart.  After every step:

* every foreign target is exactly as it was (tid, LUNs and their parameters, ACLs, bound
  accounts, sessions), every foreign account exists with its secret;
* a foreign CHAP-protected target still refuses a login without its credentials and with the
  credentials of any account the wrapper created;
* nothing the wrapper made serves a backing store outside <zvol_dir>/<parent>/...;
* show-exports never prints a foreign target or a secret.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize, invariant,
                                 multiple, rule)

from tests.helpers.faketgtd import MODE_ACCOUNT, MODE_DEVICE, MODE_TARGET, OP_BIND, OP_NEW
from tests.helpers.fakesan import FakeSan, load_wrapper

W = load_wrapper()
PFX = "iqn.2010-10.org.openstack:"
FOREIGN_IQNS = ("iqn.2001-04.com.example:backup", "iqn.2001-04.com.example:open",
                PFX + "handmade")
FOREIGN_USERS = {"backupuser": "BackupSecret123", "spare": "SpareSecret12345"}
DATASETS = ["zol/cinder/volume-a", "zol/cinder/volume-b", "zol/cinder-thick/volume-c"]
IQNS = [PFX + "volume-a", PFX + "volume-b", PFX + "volume-c", PFX + "handmade",
        "iqn.2001-04.com.example:backup", PFX + "x"]
USERS = ["u1", "u2", "shared", "backupuser", "spare"]
SECRETS = ["Secret1234567890", "OtherSecret12345", "BackupSecret123"]
INITIATORS = ["ALL", "10.0.0.5", "10.0.0.5,10.0.0.6", "2001:db8::5"]


class ForeignTargetsUntouched(RuleBasedStateMachine):
    exported = Bundle("exported")

    @initialize()
    def setup(self):
        import tempfile
        from pathlib import Path
        self.dir = tempfile.mkdtemp(prefix="stateful-")
        self.fake = FakeSan(Path(self.dir) / "san")
        for ds in DATASETS:
            self.fake.add_zvol(ds)
        t = self.fake.tgtd
        foreign_disk = Path(self.dir) / "foreign.img"
        foreign_disk.write_bytes(b"\0" * 8192)
        for tid, iqn in enumerate(FOREIGN_IQNS, start=1):
            assert t.handle(MODE_TARGET, OP_NEW, tid, 0, f"targetname={iqn}")[0] == 0
            assert t.handle(MODE_DEVICE, OP_NEW, tid, 1, f"path={foreign_disk}")[0] == 0
        for user, secret in FOREIGN_USERS.items():
            assert t.handle(MODE_ACCOUNT, OP_NEW, -1, 0, f"user={user},password={secret}")[0] == 0
        assert t.handle(MODE_ACCOUNT, OP_BIND, 1, 0, "user=backupuser")[0] == 0
        for tid in (1, 2, 3):
            assert t.handle(MODE_TARGET, OP_BIND, tid, 0, "initiator-address=ALL")[0] == 0
        t.targets[1].sessions = 1
        snap = t.snapshot()
        self.foreign = {iqn: snap["targets"][iqn] for iqn in FOREIGN_IQNS}
        self.created_accounts: dict[str, str] = {}

    def teardown(self):
        import shutil
        if hasattr(self, "fake"):
            self.fake.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def wrapper(self, *argv, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        old = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="ascii")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = W.main([str(self.fake.conf), "--", *argv])
        finally:
            sys.stdin = old
        return rc, out.getvalue(), err.getvalue()

    @rule(target=exported, ds=st.sampled_from(DATASETS), iqn=st.sampled_from(IQNS),
          lun=st.sampled_from(["1", "2"]),
          serial=st.sampled_from(["a", "b-1"]), prov=st.sampled_from(["thin", "thick"]),
          wc=st.sampled_from(["wc-on", "wc-off"]), chap=st.booleans(),
          user=st.sampled_from(USERS), secret=st.sampled_from(SECRETS),
          inis=st.sampled_from(INITIATORS))
    def export(self, ds, iqn, lun, serial, prov, wc, chap, user, secret, inis):
        rc, out, err = self.wrapper("zol-wrapper", "export", ds, iqn, lun, serial, prov, wc,
                                    "chap" if chap else "none", inis,
                                    stdin=f"{user} {secret}\n" if chap else "")
        assert rc in (0, W.EXIT_DENIED, W.EXIT_VERB), err
        assert secret not in out + err
        if rc == 0 and chap:
            self.created_accounts[user] = secret
        return iqn if rc == 0 else multiple()

    @rule(iqn=consumes(exported))
    def unexport_exported(self, iqn):
        rc, _, err = self.wrapper("zol-wrapper", "unexport", iqn)
        assert rc in (0, W.EXIT_VERB), err

    @rule(iqn=st.sampled_from(IQNS))
    def unexport(self, iqn):
        rc, _, err = self.wrapper("zol-wrapper", "unexport", iqn)
        assert rc in (0, W.EXIT_DENIED, W.EXIT_VERB), err

    @rule(iqn=st.sampled_from(IQNS))
    def resize(self, iqn):
        rc, _, err = self.wrapper("zol-wrapper", "resize-lun", iqn)
        assert rc in (0, W.EXIT_DENIED, W.EXIT_VERB), err

    @rule()
    def restart_tgtd_and_restore(self):
        """tgt.service restart: tgtd forgets ours; the foreign ones come back from their own
        admin's config (modelled: they are re-created as they were)."""
        t = self.fake.tgtd
        with t.lock:
            keep = {tid: tg for tid, tg in t.targets.items() if tg.iqn in FOREIGN_IQNS}
            accounts = {u: s for u, s in t.accounts.items() if u in FOREIGN_USERS}
            t.targets.clear()
            t.targets.update(keep)
            t.accounts.clear()
            t.accounts.update(accounts)
        rc, out, err = self.wrapper("zol-wrapper", "restore-exports")
        assert rc in (0, W.EXIT_VERB), err
        assert not any(s in out + err for s in SECRETS + list(FOREIGN_USERS.values()))

    @invariant()
    def foreign_unchanged(self):
        if not hasattr(self, "fake"):
            return
        t = self.fake.tgtd
        snap = t.snapshot()
        for iqn, before in self.foreign.items():
            assert snap["targets"].get(iqn) == before, iqn
        for user, secret in FOREIGN_USERS.items():
            assert snap["accounts"].get(user) == secret, user
        # the CHAP-protected foreign target admits nobody else
        assert not t.login(FOREIGN_IQNS[0])
        for user, secret in self.created_accounts.items():
            assert not t.login(FOREIGN_IQNS[0], user=user, secret=secret)
        assert t.login(FOREIGN_IQNS[0], user="backupuser", secret="BackupSecret123")
        # everything else serves only zvols under the parents
        for tg in t.targets.values():
            if tg.iqn in FOREIGN_IQNS:
                continue
            assert tg.iqn.startswith(PFX)
            for lu in tg.luns.values():
                ds = lu.path[len(str(self.fake.zvol_dir)) + 1:]
                assert lu.path.startswith(str(self.fake.zvol_dir) + "/")
                assert ds in DATASETS

    @invariant()
    def show_exports_only_ours(self):
        if not hasattr(self, "fake"):
            return
        rc, out, _ = self.wrapper("zol-wrapper", "show-exports")
        assert rc == 0
        for line in out.splitlines():
            obj = json.loads(line)
            assert obj["iqn"].startswith(PFX)
        assert not any(s in out for s in SECRETS + list(FOREIGN_USERS.values()))


ForeignTargetsUntouched.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None, database=None,
    suppress_health_check=list(HealthCheck))
test_foreign_targets_untouched = ForeignTargetsUntouched.TestCase
