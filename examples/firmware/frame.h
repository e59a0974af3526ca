/* The Blynk.NCP UART framing (docs/wire.md): 0xAA, the escaped payload and its CRC-8, 0xBB. */
#ifndef REFMCU_FRAME_H
#define REFMCU_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_MAX 1536 /* the longest payload a peer sends and must accept */

uint8_t frame_crc8(const uint8_t *data, size_t len);
/* The frame of payload into out (room for 2 * len + 4 bytes); its length. */
size_t frame_encode(const uint8_t *payload, size_t len, uint8_t *out);

struct frame_decoder {
    uint8_t buf[FRAME_MAX + 1]; /* payload and CRC */
    size_t len;
    int inside, escaped, overflow;
    uint32_t dropped; /* frames with a bad CRC, or too long */
};

void frame_decoder_init(struct frame_decoder *d);
/* Feed one byte; returns the payload length when it ended a good frame (the payload is in
 * d->buf), 0 otherwise. */
size_t frame_feed(struct frame_decoder *d, uint8_t byte);

#endif
