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
#include "options.h"
#include "hal.h"
#include "posix.h"

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
    struct paths p;
    char err[160];
    int bad = options_parse(&o, &p, argc, argv, err, sizeof err);
    if (!bad && !p.port) {
        snprintf(err, sizeof err, "give --port PATH");
        bad = 1;
    }
    if (bad) {
        fprintf(stderr, "refmcu: %s\n%s", err, options_usage);
        return 2;
    }
    const char *port = p.port, *flash = p.flash, *provision = p.provision;
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
