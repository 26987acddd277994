"""The embedded MQTT broker (amqtt 0.12, MQTT 3.1.1) in its own thread and event loop.

For a fleet that runs on one machine with no other service.  amqtt keeps sessions and retained
messages in memory only: a service restart loses them, which the protocol tolerates (devices
re-publish birth and state on connect, the fleet re-publishes every desired state on connect).
It has no MQTT 5 shared subscriptions, so replicas need an external broker (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from bitnet_edge.fleet.errors import ConfigError

__all__ = ["EmbeddedBroker"]

log = logging.getLogger("bitnet_edge.fleet.broker")


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, tls_cert: str | None = None,
                 tls_key: str | None = None, auth: str = "anonymous"):
        if auth != "anonymous":
            # per-device credentials with topic ACLs on amqtt are [hardening] work (issue 18): until they
            # exist the mode is refused rather than silently admitting anonymous clients
            raise ConfigError("no-per-device-auth", "the embedded broker has no per-device credentials in this "
                                                    "version: use --broker with Mosquitto and `fleet broker-config`")
        self.host, self.port = host, port
        self.tls = (tls_cert, tls_key) if tls_cert and tls_key else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where this process's own clients connect (a wildcard bind is reached over loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        """Start listening; returns the broker URL (with the real port when ``port`` was 0)."""
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        ready, failure = threading.Event(), []
        self._loop = asyncio.new_event_loop()

        async def boot():
            listener = {"type": "tcp", "bind": f"{self.host}:{self.port}"}
            if self.tls:
                listener.update(ssl=True, certfile=self.tls[0], keyfile=self.tls[1])
            cfg = {"listeners": {"default": listener},
                   "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
            self._broker = Broker(cfg, loop=self._loop)
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
            raise RuntimeError("the embedded MQTT broker did not start")
        if failure:
            raise RuntimeError(f"the embedded MQTT broker did not start: {failure[0]}") from failure[0]
        log.info("embedded MQTT broker on %s", self.url)
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
