"""Flower's Deployment Engine on one machine: a SuperLink and SuperNodes as real processes.

:class:`LocalFederation` starts ``flower-superlink --insecure`` and N ``flower-supernode
--insecure`` on free loopback ports, submits
the run with ``flwr run <app dir> <connection> --stream`` exactly as a user would, waits for it
and reads the report the ServerApp wrote. It exists for tests and for trying the deployment
on a laptop; across machines you start the same commands by hand (see README.md here).

Teardown is explicit because Flower detaches its helpers: each SuperLink/SuperNode spawns a
``flower-superexec`` in a new session, which spawns ``flwr-serverapp``/``flwr-clientapp``
processes. :meth:`LocalFederation.close` collects every descendant (psutil) before sending
SIGTERM, then SIGKILLs whatever is left after a grace period, and reaps them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomli_w

from devft_lab.flower.server_app import ServerOptions
from devft_lab.flower.tls import make_loopback_tls

APP_NAME = "devft-flower"
CONNECTION = "devft-loopback"


def app_pyproject(defaults: Mapping[str, Any] | None = None) -> str:
    """The ``pyproject.toml`` of the Flower App (FAB): components point at installed code.

    The FAB holds no Python: the SuperLink and SuperNodes import ``devft_lab.flower`` from
    their own environment, so what ``flwr run`` ships is configuration only.
    """
    cfg = {"workload": "", "out-dir": "", "min-fit": 1, "round-timeout": 60.0,
           "node-timeout": 60.0, "num-nodes": 0, **(defaults or {})}
    doc = {"project": {"name": APP_NAME, "version": "0.1.0", "license": "Apache-2.0",
                       "description": "devft_lab federated LoRA workloads on Flower",
                       "dependencies": []},
           "tool": {"flwr": {"app": {"publisher": "devft-lab",
                                     "components": {"serverapp": "devft_lab.flower.server_app:app",
                                                    "clientapp": "devft_lab.flower.client_app:app"},
                                     "config": cfg}}}}
    return tomli_w.dumps(doc)


def write_app_dir(path: str | os.PathLike) -> Path:
    """Write the Flower App directory (just its ``pyproject.toml``) for ``flwr run <path>``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(app_pyproject())
    return path


def connection_toml(name: str, address: str, insecure: bool = True,
                    root_certificates: str | None = None) -> str:
    """A Flower configuration (``$FLWR_HOME/config.toml``) naming one SuperLink connection."""
    conn: dict[str, Any] = {"address": address}
    if insecure:
        conn["insecure"] = True
    if root_certificates:
        conn["root-certificates"] = root_certificates
    return tomli_w.dumps({"superlink": {"default": name, name: conn}})


