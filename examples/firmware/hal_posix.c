/* hal.h on Linux or macOS: the UART is a serial device or a pty, the flash a file, a reboot
 * the end of the process (whoever started it, `dualmcu ... -p exec:...`, starts it again). */
#define _DEFAULT_SOURCE /* cfmakeraw */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "hal.h"
#include "posix.h"

static int uart = -1, flash = -1;
static uint32_t flash_bytes;

static speed_t speed_of(uint32_t baud)
{
    switch (baud) {
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
    case 230400: return B230400;
#ifdef B460800
    case 460800: return B460800;
#endif
#ifdef B921600
    case 921600: return B921600;
#endif
    }
    return 0;
}

int posix_open_uart(const char *path)
{
    uart = open(path, O_RDWR | O_NOCTTY);
    if (uart < 0)
        return -1;
    struct termios t;
    if (tcgetattr(uart, &t) == 0) {
        cfmakeraw(&t);
        tcsetattr(uart, TCSANOW, &t);
    }
    return 0;
}

int posix_open_flash(const char *path, uint32_t size, int create)
{
    flash = open(path, O_RDWR | (create ? O_CREAT : 0), 0644);
    if (flash < 0)
        return -1;
    struct stat st;
    if (fstat(flash, &st))
        return -1;
    if (create && (uint32_t)st.st_size < size) {
        /* A new flash reads erased: 0xFF everywhere. */
        static uint8_t ff[4096];
        memset(ff, 0xFF, sizeof ff);
        for (uint32_t at = (uint32_t)st.st_size; at < size; at += sizeof ff)
            if (pwrite(flash, ff, size - at < sizeof ff ? size - at : sizeof ff, at) < 0)
                return -1;
        st.st_size = size;
    }
    flash_bytes = (uint32_t)st.st_size;
    return 0;
}

size_t hal_uart_read(uint8_t *buf, size_t cap, uint32_t timeout_ms)
{
    struct pollfd p = {uart, POLLIN, 0};
    int r = poll(&p, 1, (int)timeout_ms);
    if (r <= 0)
        return 0;
    ssize_t n = read(uart, buf, cap);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        hal_log("the UART failed: %s", strerror(errno));
        exit(3);
    }
    return n > 0 ? (size_t)n : 0;
}

void hal_uart_write(const uint8_t *buf, size_t len)
{
    while (len) {
        ssize_t n = write(uart, buf, len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            hal_log("the UART failed: %s", strerror(errno));
            exit(3);
        }
        buf += n;
        len -= (size_t)n;
    }
}

int hal_uart_set_baud(uint32_t baud)
{
    struct termios t;
    speed_t s = speed_of(baud);
    if (!s || tcgetattr(uart, &t))
        return -1;
    tcdrain(uart);
    cfsetispeed(&t, s);
    cfsetospeed(&t, s);
    return tcsetattr(uart, TCSANOW, &t);
}

uint32_t hal_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

void hal_sleep_ms(uint32_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

uint32_t hal_flash_size(void) { return flash_bytes; }

int hal_flash_read(uint32_t addr, void *buf, uint32_t len)
{
    if ((uint64_t)addr + len > flash_bytes)
        return -1;
    return pread(flash, buf, len, addr) == (ssize_t)len ? 0 : -1;
}

int hal_flash_write(uint32_t addr, const void *buf, uint32_t len)
{
    if ((uint64_t)addr + len > flash_bytes)
        return -1;
    return pwrite(flash, buf, len, addr) == (ssize_t)len ? 0 : -1;
}

int hal_flash_erase(uint32_t addr, uint32_t len)
{
    static uint8_t ff[4096];
    memset(ff, 0xFF, sizeof ff);
    if ((uint64_t)addr + len > flash_bytes)
        return -1;
    for (uint32_t at = 0; at < len; at += sizeof ff) {
        uint32_t n = len - at < sizeof ff ? len - at : sizeof ff;
        if (pwrite(flash, ff, n, addr + at) != (ssize_t)n)
            return -1;
    }
    return 0;
}

int hal_flash_sync(void) { return fsync(flash); }

void hal_reboot(void)
{
    hal_log("reboot");
    if (uart >= 0)
        tcdrain(uart);
    fsync(flash);
    exit(POSIX_REBOOT_EXIT);
}

void hal_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "refmcu %10.3f ", hal_now_ms() / 1000.0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
