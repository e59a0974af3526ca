/* The reference MCU application, written from docs/ (wire.md, interface.md, device.md) alone.
 *
 * What a careful primary-MCU firmware does around an over-the-air update through a Blynk.NCP:
 *   - start-up: ping the NCP until it answers, ask its version, report our firmware tag, and
 *     initialise Blynk; optionally switch the UART to a faster rate (hw_setUartBaudRate). With
 *     a switch configured, three unanswered pings try the other rate: after this MCU reboots
 *     the NCP may still run at the switched one;
 *   - heartbeat: ask the NCP's state; an NCP that says "not initialised" restarted, one that
 *     misses three answers is gone: either way the UART returns to the initial rate (a
 *     rebooted NCP is back at it) and the start-up runs again, abandoning any transfer;
 *   - updates: check an offer (product type, a newer version, it fits a slot), start the
 *     transfer itself with blynk_otaUpdateStart and refuse writes before it, take chunks at
 *     exactly the next offset (each with its CRC-32), and at Finish compare the image's CRC-32
 *     with the NCP's and the image's own tag with the offer, then reboot into it on trial;
 *   - boot: two copies of the boot record, the newer valid one wins; a trial image that does
 *     not reach the NCP within three boots is rolled back; one that does is confirmed;
 *   - telemetry: each update state is reported as blynk_setMetadata("dualmcu_telemetry", JSON)
 *     with version, ota_state and ota_reason, in the reason names of docs/device.md.
 */
#include <stdio.h>
#include <string.h>

#include "app.h"
#include "frame.h"
#include "hal.h"
#include "rpc.h"

#define BOOT_AREA 4096u
#define RECORD_AT(i) ((uint32_t)(i) * 512u)
#define RECORD_MAGIC 0x46524D44u /* "DMRF" */
#define TRIAL_BOOTS 3
#define OTA_IDLE_MS 30000u
#define PING_RETRY_MS 200u

/* -- small pieces ----------------------------------------------------------------------------- */

/* The time ms from now, never 0: a time of 0 means "nothing due" (a clock that starts at 0, as
 * a bare-metal one does, would otherwise make its first deadline none). */
