"""The on-device agent: verified A/B install, health gate, local inference API (see issue [agent])."""
