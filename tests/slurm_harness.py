"""A real Slurm cluster on localhost for the SkyPilot tests: munge, slurmctld, two slurmd nodes with one
fake L4 GPU each, and an sshd login node on 127.0.0.1 that SkyPilot reaches as user `ftsky`.

Everything runs in the foreground of processes this harness started, and `stop()` ends each by PID and
undoes every change outside its own temp folder (/etc/hosts line, ~/.slurm/config, /root mode, the
SkyPilot API server and its ssh control masters).

Offline gaps bridged here only (real clusters have internet), per ../shared/notes/environment.md:
SkyPilot's GPU-name catalog is pre-written; its runtime install fetches `uv` with curl, so a `curl`
on the login user's PATH copies uv from its PyPI wheel; SkyPilot's runtime wants python3.10 on PATH.

Run it by hand: `python tests/slurm_harness.py` starts it and waits for Enter.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER = "ftsky"
CLUSTER = "ftlocal"
HOSTS_LINE = "127.0.0.1 node1 node2  # finetune slurm harness"
PY310 = Path("/root/.pyenv/versions/3.10.13")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_prerequisites() -> list[str]:
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sshd", "ssh-keygen", "sinfo") if not shutil.which(b)
               and not Path(f"/usr/sbin/{b}").exists()]
    if os.geteuid() != 0:
        missing.append("root (to add the login user and start slurmd)")
    if not (PY310 / "bin" / "python3.10").exists():
        missing.append(str(PY310 / "bin" / "python3.10"))
    if not uv_binary():
        missing.append("uv (pip install uv)")
    try:
        import sky  # noqa: F401
    except ImportError:
        missing.append("skypilot[slurm]")
    return missing


def uv_binary() -> str | None:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:
        return shutil.which("uv")


class SlurmHarness:
    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="ft-slurm-"))
        self.procs: list[subprocess.Popen] = []
        self.undo: list = []
        self.ssh_port = free_port()
        self.ctld_port, self.node_ports = free_port(), (free_port(), free_port())
        self.conf = self.work / "etc" / "slurm.conf"
        self.key = self.work / "id_ed25519"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids_before = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
        self.tmp_before = set(Path(tempfile.gettempdir()).iterdir())

    # ------------------------------------------------------------------------------------ start

    def start(self, timeout: float = 60) -> SlurmHarness:
        try:
            self._files()
            self._user()
            self._munge()
            self._slurm(timeout)
            self._sshd()
            self._client()
            start_skypilot()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.work / "log" / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def _files(self) -> None:
        for sub in ("etc", "log", "state", "spool/node1", "spool/node2", "bin", "venvs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        hosts = Path("/etc/hosts").read_text()
        if HOSTS_LINE not in hosts and hosts.strip():
            Path("/etc/hosts").write_text(hosts.rstrip("\n") + "\n" + HOSTS_LINE + "\n")
            self.undo.append(lambda: Path("/etc/hosts").write_text(hosts))  # exactly what was there
        # The login user runs pyenv interpreters that live under /root.
        mode = Path("/root").stat().st_mode & 0o777
        if not mode & 0o001:
            os.chmod("/root", mode | 0o001)
            self.undo.append(lambda: os.chmod("/root", mode))
        uv = uv_binary()
        (self.work / "bin" / "uv").write_bytes(Path(uv).read_bytes())
        (self.work / "bin" / "uv").chmod(0o755)
        curl = self.work / "bin" / "curl"
        curl.write_text(f"""#!/bin/sh
# SkyPilot installs uv with `curl -LsSf https://astral.sh/uv/install.sh | sh`; offline, hand it a local copy.
case "$*" in
  *astral.sh/uv/install.sh*)
    echo 'd="${{UV_INSTALL_DIR:-$HOME/.local/bin}}"; mkdir -p "$d" && cp {self.work}/bin/uv "$d/uv" && chmod +x "$d/uv"'
    exit 0;;
