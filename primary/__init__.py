"""The emulated primary MCU: flash, bootloader, application and OTA receiver."""
