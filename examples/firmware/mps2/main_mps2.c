/* The reference firmware on QEMU's mps2-an385: the same application as the native build, its
 * command line from QEMU's -append (through semihosting), its flash a host file.
 *
 *   qemu-system-arm -M mps2-an385 -display none -monitor none -no-reboot \
 *       -semihosting-config enable=on,target=native -serial /dev/pts/N \
 *       -kernel refmcu-mps2.elf -append "--flash dev.flash --provision factory.bin"
 */
#include "../app.h"
#include "../hal.h"
#include "../options.h"
#include "mps2.h"

static char cmdline[512];
static char *argv[32];
static uint8_t piece[4096];

static int split(char *line)
{
    int argc = 0;
    for (char *c = line; *c && argc < (int)(sizeof argv / sizeof argv[0]);) {
        while (*c == ' ')
            *c++ = 0;
        if (!*c)
            break;
        argv[argc++] = c;
        while (*c && *c != ' ')
            c++;
    }
    return argc;
}

/* A blank flash: the file made erased, then the factory image written through the app. */
static int provision(const struct options *o, const char *flash, const char *image, uint32_t size)
{
    int f = mps2_open(flash, SH_WPB);
    int img = mps2_open(image, SH_RB);
    if (f < 0 || img < 0) {
        hal_log("cannot open %s", f < 0 ? flash : image);
        return -1;
    }
    memset(piece, 0xFF, sizeof piece);
    for (uint32_t at = 0; at < size; at += sizeof piece)
        if (mps2_write(f, piece, size - at < sizeof piece ? size - at : sizeof piece))
            return -1;
    mps2_use_flash(f, size);
    /* The image goes through RAM a slot's worth at most: it is read whole, then written. */
    static uint8_t factory[256 * 1024];
    uint32_t len = mps2_length(img);
    if (len > sizeof factory || mps2_read(img, factory, len)) {
        hal_log("the factory image %s has %lu bytes: this build reads at most %lu", image, (unsigned long)len,
                (unsigned long)sizeof factory);
        return -1;
    }
    mps2_close(img);
    return app_provision(o, factory, len);
}

int main(void)
{
    struct options o;
    struct paths p;
    char err[160];
    mps2_start();
    int argc = mps2_cmdline(cmdline, sizeof cmdline) > 0 ? split(cmdline) : 0;
    if (options_parse(&o, &p, argc, argv, err, sizeof err)) {
        hal_log("%s", err);
        mps2_exit(2);
    }
    uint32_t size = 4096 + 2 * o.slot_size;
    int f = mps2_open(p.flash, SH_RPB);
    if (f >= 0) {
        mps2_use_flash(f, mps2_length(f));
    } else if (!p.provision) {
        hal_log("no flash file at %s: give --provision IMAGE to make one", p.flash);
        mps2_exit(2);
    } else if (provision(&o, p.flash, p.provision, size)) {
        mps2_exit(2);
    }
    if (app_boot(&o))
        mps2_exit(1);
    app_run();
    return 0;
}
