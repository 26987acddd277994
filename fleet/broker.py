"""The embedded MQTT broker (amqtt 0.12, MQTT 3.1.1) in its own thread and event loop.

For a fleet that runs on one machine with no other service.  amqtt keeps sessions and retained
messages in memory only: a service restart loses them, which the protocol tolerates (devices
re-publish birth and state on connect, the fleet re-publishes every desired state on connect).
It has no MQTT 5 shared subscriptions, so replicas need an external broker (docs/scaling.md).

Authentication (``auth="per-device"``, the default): every client names itself with a user name
and password -- a device with its id and the password ``fleet enroll`` issued
(:class:`~bitnet_edge.fleet.mqtt_auth.DeviceCredentials`), the fleet service with
``bne-fleet@<replica>`` and a password made at start -- and must use the client id of that
identity.  Anything else (no user name, a wrong password, another client id, a Last Will on a
topic the identity may not publish) is refused with CONNACK 5 before amqtt looks at its sessions,
so a refused client cannot take over or wipe a device's session.  Topics follow the generated
Mosquitto ACL (:mod:`bitnet_edge.fleet.mqtt_auth`).  ``auth="anonymous"`` admits anyone (any local
process reads and forges every device's traffic): for development on loopback only, and logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from bitnet_edge.fleet.errors import ConfigError
from bitnet_edge.sdk.errors import BitnetEdgeError, listen_error
from bitnet_edge.sdk.extras import require
from bitnet_edge.fleet.mqtt_auth import (
    DeviceCredentials,
    FleetPasswords,
    Identity,
    identity_for,
    may_publish,
    may_receive,
    may_subscribe,
)

__all__ = ["EmbeddedBroker", "Gate", "AUTH_MODES"]

log = logging.getLogger("bitnet_edge.fleet.broker")
AUTH_MODES = ("per-device", "anonymous")
_IDENTITY = "bitnet_edge.identity"  # session attribute set once a client is admitted


class Gate:
    """Admission of one CONNECT (user name, password, client id, will topic) -> Identity or None."""

    def __init__(self, devices: DeviceCredentials, fleet: FleetPasswords):
        self.devices, self.fleet = devices, fleet

    def admit(self, client_id: str | None, username: str | None, password: str | None,
              will_topic: str | None) -> Identity | None:
        who = identity_for(username)
        if who is None or client_id != who.client_id:
            return None
        try:
            ok = (self.devices if who.kind == "device" else self.fleet).check(username, password)
        except Exception:  # noqa: BLE001 - an unreadable credentials file admits no one
            log.exception("embedded broker: checking credentials failed")
            return None
        if not ok or (will_topic is not None and not may_publish(who, will_topic)):
            return None
        return who


def _plugin_classes():
    """amqtt plugin classes (imported late: amqtt is heavy and only the service needs it)."""
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    class BneAuthPlugin(BaseAuthPlugin):
        """Authentication and topic rules of the embedded broker; ``gate`` is set by EmbeddedBroker."""

        gate: Gate | None = None

        @dataclass
        class Config:
            pass

        async def authenticate(self, *, session) -> bool:
            gate = self.gate
            if gate is None or session is None:
                return False
            who = gate.admit(session.client_id, session.username, session.password,
                             session.will_topic if session.will_flag else None)
            session.attributes[_IDENTITY] = who
            return who is not None

    class BneTopicPlugin(BaseTopicPlugin):
        @dataclass
        class Config:
            pass

        async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
            who = session.attributes.get(_IDENTITY) if session is not None else None
            if who is None or not topic:
                return False
            if action == Action.PUBLISH:
                return may_publish(who, topic)
            if action == Action.SUBSCRIBE:
                return may_subscribe(who, topic)
            return may_receive(who, topic)

    return BneAuthPlugin, BneTopicPlugin


class _Replay:
    """A reader that gives back an already-read packet first, then reads on from ``rest``."""

    def __init__(self, first: bytes, rest):
        self._buf, self._rest = bytearray(first), rest

    async def read(self, n: int = -1) -> bytes:
        if not self._buf:
            return await self._rest.read(n)
        if n < 0 or n >= len(self._buf):
            out, self._buf = bytes(self._buf), bytearray()
            return out + (await self._rest.read(n - len(out)) if n > len(out) else b"")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def feed_eof(self) -> None:
        self._rest.feed_eof()


def _gated_broker_class():
    from amqtt.broker import Broker
    from amqtt.errors import AMQTTError, MQTTError, NoDataError
    from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
    from amqtt.mqtt.connect import ConnectPacket

    class GatedBroker(Broker):
        """amqtt's broker with the CONNECT checked before any session is looked up or replaced."""

        gate: Gate | None = None

        async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
            if self.gate is None:
                return await super()._initialize_client_session(reader, writer, remote_address, remote_port)
            try:
                connect = await ConnectPacket.from_stream(reader)
            except (AMQTTError, MQTTError, NoDataError) as exc:
                await writer.close()
                raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - garbage on the wire
                await writer.close()
                raise AMQTTError(f"unreadable CONNECT from {remote_address}:{remote_port}: {exc}") from None
            if connect is None or connect.payload is None or connect.variable_header is None:
                await writer.close()
                raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}")
            will = connect.will_topic if connect.will_flag else None
            if self.gate.admit(connect.client_id, connect.username, connect.password, will) is None:
                log.warning("embedded broker refused %s:%s (client id %r, user %r): not an enrolled identity "
                            "with its password", remote_address, remote_port, connect.client_id, connect.username)
                try:
                    await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
                finally:
                    await writer.close()
                raise MQTTError(f"{remote_address}:{remote_port} not authorized")
            return await super()._initialize_client_session(_Replay(connect.to_bytes(), reader), writer,
                                                            remote_address, remote_port)

        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:
            """Retained messages for one of the session's own subscriptions, each checked against its
            topic rules.  (amqtt 0.12 calls this on connect for every filter *any* client holds, which
            would hand a new client every retained message the fleet's wildcards match.)"""
            if self.gate is None:
                return await super()._publish_retained_messages_for_subscription(subscription, session)
            topic_filter, qos = subscription
            who = session.attributes.get(_IDENTITY)
            holders = self._subscriptions.get(topic_filter, [])
            if who is None or not any(s.client_id == session.client_id for s, _ in holders):
                return None
            handler = self._get_handler(session)
            if handler is None:
                return None
            sends = [asyncio.ensure_future(handler.mqtt_publish(m.topic, m.data, min(qos, m.qos or qos), retain=True))
                     for topic, m in list(self._retained_messages.items())
                     if self._matches(topic, topic_filter) and may_receive(who, topic)]
            if sends:
                await asyncio.wait(sends)
            return None

    return GatedBroker


