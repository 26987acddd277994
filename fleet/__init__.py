"""The fleet service: model OTA over MQTT with staged rollouts (see issue [fleet])."""
