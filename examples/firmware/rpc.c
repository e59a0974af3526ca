/* The RPC message layer, written from docs/wire.md section 2. */
#include <string.h>

#include "frame.h"
#include "hal.h"
#include "rpc.h"

void w_init(struct writer *w)
{
    w->len = 0;
    w->overflow = 0;
}

static void w_bytes(struct writer *w, const void *p, size_t n)
{
    if (w->len + n > sizeof w->buf) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void w_u8(struct writer *w, uint8_t v) { w_bytes(w, &v, 1); }

void w_u16(struct writer *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    w_bytes(w, b, 2);
}

void w_u32(struct writer *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    w_bytes(w, b, 4);
}

void w_str(struct writer *w, const char *s) { w_bytes(w, s, strlen(s) + 1); }

void r_init(struct reader *r, const uint8_t *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->at = 0;
    r->bad = 0;
}

static const uint8_t *r_take(struct reader *r, size_t n)
{
    if (r->bad || r->at + n > r->len) {
        r->bad = 1;
        return NULL;
    }
    r->at += n;
    return r->p + r->at - n;
}

uint8_t r_u8(struct reader *r)
{
    const uint8_t *b = r_take(r, 1);
    return b ? b[0] : 0;
}

uint16_t r_u16(struct reader *r)
{
    const uint8_t *b = r_take(r, 2);
    return b ? (uint16_t)(b[0] | b[1] << 8) : 0;
}

uint32_t r_u32(struct reader *r)
{
    const uint8_t *b = r_take(r, 4);
    return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24 : 0;
}

void r_str(struct reader *r, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
    while (!r->bad) {
        const uint8_t *b = r_take(r, 1);
        if (!b || *b == 0)
            break;
        if (n + 1 < cap) {
            out[n++] = (char)*b;
            out[n] = 0;
        }
    }
}

const uint8_t *r_bin(struct reader *r, uint16_t *len)
{
    *len = r_u16(r);
    const uint8_t *p = r_take(r, *len);
    if (!p)
        *len = 0;
    return p;
}

int r_done(const struct reader *r) { return !r->bad && r->at == r->len; }

void send_payload(const uint8_t *payload, size_t len)
{
    static uint8_t frame[2 * sizeof(((struct writer *)0)->buf) + 4];
    hal_uart_write(frame, frame_encode(payload, len, frame));
}

static void send_message(uint16_t kind, uint16_t a, uint16_t b, int has_b, const struct writer *tail,
                         int status, uint8_t st)
{
    struct writer m;
    w_init(&m);
    w_u16(&m, kind);
    w_u16(&m, a);
    if (has_b)
        w_u16(&m, b);
    if (status)
        w_u8(&m, st);
    if (tail)
        w_bytes(&m, tail->buf, tail->len);
    if (!m.overflow)
        send_payload(m.buf, m.len);
}

void rpc_init(struct rpc *rpc)
{
    memset(rpc, 0, sizeof *rpc);
    rpc->next_id = 1;
}

int rpc_call(struct rpc *rpc, uint16_t uid, const struct writer *args, uint32_t timeout_ms,
             call_done done, void *ctx)
{
    for (int i = 0; i < MAX_CALLS; i++) {
        struct call *c = &rpc->calls[i];
        if (c->active)
            continue;
        c->active = 1;
        c->msg_id = rpc->next_id;
        rpc->next_id = (uint16_t)(rpc->next_id + 1 ? rpc->next_id + 1 : 1); /* 16 bits, never 0 */
        c->uid = uid;
        c->deadline = hal_now_ms() + timeout_ms;
        if (!c->deadline)
            c->deadline = 1; /* 0 is "no deadline" to rpc_tick's caller */
        c->done = done;
        c->ctx = ctx;
        send_message(MSG_INVOKE, uid, c->msg_id, 1, args, 0, 0);
        return 0;
    }
    return -1;
}

void rpc_oneway(uint16_t uid, const struct writer *args) { send_message(MSG_ONEWAY, uid, 0, 0, args, 0, 0); }

void rpc_result(uint16_t msg_id, uint8_t status, const struct writer *values)
{
    send_message(MSG_RESULT, msg_id, 0, 0, values, 1, status);
}

void rpc_on_result(struct rpc *rpc, uint16_t msg_id, uint8_t status, struct reader *rest)
{
    for (int i = 0; i < MAX_CALLS; i++) {
        struct call *c = &rpc->calls[i];
        if (c->active && c->msg_id == msg_id) {
            c->active = 0;
            c->done(1, status, rest, c->ctx);
            return;
        }
    }
}

uint32_t rpc_tick(struct rpc *rpc, uint32_t now)
{
    uint32_t next = 0;
    for (int i = 0; i < MAX_CALLS; i++) {
        struct call *c = &rpc->calls[i];
        if (!c->active)
            continue;
        if ((int32_t)(now - c->deadline) >= 0) {
            c->active = 0;
            c->done(0, 0, NULL, c->ctx);
        } else if (!next || (int32_t)(c->deadline - next) < 0) {
            next = c->deadline;
        }
    }
    return next;
}

void rpc_drop_all(struct rpc *rpc)
{
    for (int i = 0; i < MAX_CALLS; i++) {
        struct call *c = &rpc->calls[i];
        if (c->active) {
            c->active = 0;
            c->done(0, 0, NULL, c->ctx);
        }
    }
}
