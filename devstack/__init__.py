"""The development stack: a private Mosquitto, the multi-process stack, `keyop demo`."""
