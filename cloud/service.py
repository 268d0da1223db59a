"""`printfleet up`: the embedded (or an external) broker, the controller and the HTTP API in one process.

The embedded broker is built by the composition layer and passed in (:mod:`cloud.broker_port`). The
long-running tasks (the controller's loops, the rollout engine, the HTTP server) run under one
:class:`~cloud.supervisor.Supervisor`: if one dies, ``/healthz`` answers 503 at once and
:meth:`ControllerService.run` raises, so the process exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from cloud import db
from cloud.api import ApiContext, MaintenanceApi, create_app
from cloud.audit import Audit
from cloud.bridges import Bridges
from cloud.broker_port import BrokerFactory, BrokerRefusal, Listener, LocalBroker
from cloud.broker_sync import MosquittoSync
from cloud.commands import CommandStore
from cloud.config import ControllerConfig, parse_mqtt_url
from cloud.controller import Controller
from cloud.errors import ControllerError
from cloud.jobs.intake import Intake
from cloud.jobs.store import JobFeed, JobStore
from cloud.keys import Keyring
from cloud.packages import PackageStore, update_args
from cloud.presence import Presence
from cloud.registry import DbCredentials, Registry
from cloud.rollouts import Rollouts
from cloud.supervisor import Supervisor
from kernel import __version__, tls, wire
from kernel.config import BrokerAddress, TlsSettings
from kernel.session import ConnectFailed, ConnectionLost

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where the running service listens, and what agents are told to use."""

    http_url: str
    mqtt_urls: tuple[str, ...]
    advertised_http: str
    advertised_mqtt: tuple[str, ...]


