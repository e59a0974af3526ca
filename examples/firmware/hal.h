/* The reference firmware's view of its hardware: a UART, a clock, flash storage and a reset.
 *
 * The protocol and OTA code (frame.c, rpc.c, app.c) use only these calls, so one build runs
 * natively on a pty (hal_posix.c) and another on a bare-metal board. */
#ifndef REFMCU_HAL_H
#define REFMCU_HAL_H

#include <stddef.h>
#include <stdint.h>

/* Bytes that arrived, waiting at most timeout_ms for the first one; 0 when none came. */
size_t hal_uart_read(uint8_t *buf, size_t cap, uint32_t timeout_ms);
/* Send all of buf. */
void hal_uart_write(const uint8_t *buf, size_t len);
/* Wait until everything written has left, then run the UART at baud. 0 on success. */
int hal_uart_set_baud(uint32_t baud);

/* Milliseconds since an arbitrary start, monotonic. */
uint32_t hal_now_ms(void);
/* Busy for ms milliseconds (a flash that takes its time). */
void hal_sleep_ms(uint32_t ms);

/* The flash: a boot area and two slots, addressed from 0. Writes of erased areas only. */
uint32_t hal_flash_size(void);
int hal_flash_read(uint32_t addr, void *buf, uint32_t len);
int hal_flash_write(uint32_t addr, const void *buf, uint32_t len);
int hal_flash_erase(uint32_t addr, uint32_t len);
/* Make what was written survive a power cut. */
int hal_flash_sync(void);

/* Reset the MCU: never returns. The process ends; whoever runs it starts it again. */
void hal_reboot(void);

/* A line for whoever watches the firmware (its log file, a debug UART). */
void hal_log(const char *fmt, ...);

#endif
