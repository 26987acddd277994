"""The one model of a broker connection, used by the agent's config (``[mqtt]``) and the fleet's
(``broker``): where the broker is, who this client is, its credentials and TLS files."""

from __future__ import annotations

from pydantic import Field, field_validator

from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.schemas import Strict
from bitnet_edge.sdk.wire.mqtt import BrokerURL, make_client, parse_broker_url

__all__ = ["BrokerConnection"]


class BrokerConnection(Strict):
    """How a client reaches the MQTT broker (the agent's ``[mqtt]``, the fleet service's ``broker``)."""

    url: str | None = Field(default=None, description="mqtt://host:port or mqtts://host:port (TLS); None: no broker "
                                                      "(agent: offline only; fleet: start the embedded broker)")
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                                  description="MQTT client id; None: the role's own (agent: its device id, "
                                              "fleet: bne-fleet-<replica_id>)")
    username: str | None = Field(default=None, description="broker user name")
    password: str | None = Field(default=None, description="broker password")
    tls_ca: str | None = Field(default=None, description="CA bundle for mqtts")
    tls_cert: str | None = Field(default=None, description="client certificate (mTLS)")
    tls_key: str | None = Field(default=None, description="client key (mTLS)")
    keepalive: int = Field(default=30, gt=0, description="seconds")
    reconnect_max: float = Field(default=30.0, gt=0, description="longest reconnect backoff, seconds")

    @field_validator("url")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v is not None:
            parse_broker_url(v)  # InputError is a ValueError: pydantic reports it on the field
        return v

    @property
    def broker(self) -> BrokerURL:
        """The parsed :attr:`url` (InputError when none is configured)."""
        if self.url is None:
            raise InputError("url", "no broker URL is configured")
        return parse_broker_url(self.url)

    def client(self, default_client_id: str, *, clean_session: bool = True, mqtt5: bool = False,
               reconnect_min: float = 0.5, max_inflight: int = 64):
        """A paho client for this connection (:func:`make_client`); not connected.  Connect it with
        ``connect_async(self.broker.host, self.broker.port, keepalive=self.keepalive)``."""
        return make_client(self.client_id or default_client_id, self.broker, clean_session=clean_session, mqtt5=mqtt5,
                           username=self.username, password=self.password, tls_ca=self.tls_ca,
                           tls_cert=self.tls_cert, tls_key=self.tls_key,
                           reconnect_min=min(reconnect_min, self.reconnect_max), reconnect_max=self.reconnect_max,
                           max_inflight=max_inflight)
