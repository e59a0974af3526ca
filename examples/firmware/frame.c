/* The Blynk.NCP UART framing, written from docs/wire.md section 1. */
#include "frame.h"

uint8_t frame_crc8(const uint8_t *data, size_t len)
{
    /* CRC-8/SMBUS: polynomial 0x07, init 0, not reflected, no final XOR. */
    uint8_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (int b = 0; b < 8; b++)
            crc = (uint8_t)((crc & 0x80) ? (crc << 1) ^ 0x07 : crc << 1);
    }
    return crc;
}

static int special(uint8_t b)
{
    return b == 0x11 || b == 0x13 || b == 0xAA || b == 0xBB || b == 0xCC;
}

static size_t put(uint8_t *out, size_t n, uint8_t b)
{
    if (special(b)) {
        out[n++] = 0xCC;
        out[n++] = (uint8_t)(b ^ 0xFF);
    } else {
        out[n++] = b;
    }
    return n;
}

size_t frame_encode(const uint8_t *payload, size_t len, uint8_t *out)
{
    size_t n = 0;
    out[n++] = 0xAA;
    for (size_t i = 0; i < len; i++)
        n = put(out, n, payload[i]);
    n = put(out, n, frame_crc8(payload, len));
    out[n++] = 0xBB;
    return n;
}

void frame_decoder_init(struct frame_decoder *d)
{
    d->len = 0;
    d->inside = d->escaped = d->overflow = 0;
    d->dropped = 0;
}

size_t frame_feed(struct frame_decoder *d, uint8_t byte)
{
    if (byte == 0xAA) { /* a frame starts: whatever came before it is dropped */
        if (d->inside && d->len)
            d->dropped++;
        d->inside = 1;
        d->len = 0;
        d->escaped = d->overflow = 0;
        return 0;
    }
    if (!d->inside)
        return 0; /* noise between frames */
    if (byte == 0xBB) {
        size_t len = d->len;
        d->inside = 0;
        d->len = 0;
        if (d->overflow || len < 2 || frame_crc8(d->buf, len - 1) != d->buf[len - 1]) {
            d->dropped++;
            return 0;
        }
        return len - 1;
    }
    if (byte == 0xCC) {
        d->escaped = 1;
        return 0;
    }
    if (d->escaped) {
        byte ^= 0xFF;
        d->escaped = 0;
    }
    if (d->len < sizeof d->buf)
        d->buf[d->len++] = byte;
    else
        d->overflow = 1;
    return 0;
}
