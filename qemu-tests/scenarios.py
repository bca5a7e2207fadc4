"""The boot-test scenarios, run in order on one virtual robot per setup.

Each scenario starts from where the previous one left the robot, as a robot in the field would
live through them, which keeps the number of (slow, emulated) boots down:

1. update       fresh golden image boots A; install 2.0.0 over HTTP, trial on B, committed, stays on B
2. bad-health   3.0.0's health check fails: back to B, status names the check
3. panic        4.0.0's kernel panics: the attempts run out, B boots, rollback recorded
4. install-cut  power cuts at six moments of installing 5.0.0: B always boots; a retry succeeds
5. commit-cut   power cuts during the commit of 6.0.0: the robot boots and the state file agrees
                with the boot env

A scenario's result is pass or fail with the reason; boot-to-commit is the time from power-on of
the trial boot to the end of rota-commit.service.
"""

import json
import re
import time
import traceback
from dataclasses import dataclass, field

import harness

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

    def __init__(self, setup, artifacts, machine, server, log):
        self.setup = setup
        self.art = artifacts
        self.m = machine
        self.server = server
        self.log = log

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
    return pend["slot"], secs


# --- scenarios -----------------------------------------------------------------------------
def s1_update(robot, res):
    slot = robot.boot()
    check(slot == "A", f"fresh golden image booted {slot}, expected A")
    robot.wait_commit()
    st = robot.status()
    robot.log(f"fresh status: {json.dumps(st)}")
    check(st.get("booted") == "A", f"status says booted {st.get('booted')}")
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
    target, _ = install_and_reboot(robot, "3.0.0")
    check(target == "A", f"3.0.0 went to {target}, expected A")
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
            robot.m.send_nowait(f"{env} rota-updater install --checkpoint-bytes 16777216 {url}")
            robot.m.expect(r"failpoint \S+ reached", INSTALL_TIMEOUT)
            robot.m.power_cut()
        else:
            n = how[5:]
            robot.server.during_next_response(2 << 20 if n == "2MiB" else float(n), robot.m.power_cut)
            url = robot.server.url("rota-5.0.0.rota")
            robot.m.send_nowait(f"rota-updater install --checkpoint-bytes 16777216 {url};"
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
        check(pend is None or pend.get("stage") == "installing",
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


SCENARIOS = [
    ("1 update + commit", s1_update),
    ("2 failed health check", s2_bad_health),
    ("3 kernel panic", s3_panic),
    ("4 power cuts during install", s4_install_cut),
    ("5 power cuts during commit", s5_commit_cut),
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
