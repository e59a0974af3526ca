"""The emulated Blynk.NCP network co-processor."""
