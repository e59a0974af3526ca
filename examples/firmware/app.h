/* The reference MCU application: the NCP's client (its start-up, heartbeat and baud rate), the
 * bootloader's records, and the OTA receiver. Platform-free: it runs on hal.h alone. */
#ifndef REFMCU_APP_H
#define REFMCU_APP_H

#include <stdint.h>

struct options {
    uint32_t initial_baud;       /* the NCP's rate at power-up: 38400 */
    uint32_t switch_baud;        /* after start-up, ask the NCP for this rate (0: stay) */
    uint32_t slot_size;          /* bytes of each image slot */
    uint16_t chunk_size;         /* asked for in blynk_otaUpdateStart */
    uint32_t flash_ms_per_kib;   /* a slow flash: milliseconds to program 1 KiB */
    uint32_t heartbeat_ms;       /* how often the NCP is asked for its state */
    int tolerate_duplicates;     /* acknowledge an exact resend of the last chunk */
    int skip_type_check;         /* a build with a defect: installs another product's image */
    int keep_switched_baud;      /* a build with a defect: stays at its rate after an NCP reboot */
};

void app_defaults(struct options *o);
/* Boot from the flash; 0, or -1 when nothing can run (the reason logged). */
int app_boot(const struct options *o);
/* Write a factory image to a blank flash. */
int app_provision(const struct options *o, const uint8_t *image, uint32_t len);
/* Run: never returns (a reboot ends the process). */
void app_run(void);

#endif
