"""The boot-test scenarios, run in order on one virtual robot per setup.

Each scenario starts from where the previous one left the robot, as a robot in the field would
live through them, which keeps the number of (slow, emulated) boots down:

1. update       fresh golden image boots A; install 2.0.0 over HTTP, trial on B, committed, stays on B
2. bad-health   3.0.0's health check fails: back to B, status names the check
3. panic        4.0.0's kernel panics: the attempts run out, B boots, rollback recorded
4. install-cut  power cuts at six moments of installing 5.0.0: B always boots; a retry succeeds
5. commit-cut   power cuts during the commit of 6.0.0: the robot boots and the state file agrees
                with the boot env
6. seeded-cuts  power cuts at seeded pseudo-random moments of installs and commits (--cuts N)
7. apps         an app release beside the OS, no reboot: demo 1.0.0 (an HTTP service) installed
                and answering, 2.0.0 restarts it and answers, 3.0.0 fails its check and is
                switched back (2.0.0 answers), `app rollback --to 1.0.0` without a download

A scenario's result is pass or fail with the reason; boot-to-commit is the time from power-on of
the trial boot to the end of rota-commit.service.
"""

import json
import random
import re
import subprocess
import time
import traceback
from dataclasses import dataclass, field

import build
import harness
import setups

BOOT_TIMEOUT = 300  # power-on to shell; TCG on a loaded 2-core machine is slow
INSTALL_TIMEOUT = 900
COMMIT_TIMEOUT = 300

CMDLINE_SLOT_RE = r"Kernel command line: .*rota\.slot=([AB])"
COMMIT_DONE_RE = r"ROTA-TEST commit-finished result=(\S*) status=(\S*)"
PANIC_RE = r"Kernel panic - not syncing"


class ScenarioFailed(AssertionError):
    pass


def check(cond, message):
    if not cond:
        raise ScenarioFailed(message)


@dataclass
class Result:
    name: str
    ok: bool = False
    detail: str = ""
    boot_to_commit: float = None
    seconds: float = 0.0
    notes: list = field(default_factory=list)


class Robot:
    """One virtual robot: a Machine plus the Rota-specific ways to look at it."""

    def __init__(self, setup, artifacts, machine, server, log, cuts=None, packages=None):
        self.setup = setup
        self.art = artifacts
        self.m = machine
        self.server = server
        self.packages = packages  # BundleServer of the fleet's .debs, when this setup tests them
        self.log = log
        self.last_install_output = ""
        self.cuts = cuts or CutPlan()
        self.tally = []  # one dict per power cut of scenario 6, in order

    # --- booting ----------------------------------------------------------------------------
    def power_on(self):
        self.m.boot()

    def booted_slot_from_console(self, timeout=BOOT_TIMEOUT):
        """The slot the bootloader chose, from the kernel's command line on the console."""
        return self.m.expect(CMDLINE_SLOT_RE, timeout).group(1)

    def boot(self):
        """Powers on and waits for the shell; returns the slot the kernel was started from."""
        self.power_on()
        slot = self.booted_slot_from_console()
        self.m.login(BOOT_TIMEOUT)
        return slot

    def reboot(self):
        """A clean reboot: QEMU exits (-no-reboot), then the robot powers on again."""
        self.m.send_nowait("systemctl reboot")
        self.m.wait_stopped(180)
        return self.boot()

    def wait_commit(self, timeout=COMMIT_TIMEOUT):
        """Waits for rota-commit.service to finish this boot; returns (result, status, seconds
        since power-on)."""
        m, at = self.m.wait_for(COMMIT_DONE_RE, timeout)
        return m.group(1), m.group(2), at

    # --- looking ----------------------------------------------------------------------------
    def status(self):
        _, out = self.m.sh("rota-updater status --json 2>/dev/null")
        return parse_json(out)

    def bootctl(self):
        _, out = self.m.sh("rota-bootctl status --json 2>/dev/null")
        return parse_json(out)

    def install(self, version, *extra, env=""):
        url = self.server.url(f"rota-{version}.rota")
        t = time.monotonic()
        rc, out = self.m.sh(f"{env} rota-updater install {' '.join(extra)} {url}",
                            timeout=INSTALL_TIMEOUT, check=False)
        return rc, out, time.monotonic() - t

    def arm_commit_failpoint(self, name):
        """Makes the next boot's rota-commit stop at failpoint name (one boot only)."""
        self.m.sh(f"mkdir -p /data/rota-test && echo 'ROTA_FAILPOINT={name}' >"
                  " /data/rota-test/commit.env && sync")


def parse_json(text):
    start = text.find("{")
    end = text.rfind("}")
    if start < 0 or end < 0:
        raise ScenarioFailed(f"no JSON in output: {text!r}")
    return json.loads(text[start:end + 1])


def slot_version(status, slot):
    for s in status.get("slots", []):
        if s.get("slot") == slot:
            return s.get("version")
    return None


def expect_committed(robot, slot, version, what):
    st = robot.status()
    robot.log(f"status after {what}: {json.dumps(st)}")
    check(st.get("booted") == slot, f"{what}: booted {st.get('booted')}, expected {slot}")
    last = st.get("last_result") or {}
    check(last.get("result") == "committed" and last.get("version") == version,
          f"{what}: last result {last}, expected committed {version}")
    check(slot_version(st, slot) == version,
          f"{what}: slot {slot} holds {slot_version(st, slot)}, expected {version}")
    check(st.get("pending") is None, f"{what}: still pending {st.get('pending')}")
    return st


def expect_rolled_back(robot, slot, version, what):
    st = robot.status()
    robot.log(f"status after {what}: {json.dumps(st)}")
    check(st.get("booted") == slot, f"{what}: booted {st.get('booted')}, expected {slot}")
    last = st.get("last_result") or {}
    check(last.get("result") == "rolled-back" and last.get("version") == version,
          f"{what}: last result {last}, expected rolled-back {version}")
    check(st.get("pending") is None, f"{what}: still pending {st.get('pending')}")
    return st, last


