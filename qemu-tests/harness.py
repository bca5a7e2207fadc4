"""Drives QEMU guests for the boot tests: start, read and type on the serial console, cut power.

A `Machine` is one virtual robot: a disk image plus the firmware state that belongs to it (U-Boot's
flash, OVMF's variables). Each `boot()` starts QEMU with `-no-reboot`, so a guest reboot, a
watchdog reset or a poweroff ends the QEMU process and the test decides what happens next
(normally: boot again, which is what a power-cycled robot does). `power_cut()` kills QEMU with
SIGKILL: whatever the guest had not yet written to its disk is lost, exactly as on a real robot.

`BundleServer` serves files to guests over HTTP (QEMU's user networking maps the host's loopback to
10.0.2.2 inside the guest), with Range support and a hook that fires after a chosen number of bytes,
so a power cut can land at a precise point of a download.
"""

import codecs
import http.server
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

GUEST_HOST_IP = "10.0.2.2"

# Terminal control sequences (colours, bracketed paste) are dropped from what expect() sees.
ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")


class Timeout(Exception):
    pass


class MachineStopped(Exception):
    """The guest's QEMU ended (reboot, poweroff, reset) while a marker was awaited."""


class Machine:
    def __init__(self, name, argv_for_disk, disk, logdir, prompt_re=r"root@[\w-]+:[^\n]*# ?$"):
        """argv_for_disk(disk) returns QEMU's command line; logs go to logdir/NAME-bootN.log."""
        self.name = name
        self.argv_for_disk = argv_for_disk
        self.disk = Path(disk)
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.prompt_re = re.compile(prompt_re, re.M)
        self.proc = None
        self.boots = 0
        self.started_at = None
        self._buf = ""
        self._cursor = 0
        self._cond = threading.Condition()
        self._reader = None
        self._cmd_seq = 0

    # --- lifecycle -------------------------------------------------------------------------
    def boot(self):
        """Powers the machine on. Returns immediately; use expect() to follow the boot."""
        assert not self.running(), f"{self.name}: already running"
        self.boots += 1
        argv = self.argv_for_disk(self.disk)
        self.log_path = self.logdir / f"{self.name}-boot{self.boots}.log"
        self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")
        self._log.write("# " + " ".join(argv) + "\n")
        with self._cond:
            self._buf = ""
            self._cursor = 0
            self._stamps = []  # (buffer length, seconds since power-on) after each read
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read_loop, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read_loop(self, proc):
        fd = proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                break
            raw = decoder.decode(data)
            self._log.write(raw.replace("\r", ""))
            self._log.flush()
            text = pending + raw
            # An escape sequence cut by the read boundary waits for its end.
            cut = text.rfind("\x1b")
            if cut != -1 and cut > len(text) - 16 and not ANSI_RE.match(text, cut):
                text, pending = text[:cut], text[cut:]
            else:
                pending = ""
            text = ANSI_RE.sub("", text).replace("\r", "")
            with self._cond:
                self._buf += text
                self._stamps.append((len(self._buf), time.monotonic() - self.started_at))
                self._cond.notify_all()
        proc.wait()
        with self._cond:
            self._cond.notify_all()
        self._log.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def elapsed(self):
        """Seconds since this boot's power-on."""
        return time.monotonic() - self.started_at

    def power_cut(self):
        """Kills QEMU at once: the guest gets no chance to flush anything.

        Safe from another thread (the HTTP server's byte-count cut): it waits for the QEMU it
        killed, not for one the test thread may already be starting after seeing this one end."""
        proc, reader = self.proc, self._reader
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            raise Timeout(f"{self.name}: QEMU still running 10s after SIGKILL") from None
        if reader is not None and reader.ident is not None:
            reader.join(5)

    def wait_stopped(self, timeout):
        """Waits for QEMU to exit by itself (guest reboot or poweroff with -no-reboot)."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise Timeout(f"{self.name}: QEMU still running after {timeout}s") from None
        if self._reader:
            self._reader.join(5)

    def stop(self):
        """Ends the guest if it runs (used on test teardown)."""
        if self.running():
            self.power_cut()

    # --- console ---------------------------------------------------------------------------
    def output(self):
        with self._cond:
            return self._buf

    def expect(self, pattern, timeout, stop_ok=False):
        """Waits for pattern (regex) in console output after the previous match; returns the match.

        Raises Timeout, or MachineStopped when QEMU ends first (unless stop_ok, then None)."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, self._cursor)
                if m:
                    self._cursor = m.end()
                    return m
                if not self.running() and (self._reader is None or not self._reader.is_alive()):
                    if stop_ok:
                        return None
                    raise MachineStopped(
                        f"{self.name}: QEMU exited while waiting for {rx.pattern!r}"
                        f" (boot {self.boots}, log {self.log_path})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"{self.name}: no {rx.pattern!r} within {timeout}s"
                                  f" (boot {self.boots}, log {self.log_path})")
                self._cond.wait(min(left, 1.0))

    def wait_for(self, pattern, timeout):
        """Waits for pattern anywhere in this boot's output, without moving expect()'s cursor.

        Returns (match, seconds from power-on to the arrival of the matched text)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf)
                if m:
                    at = next((t for end, t in self._stamps if end >= m.end()), self.elapsed())
                    return m, at
                if not self.running() and (self._reader is None or not self._reader.is_alive()):
                    raise MachineStopped(f"{self.name}: QEMU exited while waiting for"
                                         f" {rx.pattern!r} (boot {self.boots}, log {self.log_path})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"{self.name}: no {rx.pattern!r} within {timeout}s"
                                  f" (boot {self.boots}, log {self.log_path})")
                self._cond.wait(min(left, 1.0))

    def expect_any(self, patterns, timeout):
        """Waits for the first of several patterns; returns (index, match)."""
        joined = "|".join(f"(?P<p{i}>{p})" for i, p in enumerate(patterns))
        m = self.expect(joined, timeout)
        for i in range(len(patterns)):
            if m.group(f"p{i}") is not None:
                return i, m
        raise AssertionError("unreachable")

    def type(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def login(self, timeout):
        """Waits for the autologin shell and makes it quiet and machine-readable."""
        self.expect(self.prompt_re, timeout)
        # No echo and no prompt: command output then arrives exactly as printed.
        self.type("stty -echo; bind 'set enable-bracketed-paste off'; PS1=''; PS2='';"
                  " dmesg -n 1; echo 'SHELL''-READY'\n")
        self.expect(r"^SHELL-READY$", 60)

    def sh(self, command, timeout=120, check=True):
        """Runs a shell command on the guest console; returns (exit code, output)."""
        self._cmd_seq += 1
        token = f"@@{self._cmd_seq}@@"
        # The end marker is split in two quoted halves so the command text itself cannot match.
        start = f"{token}BEGIN"
        self.type(f"echo '{start[:3]}''{start[3:]}'; {command}\necho '{token[:3]}''{token[3:]}'\"$?\"\n")
        self.expect(re.escape(start) + r"\n", timeout)
        begin = self._cursor
        m = self.expect(re.escape(token) + r"(\d+)$", timeout)
        with self._cond:
            text = self._buf[begin:m.start()]
        rc = int(m.group(1))
        if check and rc != 0:
            raise AssertionError(f"{self.name}: `{command}` exited {rc}:\n{text}")
        return rc, text

    def send_nowait(self, command):
        """Starts a command on the console without waiting for it (to cut power during it)."""
        self.type(command + "\n")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range `Range: bytes=` support and a byte-count hook."""

    server_version = "rota-qemu-tests"

    def log_message(self, fmt, *args):  # quiet: the test prints what matters
        self.server.requests.append(fmt % args)

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                self.send_error(416)
                return
            if m.group(1) == "":
                start = max(0, size - int(m.group(2)))
            else:
                start = int(m.group(1))
                if m.group(2):
                    end = min(end, int(m.group(2)))
            if start > end or start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        srv = self.server
        length = end - start + 1
        # Cuts land in payload bytes: the updater reads a bundle's header and manifest with
        # two small requests first, and those must not take an armed cut.
        cut_at = srv.cut_point(length) if start >= payload_start(path) else None
        with open(path, "rb") as f:
            f.seek(start)
            sent = 0
            while sent < length:
                chunk = f.read(min(length - sent, 64 * 1024))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                if cut_at is not None and sent >= cut_at:
                    srv.fire_cut()
                    cut_at = None
                if srv.rate:
                    time.sleep(len(chunk) / srv.rate)


