"""Real Redis deployments for integration tests, on free loopback ports in a temporary
directory: one server, a 3-primary Cluster, a primary with a replica behind 3 sentinels, and a
TLS server with an ACL user (certificates made here). Every wait is bounded; ``stop()`` kills
every process it started."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

START_SECONDS = 15.0
SERVICE = "sidecar-primary"
ACL_USER, ACL_PASSWORD = "app", "app-secret-9f2c"


class Unsupported(Exception):
    """This redis-server cannot run the deployment (no TLS, too old for sharded pub/sub)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {seconds:.0f} s")
        time.sleep(0.05)


def server_version() -> tuple[int, ...]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unsupported("redis-server is not installed")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    version = next(part for part in out.split() if part.startswith("v="))[2:]
    return tuple(int(n) for n in version.split("."))


@dataclass
class Servers:
    """Processes started under ``root``; ``stop()`` ends them all."""

    root: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    by_name: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, config: str, *, sentinel: bool = False) -> subprocess.Popen[bytes]:
        """redis-server with ``config`` (the directory, log and AOF settings added here)."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "redis.conf"
        common = f'bind 127.0.0.1\ndir {directory}\nlogfile {directory / "log"}\nsave ""\n'
        if not sentinel:
            # The Redis spool refuses a Redis without AOF (usage.allowVolatileRedis).
            common += "appendonly yes\nappendfsync everysec\n"
        conf.write_text(common + config)
        return self._launch(name, sentinel=sentinel)

    def restart(self, name: str, extra_config: str = "") -> None:
        """Start ``name`` again on its own configuration and data (after a kill)."""
        conf = self.root / name / "redis.conf"
        conf.write_text(conf.read_text() + extra_config)
        self._launch(name)

    def _launch(self, name: str, *, sentinel: bool = False) -> subprocess.Popen[bytes]:
        args = [
            shutil.which("redis-server") or "redis-server",
            str(self.root / name / "redis.conf"),
        ]
        if sentinel:
            args.append("--sentinel")
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        self.by_name[name] = process
        return process

    def log_of(self, name: str) -> str:
        path = self.root / name / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(timeout=5)
        self.processes.clear()


def pings(port: int, **options: Any) -> Callable[[], bool]:
    """A check that the server on ``port`` answers PING."""

    def check() -> bool:
        with redis.Redis(port=port, socket_timeout=0.5, **options) as client:
            return bool(client.ping())

    return check


# --- a 3-primary Cluster ---------------------------------------------------------------------


def start_cluster(servers: Servers, primaries: int = 3) -> list[int]:
    """Ports of a Cluster of ``primaries`` nodes covering every slot."""
    if server_version() < (7, 0):
        raise Unsupported("redis-server older than 7 has no sharded pub/sub (SSUBSCRIBE)")
    ports = [free_port() for _ in range(primaries)]
    # The bus ports are chosen too: port + 10000 may be taken or above 65535.
    buses = [free_port() for _ in range(primaries)]
    for port, bus in zip(ports, buses, strict=True):
        servers.start(
            f"cluster-{port}",
            f"port {port}\ncluster-port {bus}\ncluster-enabled yes\n"
            "cluster-config-file nodes.conf\ncluster-node-timeout 2000\n",
        )
    for port in ports:
        wait_for(f"cluster node {port}", pings(port))
    clients = [redis.Redis(port=port, socket_timeout=2) for port in ports]
    try:
        slots = 16384 // primaries
        for index, client in enumerate(clients):
            last = 16383 if index == primaries - 1 else (index + 1) * slots - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", index * slots, last)
            if index:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", ports[index], buses[index])
        for client in clients:
            wait_for(
                "cluster state ok",
                lambda c=client: (
                    # redis-py parses these replies into dicts.
                    c.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                    and len(c.execute_command("CLUSTER NODES")) == primaries
                ),
            )
    finally:
        for client in clients:
            client.close()
    return ports


# --- a primary, a replica and 3 sentinels -----------------------------------------------------


@dataclass(frozen=True)
class SentinelSet:
    primary: int
    replica: int
    sentinels: list[int]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def name_of(self, port: int) -> str:
        """The ``Servers`` name of the data node on ``port`` (named by its first role)."""
        return f"primary-{port}" if port == self.primary else f"replica-{port}"

    def current_primary(self) -> int:
        with redis.Redis(port=self.sentinels[0], socket_timeout=1) as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)


def start_sentinels(
    servers: Servers, *, down_after_ms: int = 1000, quorum: bool = False
) -> SentinelSet:
    """``quorum``: also wait until the sentinels know each other, as a failover they start
    themselves (the primary is gone) needs their votes."""
    primary, replica = free_port(), free_port()
    # Either may be the primary: neither waits 5 s for more replicas before a full sync.
    fast = "repl-diskless-sync-delay 0\n"
    servers.start(f"primary-{primary}", f"port {primary}\n{fast}")
    servers.start(f"replica-{replica}", f"port {replica}\n{fast}replicaof 127.0.0.1 {primary}\n")
    wait_for("primary", pings(primary))
    wait_for(
        "replica in sync",
        lambda: (
            redis.Redis(port=replica, socket_timeout=0.5).info("replication")["master_link_status"]
            == "up"
        ),
    )
    sentinels = [free_port() for _ in range(3)]
    for port in sentinels:
        servers.start(
            f"sentinel-{port}",
            f"port {port}\nsentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n",
            sentinel=True,
        )
    for port in sentinels:
        # The replica is all a forced failover needs (no vote); waiting for the sentinels to
        # find each other too would add seconds of hello messages to every start.
        def knows_the_replica(port: int = port) -> bool:
            with redis.Redis(port=port, socket_timeout=0.5) as client:
                replicas = client.execute_command("SENTINEL REPLICAS", SERVICE)
                peers = client.execute_command("SENTINEL SENTINELS", SERVICE) if quorum else [1, 2]
            return len(replicas) == 1 and len(peers) == 2

        wait_for(f"sentinel {port}", knows_the_replica)
    return SentinelSet(primary, replica, sentinels)


def force_failover(sentinels: SentinelSet, seconds: float = START_SECONDS) -> int:
    """``SENTINEL FAILOVER``; the new primary's port once the sentinels name it."""
    before = sentinels.current_primary()
    with redis.Redis(port=sentinels.sentinels[0], socket_timeout=2) as client:
        client.execute_command("SENTINEL FAILOVER", SERVICE)
    wait_for("failover", lambda: sentinels.current_primary() != before, seconds)
    return sentinels.current_primary()