def install_and_reboot(robot, version, *extra):
    rc, out, secs = robot.install(version, *extra)
    check(rc == 0, f"install {version} exited {rc}: {out[-2000:]}")
    robot.log(f"installed {version} in {secs:.1f}s")
    st = robot.status()
    pend = st.get("pending") or {}
    check(pend.get("stage") == "reboot-pending" and pend.get("version") == version,
          f"after install {version}: pending {pend}")
    robot.last_install_output = out
    return pend["slot"], secs


TRANSFER_RE = r"\((\S+ \S*B) fetched, (\S+ \S*B) reused from the booted slot\)"


def expect_delta(robot, res, version):
    """The last install copied from the booted slot: its bytes came mostly from there."""
    m = re.search(TRANSFER_RE, robot.last_install_output)
    check(m is not None, f"install {version} says nothing of fetched and reused bytes:"
                         f" {robot.last_install_output[-1000:]}")
    fetched, reused = m.groups()
    robot.log(f"install {version}: {fetched} fetched, {reused} reused")
    res.notes.append(f"delta: {fetched} fetched, {reused} reused")
    check(not reused.startswith("0 "), f"install {version} reused nothing from the booted slot")
    check(fetched.endswith(("KiB", " B")) or float(fetched.split()[0]) < 32,
          f"install {version} fetched {fetched}: not a delta")


def fetch(robot, url, dest):
    """Downloads url to dest on the guest with bash alone (the minimal rootfs has no curl)."""
    host, port, path = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url).groups()
    robot.m.sh(f"exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3"
               # Header lines end in CR: the blank line that ends them is the CR alone.
               " && while IFS= read -r l <&3 && [ ${#l} -gt 1 ]; do :; done"
               f" && cat <&3 > {dest}; rc=$?; exec 3<&-; (exit $rc)")


def fleet_packages(robot, res):
    """rota-server and rota-cli on a running Debian with systemd: `dpkg -i` creates the system
    user, enables and starts rota-server.service, which answers /healthz; `rota whoami` works
    with the admin key its first start left in the journal; a purge stops the server and keeps
    its data."""
    t = time.monotonic()
    debs = robot.art.fleet_debs
    robot.m.sh("mkdir -p /run/rota-test/debs")
    for deb in debs:
        fetch(robot, robot.packages.url(deb.name), f"/run/rota-test/debs/{deb.name}")
    _, sums = robot.m.sh("cd /run/rota-test/debs && sha256sum *.deb")
    for deb in debs:
        digest = subprocess.run(["sha256sum", str(deb)], check=True, capture_output=True,
                                text=True).stdout.split()[0]
        check(f"{digest}  {deb.name}" in sums, f"{deb.name} arrived damaged: {sums}")
    robot.m.sh("dpkg -i /run/rota-test/debs/*.deb", timeout=300)
    _, owner = robot.m.sh("systemctl is-enabled rota-server; getent passwd rota-server;"
                          " stat -c '%U:%G %a' /etc/rota/server.toml")
    check("enabled" in owner and "rota-server:" in owner and "root:rota-server 640" in owner,
          f"after dpkg -i: {owner}")
    _, health = robot.m.sh(
        "for i in $(seq 90); do if exec 3<>/dev/tcp/127.0.0.1/8080; then"
        " printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3; exec 3<&-; break; fi;"
        " sleep 1; done 2>/dev/null; systemctl is-active rota-server", timeout=180, check=False)
    if not (" 200 " in health and "ok" in health and health.split()[-1] == "active"):
        _, journal = robot.m.sh("journalctl -u rota-server -o cat --no-pager | tail -n 20",
                                check=False)
        check(False, f"rota-server after install: {health}; its journal: {journal}")
    _, whoami = robot.m.sh(
        "key=$(journalctl -u rota-server -o cat | sed -n 's/.*bootstrap admin API key"
        " (shown only now): //p' | head -n1);"
        " ROTA_API_KEY=$key rota --server http://127.0.0.1:8080 --json whoami")
    check(parse_json(whoami).get("role") == "admin", f"rota whoami: {whoami}")
    robot.m.sh("dpkg --purge rota-server rota-cli", timeout=300)
    rc, after = robot.m.sh("systemctl is-active rota-server; test -e /var/lib/rota-server/rota.db",
                           check=False)
    check(rc == 0 and "inactive" in after, f"after purge: rc {rc}, {after}")
    res.notes.append(f"fleet packages {time.monotonic() - t:.0f}s")
    robot.log("fleet packages: installed, rota-server active and answering, purged")


# --- scenarios -----------------------------------------------------------------------------
def s1_update(robot, res):
    slot = robot.boot()
    check(slot == "A", f"fresh golden image booted {slot}, expected A")
    robot.wait_commit()
    st = robot.status()
    robot.log(f"fresh status: {json.dumps(st)}")
    check(st.get("booted") == "A", f"status says booted {st.get('booted')}")
    if robot.art.fleet_debs:
        fleet_packages(robot, res)
    target, secs = install_and_reboot(robot, "2.0.0")
    res.notes.append(f"install {secs:.0f}s")
    check(target == "B", f"2.0.0 went to {target}, expected B")
    robot.m.send_nowait("systemctl reboot")
    robot.m.wait_stopped(180)
    slot = robot.boot()
    check(slot == "B", f"after installing 2.0.0 the robot booted {slot}, expected B (trial)")
    result, status, at = robot.wait_commit()
    res.boot_to_commit = at
    check(status == "0", f"commit on B finished {result}/{status}")
    expect_committed(robot, "B", "2.0.0", "trial of 2.0.0")
    slot = robot.reboot()
    check(slot == "B", f"the boot after the commit chose {slot}, expected B")
    robot.wait_commit()
    expect_committed(robot, "B", "2.0.0", "second boot of 2.0.0")