esac
exec /usr/bin/curl "$@"
""")
        py = self.work / "bin" / "python3.10"
        py.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH={PY310}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec {PY310}/bin/python3.10 "$@"\n')
        for tool in (curl, py):
            tool.chmod(0o755)
            # Job steps run in login shells, whose /etc/profile resets PATH: /usr/local/bin is on every PATH.
            link = Path("/usr/local/bin") / tool.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(tool)
                self.undo.append(lambda link=link: link.unlink(missing_ok=True))
        self._catalog()

    def _catalog(self) -> None:
        from sky.catalog import common

        root = Path(common._ABSOLUTE_VERSIONED_CATALOG_DIR) / "common"
        root.mkdir(parents=True, exist_ok=True)
        for name, body in {
            "accelerators.csv": "AcceleratorName,Clouds\nL4,\"['Slurm', 'AWS', 'GCP']\"\nA10G,\"['AWS']\"\n"
                                "H100,\"['AWS', 'GCP']\"\nA100,\"['AWS', 'GCP']\"\nRTX4090,\"['Kubernetes']\"\n",
            "metadata.csv": "GPU,MemoryGB,Manufacturer\nL4,24,NVIDIA\nA10G,24,NVIDIA\nH100,80,NVIDIA\nA100,40,NVIDIA\n"
                            "RTX4090,24,NVIDIA\n",
        }.items():
            if not (root / name).exists():
                (root / name).write_text(body)

    def _user(self) -> None:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
        subprocess.run(["usermod", "-p", "*", USER], check=True)  # no password, but not locked: sshd lets keys in
        entry = pwd.getpwnam(USER)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        ssh = Path(entry.pw_dir) / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text((self.work / "id_ed25519.pub").read_text())
        for path in (ssh, ssh / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        (ssh / "authorized_keys").chmod(0o600)
        os.chown(self.work / "venvs", entry.pw_uid, entry.pw_gid)

    def _munge(self) -> None:
        key = self.work / "munge.key"
        shutil.copy("/etc/munge/munge.key", key) if Path("/etc/munge/munge.key").exists() else key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        self.munge_socket = self.work / "munge.socket"
        self._spawn(["munged", "-F", "--force", "-S", str(self.munge_socket), "--key-file", str(key),
                     "--pid-file", str(self.work / "munged.pid"), "--seed-file", str(self.work / "munge.seed"),
                     "--log-file", str(self.work / "log" / "munged-file.log")], "munged")
        self._wait(lambda: self.munge_socket.exists(), 10, "munged socket")

    def _slurm(self, timeout: float) -> None:
        w = self.work
        nodes = "\n".join(
            f"NodeName=node{i} NodeAddr=127.0.0.1 NodeHostname=node{i} Port={port} CPUs=4 RealMemory=8192 "
            f"Gres=gpu:L4:1 State=UNKNOWN" for i, port in ((1, self.node_ports[0]), (2, self.node_ports[1]))
        )
        self.conf.write_text(f"""ClusterName={CLUSTER}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
