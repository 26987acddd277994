"""The contract between the fleet and the device (docs/protocol.md, docs/adr/0007, 0010, 0013).

    protocol     the MQTT topics and every message (pydantic), chunk and TUF part framing
    mqtt         broker URLs and the paho client (credentials, TLS, backoff)
    broker       the one broker-connection model (:class:`broker.BrokerConnection`), used by the
                 agent's config (``[mqtt]``) and the fleet's (``broker``)
    tuf_meta     what a TUF targets entry says about a bundle (``custom.bne``)

The modules are imported on first use.
"""
