"""Device profiles, one TOML file per device (validated by bitnet_edge.sdk.bundle.devices.DeviceProfile).

A package only so that the profiles ship inside the wheel: ``bitnet_edge.devices``.
"""
