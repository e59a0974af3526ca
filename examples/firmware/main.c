/* The reference firmware, native build: `refmcu --port PTY --flash FILE [options]`.
 *
 * It is the primary MCU of a Blynk.NCP pair, for tests of dualmcu itself and as a model of what
 * a firmware must do (app.c). Its UART is the serial device or pty at --port; its flash the
 * file at --flash (a blank one needs --provision IMAGE, a tagged factory image). A reboot ends
 * the process with exit code 0: `dualmcu ncp -p 'exec:refmcu --port {pty} ...'` starts it
 * again, and it boots what its flash holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "hal.h"
#include "posix.h"

static const char usage[] =
    "usage: refmcu --port PATH --flash FILE [--provision IMAGE] [options]\n"
    "  --slot-size BYTES       bytes of each image slot (default 262144)\n"
    "  --chunk-size BYTES      chunk size asked for in blynk_otaUpdateStart (default 1024)\n"
    "  --baud-switch RATE      after start-up, ask the NCP to switch the UART to RATE\n"
    "  --flash-ms-per-kib MS   a slow flash: milliseconds to program each KiB\n"
    "  --heartbeat-ms MS       how often the NCP's state is asked (default 1000)\n"
    "  --tolerate-duplicates   acknowledge an exact resend of the last chunk\n"
    "  --skip-type-check       a defect: install an image of another product\n"
    "  --keep-switched-baud    a defect: stay at the switched rate after an NCP reboot\n";

static unsigned long number(const char *name, const char *text, unsigned long lo, unsigned long hi)
{
    char *end;
    unsigned long v = strtoul(text ? text : "", &end, 10);
    if (!text || !*text || *end || v < lo || v > hi) {
        fprintf(stderr, "refmcu: %s takes a number from %lu to %lu, not '%s'\n", name, lo, hi, text ? text : "");
        exit(2);
    }
    return v;
}

static uint8_t *read_file(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *data = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *more = realloc(data, cap);
            if (!more) {
                free(data);
                fclose(f);
                return NULL;
            }
            data = more;
        }
        got = fread(data + n, 1, cap - n, f);
        n += got;
    } while (got);
    fclose(f);
    *len = (uint32_t)n;
    return data;
}

int main(int argc, char **argv)
{
    struct options o;
    const char *port = NULL, *flash = NULL, *provision = NULL;
    app_defaults(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--port") && v) port = argv[++i];
        else if (!strcmp(a, "--flash") && v) flash = argv[++i];
        else if (!strcmp(a, "--provision") && v) provision = argv[++i];
        else if (!strcmp(a, "--slot-size")) o.slot_size = (uint32_t)number(a, v, 4096, 1u << 30), i++;
        else if (!strcmp(a, "--chunk-size")) o.chunk_size = (uint16_t)number(a, v, 1, 65535), i++;
        else if (!strcmp(a, "--baud-switch")) o.switch_baud = (uint32_t)number(a, v, 300, 10000000), i++;
        else if (!strcmp(a, "--flash-ms-per-kib")) o.flash_ms_per_kib = (uint32_t)number(a, v, 0, 60000), i++;
        else if (!strcmp(a, "--heartbeat-ms")) o.heartbeat_ms = (uint32_t)number(a, v, 10, 600000), i++;
        else if (!strcmp(a, "--tolerate-duplicates")) o.tolerate_duplicates = 1;
        else if (!strcmp(a, "--skip-type-check")) o.skip_type_check = 1;
        else if (!strcmp(a, "--keep-switched-baud")) o.keep_switched_baud = 1;
        else {
            fprintf(stderr, "refmcu: unknown or incomplete option '%s'\n%s", a, usage);
            return 2;
        }
    }
    if (!port || !flash) {
        fputs(usage, stderr);
        return 2;
    }
    uint32_t size = 4096 + 2 * o.slot_size;
    FILE *exists = fopen(flash, "rb");
    if (exists)
        fclose(exists);
    if (!exists && !provision) {
        fprintf(stderr, "refmcu: no flash file at %s: give --provision IMAGE to make one\n", flash);
        return 2;
    }
    if (posix_open_flash(flash, size, !exists)) {
        perror(flash);
        return 2;
    }
    if (!exists) {
        uint32_t len;
        uint8_t *image = read_file(provision, &len);
        if (!image) {
            perror(provision);
            return 2;
        }
        int bad = app_provision(&o, image, len);
        free(image);
        if (bad) {
            remove(flash);
            return 2;
        }
    }
    if (posix_open_uart(port)) {
        perror(port);
        return 3;
    }
    if (app_boot(&o))
        return 1;
    app_run();
    return 0;
}