def node_key_pair(path: Path) -> tuple[Path, Path]:
    """An EC P-384 SuperNode key pair in OpenSSH format: ``path`` (private) and ``path.pub``."""
    from cryptography.hazmat.primitives import serialization  # optional/heavy: cryptography (installed with flwr)
    from cryptography.hazmat.primitives.asymmetric import ec  # optional/heavy: cryptography (installed with flwr)

    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH))
    return path, pub


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[:2]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def kill_tree(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM ``pids`` and all their descendants, SIGKILL survivors after ``grace`` s."""
    import psutil  # optional/heavy: psutil (installed with flwr[simulation])

    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs[pid] = p
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback; use as a context manager.

    Plain HTTP (``--insecure``) by default; ``tls=True`` serves TLS with a throw-away CA that
    the SuperNodes and ``flwr run`` verify (``--root-certificates``); ``node_auth=True`` also
    starts the SuperLink with ``--enable-supernode-auth`` and registers each SuperNode's key.

    ``workdir`` receives each process's log and ``FLWR_HOME`` (and the app directory).
    :meth:`node_id` reads a SuperNode's Flower node id from its log (which partition it serves
    is in the ServerApp's ``events.jsonl``: ``server_app.assign_nodes``).
    """

    num_nodes: int
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="devft-flower-")))
    startup_timeout: float = 60.0
    tls: bool = False  # True: a throw-away CA and server certificate (tls.py) instead of --insecure
    node_auth: bool = False  # True (needs tls): only SuperNodes whose key was registered may join
    link_port: int = 0
    link: _Proc | None = None
    nodes: list[_Proc] = field(default_factory=list)
    ca_cert: str | None = None

    def _env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")
        home.mkdir(parents=True, exist_ok=True)
        return env

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        log = self.workdir / f"{name}.log"
        fh = log.open("w")
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self._env(self.workdir / "home" / name), cwd=self.workdir,
                                 start_new_session=True)
        fh.close()
        return _Proc(name, popen, log)

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _cli_env(self) -> dict[str, str]:
        """Environment of ``flwr`` commands: a Flower configuration naming this SuperLink."""
        home = self.workdir / "home" / "cli"
        env = self._env(home)
        (home / "config.toml").write_text(connection_toml(
            CONNECTION, f"127.0.0.1:{self.link_port}", insecure=not self.tls,
            root_certificates=self.ca_cert if self.tls else None))
        return env

    # ---- lifecycle
    def start(self) -> "LocalFederation":
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.node_auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
        self.link_port = free_port()
        link_security = ["--insecure"]
        if self.tls:
            t = make_loopback_tls(self.workdir / "tls")
            self.ca_cert = str(t.ca_cert)
            link_security = ["--ssl-ca-certfile", str(t.ca_cert), "--ssl-certfile", str(t.server_cert),
                             "--ssl-keyfile", str(t.server_key)]
        if self.node_auth:
            link_security.append("--enable-supernode-auth")
        self.link = self._spawn("superlink", [
            self._bin("flower-superlink"), *link_security, "--host", "127.0.0.1", "--port", str(self.link_port),
            "--disable-runtime-dependency-installation"])
        wait_for_port(self.link_port, self.startup_timeout, self.link.popen)
        for _ in range(self.num_nodes):
            self.add_node()
        return self

    def add_node(self, register: bool = True) -> _Proc:
        """Start one more SuperNode (the ServerApp gives it a partition: ``server_app.assign_nodes``).

        With ``node_auth`` it gets a fresh key pair, whose public half is registered with
        ``flwr supernode register`` unless ``register`` is False (an intruder the SuperLink
        must refuse).
        """
        name = f"supernode-{len(self.nodes)}"
        argv = [self._bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.link_port}",
                "--host", "127.0.0.1", "--port", str(free_port())]
        argv += ["--root-certificates", str(self.ca_cert)] if self.tls else ["--insecure"]
        if self.node_auth:
            private, public = node_key_pair(self.workdir / "keys" / name)
            argv += ["--auth-supernode-private-key", str(private)]
            if register:
                self.register(public)
        proc = self._spawn(name, argv)
        self.nodes.append(proc)
        return proc

    def register(self, public_key: Path) -> None:
        """``flwr supernode register <key> <connection>``: admit that SuperNode."""
        done = subprocess.run([self._bin("flwr"), "supernode", "register", str(public_key), CONNECTION],
                              env=self._cli_env(), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register failed:\n{done.stdout}\n{done.stderr}")

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def node_id(self, k: int) -> int | None:
        """The Flower node id of SuperNode ``k`` (from its log; None until it has registered)."""
        found = re.search(r"SuperNode ID: (\d+)", self.nodes[k].log.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    def kill_node(self, k: int) -> None:
        """Kill SuperNode ``k`` and everything it spawned (SIGKILL: no goodbye to the SuperLink)."""
        import psutil  # optional/heavy: psutil (installed with flwr[simulation])

        p = psutil.Process(self.nodes[k].popen.pid)
        victims = [p, *p.children(recursive=True)]
        for v in victims:
            try:
                v.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=5)

    def close(self) -> None:
        """Stop every process this federation started, helpers included; idempotent."""
        procs = [p for p in [self.link, *self.nodes] if p is not None]
        kill_tree([p.popen.pid for p in self.nodes], grace=3.0)  # SuperNodes first: the SuperLink is still up
        if self.link is not None:
            kill_tree([self.link.popen.pid], grace=3.0)
        for p in procs:
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass

    # ---- runs
    def submit(self, opts: ServerOptions) -> subprocess.Popen:
        """Start ``flwr run <app> <connection> --stream`` for ``opts`` (returns at once)."""
        app = write_app_dir(self.workdir / "app")
        env = self._cli_env()
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(tomli_w.dumps(opts.to_run_config()))
        Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
        for stale in ("run.json", "final_state.safetensors", "events.jsonl"):
            (Path(opts.out_dir) / stale).unlink(missing_ok=True)
        log = (self.workdir / "flwr-run.log").open("w")
        popen = subprocess.Popen([self._bin("flwr"), "run", str(app), CONNECTION, "--stream",
                                  "--run-config", str(overrides)],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=self.workdir, start_new_session=True)
        log.close()
        return popen

    def wait(self, popen: subprocess.Popen, opts: ServerOptions, timeout: float) -> dict[str, Any]:
        """Wait for the run's report (``run.json``), then for ``flwr run`` to exit; return the report."""
        report = Path(opts.out_dir) / "run.json"
        deadline = time.monotonic() + timeout
        exited: float | None = None
        try:
            while not report.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {report} after {timeout:.0f} s; logs in {self.workdir}:\n"
                                       + self.run_log()[-3000:])
                if popen.poll() is not None:  # the run ended without a report: the ServerApp failed
                    exited = exited or time.monotonic()
                    if time.monotonic() - exited > 5.0:
                        raise RuntimeError(f"flwr run exited ({popen.returncode}) and the ServerApp wrote no "
                                           f"report; its log:\n{self.run_log()[-3000:]}")
                time.sleep(0.3)
            try:
                popen.wait(timeout=max(5.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        finally:
            if popen.poll() is None:
                kill_tree([popen.pid], grace=2.0)
        return json.loads(report.read_text())

    def run(self, opts: ServerOptions, timeout: float = 300.0) -> dict[str, Any]:
        """Submit ``opts`` and wait for its report."""
        return self.wait(self.submit(opts), opts, timeout)

    def run_log(self) -> str:
        """What ``flwr run --stream`` printed (the ServerApp's log)."""
        path = self.workdir / "flwr-run.log"
        return path.read_text(errors="replace") if path.exists() else ""