def _start_error(exc: BaseException, host: str, port: int) -> BitnetEdgeError:
    """amqtt's start failure as a typed error: the OSError it wraps (a port in use ...) names the port."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return listen_error(seen, "embedded MQTT broker", host, port, "--mqtt-port")
        seen = seen.__cause__ or seen.__context__
    return ConfigError("broker-failed", f"the embedded MQTT broker did not start on {host}:{port}: {exc}")


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, tls_cert: str | None = None,
                 tls_key: str | None = None, auth: str = "per-device", data_dir: str | None = None):
        if auth not in AUTH_MODES:
            raise ConfigError("bad-auth", f"embedded broker auth {auth!r}: expected one of {', '.join(AUTH_MODES)}")
        if auth == "per-device" and data_dir is None:
            raise ConfigError("bad-auth", "per-device authentication needs the fleet data directory (credentials)")
        self.host, self.port, self.auth = host, port, auth
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self.fleet_passwords = FleetPasswords()
        self.gate = Gate(DeviceCredentials(data_dir), self.fleet_passwords) if auth == "per-device" else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    def fleet_login(self, replica_id: str) -> tuple[str | None, str | None]:
        """(user name, password) for the fleet service replica ``replica_id``; (None, None) when anonymous."""
        if self.gate is None:
            return None, None
        return self.fleet_passwords.issue(replica_id)

    @property
    def url(self) -> str:
        """Where this process's own clients connect (a wildcard bind is reached over loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start listening; returns the broker URL (with the real port when ``port`` was 0)."""
        require("amqtt.broker", "the fleet's embedded MQTT broker", "fleet")  # one-line MissingExtra, not a traceback

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # a failed start is raised here, not logged there
        if self.gate is None:
            log.warning("embedded MQTT broker admits anonymous clients: any local process can read and forge "
                        "every device's traffic (use --mqtt-auth per-device and `fleet enroll`)")
        ready, failure = threading.Event(), []
        self._loop = asyncio.new_event_loop()

        async def boot():
            listener = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
            if self.tls:
                listener.update(ssl=True, certfile=self.tls[0], keyfile=self.tls[1])
            if self.gate is None:
                plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
            else:
                plugins = {f"{__name__}._AUTH_PLUGIN": {}, f"{__name__}._TOPIC_PLUGIN": {}}
            cfg = {"listeners": {"default": listener}, "plugins": plugins}
            cls = _gated_broker_class()
            self._broker = cls(cfg, loop=self._loop)
            self._broker.gate = self.gate
            if self.gate is not None:
                auth = self._broker.plugins_manager.get_plugin("BneAuthPlugin")
                if auth is None:
                    raise RuntimeError("the embedded broker's authentication plugin did not load")
                auth.gate = self.gate
            await self._broker.start()
            server = self._broker._servers["default"].instance
            self.port = server.sockets[0].getsockname()[1]

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(boot())
            except Exception as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="bne-amqtt", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise ConfigError("broker-failed", f"the embedded MQTT broker did not start within {timeout:.0f} s")
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        if failure:
            self._thread.join(5)
            self._loop.close()
            self._loop = None
            raise _start_error(failure[0], self.host, self.port) from failure[0]
        log.info("embedded MQTT broker on %s (%s)", self.url, self.auth)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._broker is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            log.warning("embedded broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        self._loop.close()
        self._loop = self._broker = self._thread = None


_PLUGINS: dict[str, type] = {}


def __getattr__(name: str):
    """``_AUTH_PLUGIN`` / ``_TOPIC_PLUGIN``: the plugin classes amqtt loads by dotted name, made on first use."""
    if name in ("_AUTH_PLUGIN", "_TOPIC_PLUGIN"):
        if not _PLUGINS:
            _PLUGINS["_AUTH_PLUGIN"], _PLUGINS["_TOPIC_PLUGIN"] = _plugin_classes()
        return _PLUGINS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
