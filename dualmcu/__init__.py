"""dualmcu: emulate both halves of a Blynk.NCP dual-MCU device and the UART between them."""

__version__ = "0.1.0"