def s2_bad_health(robot, res):
    # B runs 2.0.0, which this updater installed: 3.0.0 is planned against its chunk index.
    target, _ = install_and_reboot(robot, "3.0.0")
    check(target == "A", f"3.0.0 went to {target}, expected A")
    expect_delta(robot, res, "3.0.0")
    robot.m.send_nowait("systemctl reboot")
    robot.m.wait_stopped(180)
    robot.power_on()
    slot = robot.booted_slot_from_console()
    check(slot == "A", f"the trial boot of 3.0.0 chose {slot}, expected A")
    # The commit fails the trial and reboots the robot by itself.
    result, status, at = robot.wait_commit()
    res.boot_to_commit = at
    robot.log(f"trial of 3.0.0: commit {result}/{status} at {at:.1f}s")
    robot.m.wait_stopped(300)
    slot = robot.boot()
    check(slot == "B", f"after the failed trial the robot booted {slot}, expected B")
    robot.wait_commit()
    st, last = expect_rolled_back(robot, "B", "3.0.0", "failed health check")
    check(last.get("failed_check") == "robot-app",
          f"status names check {last.get('failed_check')!r}, expected 'robot-app'")
    res.notes.append(f"reason: {last.get('reason')}, check: {last.get('failed_check')}")


def s3_panic(robot, res):
    target, _ = install_and_reboot(robot, "4.0.0")
    check(target == "A", f"4.0.0 went to {target}, expected A")
    robot.m.send_nowait("systemctl reboot")
    robot.m.wait_stopped(180)
    robot.power_on()
    slot = robot.booted_slot_from_console()
    check(slot == "A", f"the trial boot of 4.0.0 chose {slot}, expected A")
    t = time.monotonic()
    try:
        robot.m.expect(PANIC_RE, 180)
        res.notes.append("kernel panicked")
    except harness.Timeout:
        res.notes.append("boot hung: harness reset")
    # No watchdog is armed this early: the harness is the reset button.
    robot.m.power_cut()
    robot.log(f"panic seen after {time.monotonic() - t:.1f}s; power-cycling")
    slot = robot.boot()
    check(slot == "B", f"after the panic the robot booted {slot}, expected B")
    result, status, at = robot.wait_commit()
    res.boot_to_commit = at
    st, last = expect_rolled_back(robot, "B", "4.0.0", "kernel panic")
    check("attempts" in (last.get("reason") or ""),
          f"rollback reason {last.get('reason')!r} does not say the attempts ran out")
    res.notes.append(f"reason: {last.get('reason')}")


# Moments of an install at which power is cut: (name, how). "fp:" arms an updater failpoint and
# cuts the power as soon as the process stopped there; "http:" cuts after that fraction of the
# bundle was sent by the server.
INSTALL_CUTS = [
    ("boot env written: target marked bad", "fp:after-mark-bad"),
    ("download started (2 MiB sent)", "http:2MiB"),
    ("progress checkpoint saved", "fp:after-progress-saved"),
    ("state file half-replaced (temp written, not renamed)", "fp:after-write-temp@2"),
    ("download 70% sent", "http:0.7"),
    ("slot written and synced, trial not yet set", "fp:before-begin-trial"),
]


def s4_install_cut(robot, res):
    for what, how in INSTALL_CUTS:
        robot.log(f"power cut: {what}")
        if how.startswith("fp:"):
            env = f"ROTA_FAILPOINT={how[3:]}"
            url = robot.server.url("rota-5.0.0.rota")
            robot.m.send_nowait(f"{env} rota-updater install --full --checkpoint-bytes 16777216 {url}")
            robot.m.expect(r"failpoint \S+ reached", INSTALL_TIMEOUT)
            robot.m.power_cut()
        else:
            n = how[5:]
            robot.server.during_next_response(2 << 20 if n == "2MiB" else float(n), robot.m.power_cut)
            url = robot.server.url("rota-5.0.0.rota")
            robot.m.send_nowait(f"rota-updater install --full --checkpoint-bytes 16777216 {url};"
                                " echo INSTALL''-ENDED $?")
            ended = robot.m.expect(r"^INSTALL-ENDED \d+", INSTALL_TIMEOUT, stop_ok=True)
            check(ended is None, f"the install ended ({ended and ended.group(0)}) before the"
                                 f" power cut at {what}")
            robot.m.wait_stopped(10)
        slot = robot.boot()
        check(slot == "B", f"after a power cut ({what}) the robot booted {slot}, expected B")
        robot.wait_commit()
        st = robot.status()
        robot.log(f"status after cut ({what}): {json.dumps(st)}")
        check(st.get("booted") == "B", f"after cut ({what}): status says booted {st.get('booted')}")
        check(st.get("next") == "B", f"after cut ({what}): next boot would be {st.get('next')}")
        pend = st.get("pending")
        # "installed": written, verified and recorded, the trial not yet set (before-begin-trial).
        check(pend is None or pend.get("stage") in ("installing", "installed"),
              f"after cut ({what}): pending {pend}")
    target, secs = install_and_reboot(robot, "5.0.0", "--checkpoint-bytes", "16777216")
    res.notes.append(f"retry {secs:.0f}s")
    check(target == "A", f"5.0.0 went to {target}, expected A")
    robot.m.send_nowait("systemctl reboot")
    robot.m.wait_stopped(180)
    slot = robot.boot()
    check(slot == "A", f"the trial of 5.0.0 booted {slot}, expected A")
    _, status, at = robot.wait_commit()
    res.boot_to_commit = at
    check(status == "0", f"commit of 5.0.0 exited {status}")
    expect_committed(robot, "A", "5.0.0", "retried install of 5.0.0")