ROTA_MAGIC = b"\x89ROTA\r\n\x1a"


def payload_start(path):
    """Offset of a Rota bundle's payload (header, manifest and signatures end there); 0 for a
    file that is no bundle."""
    with open(path, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:8] != ROTA_MAGIC:
        return 0
    manifest = int.from_bytes(header[24:28], "little")
    signatures = int.from_bytes(header[28:32], "little")
    return 32 + manifest + signatures


class BundleServer(http.server.ThreadingHTTPServer):
    """Serves a directory on 127.0.0.1 (10.0.2.2 from a guest) on a free port."""

    daemon_threads = True

    def __init__(self, directory):
        self.directory = str(directory)
        self.requests = []
        self.rate = 0  # bytes per second, 0 = unthrottled
        self._cut = None
        self._lock = threading.Lock()
        handler = lambda *a, **kw: _RangeHandler(*a, directory=self.directory, **kw)  # noqa: E731
        super().__init__(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self):
        return self.server_address[1]

    def url(self, name):
        return f"http://{GUEST_HOST_IP}:{self.port}/{name}"

    def during_next_response(self, amount, fn):
        """Calls fn once, from the serving thread, part way through a coming response.

        `amount` is a byte count or a fraction of a response's length, measured from that
        response's own start: a download that resumes with a Range request from its last
        checkpoint is cut inside what it still fetches, never after it completed. Only
        responses of payload bytes take the cut: it stays armed across the requests for the
        header and the manifest that every install and resume starts with.
        """
        with self._lock:
            self._cut = (amount, fn)

    def disarm(self):
        """Drops an armed cut that did not fire."""
        with self._lock:
            self._cut = None

    def cut_point(self, length):
        """Bytes into a response of `length` at which the armed cut fires, or None."""
        with self._lock:
            armed = self._cut
        if armed is None:
            return None
        amount = armed[0]
        at = int(length * amount) if isinstance(amount, float) else amount
        # Before the last block, so the response can never complete first.
        return max(1, min(at, length - 64 * 1024))

    def fire_cut(self):
        """Runs the armed cut unless another response fired it already."""
        with self._lock:
            armed, self._cut = self._cut, None
        if armed is not None:
            armed[1]()

    def close(self):
        self.shutdown()
        self.server_close()
