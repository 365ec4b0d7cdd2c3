"""OpenStack Swift + s3api on 127.0.0.1, from Debian's packages: a real object store for fault tests.

Checks signatures, keeps data across restarts and speaks S3 multipart. Four servers (proxy, account,
container, object) run under Debian's system python3 in a private folder; every process is stopped
by its PID. Access key 'test:tester', secret 'testing'.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
ACCESS_KEY, SECRET_KEY = "test:tester", "testing"


def available() -> bool:
    return shutil.which("swift-proxy-server") is not None and Path(SYSTEM_PYTHON).exists()


def _free_ports(n: int) -> list[int]:
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SwiftServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.proxy_port, self.account_port, self.container_port, self.object_port = _free_ports(4)
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "EVENTLET_NO_GREENDNS": "yes", "PYTHONPATH": ""}
        self.env.pop("VIRTUAL_ENV", None)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _write_configs(self) -> None:
        root = self.root
        (root / "node" / "sdb1").mkdir(parents=True, exist_ok=True)
        (root / "run").mkdir(exist_ok=True)
        common = f"[DEFAULT]\nbind_ip = 127.0.0.1\nworkers = 0\nmount_check = false\ndevices = {root}/node\nswift_dir = {root}\nlog_level = WARNING\n"
        for name, port in (("account", self.account_port), ("container", self.container_port), ("object", self.object_port)):
            (root / f"{name}-server.conf").write_text(
                common + f"bind_port = {port}\n\n[pipeline:main]\npipeline = {name}-server\n\n"
                f"[app:{name}-server]\nuse = egg:swift#{name}\n"
                + ("\n[object-replicator]\n[object-updater]\n[object-auditor]\n" if name == "object" else "")
            )
        (root / "proxy-server.conf").write_text(
            f"[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {self.proxy_port}\nworkers = 0\nswift_dir = {root}\nlog_level = WARNING\n\n"
            "[pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy-logging cache s3api tempauth slo dlo proxy-logging proxy-server\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\n"
            "[filter:tempauth]\nuse = egg:swift#tempauth\nuser_test_tester = testing .admin\n\n"
            "[filter:s3api]\nuse = egg:swift#s3api\n\n"
            "[filter:slo]\nuse = egg:swift#slo\n\n"  # S3 multipart uploads are stored as static large objects
            "[filter:dlo]\nuse = egg:swift#dlo\n\n"
            "[filter:cache]\nuse = egg:swift#memcache\n\n"
            "[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n"
            "[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n"
            "[filter:healthcheck]\nuse = egg:swift#healthcheck\n\n"
            "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n"
        )
        for name, port in (("account", self.account_port), ("container", self.container_port), ("object", self.object_port)):
            builder = root / f"{name}.builder"
            if builder.exists():
                continue
            for args in (["create", "6", "1", "1"], ["add", f"r1z1-127.0.0.1:{port}/sdb1", "1"], ["rebalance"]):
                subprocess.run(["swift-ring-builder", str(builder), *args], check=False, capture_output=True, env=self.env)

    def _ensure_swift_conf(self) -> None:
        # Swift reads its hash prefix/suffix only from /etc/swift/swift.conf; Debian's package ships one.
        conf = Path("/etc/swift/swift.conf")
        if not conf.exists():
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("[swift-hash]\nswift_hash_path_suffix = finetune-tests\nswift_hash_path_prefix = finetune-tests\n"
                            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n")

    def _spawn(self, name: str) -> None:
        binary = shutil.which(f"swift-{name}-server")
        log = open(self.root / "run" / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [SYSTEM_PYTHON, binary, str(self.root / f"{name}-server.conf")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, cwd=self.root,
        )

    def start(self, timeout: float = 30.0) -> SwiftServer:
        self._ensure_swift_conf()
        self._write_configs()
        for name in ("account", "container", "object", "proxy"):
            self._spawn(name)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.root / "run" / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"swift {name} server exited ({proc.returncode}):\n{log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/healthcheck", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"swift proxy not ready on {self.endpoint} after {timeout} s")

    def kill_proxy(self) -> None:
        proc = self.procs.pop("proxy")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def restart_proxy(self) -> None:
        self._spawn("proxy")
        self.wait_ready()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