def kill_primary(servers: Servers, sentinels: SentinelSet, seconds: float = START_SECONDS) -> int:
    """``kill -9`` of the primary; the new primary's port once the sentinels promoted it."""
    before = sentinels.current_primary()
    name = sentinels.name_of(before)
    servers.by_name[name].kill()
    servers.by_name[name].wait(timeout=5)
    wait_for("failover", lambda: sentinels.current_primary() != before, seconds)
    return sentinels.current_primary()


def restart_old_primary(servers: Servers, sentinels: SentinelSet, port: int) -> None:
    """Bring a killed primary back as a replica of the new one, as orchestrators do (left to
    the sentinels, it would serve as a second primary until their next 10 s look)."""
    name = sentinels.name_of(port)
    servers.restart(name, f"replicaof 127.0.0.1 {sentinels.current_primary()}\n")

    def replicating() -> bool:
        with redis.Redis(port=port, socket_timeout=0.5) as client:
            info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    wait_for("old primary back as a replica", replicating)


# --- TLS with an ACL user ----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("stigg-sidecar test CA"))
        .issuer_name(name("stigg-sidecar test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client, client_key = leaf("sidecar", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return TlsFiles(
        ca=write_cert(ca, directory / "ca.pem"),
        server_cert=write_cert(server, directory / "server.pem"),
        server_key=write_key(server_key, directory / "server.key"),
        client_cert=write_cert(client, directory / "client.pem"),
        client_key=write_key(client_key, directory / "client.key"),
    )


def start_tls(servers: Servers) -> tuple[int, TlsFiles]:
    """A server on TLS only, requiring a client certificate, with the default user off and
    one ACL user (``ACL_USER``/``ACL_PASSWORD``)."""
    files = make_certificates(servers.root / "certs")
    port = free_port()
    name = f"tls-{port}"
    process = servers.start(
        name,
        f"port 0\ntls-port {port}\ntls-cert-file {files.server_cert}\n"
        f"tls-key-file {files.server_key}\ntls-ca-cert-file {files.ca}\ntls-auth-clients yes\n"
        f"user default off\nuser {ACL_USER} on >{ACL_PASSWORD} ~* &* +@all\n",
    )
    options = {
        "ssl": True,
        "ssl_ca_certs": str(files.ca),
        "ssl_certfile": str(files.client_cert),
        "ssl_keyfile": str(files.client_key),
        "username": ACL_USER,
        "password": ACL_PASSWORD,
    }

    def ready() -> bool:
        if process.poll() is not None:
            # A build without TLS exits at once on the tls-* directives.
            log = servers.log_of(name).strip()[-300:]
            raise Unsupported(f"redis-server did not start with TLS (built without it?): {log}")
        return pings(port, **options)()

    wait_for("tls server", ready)
    return port, files
