/* The firmware's command line, the same for every build (main.c, mps2/main_mps2.c). */
#include <stdio.h>
#include <string.h>

#include "options.h"

const char options_usage[] =
    "usage: refmcu --port PATH --flash FILE [--provision IMAGE] [options]\n"
    "  --slot-size BYTES       bytes of each image slot (default 262144)\n"
    "  --chunk-size BYTES      chunk size asked for in blynk_otaUpdateStart (default 1024)\n"
    "  --baud-switch RATE      after start-up, ask the NCP to switch the UART to RATE\n"
    "  --flash-ms-per-kib MS   a slow flash: milliseconds to program each KiB\n"
    "  --heartbeat-ms MS       how often the NCP's state is asked (default 1000)\n"
    "  --tolerate-duplicates   acknowledge an exact resend of the last chunk\n"
    "  --skip-type-check       a defect: install an image of another product\n"
    "  --keep-switched-baud    a defect: stay at the switched rate after an NCP reboot\n";

static int number(const char *text, unsigned long lo, unsigned long hi, unsigned long *out)
{
    unsigned long v = 0;
    if (!text || !*text)
        return -1;
    for (const char *c = text; *c; c++) {
        if (*c < '0' || *c > '9' || v > (hi - (unsigned long)(*c - '0')) / 10)
            return -1;
        v = v * 10 + (unsigned long)(*c - '0');
    }
    if (v < lo)
        return -1;
    *out = v;
    return 0;
}

int options_parse(struct options *o, struct paths *p, int argc, char **argv, char *err, size_t cap)
{
    static const struct { const char *name; unsigned long lo, hi; } numeric[] = {
        {"--slot-size", 4096, 1ul << 30}, {"--chunk-size", 1, 65535}, {"--baud-switch", 300, 10000000},
        {"--flash-ms-per-kib", 0, 60000}, {"--heartbeat-ms", 10, 600000},
    };
    app_defaults(o);
    p->port = p->flash = p->provision = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **path = !strcmp(a, "--port") ? &p->port : !strcmp(a, "--flash") ? &p->flash
                          : !strcmp(a, "--provision") ? &p->provision : NULL;
        if (path && v) {
            *path = v;
            i++;
            continue;
        }
        int k = 0, found = -1;
        for (; k < (int)(sizeof numeric / sizeof numeric[0]); k++)
            if (!strcmp(a, numeric[k].name))
                found = k;
        if (found >= 0) {
            unsigned long n;
            if (number(v, numeric[found].lo, numeric[found].hi, &n)) {
                snprintf(err, cap, "%s takes a number from %lu to %lu", a, numeric[found].lo, numeric[found].hi);
                return -1;
            }
            uint32_t *fields[] = {&o->slot_size, NULL, &o->switch_baud, &o->flash_ms_per_kib, &o->heartbeat_ms};
            if (found == 1)
                o->chunk_size = (uint16_t)n;
            else
                *fields[found] = (uint32_t)n;
            i++;
        } else if (!strcmp(a, "--tolerate-duplicates")) {
            o->tolerate_duplicates = 1;
        } else if (!strcmp(a, "--skip-type-check")) {
            o->skip_type_check = 1;
        } else if (!strcmp(a, "--keep-switched-baud")) {
            o->keep_switched_baud = 1;
        } else {
            snprintf(err, cap, "unknown or incomplete option '%s'", a);
            return -1;
        }
    }
    if (!p->flash) {
        snprintf(err, cap, "give --flash FILE");
        return -1;
    }
    return 0;
}
