/* The native build's own set-up, beside hal.h. */
#ifndef REFMCU_POSIX_H
#define REFMCU_POSIX_H

#include <stdint.h>

#define POSIX_REBOOT_EXIT 0 /* the process ends to reboot; its runner starts it again */

int posix_open_uart(const char *path);
/* Open the flash file; with create, make it (erased) up to size bytes. */
int posix_open_flash(const char *path, uint32_t size, int create);

#endif