class ControllerService:
    """Composes broker, controller and HTTP API; ``async with`` starts them, exit stops them.

    ``broker`` builds the embedded broker (needed unless ``config.external_broker`` is set).
    """

    def __init__(self, config: ControllerConfig, *, broker: BrokerFactory | None = None) -> None:
        self.config = config
        self.endpoints: Endpoints | None = None
        self.registry: Registry
        self.jobs: JobStore
        self.controller: Controller
        self._broker_factory = broker
        self.broker: LocalBroker | None = None
        self.admin_token = ""
        self._stack: contextlib.AsyncExitStack | None = None
        self.supervisor = Supervisor()

    async def run(self) -> None:
        """Serve until cancelled; raises :class:`~cloud.supervisor.TaskDied` if a supervised task dies."""
        await self.supervisor.wait()

    async def __aenter__(self) -> ControllerService:
        cfg = self.config
        if not cfg.external_broker and self._broker_factory is None:
            raise ControllerError("no broker: give an external broker URL, or an embedded broker to run")
        cfg.data_dir.ensure()
        await asyncio.to_thread(db.migrate, cfg.db_url)
        stack = contextlib.AsyncExitStack()
        self._stack = stack
        try:
            engine = db.make_engine(cfg.db_url)
            stack.push_async_callback(engine.dispose)
            sessions = db.make_sessionmaker(engine)
            self.registry = Registry(sessions)
            self.jobs = JobStore(sessions, JobFeed())
            intake = Intake(self.jobs)
            presence = Presence(sessions, heartbeat_timeout_s=cfg.heartbeat_timeout_s)
            self.audit = Audit(sessions)
            self.commands = CommandStore(sessions)
            self.keyring = Keyring(cfg.data_dir)
            self.admin_token = cfg.data_dir.read_or_create_secret(cfg.data_dir.admin_token_path)
            await self.registry.ensure_admin_token(self.admin_token)
            secret = cfg.data_dir.read_or_create_secret(cfg.data_dir.controller_secret_path)
            await self.registry.ensure_controller_credential(secret)
            session_number = await self.registry.next_counter("controller_session")
            self.mosquitto_sync: MosquittoSync | None = None
            if cfg.external_broker and cfg.mosquitto_dir is not None:
                self.mosquitto_sync = MosquittoSync(
                    cfg.mosquitto_dir, cfg.mosquitto_reload, DbCredentials(self.registry, cfg.controller_name)
                )
                await self.mosquitto_sync.sync()

            link_tls: TlsSettings | None = None
            if cfg.external_broker:
                host, port, use_tls = parse_mqtt_url(cfg.external_broker)
                mqtt_urls: tuple[str, ...] = (cfg.external_broker,)
                if use_tls:
                    self.tls_files = self._tls_files(cfg)
                    link_tls = self._link_tls(self.tls_files)
            else:
                assert self._broker_factory is not None
                listener = Listener(host=cfg.mqtt_bind[0], port=cfg.mqtt_bind[1])
                if cfg.tls:
                    self.tls_files = self._tls_files(cfg)
                    link_tls = self._link_tls(self.tls_files)
                    listener = Listener(
                        host=cfg.mqtt_bind[0],
                        port=cfg.mqtt_bind[1],
                        certfile=self.tls_files.server_cert,
                        keyfile=self.tls_files.server_key,
                        cafile=self.tls_files.ca_cert,
                        require_client_cert=cfg.mtls,
                    )
                self.broker = self._broker_factory(
                    listener=listener,
                    credentials=DbCredentials(self.registry, cfg.controller_name),
                    on_refusal=self._broker_refusal,
                )
                await stack.enter_async_context(self.broker)
                bound_host, port = self.broker.bound_addresses[0]
                host = _connect_host(bound_host)
                scheme = "mqtts" if cfg.tls else "mqtt"
                mqtt_urls = (f"{scheme}://{_url_host(host)}:{port}",)

            self.controller = Controller(
                config=cfg,
                registry=self.registry,
                jobs=self.jobs,
                presence=presence,
                keyring=self.keyring,
                broker=BrokerAddress(host=host, port=port, tls=link_tls is not None),
                secret=secret,
                session_number=session_number,
                tls=link_tls,
                commands=self.commands,
                on_kick=self.broker.kick if self.broker else None,
                audit=self.audit,
                intake=intake,
            )
            self.supervisor.start("controller", self.controller.run())
            self.packages = PackageStore(cfg.data_dir.root / "packages")
            self.rollouts = Rollouts(
                sessions,
                self.commands,
                command_args=update_args(self.packages),
                wake_outbox=self.controller.wake_outbox,
            )
            self.supervisor.start("rollouts", self.rollouts.run())

            app = create_app(
                ApiContext(
                    registry=self.registry,
                    jobs=self.jobs,
                    intake=intake,
                    controller=self.controller,
                    agent_config=self.agent_config,
                    health=self.health,
                    audit=self.audit,
                    credentials_changed=self._credentials_changed,
                    commands=self.commands,
                    bridges=Bridges(sessions),
                    bridge_config=self.bridge_config,
                    maintenance=MaintenanceApi(
                        packages=self.packages,
                        rollouts=self.rollouts,
                        commands=self.commands,
                        wake_outbox=self.controller.wake_outbox,
                        controller_http=lambda: self.endpoints.advertised_http if self.endpoints else None,
                    ),
                )
            )
            server = _Server(
                uvicorn.Config(
                    app, host=cfg.http_bind[0], port=cfg.http_bind[1], log_level="warning", lifespan="off"
                )
            )
            self._server = server
            http_task = self.supervisor.start("http", server.serve())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not server.started:
                if http_task.done():
                    http_task.result()
                    raise ControllerError(
                        f"the HTTP API could not listen on {cfg.http_bind[0]}:{cfg.http_bind[1]}"
                    )
                if loop.time() > deadline:
                    raise ControllerError("the HTTP API did not start within 10 s")
                await asyncio.sleep(0.02)
            http_host, http_port = server.servers[0].sockets[0].getsockname()[:2]
            http_url = f"http://{_url_host(_connect_host(http_host))}:{http_port}"
            adv_http = next((a for a in cfg.advertise if a.startswith("http")), http_url)
            adv_mqtt = tuple(a for a in cfg.advertise if a.startswith("mqtt")) or mqtt_urls
            self.endpoints = Endpoints(
                http_url=http_url, mqtt_urls=mqtt_urls, advertised_http=adv_http, advertised_mqtt=adv_mqtt
            )
            try:
                await asyncio.wait_for(self.controller.online.wait(), timeout=15)
            except TimeoutError:
                error = self.controller.last_error
                reason = error.reason if isinstance(error, ConnectFailed | ConnectionLost) else "no answer"
                raise ControllerError(f"cannot connect to the broker at {host}:{port}: {reason}") from None
            cfg.data_dir.write_state(
                {
                    "pid": os.getpid(),
                    "http": http_url,
                    "mqtt": list(mqtt_urls),
                    "advertised_http": adv_http,
                    "advertised_mqtt": list(adv_mqtt),
                    "version": __version__,
                }
            )
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.config.data_dir.clear_state()
        server = getattr(self, "_server", None)
        if server is not None:
            server.should_exit = True
        await self.supervisor.stop(grace={"http": 5.0})
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    def _tls_files(self, cfg: ControllerConfig) -> tls.TlsFiles:
        """The CA and server certificate (created when missing), for every name agents may dial."""
        names: set[str] = set()
        ips: set[str] = set()
        for url in cfg.advertise:
            host = urlsplit(url).hostname
            if host:
                (ips if _is_ip(host) else names).add(host)
        bind = cfg.mqtt_bind[0]
        if bind not in ("0.0.0.0", "::", ""):
            (ips if _is_ip(bind) else names).add(bind)
        clients = [self._ctl_client_id] if cfg.mtls else []
        return tls.ensure_local_ca(
            cfg.tls_dir or cfg.data_dir.root / "tls",
            hostnames=sorted(names),
            ips=sorted(ips),
            clients=clients,
        )

    @property
    def _ctl_client_id(self) -> str:
        return wire.Peer(role=wire.Role.CONTROLLER, name=self.config.controller_name).client_id

    def _link_tls(self, files: tls.TlsFiles) -> TlsSettings:
        """The controller's own TLS: the fleet's CA, plus its client certificate under mutual TLS."""
        ca = files.ca_cert.read_text()
        if self.config.mtls:
            cert, key = files.client(self._ctl_client_id)
            settings = TlsSettings(ca_pem=ca, cert_pem=cert.read_text(), key_pem=key.read_text())
        else:
            settings = TlsSettings(ca_pem=ca)
        # Build the context once now: a malformed PEM in the TLS directory fails the start, as it
        # always did, instead of killing the link task at its first connect.
        tls.client_context_from_pem(settings.ca_pem, settings.cert_pem, settings.key_pem)
        return settings

    async def _credentials_changed(self) -> None:
        if self.mosquitto_sync is not None:
            await self.mosquitto_sync.sync()

    def _broker_refusal(self, refusal: BrokerRefusal) -> None:
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.note_broker_refusal(refusal)

    def agent_config(self, device: str, secret: str) -> dict[str, Any]:
        """What a device agent needs: its credentials, the broker(s), the controller and its key."""
        return self._peer_config(wire.Peer(role=wire.Role.DEVICE, name=device), secret)

    def bridge_config(self, bridge: str, secret: str) -> dict[str, Any]:
        """What a phone bridge needs (the same shape, under [bridge] and its own credential)."""
        return self._peer_config(wire.Peer(role=wire.Role.BRIDGE, name=bridge), secret)

    def _peer_config(self, peer: wire.Peer, secret: str) -> dict[str, Any]:
        assert self.endpoints is not None
        device = peer.name
        data: dict[str, Any] = {
            ("bridge" if peer.role is wire.Role.BRIDGE else "device"): {"name": device},
            "mqtt": {
                "urls": list(self.endpoints.advertised_mqtt),
                "username": peer.client_id,
                "password": secret,
                "keepalive": self.config.agent_keepalive,
            },
            "controller": {
                "http": self.endpoints.advertised_http,
                "name": self.config.controller_name,
                "public_keys": self.keyring.public_keys(),
            },
        }
        files = getattr(self, "tls_files", None)
        if files is not None:
            section = {"ca_pem": files.ca_cert.read_text()}
            if self.config.mtls:
                pair = tls.LocalCA.load(files.directory).issue_client(peer.client_id)
                section["cert_pem"] = pair.cert_pem.decode()
                section["key_pem"] = pair.key_pem.decode()
            data["tls"] = section
        return data

    async def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            await self.registry.ping()
            checks["database"] = "ok"
        except Exception as exc:  # the probe reports, it does not raise
            checks["database"] = f"error: {exc}"
        checks["broker_link"] = "ok" if self.controller.online.is_set() else "disconnected"
        failure = self.supervisor.failure
        checks["tasks"] = "ok" if failure is None else f"error: {failure}"
        ok = all(v == "ok" for v in checks.values())
        return {"status": "ok" if ok else "degraded", "version": __version__, **checks}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _connect_host(bound: str) -> str:
    return "127.0.0.1" if bound in ("0.0.0.0", "", "::") else bound


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def running(
    config: ControllerConfig, *, broker: BrokerFactory | None = None
) -> AsyncIterator[ControllerService]:
    async with ControllerService(config, broker=broker) as svc:
        yield svc