SlurmUser=root
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool/%n
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd-%n.pid
SlurmctldLogFile={w}/log/slurmctld-file.log
SlurmdLogFile={w}/log/slurmd-%n-file.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
{nodes}
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        (w / "etc" / "gres.conf").write_text("NodeName=node[1-2] Name=gpu Type=L4 File=/dev/null\n")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: self._sinfo_ok(), 20, "slurmctld")
        for name in ("node1", "node2"):
            self._spawn(["slurmd", "-D", "-N", name, "-f", str(self.conf)], f"slurmd-{name}")
        self._wait(lambda: self._idle_nodes() == 2, timeout, "two idle slurmd nodes")

    def _sinfo_ok(self) -> bool:
        return subprocess.run(["sinfo"], env=self.env, capture_output=True).returncode == 0

    def _idle_nodes(self) -> int:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.split()[-1] in ("idle", "mix"))

    def _sshd(self) -> None:
        w = self.work
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(w / "ssh_host_key")], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        path = f"{w}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        (w / "sshd_config").write_text(f"""Port {self.ssh_port}
ListenAddress 127.0.0.1
HostKey {w}/ssh_host_key
PidFile {w}/sshd.pid
PasswordAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
StrictModes no
MaxSessions 100
MaxStartups 100:30:200
SetEnv SLURM_CONF={self.conf} PATH={path} UV_NATIVE_TLS=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
""")
        self._spawn(["/usr/sbin/sshd", "-D", "-e", "-f", str(w / "sshd_config")], "sshd")
        self._wait(lambda: self._ssh(["true"]).returncode == 0, 15, "sshd login")

    def _ssh(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
             f"{USER}@127.0.0.1", *command], capture_output=True, text=True, timeout=20)

    def _client(self) -> None:
        config = Path.home() / ".slurm" / "config"
        config.parent.mkdir(exist_ok=True)
        old = config.read_text() if config.exists() else None
        config.write_text(f"""Host {CLUSTER}
  HostName 127.0.0.1
  Port {self.ssh_port}
  User {USER}
  IdentityFile {self.key}
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
""")
        self.undo.append(lambda: config.write_text(old) if old is not None else config.unlink(missing_ok=True))

    @staticmethod
    def _wait(check, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"slurm harness: {what} not ready after {timeout} s")

    # ------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        stop_skypilot()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # What the cluster started on its own: job steps and SkyPilot's runtime (as the login user), and the
        # API server's subprocess daemons, which outlive `sky api stop`. Found by PID, started after us.
        uid = pwd.getpwnam(USER).pw_uid if _user_exists() else None
        for pid in _new_pids(self.pids_before):
            try:
                owner = (Path("/proc") / str(pid)).stat().st_uid
                cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if owner == uid or str(self.work) in cmd or "skylet/subprocess_daemon" in cmd:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for path in set(Path(tempfile.gettempdir()).iterdir()) - self.tmp_before:
            try:
                if uid is not None and path.stat().st_uid == uid:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        for undo in reversed(self.undo):
            try:
                undo()
            except OSError:
                pass
        shutil.rmtree(self.work, ignore_errors=True)


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


def _new_pids(before: set[int]) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and int(p.name) not in before and int(p.name) != os.getpid()]


def _pids_matching(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def start_skypilot(attempts: int = 3) -> None:
    """A fresh local SkyPilot API server, started before the tests need one (stopping whatever an earlier process
    left). A start can fail while a server stopped just before still lets its port go: tried up to `attempts` times,
    rather than letting the first test's launch find out."""
    sky = shutil.which("sky") or str(Path(sys.executable).with_name("sky"))
    failure = ""
    for attempt in range(attempts):
        stop_skypilot()
        done = subprocess.run([sky, "api", "start"], capture_output=True, text=True, timeout=180)
        if done.returncode == 0:
            return
        failure = (done.stdout + done.stderr)[-1500:]
        time.sleep(5 * (attempt + 1))
    raise RuntimeError(f"slurm harness: the SkyPilot API server did not start in {attempts} attempts:\n{failure}")


def stop_skypilot() -> None:
    """Stop the local SkyPilot API server and what it leaves behind: the ssh control masters, and the managed-jobs
    controller processes of consolidation mode, which outlive `sky api stop` (reparented to init). Left running, a
    later server's controllers and these both drive the next managed job, and SkyPilot's scheduler fails it
    (FAILED_CONTROLLER: "AssertionError: (job_id, 0)" in scheduler_set_alive)."""
    sky = shutil.which("sky") or str(Path(sys.executable).with_name("sky"))
    subprocess.run([sky, "api", "stop"], capture_output=True, timeout=60)
    for pid in _pids_matching("[mux]") + _pids_matching("-msky.jobs.controller "):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    harness = SlurmHarness().start()
    print(f"slurm harness up in {harness.work}; SLURM_CONF={harness.conf}; press Enter to stop", flush=True)
    try:
        input()
    finally:
        harness.stop()
