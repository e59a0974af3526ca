/* The mps2-an385 build's own calls beside hal.h: semihosting and start-up. */
#ifndef REFMCU_MPS2_H
#define REFMCU_MPS2_H

#include <stdint.h>
#include <string.h>

#define SH_RB 1   /* SYS_OPEN modes: "rb", "r+b", "w+b" */
#define SH_RPB 3
#define SH_WPB 7

void mps2_start(void);
int mps2_cmdline(char *buf, int len);
int mps2_open(const char *path, int mode);
int mps2_read(int handle, void *buf, uint32_t len);
int mps2_write(int handle, const void *buf, uint32_t len);
uint32_t mps2_length(int handle);
void mps2_close(int handle);
void mps2_use_flash(int handle, uint32_t size);
void mps2_exit(int code);

#endif