# (moment, failpoint, where the robot must end, what the state must say)
COMMIT_CUTS = [
    ("trial recorded, checks not yet run", "after-trial-recorded", "A", "rolled-back"),
    ("slot marked good, state not yet saved", "after-mark-good", "B", "committed"),
]


def s5_commit_cut(robot, res):
    for what, fp, end_slot, end_result in COMMIT_CUTS:
        robot.log(f"power cut during commit: {what}")
        target, _ = install_and_reboot(robot, "6.0.0", "--allow-denied")
        check(target == "B", f"6.0.0 went to {target}, expected B")
        robot.arm_commit_failpoint(fp)
        robot.m.send_nowait("systemctl reboot")
        robot.m.wait_stopped(180)
        robot.power_on()
        slot = robot.booted_slot_from_console()
        check(slot == "B", f"the trial of 6.0.0 booted {slot}, expected B")
        robot.m.expect(rf"failpoint {fp} reached", COMMIT_TIMEOUT)
        robot.m.power_cut()
        slot = robot.boot()
        check(slot == end_slot, f"after a cut at {what} the robot booted {slot}, expected"
                                f" {end_slot}")
        _, status, at = robot.wait_commit()
        if end_result == "committed":
            res.boot_to_commit = at
            expect_committed(robot, "B", "6.0.0", f"cut at {what}")
        else:
            expect_rolled_back(robot, "A", "6.0.0", f"cut at {what}")
        env = robot.bootctl()
        robot.log(f"boot env after cut at {what}: {json.dumps(env)}")
        check(env_primary(env) == end_slot,
              f"after cut at {what}: boot env would boot {env_primary(env)}, state says"
              f" {end_slot}")


def env_primary(bootctl_status):
    return bootctl_status.get("next") or bootctl_status.get("primary")


# --- 6: seeded power cuts --------------------------------------------------------------------
# Power cuts at pseudo-random moments drawn from a seed, as many as asked for (`run --cuts N`,
# `--long`): the robot lives through them one after the other, as in the field. A cut during an
# install is followed by one boot and the same install again (it resumes from its last
# checkpoint); a cut that left a verified trial boots it. Per cut: the boot env is read from the
# stopped disk on the host (and, when it holds a trial, the trial slot is hashed against the
# bundle's manifest), the real bootloader boots, the slot it chose must be the one the env named,
# and the updater's state must agree with the env and with the rootfs that runs.

CUT_CHECKPOINT_BYTES = 8 << 20
GOLDEN_VERSION = "1.0.0"  # build.VERSIONS: slot A of the golden image
MIB = 1 << 20

# Failpoints an install reaches, and where the boot after a cut there must go: "old" (the slot
# that ran the install: the trial is not set yet), "trial" (the installed slot, every hash
# matched), None (either: the store's failpoints fire at every state save, the last one after
# the trial was set).
INSTALL_FAILPOINTS = {
    "after-mark-bad": "old",
    "after-run-written": "old",
    "after-progress-saved": "old",
    "before-begin-trial": "old",
    "after-begin-trial": "trial",
    "after-write-temp": None,
    "after-fsync-temp": None,
    "after-rename": None,
}
# Failpoints of the trial boot's commit (armed for that boot through commit.env): "old" (the
# trial's attempt is used up and nothing marked it good: rolled back), "trial" (marked good: the
# commit completes on the next boot of it). Saves: 1 = the trial recorded, 2 = committed.
COMMIT_FAILPOINTS = {
    "after-trial-recorded": "old",
    "before-mark-good": "old",
    "after-mark-good": "trial",
    "after-write-temp@1": "old",
    "after-fsync-temp@1": "old",
    "after-rename@1": "old",
    "after-write-temp@2": "trial",
    "after-fsync-temp@2": "trial",
    "after-rename@2": "trial",
}
# How often each way of cutting is drawn. "commit" finishes the install, cuts at once (reboot
# pending), then cuts the trial boot's commit: two cuts, two boots.
CUT_KINDS = {"download": 4, "install-failpoint": 4, "commit": 2}
# Stages of a pending install before its trial is set (the lead may add one: any name that is
# not a trial stage counts).
TRIAL_STAGES = {"reboot-pending", "trial", "trial-failed"}


@dataclass
class CutPlan:
    count: int = 0  # power cuts scenario 6 makes on this robot
    seed: int = 0
    budget: float = None  # seconds; scenario 6 stops drawing cuts after this long


def other_slot(slot):
    return "B" if slot == "A" else "A"