static uint32_t due_in(uint32_t ms)
{
    uint32_t t = hal_now_ms() + ms;
    return t ? t : 1;
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Dotted versions compared number by number: 1.10.0 is newer than 1.9.3. */
static int version_cmp(const char *a, const char *b)
{
    while (*a || *b) {
        unsigned long x = 0, y = 0;
        while (*a >= '0' && *a <= '9')
            x = x * 10 + (unsigned long)(*a++ - '0');
        while (*b >= '0' && *b <= '9')
            y = y * 10 + (unsigned long)(*b++ - '0');
        if (x != y)
            return x < y ? -1 : 1;
        if (*a)
            a++;
        if (*b)
            b++;
    }
    return 0;
}

/* -- the boot record -------------------------------------------------------------------------- */

struct record {
    uint32_t magic, seq;
    uint8_t active, trial, attempts, pad;
    uint32_t len[2];
    uint32_t crc;
};

static struct options opt;
static struct record rec;
static int rec_copy = -1; /* which copy rec was read from */

static uint32_t record_crc(const struct record *r)
{
    return crc32_update(0, (const uint8_t *)r, offsetof(struct record, crc));
}

static int record_load(void)
{
    struct record r[2];
    int best = -1;
    for (int i = 0; i < 2; i++) {
        if (hal_flash_read(RECORD_AT(i), &r[i], sizeof r[i]) != 0)
            continue;
        if (r[i].magic != RECORD_MAGIC || r[i].crc != record_crc(&r[i]) || r[i].active > 1)
            continue;
        if (best < 0 || (int32_t)(r[i].seq - r[best].seq) > 0)
            best = i;
    }
    if (best < 0)
        return -1;
    rec = r[best];
    rec_copy = best;
    return 0;
}

/* Written to the older copy: a power cut mid-write leaves the newer one as it was. */
static int record_save(void)
{
    int to = rec_copy == 0 ? 1 : 0;
    rec.magic = RECORD_MAGIC;
    rec.seq++;
    rec.crc = record_crc(&rec);
    if (hal_flash_erase(RECORD_AT(to), 512) || hal_flash_write(RECORD_AT(to), &rec, sizeof rec) ||
        hal_flash_sync())
        return -1;
    rec_copy = to;
    return 0;
}

static uint32_t slot_base(int slot) { return BOOT_AREA + (uint32_t)slot * opt.slot_size; }

/* -- the firmware tag ------------------------------------------------------------------------- */

struct tag {
    char mcu[32], type[40], build[40], blynk[16];
};

static void tag_value(struct tag *t, const char *key, const char *value)
{
    char *to = !strcmp(key, "mcu") ? t->mcu : !strcmp(key, "fw-type") ? t->type
             : !strcmp(key, "build") ? t->build : !strcmp(key, "blynk") ? t->blynk : NULL;
    size_t cap = !strcmp(key, "mcu") ? sizeof t->mcu : !strcmp(key, "blynk") ? sizeof t->blynk : sizeof t->type;
    if (to) {
        strncpy(to, value, cap - 1);
        to[cap - 1] = 0;
    }
}

/* The tag "blnkinf\0key\0value\0...\0\0" of the image in a slot (docs: the firmware tag). */
static int tag_read(int slot, uint32_t len, struct tag *t)
{
    static uint8_t buf[768];
    static const char magic[] = "blnkinf";
    memset(t, 0, sizeof *t);
    for (uint32_t at = 0; at < len; at += 512) {
        uint32_t n = len - at < sizeof buf ? len - at : sizeof buf;
        if (hal_flash_read(slot_base(slot) + at, buf, n))
            return -1;
        for (uint32_t i = 0; i + sizeof magic <= n && i < 512; i++) {
            if (memcmp(buf + i, magic, sizeof magic))
                continue;
            /* key/value pairs after the magic, within this window (a tag is a few hundred bytes) */
            uint32_t p = i + sizeof magic;
            while (p < n && buf[p]) {
                const char *key = (const char *)buf + p;
                uint32_t k = p;
                while (k < n && buf[k])
                    k++;
                if (k + 1 >= n)
                    break;
                const char *value = (const char *)buf + k + 1;
                uint32_t v = k + 1;
                while (v < n && buf[v])
                    v++;
                if (v >= n)
                    break;
                tag_value(t, key, value);
                p = v + 1;
            }
            return t->mcu[0] && t->type[0] ? 0 : -1;
        }
    }
    return -1;
}

/* -- state ------------------------------------------------------------------------------------ */

enum link { L_PING, L_VERSION, L_INFO, L_INIT, L_BAUD, L_BAUD_PING, L_READY };
enum ota { O_IDLE, O_OFFERED, O_RECEIVING, O_FINISHING };

static struct rpc rpc;
static struct frame_decoder dec;
static struct tag running;
static enum link link_state = L_PING;
static uint32_t baud_now, link_at, heartbeat_at, reboot_at;
static int misses, heartbeat_waiting, baud_tries, ping_fails;

static struct {
    enum ota state;
    int slot;
    uint32_t size, expected, crc, at;
    char version[32];
    uint32_t last_off, last_len, last_crc;
    uint16_t finish_id;
} ota;

static void telemetry(const char *state, const char *reason)
{
    char json[160];
    struct writer w;
    snprintf(json, sizeof json, "{\"version\":\"%s\",\"ota_state\":\"%s\",\"ota_reason\":\"%s\"}",
             running.mcu, state, reason);
    w_init(&w);
    w_str(&w, "dualmcu_telemetry");
    w_str(&w, json);
    rpc_oneway(UID_BLYNK_SET_METADATA, &w);
    hal_log("telemetry %s", json);
}

static void ota_abandon(const char *reason)
{
    if (ota.state != O_IDLE) {
        hal_log("update abandoned: %s (at %lu of %lu)", reason, (unsigned long)ota.expected,
                (unsigned long)ota.size);
        telemetry("failed", reason);
    }
    ota.state = O_IDLE;
}

/* -- the NCP client: start-up, baud rate, heartbeat ------------------------------------------- */

static void link_step(void);

static void link_restart(const char *why)
{
    hal_log("NCP %s: starting it again", why);
    rpc_drop_all(&rpc);
    ota_abandon("ncp_restarted");
    if (baud_now != opt.initial_baud && !opt.keep_switched_baud) {
        hal_uart_set_baud(opt.initial_baud); /* a rebooted NCP is back at its initial rate */
        baud_now = opt.initial_baud;
        hal_log("UART back at %lu baud", (unsigned long)baud_now);
    }
    link_state = L_PING;
    misses = heartbeat_waiting = 0;
    link_at = due_in(PING_RETRY_MS);
}

static void link_done(int ok, uint8_t status, struct reader *r, void *ctx)
{
    (void)ctx;
    if (!ok || status != STATUS_OK) {
        if (link_state == L_BAUD_PING && ++baud_tries < 10) {
            link_at = due_in(PING_RETRY_MS);
            return;
        }
        if (link_state == L_BAUD_PING) { /* never answered at the new rate: go back */
            hal_uart_set_baud(opt.initial_baud);
            baud_now = opt.initial_baud;
        }
        if (link_state == L_PING && opt.switch_baud && ++ping_fails % 3 == 0 &&
            !(opt.keep_switched_baud && baud_now == opt.switch_baud)) {
            /* Silence at this rate: the NCP may still run at the other one (this MCU rebooted
             * after a switch, or the NCP rebooted back to its initial rate). Try that. */
            baud_now = baud_now == opt.initial_baud ? opt.switch_baud : opt.initial_baud;
            hal_uart_set_baud(baud_now);
            hal_log("no answer: trying %lu baud", (unsigned long)baud_now);
        }
        link_state = L_PING;
        link_at = due_in(PING_RETRY_MS);
        return;
    }
    ping_fails = 0;
    switch (link_state) {
    case L_PING:
        link_state = L_VERSION;
        break;
    case L_VERSION: {
        char version[32];
        r_str(r, version, sizeof version);
        hal_log("NCP version %s", version);
        link_state = L_INFO;
        break;
    }
    case L_INFO:
        link_state = L_INIT;
        break;
    case L_INIT:
        link_state = opt.switch_baud && opt.switch_baud != baud_now ? L_BAUD : L_READY;
        break;
    case L_BAUD:
        if (r_u8(r)) {
            /* The RESULT came at the old rate; both ends switch now, then we ping at the new one. */
            hal_uart_set_baud(opt.switch_baud);
            baud_now = opt.switch_baud;
            baud_tries = 0;
            hal_log("UART at %lu baud", (unsigned long)baud_now);
            link_state = L_BAUD_PING;
        } else {
            link_state = L_READY;
        }
        break;
    case L_BAUD_PING:
        link_state = L_READY;
        break;
    case L_READY:
        break;
    }
    link_at = due_in(0);
    if (link_state == L_READY) {
        hal_log("ready: running %s %s", running.type, running.mcu);
        if (rec.trial) { /* the new image reached the NCP: it is healthy */
            rec.trial = 0;
            rec.attempts = 0;
            if (record_save() == 0)
                hal_log("confirmed %s in slot %c", running.mcu, 'A' + rec.active);
        }
        telemetry(rec.trial ? "trial" : "confirmed", "");
        heartbeat_at = due_in(opt.heartbeat_ms);
    }
}

static void link_step(void)
{
    struct writer w;
    w_init(&w);
    switch (link_state) {
    case L_PING:
    case L_BAUD_PING:
        rpc_call(&rpc, UID_NCP_PING, NULL, 100, link_done, NULL);
        break;
    case L_VERSION:
        rpc_call(&rpc, UID_BLYNK_GET_NCP_VERSION, NULL, 1000, link_done, NULL);
        break;
    case L_INFO:
        w_str(&w, running.type);
        w_str(&w, running.mcu);
        w_str(&w, running.build);
        w_str(&w, running.blynk[0] ? running.blynk : "0.6.4");
        rpc_call(&rpc, UID_BLYNK_SET_FIRMWARE_INFO, &w, 1000, link_done, NULL);
        break;
    case L_INIT:
        w_str(&w, running.type);
        w_str(&w, "refmcu");
        rpc_call(&rpc, UID_BLYNK_INITIALIZE, &w, 5000, link_done, NULL);
        break;
    case L_BAUD:
        w_u32(&w, opt.switch_baud);
        rpc_call(&rpc, UID_HW_SET_UART_BAUD, &w, 1000, link_done, NULL);
        break;
    case L_READY:
        return;
    }
    link_at = 0; /* the call's answer or timeout moves it on */
}

static void heartbeat_done(int ok, uint8_t status, struct reader *r, void *ctx)
{
    (void)ctx;
    heartbeat_waiting = 0;
    heartbeat_at = due_in(opt.heartbeat_ms);
    if (!ok) {
        if (++misses >= 3)
            link_restart("lost");
        return;
    }
    misses = 0;
    if (status == STATUS_OK && r_u8(r) == 10) /* "not initialised": it restarted */
        link_restart("restarted");
}

/* -- the OTA receiver ------------------------------------------------------------------------- */

static uint8_t refuse(const char *call, const char *reason)
{
    hal_log("%s refused: %s", call, reason);
    telemetry("refused", reason);
    return 0;
}

static void start_done(int ok, uint8_t status, struct reader *r, void *ctx)
{
    (void)ctx;
    if (ota.state != O_OFFERED)
        return;
    if (!ok || status != STATUS_OK || !r_u8(r)) {
        ota_abandon(ok ? "start_refused" : "start_failed");
        return;
    }
    if (hal_flash_erase(slot_base(ota.slot), opt.slot_size)) {
        ota_abandon("flash_error");
        return;
    }
    ota.state = O_RECEIVING;
    ota.at = due_in(0);
    hal_log("transfer started: %lu bytes into slot %c", (unsigned long)ota.size, 'A' + ota.slot);
    telemetry("downloading", "");
}

static uint8_t on_offer(struct reader *r)
{
    char filename[64], type[40], version[32], build[40];
    r_str(r, filename, sizeof filename);
    uint32_t size = r_u32(r);
    r_str(r, type, sizeof type);
    r_str(r, version, sizeof version);
    r_str(r, build, sizeof build);
    if (!r_done(r))
        return refuse("offer", "bad_offer");
    hal_log("offer of %s: %s %s, %lu bytes", filename, type, version, (unsigned long)size);
    if (!opt.skip_type_check && strcmp(type, running.type) != 0)
        return refuse("offer", "wrong_type");
    if (version_cmp(version, running.mcu) <= 0)
        return refuse("offer", "not_newer");
    if (size == 0)
        return refuse("offer", "size_zero");
    if (size > opt.slot_size)
        return refuse("offer", "too_large");
    if (ota.state != O_IDLE)
        hal_log("a new offer replaces the update in progress");
    ota.state = O_OFFERED;
    ota.at = due_in(0);
    ota.slot = rec.active ? 0 : 1;
    ota.size = size;
    ota.expected = 0;
    ota.crc = 0;
    ota.last_len = 0;
    strncpy(ota.version, version, sizeof ota.version - 1);
    ota.version[sizeof ota.version - 1] = 0;
    return 1;
}

static uint8_t on_write(struct reader *r)
{
    uint32_t offset = r_u32(r);
    uint16_t len;
    const uint8_t *chunk = r_bin(r, &len);
    uint32_t crc = r_u32(r);
    if (!r_done(r))
        return 0;
    if (ota.state != O_RECEIVING) {
        hal_log("write @%lu with no update in progress", (unsigned long)offset);
        return 0;
    }
    uint32_t mine = crc32_update(0, chunk, len);
    if (mine != crc)
        return refuse("write", "chunk_crc");
    if (len == 0 || len > opt.chunk_size)
        return refuse("write", "chunk_size");
    ota.at = due_in(0);
    if (offset != ota.expected) {
        /* A resend of the chunk just taken, whose answer the NCP lost: the same bytes. */
        if (opt.tolerate_duplicates && ota.last_len && offset == ota.last_off && len == ota.last_len &&
            crc == ota.last_crc) {
            hal_log("write @%lu again: already written", (unsigned long)offset);
            return 1;
        }
        hal_log("write @%lu refused: expected @%lu", (unsigned long)offset, (unsigned long)ota.expected);
        return 0;
    }
    if (offset + len > ota.size)
        return refuse("write", "past_end");
    if (hal_flash_write(slot_base(ota.slot) + offset, chunk, len)) {
        ota_abandon("flash_error");
        return 0;
    }
    if (opt.flash_ms_per_kib)
        hal_sleep_ms((opt.flash_ms_per_kib * len + 1023) / 1024);
    ota.crc = crc32_update(ota.crc, chunk, len);
    ota.last_off = offset;
    ota.last_len = len;
    ota.last_crc = crc;
    ota.expected += len;
    return 1;
}

static void finish_answer(uint8_t ok)
{
    struct writer w;
    w_init(&w);
    w_u8(&w, ok);
    rpc_result(ota.finish_id, STATUS_OK, &w);
}

/* The NCP's CRC-32 of the image, asked from inside Finish, against ours; then the image's tag. */
static void crc_done(int ok, uint8_t status, struct reader *r, void *ctx)
{
    (void)ctx;
    if (ota.state != O_FINISHING)
        return;
    uint32_t theirs = ok && status == STATUS_OK ? r_u32(r) : 0;
    uint8_t answered = ok && status == STATUS_OK ? r_u8(r) : 0;
    struct tag t;
    const char *why = NULL;
    if (!answered)
        why = "digest_unavailable";
    else if (theirs != ota.crc)
        why = "crc_mismatch";
    else if (hal_flash_sync() || tag_read(ota.slot, ota.size, &t))
        why = "image_untagged";
    else if (!opt.skip_type_check && strcmp(t.type, running.type) != 0)
        why = "image_wrong_type";
    else if (strcmp(t.mcu, ota.version) != 0)
        why = "image_not_as_offered";
    if (why) {
        finish_answer(0);
        ota_abandon(why);
        return;
    }
    rec.len[ota.slot] = ota.size;
    rec.active = (uint8_t)ota.slot;
    rec.trial = 1;
    rec.attempts = 0;
    if (record_save()) {
        finish_answer(0);
        ota_abandon("flash_error");
        return;
    }
    hal_log("installed %s in slot %c: rebooting into it on trial", t.mcu, 'A' + ota.slot);
    finish_answer(1);
    ota.state = O_IDLE;
    reboot_at = due_in(50); /* once the RESULT is out */
}

/* -- dispatch --------------------------------------------------------------------------------- */

static void answer_bool(uint16_t msg_id, uint8_t value)
{
    struct writer w;
    w_init(&w);
    w_u8(&w, value);
    rpc_result(msg_id, STATUS_OK, &w);
}

static int serves(uint16_t uid)
{
    switch (uid) {
    case UID_MCU_PING: case UID_MCU_REBOOT: case UID_MCU_HAS_UID: case UID_STATE_CHANGE:
    case UID_VPIN_CHANGE: case UID_PROCESS_EVENT: case UID_OTA_AVAILABLE: case UID_OTA_WRITE:
    case UID_OTA_FINISH: case UID_OTA_CANCEL:
        return 1;
    }
    return 0;
}

static void on_invoke(uint16_t uid, uint16_t msg_id, struct reader *r)
{
    switch (uid) {
    case UID_MCU_PING:
        rpc_result(msg_id, r_done(r) ? STATUS_OK : STATUS_ARGS_READ, NULL);
        return;
    case UID_MCU_HAS_UID: {
        uint16_t asked = r_u16(r);
        if (!r_done(r))
            break;
        answer_bool(msg_id, (uint8_t)serves(asked));
        return;
    }
    case UID_MCU_REBOOT:
        answer_bool(msg_id, 1);
        reboot_at = due_in(50);
        return;
    case UID_OTA_AVAILABLE: {
        uint8_t yes = on_offer(r);
        answer_bool(msg_id, yes);
        if (yes) { /* after our answer: the transfer is ours to start */
            struct writer w;
            w_init(&w);
            w_u16(&w, opt.chunk_size);
            if (rpc_call(&rpc, UID_OTA_START, &w, 1000, start_done, NULL))
                ota_abandon("start_failed");
        }
        return;
    }
    case UID_OTA_WRITE:
        answer_bool(msg_id, on_write(r));
        return;
    case UID_OTA_FINISH:
        if (!r_done(r))
            break;
        if (ota.state != O_RECEIVING || ota.expected != ota.size) {
            hal_log("finish refused: %lu of %lu bytes", (unsigned long)ota.expected, (unsigned long)ota.size);
            answer_bool(msg_id, 0);
            if (ota.state == O_RECEIVING)
                ota_abandon("size_mismatch");
            return;
        }
        ota.state = O_FINISHING;
        ota.finish_id = msg_id;
        rpc_call(&rpc, UID_OTA_GET_CRC32, NULL, 1000, crc_done, NULL);
        return; /* answered once the NCP's CRC-32 is in */
    case UID_OTA_CANCEL:
        rpc_result(msg_id, STATUS_OK, NULL);
        ota_abandon("ncp_cancel");
        return;
    default:
        return; /* an unknown uid gets no answer, as the Blynk C driver does */
    }
    rpc_result(msg_id, STATUS_ARGS_READ, NULL); /* arguments that do not decode */
}

static void on_oneway(uint16_t uid, struct reader *r)
{
    if (uid == UID_PROCESS_EVENT && r_u8(r) == 1 && r_done(r))
        link_restart("rebooting"); /* event 1: the NCP is about to reboot */
}

static void on_frame(const uint8_t *p, size_t len)
{
    struct reader r;
    r_init(&r, p, len);
    uint16_t kind = r_u16(&r);
    if (kind == MSG_INVOKE) {
        uint16_t uid = r_u16(&r), msg_id = r_u16(&r);
        if (!r.bad) {
            struct reader args;
            r_init(&args, p + 6, len - 6);
            on_invoke(uid, msg_id, &args);
        }
    } else if (kind == MSG_RESULT) {
        uint16_t msg_id = r_u16(&r);
        uint8_t status = r_u8(&r);
        if (!r.bad) {
            struct reader rest;
            r_init(&rest, p + 5, len - 5);
            rpc_on_result(&rpc, msg_id, status, &rest);
        }
    } else if (kind == MSG_ONEWAY) {
        uint16_t uid = r_u16(&r);
        if (!r.bad) {
            struct reader args;
            r_init(&args, p + 4, len - 4);
            on_oneway(uid, &args);
        }
    }
}

/* -- boot and the loop ------------------------------------------------------------------------ */

void app_defaults(struct options *o)
{
    memset(o, 0, sizeof *o);
    o->initial_baud = 38400;
    o->slot_size = 256 * 1024;
    o->chunk_size = 1024;
    o->heartbeat_ms = 1000;
}

int app_provision(const struct options *o, const uint8_t *image, uint32_t len)
{
    opt = *o;
    if (len == 0 || len > opt.slot_size) {
        hal_log("the factory image has %lu bytes: a slot holds %lu", (unsigned long)len,
                (unsigned long)opt.slot_size);
        return -1;
    }
    if (hal_flash_erase(0, BOOT_AREA) || hal_flash_erase(slot_base(0), opt.slot_size) ||
        hal_flash_write(slot_base(0), image, len))
        return -1;
    memset(&rec, 0, sizeof rec);
    rec.len[0] = len;
    rec_copy = 1; /* so the first record goes to copy 0 */
    struct tag t;
    if (record_save() || tag_read(0, len, &t)) {
        hal_log("the factory image has no firmware tag with mcu and fw-type");
        return -1;
    }
    hal_log("provisioned %s %s in slot A", t.type, t.mcu);
    return 0;
}

int app_boot(const struct options *o)
{
    opt = *o;
    if (hal_flash_size() < BOOT_AREA + 2 * opt.slot_size) {
        hal_log("the flash holds %lu bytes: two slots of %lu need more", (unsigned long)hal_flash_size(),
                (unsigned long)opt.slot_size);
        return -1;
    }
    if (record_load()) {
        hal_log("no boot record: the flash holds no firmware (provision a factory image)");
        return -1;
    }
    if (rec.trial && ++rec.attempts > TRIAL_BOOTS) {
        int old = rec.active ? 0 : 1;
        hal_log("rollback: slot %c never reached the NCP in %d boots", 'A' + rec.active, TRIAL_BOOTS);
        rec.active = (uint8_t)old;
        rec.trial = 0;
        rec.attempts = 0;
    }
    if (record_save())
        return -1;
    if (tag_read(rec.active, rec.len[rec.active], &running)) {
        hal_log("the image in slot %c has no firmware tag", 'A' + rec.active);
        return -1;
    }
    hal_log("boot: slot %c, %s %s%s", 'A' + rec.active, running.type, running.mcu, rec.trial ? " (trial)" : "");
    return 0;
}

void app_run(void)
{
    static uint8_t buf[4096];
    rpc_init(&rpc);
    frame_decoder_init(&dec);
    baud_now = opt.initial_baud;
    hal_uart_set_baud(baud_now);
    link_at = due_in(0);
    for (;;) {
        uint32_t now = hal_now_ms();
        if (reboot_at && (int32_t)(now - reboot_at) >= 0)
            hal_reboot();
        uint32_t next = rpc_tick(&rpc, now);
        now = hal_now_ms();
        if (link_at && (int32_t)(now - link_at) >= 0)
            link_step();
        if (link_state == L_READY && !heartbeat_waiting && (int32_t)(now - heartbeat_at) >= 0) {
            heartbeat_waiting = 1;
            if (rpc_call(&rpc, UID_BLYNK_GET_STATE, NULL, 1000, heartbeat_done, NULL))
                heartbeat_waiting = 0;
        }
        if ((ota.state == O_RECEIVING || ota.state == O_OFFERED) && now - ota.at > OTA_IDLE_MS && ota.at)
            ota_abandon("timeout");
        /* Wait for a byte, or the next thing due, whichever comes first. */
        uint32_t wait = 50;
        uint32_t due[3] = {next, link_at, link_state == L_READY ? heartbeat_at : 0};
        for (int i = 0; i < 3; i++)
            if (due[i]) {
                int32_t left = (int32_t)(due[i] - now);
                if (left < 0)
                    left = 0;
                if ((uint32_t)left < wait)
                    wait = (uint32_t)left;
            }
        size_t n = hal_uart_read(buf, sizeof buf, wait);
        for (size_t i = 0; i < n; i++) {
            size_t len = frame_feed(&dec, buf[i]);
            if (len)
                on_frame(dec.buf, len);
        }
    }
}
