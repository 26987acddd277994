"""MQTT connection settings shared by the agent and the fleet service.

``mqtt://host:port`` or ``mqtts://host:port`` (TLS; with a client certificate: mTLS) ->
a configured paho ``Client(CallbackAPIVersion.VERSION2)``.  Reconnects use paho's bounded
exponential backoff (``min_delay`` doubling up to ``max_delay``), which also covers a broker that
is down when the client starts (``connect_async`` + ``loop_start``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from bitnet_edge.sdk.errors import InputError

__all__ = ["BrokerURL", "parse_broker_url", "make_client"]

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerURL:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerURL:
    """``mqtt[s]://host[:port]``; InputError (argument ``url``) on anything else."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise InputError("url", f"{url!r}: the scheme must be mqtt:// or mqtts://")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise InputError("url", f"{url!r}: bad port") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise InputError("url", f"{url!r}: expected mqtt[s]://host[:port]")
    return BrokerURL(parts.hostname, port, parts.scheme == "mqtts")


def make_client(client_id: str, url: BrokerURL, *, clean_session: bool = True, mqtt5: bool = False,
                username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                tls_cert: str | None = None, tls_key: str | None = None, reconnect_min: float = 0.5,
                reconnect_max: float = 30.0, max_inflight: int = 64):
    """A paho client (VERSION2 callbacks) with credentials, TLS and backoff set; not connected.

    MQTT 5 sessions are chosen at connect time (``clean_start`` of ``connect_async``), so
    ``clean_session`` only applies to MQTT 3.1.1 here.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if mqtt5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                             protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if url.tls:
        client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key, cert_reqs=ssl.CERT_REQUIRED,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    elif tls_cert or tls_key:
        raise InputError("url", f"{url}: a client certificate needs an mqtts:// URL")
    client.reconnect_delay_set(min_delay=reconnect_min, max_delay=reconnect_max)  # type: ignore[arg-type]
    client.max_inflight_messages_set(max_inflight)
    return client