class Campaign:
    def __init__(self, robot, res):
        self.r = robot
        self.res = res
        self.rng = random.Random(f"{robot.cuts.seed}/{robot.setup.name}")
        self.scratch = robot.m.disk.parent / "host-reads"
        self.scratch.mkdir(exist_ok=True)
        self.slot = None  # the slot running now
        self.started = time.monotonic()

    # --- bookkeeping ---------------------------------------------------------------------------
    def record(self, kind, moment, expect, booted, old, outcome, t0):
        n = len(self.r.tally) + 1
        secs = time.monotonic() - t0
        self.r.tally.append({"n": n, "kind": kind, "moment": moment, "expect": expect or "either",
                             "booted": booted, "role": "old" if booted == old else "trial",
                             "outcome": outcome, "seconds": round(secs, 1)})
        self.r.log(f"cut {n}/{self.r.cuts.count} [{kind}: {moment}] -> booted {booted};"
                   f" {outcome} ({secs:.0f}s)")

    def done(self):
        if len(self.r.tally) >= self.r.cuts.count:
            return True
        budget = self.r.cuts.budget
        if budget is not None and time.monotonic() - self.started > budget:
            self.res.notes.append(f"--cut-budget {budget:.0f}s reached")
            return True
        return False

    # --- the host's view of the stopped robot --------------------------------------------------
    def host_env(self):
        """rota-bootctl's reading of the boot env on the stopped disk (host build of bootctl)."""
        args = self.r.setup.env_bootctl_args(self.r.m.disk, self.r.art.boot_offset, self.scratch)
        bootctl = self.r.art.rota_image.parent / "rota-bootctl"
        cmdline = self.scratch / "cmdline"
        cmdline.write_text("console=none\n")
        out = subprocess.run([str(bootctl), *map(str, args), "--cmdline", str(cmdline),
                              "status", "--json"], check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out)

    def slot_verified(self, slot, version):
        """The slot's bytes hash to the rootfs image of version's bundle (read on the host)."""
        size, sha = self.r.art.image_digest(version)
        offset, _ = self.r.art.partitions[f"rootfs-{slot.lower()}"]
        return setups.range_sha256(self.r.m.disk, offset, size, self.scratch) == sha

    # --- after a cut ---------------------------------------------------------------------------
    def boot_after_cut(self, what, expect, old, target, version, verify_trial=True):
        """Reads the env of the stopped robot, boots it by its bootloader and checks the choice.

        Returns the slot booted (the shell is not awaited)."""
        env = self.host_env()
        nxt = env.get("next")
        states = {s["slot"]: s for s in env.get("slots", [])}
        check(nxt in ("A", "B"), f"after a cut at {what}: the boot env names no bootable slot:"
                                 f" {json.dumps(env)}")
        if expect is not None:
            want = old if expect == "old" else target
            check(nxt == want, f"after a cut at {what}: the boot env would boot {nxt}, expected"
                               f" {want} ({expect}); env {json.dumps(env.get('env'))}")
        if verify_trial and nxt == target:
            # (GRUB's env cannot tell a trial not yet booted from a good slot: OK=1 TRY=0.)
            check(states.get(target, {}).get("state") in ("trial", "good"),
                  f"after a cut at {what}: {target} boots next but is neither on trial nor good:"
                  f" {json.dumps(env)}")
            check(self.slot_verified(target, version),
                  f"after a cut at {what}: slot {target} is on trial but does not hold"
                  f" {version}'s image byte for byte")
        self.r.power_on()
        slot = self.r.booted_slot_from_console()
        check(slot == nxt, f"after a cut at {what}: the bootloader booted {slot}, the boot env"
                           f" said {nxt}")
        self.slot = slot
        return slot

    def settle_and_check(self, what):
        """Waits for the shell and this boot's commit, then checks that the state file, the boot
        env and the running rootfs agree. Returns the updater's status."""
        self.r.m.login(BOOT_TIMEOUT)
        self.r.wait_commit()
        st = self.r.status()
        env = self.r.bootctl()
        _, ver = self.r.m.sh("cat /etc/rota-test/version")
        ver = ver.strip()
        slot = self.slot
        check(st.get("booted") == slot, f"after {what}: status says booted {st.get('booted')},"
                                        f" the kernel was started from {slot}")
        check(env_primary(env) == slot, f"after {what}: the boot env would boot"
                                        f" {env_primary(env)} next, running {slot}")
        # The golden image's slot was flashed, not installed: the state need not know it.
        recorded = slot_version(st, slot)
        check(recorded == ver or (recorded is None and ver == GOLDEN_VERSION),
              f"after {what}: the state says slot {slot} holds {recorded}, its rootfs is {ver}")
        pend = st.get("pending")
        if pend is not None:
            check(pend.get("stage") not in TRIAL_STAGES and pend.get("slot") != slot,
                  f"after {what}: pending {pend} while running {slot}")
            states = {s["slot"]: s.get("state") for s in env.get("slots", [])}
            check(states.get(pend["slot"]) == "bad",
                  f"after {what}: an install into {pend['slot']} is pending, but the boot env"
                  f" has it {states.get(pend['slot'])}")
        return st

    def describe(self, st):
        pend = st.get("pending")
        if pend and pend.get("bytes_done") is not None:
            size, _ = self.r.art.image_digest(pend["version"])
            pct = 100 * pend["bytes_done"] // size
            return f"{pend['stage']} {pend['version']} {pct}%"
        if pend:
            return f"{pend['stage']} {pend['version']}"
        last = st.get("last_result") or {}
        return f"{last.get('result')} {last.get('version')}"

    # --- one draw ------------------------------------------------------------------------------
    def next_install(self, st):
        """(version, bytes still to write, resuming) of the install to run from here."""
        pend = st.get("pending")
        size = None
        if pend and pend.get("stage") not in TRIAL_STAGES and pend.get("slot") != self.slot:
            version = pend["version"]
            size, _ = self.r.art.image_digest(version)
            if pend.get("stage") != "installing":
                return version, 0, True  # written and verified ("installed"): nothing to fetch
            return version, max(0, size - (pend.get("bytes_done") or 0)), True
        running = slot_version(st, self.slot)
        version = "5.0.0" if running == "6.0.0" else "6.0.0"
        size, _ = self.r.art.image_digest(version)
        return version, size, False

    def install_cmd(self, version, env=""):
        url = self.r.server.url(f"rota-{version}.rota")
        return (f"{env} rota-updater install --full --allow-downgrade --allow-denied"
                f" --checkpoint-bytes {CUT_CHECKPOINT_BYTES} {url}")

    def step(self, st):
        version, left, resuming = self.next_install(st)
        old, target = self.slot, other_slot(self.slot)
        kind = self.rng.choices(list(CUT_KINDS), weights=list(CUT_KINDS.values()))[0]
        if kind == "download" and left < 2 * MIB:
            kind = "install-failpoint"
        verb = "resume" if resuming else "install"
        t0 = time.monotonic()
        if kind == "download":
            frac = round(self.rng.uniform(0.02, 0.95), 3)
            moment = f"{verb} {version}, {frac:.1%} into the response"
            self.r.server.during_next_response(frac, self.r.m.power_cut)
            self.r.m.send_nowait(self.install_cmd(version) + "; echo INSTALL''-ENDED $?")
            ended = self.r.m.expect(r"^INSTALL-ENDED (\d+)", INSTALL_TIMEOUT, stop_ok=True)
            if ended is None:
                self.r.m.wait_stopped(10)
                return self.after_install_cut(kind, moment, "old", old, target, version, t0)
            # A resume re-verifies what the slot holds past the last checkpoint; when that is
            # everything, nothing is fetched after the header and the cut never fires: the
            # install finished, cut with the reboot pending.
            self.r.server.disarm()
            check(ended.group(1) == "0", f"the install ({moment}) failed with exit code"
                                         f" {ended.group(1)}")
            self.r.m.power_cut()
            return self.after_install_cut("install-done", f"{moment}: nothing left to fetch,"
                                          " reboot pending", "trial", old, target, version, t0)
        elif kind == "install-failpoint":
            name = self.rng.choice(list(INSTALL_FAILPOINTS))
            n = self.draw_hits(name, left, resuming)
            spec = name if n == 1 else f"{name}@{n}"
            moment = f"{verb} {version}, {spec}"
            self.r.m.send_nowait(self.install_cmd(version, f"ROTA_FAILPOINT={spec}")
                                 + "; echo INSTALL''-ENDED $?")
            i, m = self.r.m.expect_any([r"failpoint \S+ reached", r"^INSTALL-ENDED (\d+)"],
                                       INSTALL_TIMEOUT)
            self.r.m.power_cut()
            if i == 0:
                return self.after_install_cut(kind, moment, INSTALL_FAILPOINTS[name], old,
                                              target, version, t0)
            rc = m.group(0).split()[-1]
            check(rc == "0", f"the install ({moment}) failed with exit code {rc}")
            # The failpoint was not reached: the install finished, cut with the reboot pending.
            return self.after_install_cut("install-done", f"{moment} not reached: reboot pending",
                                       "trial", old, target, version, t0)
        else:
            fp = self.rng.choice(list(COMMIT_FAILPOINTS))
            self.r.arm_commit_failpoint(fp)
            rc, out, secs = self.r.install(version, "--allow-downgrade", "--allow-denied",
                                           "--checkpoint-bytes", str(CUT_CHECKPOINT_BYTES))
            check(rc == 0, f"the install of {version} exited {rc}: {out[-2000:]}")
            self.r.m.power_cut()
            what = f"{verb} {version} finished, reboot pending"
            slot = self.boot_after_cut(what, "trial", old, target, version)
            # The trial boot runs the commit, which stops at the armed failpoint.
            self.r.m.expect(rf"failpoint {re.escape(fp.split('@')[0])} reached", COMMIT_TIMEOUT)
            self.r.m.power_cut()
            self.record("install-done", what, "trial", slot, old, f"trial of {version} booting,"
                        f" commit cut at {fp}", t0)
            t1 = time.monotonic()
            expect = COMMIT_FAILPOINTS[fp]
            what = f"commit of {version} on trial, {fp}"
            slot = self.boot_after_cut(what, expect, old, target, version, verify_trial=False)
            st = self.settle_and_check(what)
            last = st.get("last_result") or {}
            if expect == "old":
                check(last.get("result") == "rolled-back" and last.get("version") == version
                      and "attempts" in (last.get("reason") or ""),
                      f"after {what}: last result {last}, expected rolled back {version}"
                      " (attempts exhausted)")
            else:
                check(last.get("result") == "committed" and last.get("version") == version,
                      f"after {what}: last result {last}, expected committed {version}")
            self.record("commit-failpoint", what, expect, slot, old, self.describe(st), t1)
            return st

    def draw_hits(self, name, left, resuming):
        """N for NAME@N: a hit the install still reaches (the store's may also miss: then the
        install finishes and the cut comes with the reboot pending)."""
        if name in ("after-mark-bad", "before-begin-trial", "after-begin-trial"):
            return 1
        if name == "after-run-written":
            return self.rng.randint(1, max(1, left // MIB))
        checkpoints = left // CUT_CHECKPOINT_BYTES
        if name == "after-progress-saved":
            return self.rng.randint(1, max(1, checkpoints - 1))
        # Store saves: begin_install (not on a resume), one per checkpoint, "installed", then
        # "reboot pending" (after the trial was set).
        return self.rng.randint(1, checkpoints + (2 if resuming else 3))

    def after_install_cut(self, kind, moment, expect, old, target, version, t0):
        slot = self.boot_after_cut(moment, expect, old, target, version)
        st = self.settle_and_check(f"cut at {moment}")
        if slot == target:
            last = st.get("last_result") or {}
            check(last.get("result") == "committed" and last.get("version") == version,
                  f"after a cut at {moment} the trial of {version} ran: last result {last},"
                  f" expected committed")
        self.record(kind, moment, expect, slot, old, self.describe(st), t0)
        return st


def s6_seeded_cuts(robot, res):
    plan = robot.cuts
    robot.log(f"seeded power cuts: {plan.count}, seed {plan.seed}")
    if plan.count <= 0:
        res.notes.append("no cuts asked for")
        return
    camp = Campaign(robot, res)
    if not robot.m.running():  # run --from 6: the fresh golden image
        robot.boot()
        robot.wait_commit()
    st = robot.status()
    camp.slot = st.get("booted")
    check(camp.slot in ("A", "B"), f"status names no booted slot: {st}")
    while not camp.done():
        st = camp.step(st)
    # The robot must still update: finish what is pending (or a new install) and commit it.
    version, _, _ = camp.next_install(st)
    target, secs = install_and_reboot(robot, version, "--allow-downgrade", "--allow-denied")
    robot.m.send_nowait("systemctl reboot")
    robot.m.wait_stopped(180)
    slot = robot.boot()
    check(slot == target, f"the final install of {version} booted {slot}, expected {target}")
    robot.wait_commit()
    expect_committed(robot, target, version, f"final install of {version} after the cuts")
    kinds = {}
    for c in robot.tally:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    res.notes.append(f"{len(robot.tally)} cuts, seed {plan.seed}: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
                     + f"; final {version} committed on {target}")


# --- 7: app releases -------------------------------------------------------------------------
# The demo app (build.APP_VERSIONS, the perl service in qemu-tests/demo-app) beside the OS: no
# reboot, no slot written. Its releases go to /data/rota/apps/demo; the OS ships the unit that
# runs whichever release is current.

APP_DIR = f"/data/rota/apps/{build.APP_NAME}"
APP_LOG = "/run/rota-test/app.log"  # the updater's log lines of the app commands (stderr)

# What the OS image would ship: the unit starts the current release through the `current` link,
# so an app release never installs or changes a unit.
APP_UNIT_TEXT = [
    "[Unit]",
    f"Description=Rota demo app: the current release in {APP_DIR}",
    "",
    "[Service]",
    f"ExecStart={APP_DIR}/current/serve",
]


def guest_timed(robot, command, timeout=300):
    """Runs command on the guest, timed by the guest's clock; returns (rc, output, seconds)."""
    rc, out = robot.m.sh(f"t0=$(date +%s.%N); {command}; rc=$?; t1=$(date +%s.%N);"
                         " echo \"GUEST-SECONDS $t0 $t1\"; (exit $rc)", timeout=timeout,
                         check=False)
    m = re.search(r"GUEST-SECONDS (\S+) (\S+)", out)
    check(m is not None, f"`{command}` printed no timing: {out[-1000:]}")
    return rc, out[:m.start()], float(m.group(2)) - float(m.group(1))


def app_command(robot, args, what):
    """`rota-updater app ARGS --json` on the guest: (exit code, its JSON, guest seconds). Its log
    (stderr) goes to APP_LOG, so stdout is the JSON alone."""
    rc, out, secs = guest_timed(robot, f"rota-updater app {args} --json 2>>{APP_LOG}")
    robot.log(f"app {args}: exit {rc} in {secs:.2f}s: {out.strip()}")
    try:
        return rc, parse_json(out), secs
    except (ScenarioFailed, ValueError):
        check(False, f"{what}: `rota-updater app {args}` exited {rc} without JSON: {out!r};"
                     f" its log: {app_log_tail(robot)}")


def app_log_tail(robot):
    _, text = robot.m.sh(f"tail -n 15 {APP_LOG}; journalctl -u {build.APP_UNIT} -o cat"
                         " --no-pager | tail -n 10", check=False)
    return text


def app_answer(robot, what, patience=30):
    """(status line, body) of the demo app's answer to a GET from the guest itself (bash's
    /dev/tcp: the rootfs has no curl), asked again while nothing listens (a restart)."""
    _, out = robot.m.sh(
        f"for i in $(seq {patience * 2}); do if exec 3<>/dev/tcp/127.0.0.1/{build.APP_PORT};"
        " then printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3; exec 3<&-; break; fi;"
        " sleep 0.5; done 2>/dev/null", timeout=patience + 60, check=False)
    head, _, body = out.strip().partition("\n\n")
    check(head.startswith("HTTP/"), f"{what}: the demo app does not answer on port"
                                    f" {build.APP_PORT}: {out!r}; {app_log_tail(robot)}")
    return head.splitlines()[0].strip(), body.strip()


def expect_answer(robot, version, what):
    status, body = app_answer(robot, what)
    robot.log(f"{what}: the app answers {status!r} {body!r}")
    check(status.split()[1:2] == ["200"] and body == f"demo version {version}: ok",
          f"{what}: the app answers {status!r} {body!r}, expected 200 from {version}")
    return body


def app_status(robot, what):
    """`app status demo --json`'s one object, and the release the `current` link names."""
    _, out = robot.m.sh(f"rota-updater app status {build.APP_NAME} --json 2>>{APP_LOG}")
    start, end = out.find("["), out.rfind("]")
    check(start >= 0 and end > start, f"{what}: app status printed no JSON list: {out!r}")
    statuses = json.loads(out[start:end + 1])
    check(len(statuses) == 1 and statuses[0].get("name") == build.APP_NAME,
          f"{what}: app status lists {statuses}")
    _, link = robot.m.sh(f"readlink {APP_DIR}/current")
    return statuses[0], link.strip()


def expect_app_current(robot, version, release, last, what):
    """The current release is release (of version), the link points at its tree, and the last
    outcome is last; returns the status."""
    st, link = app_status(robot, what)
    current = st.get("current") or {}
    robot.log(f"app status {what}: current {current.get('id')}, previous {st.get('previous')},"
              f" last {st.get('last')}, kept {st.get('kept')}; current -> {link}")
    check(current.get("version") == version and current.get("id") == release,
          f"{what}: current release {current.get('id')}, expected {release}")
    check(link == f"releases/{release}", f"{what}: {APP_DIR}/current -> {link}")
    check((st.get("last") or {}).get("result") == last,
          f"{what}: last outcome {st.get('last')}, expected {last}")
    check(st.get("pending") is None, f"{what}: an activation is still pending: {st}")
    return st


def s7_apps(robot, res):
    if not robot.m.running():  # run --from 7: the fresh golden image
        robot.boot()
        robot.wait_commit()
    server = harness.BundleServer(robot.art.apps["1.0.0"].parent)
    try:
        app_releases(robot, res, server)
    finally:
        server.close()


def app_releases(robot, res, server):
    os_before = robot.status()
    robot.m.sh("mkdir -p /run/rota-test")
    _, out = robot.m.sh(f"rota-updater app status --json 2>>{APP_LOG}")
    check(out.strip() == "[]", f"apps on the robot before the first deploy: {out!r}")
    # Stands in for the OS image shipping the app's unit (once, before the first deploy).
    unit = " ".join(f"'{line}'" for line in APP_UNIT_TEXT)
    robot.m.sh(f"printf '%s\\n' {unit} > /etc/systemd/system/{build.APP_UNIT}"
               " && systemctl daemon-reload")

    def install(version, what):
        rc, rep, secs = app_command(robot, f"install {server.url(f'demo-{version}.rota')}",
                                    what)
        check(rep.get("version") == version and rep.get("reused_release") is False,
              f"{what}: install report {rep}")
        return rc, rep, secs

    ids = {}
    timings = []
    # v1: the first release, the unit starts.
    rc, rep, secs = install("1.0.0", "deploy of demo 1.0.0")
    check(rc == 0 and rep.get("result") == "activated",
          f"demo 1.0.0: exit {rc}, {rep}; {app_log_tail(robot)}")
    ids["1.0.0"] = rep["release"]
    timings.append(f"v1 {secs:.1f}s")
    expect_answer(robot, "1.0.0", "after deploying 1.0.0")
    expect_app_current(robot, "1.0.0", ids["1.0.0"], "activated", "after deploying 1.0.0")

    # v2: the unit restarts from the new release.
    rc, rep, secs = install("2.0.0", "deploy of demo 2.0.0")
    check(rc == 0 and rep.get("result") == "activated" and rep.get("previous") == ids["1.0.0"]
          and rep.get("current") == rep.get("release"),
          f"demo 2.0.0: exit {rc}, {rep}; {app_log_tail(robot)}")
    ids["2.0.0"] = rep["release"]
    timings.append(f"v2 {secs:.1f}s")
    expect_answer(robot, "2.0.0", "after deploying 2.0.0")
    expect_app_current(robot, "2.0.0", ids["2.0.0"], "activated", "after deploying 2.0.0")

    # v3: answers 503, its check fails: switched back, 2.0.0 restarted and answering.
    rc, rep, secs = install("3.0.0", "deploy of demo 3.0.0")
    check(rc == 2 and rep.get("result") == "rolled_back" and rep.get("failed_check") == "answers"
          and " 503 " in (rep.get("check_output") or "") and rep.get("current") == ids["2.0.0"],
          f"demo 3.0.0 (its check must fail): exit {rc}, {rep}; {app_log_tail(robot)}")
    ids["3.0.0"] = rep["release"]
    timings.append(f"v3 {secs:.1f}s (rolled back)")
    robot.log(f"demo 3.0.0 failed check answers: {rep['check_output']}")
    res.notes.append("v3: check 'answers' got 503, switched back to v2")
    expect_answer(robot, "2.0.0", "after the failed deploy of 3.0.0")
    st = expect_app_current(robot, "2.0.0", ids["2.0.0"], "rolled_back",
                            "after the failed deploy of 3.0.0")
    last = st["last"]
    check(last.get("release") == ids["3.0.0"] and last.get("back_to") == ids["2.0.0"]
          and last.get("check") == "answers",
          f"after the failed deploy of 3.0.0: last outcome {last}")

    # Rollback to v1: a kept release, nothing fetched.
    requests_before = len(server.requests)
    check(requests_before > 0, "the app server logged no requests for three deploys")
    rc, rep, secs = app_command(robot, f"rollback {build.APP_NAME} --to 1.0.0",
                                "rollback to 1.0.0")
    check(rc == 0 and rep.get("result") == "activated" and rep.get("release") == ids["1.0.0"],
          f"rollback to 1.0.0: exit {rc}, {rep}; {app_log_tail(robot)}")
    fetched = server.requests[requests_before:]
    check(not fetched, f"the rollback fetched from the app server: {fetched}")
    timings.append(f"rollback to v1 {secs:.1f}s, no request")
    expect_answer(robot, "1.0.0", "after rolling back to 1.0.0")
    st = expect_app_current(robot, "1.0.0", ids["1.0.0"], "activated",
                            "after rolling back to 1.0.0")
    check(st.get("previous") == ids["2.0.0"] and set(ids.values()) <= set(st.get("kept", [])),
          f"after rolling back to 1.0.0: previous {st.get('previous')}, kept {st.get('kept')}")

    # The OS is untouched: same slot, same outcome, nothing pending.
    os_after = robot.status()
    check(os_after.get("booted") == os_before.get("booted")
          and os_after.get("last_result") == os_before.get("last_result")
          and os_after.get("pending") is None,
          f"the app releases changed the OS state: {os_before} -> {os_after}")
    res.notes.insert(0, "guest times: " + ", ".join(timings))


SCENARIOS = [
    ("1 update + commit", s1_update),
    ("2 failed health check", s2_bad_health),
    ("3 kernel panic", s3_panic),
    ("4 power cuts during install", s4_install_cut),
    ("5 power cuts during commit", s5_commit_cut),
    ("6 seeded power cuts", s6_seeded_cuts),
    ("7 app releases", s7_apps),
]


def run_all(robot, only=None):
    results = []
    broken = False
    for name, fn in SCENARIOS:
        if only and not any(name.startswith(o) for o in only):
            continue
        res = Result(name)
        if broken:
            res.detail = "skipped: an earlier scenario left the robot in an unknown state"
            results.append(res)
            continue
        t = time.monotonic()
        robot.log(f"=== scenario {name}")
        try:
            fn(robot, res)
            res.ok = True
        except Exception as e:  # any failure ends this robot's run; the report says why
            res.detail = f"{type(e).__name__}: {e}"
            robot.log(traceback.format_exc())
            broken = True
        res.seconds = time.monotonic() - t
        robot.log(f"=== {name}: {'PASS' if res.ok else 'FAIL ' + res.detail}")
        results.append(res)
    robot.m.stop()
    return results
