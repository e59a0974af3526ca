/* hal.h on QEMU's mps2-an385 (Cortex-M3, no operating system): the CMSDK UART 0, SysTick for
 * time, the flash kept in a host file through Arm semihosting (QEMU's -semihosting-config), and
 * a reset request that QEMU run with -no-reboot answers by exiting. */
#include <stdarg.h>
#include <stdio.h>

#include "../hal.h"
#include "mps2.h"

#define REG(a) (*(volatile uint32_t *)(a))
#define UART0 0x40004000u
#define UART_DATA REG(UART0 + 0x00)
#define UART_STATE REG(UART0 + 0x04) /* bit 0: TX full; bit 1: RX full */
#define UART_CTRL REG(UART0 + 0x08)  /* bit 0: TX on; bit 1: RX on; bit 3: RX interrupt */
#define UART_INTCLEAR REG(UART0 + 0x0C)
#define UART_BAUDDIV REG(UART0 + 0x10)
#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define NVIC_ISER0 REG(0xE000E100u)
#define AIRCR REG(0xE000ED0Cu)
#define SYSCLK 25000000u /* the board's system clock */

static volatile uint32_t ticks; /* milliseconds */
static int flash = -1;
static uint32_t flash_bytes;

void SysTick_Handler(void) { ticks++; }

void Uart0Rx_Handler(void) { UART_INTCLEAR = 2; } /* a byte is in: wake the loop */

/* -- semihosting ---------------------------------------------------------------------------- */

static int semihost(int op, void *arg)
{
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int mps2_cmdline(char *buf, int len)
{
    struct { char *buf; int len; } a = {buf, len};
    return semihost(0x15, &a) == 0 ? a.len : -1; /* SYS_GET_CMDLINE */
}

int mps2_open(const char *path, int mode)
{
    struct { const char *name; int mode; int len; } a = {path, mode, (int)strlen(path)};
    return semihost(0x01, &a); /* SYS_OPEN */
}

static int seek(uint32_t at)
{
    struct { int h; uint32_t at; } a = {flash, at};
    return semihost(0x0A, &a); /* SYS_SEEK */
}

int mps2_read(int handle, void *buf, uint32_t len)
{
    struct { int h; void *buf; uint32_t len; } a = {handle, buf, len};
    return semihost(0x06, &a) == 0 ? 0 : -1; /* SYS_READ: the bytes not read */
}

int mps2_write(int handle, const void *buf, uint32_t len)
{
    struct { int h; const void *buf; uint32_t len; } a = {handle, buf, len};
    return semihost(0x05, &a) == 0 ? 0 : -1; /* SYS_WRITE: the bytes not written */
}

uint32_t mps2_length(int handle)
{
    struct { int h; } a = {handle};
    int n = semihost(0x0C, &a); /* SYS_FLEN */
    return n < 0 ? 0 : (uint32_t)n;
}

void mps2_close(int handle)
{
    struct { int h; } a = {handle};
    semihost(0x02, &a); /* SYS_CLOSE */
}

void mps2_exit(int code)
{
    /* SYS_EXIT with ADP_Stopped_ApplicationExit and its code (the 64-bit-aware form). */
    uint32_t a[2] = {0x20026u, (uint32_t)code};
    semihost(0x18, a);
    for (;;)
        ;
}

void mps2_use_flash(int handle, uint32_t size)
{
    flash = handle;
    flash_bytes = size;
}

/* -- hal.h ------------------------------------------------------------------------------------ */

void mps2_start(void)
{
    SYST_RVR = SYSCLK / 1000u - 1u;
    SYST_CSR = 7; /* the core's clock, its interrupt, on */
    UART_CTRL = 1 | 2 | 8;
    NVIC_ISER0 = 1u << 0; /* IRQ 0: UART 0 receive */
}

size_t hal_uart_read(uint8_t *buf, size_t cap, uint32_t timeout_ms)
{
    uint32_t end = ticks + timeout_ms;
    size_t n = 0;
    for (;;) {
        while (n < cap && (UART_STATE & 2))
            buf[n++] = (uint8_t)UART_DATA;
        if (n || (int32_t)(ticks - end) >= 0)
            return n;
        __asm__ volatile("wfi"); /* until a byte or the next millisecond */
    }
}

void hal_uart_write(const uint8_t *buf, size_t len)
{
    while (len--) {
        while (UART_STATE & 1)
            ;
        UART_DATA = *buf++;
    }
}

int hal_uart_set_baud(uint32_t baud)
{
    while (UART_STATE & 1) /* the last byte queued goes out at the old rate */
        ;
    UART_BAUDDIV = SYSCLK / baud;
    return 0;
}

uint32_t hal_now_ms(void) { return ticks; }

void hal_sleep_ms(uint32_t ms)
{
    uint32_t end = ticks + ms;
    while ((int32_t)(ticks - end) < 0)
        __asm__ volatile("wfi");
}

uint32_t hal_flash_size(void) { return flash_bytes; }

int hal_flash_read(uint32_t addr, void *buf, uint32_t len)
{
    if ((uint64_t)addr + len > flash_bytes || seek(addr))
        return -1;
    return mps2_read(flash, buf, len);
}

int hal_flash_write(uint32_t addr, const void *buf, uint32_t len)
{
    if ((uint64_t)addr + len > flash_bytes || seek(addr))
        return -1;
    return mps2_write(flash, buf, len);
}

int hal_flash_erase(uint32_t addr, uint32_t len)
{
    static uint8_t ff[1024];
    memset(ff, 0xFF, sizeof ff);
    for (uint32_t at = 0; at < len; at += sizeof ff)
        if (hal_flash_write(addr + at, ff, len - at < sizeof ff ? len - at : sizeof ff))
            return -1;
    return 0;
}

/* Each semihosted write is the host's write(): it is in the file when the call returns. */
int hal_flash_sync(void) { return 0; }

void hal_reboot(void)
{
    hal_log("reboot");
    while (UART_STATE & 1)
        ;
    AIRCR = 0x05FA0004u; /* SYSRESETREQ: QEMU run with -no-reboot exits, and is started again */
    for (;;)
        ;
}

void hal_log(const char *fmt, ...)
{
    char line[200];
    int n = snprintf(line, sizeof line, "refmcu %lu ms ", (unsigned long)ticks);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    if (len + 2 <= sizeof line) {
        line[len] = '\n';
        line[len + 1] = 0;
    }
    semihost(0x04, line); /* SYS_WRITE0: QEMU's console, kept in the firmware's log */
}
