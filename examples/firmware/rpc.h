/* The Blynk.NCP RPC message layer (docs/wire.md section 2): INVOKE, RESULT and ONEWAY messages,
 * their arguments, and this MCU's own calls waiting for their RESULT. */
#ifndef REFMCU_RPC_H
#define REFMCU_RPC_H

#include <stddef.h>
#include <stdint.h>

#define MSG_INVOKE 0x67BC
#define MSG_RESULT 0xA512
#define MSG_ONEWAY 0x1CF3

#define STATUS_OK 0x00
#define STATUS_ARGS_READ 0x15

/* Functions this firmware calls (served by the NCP). */
#define UID_NCP_PING 0x0101
#define UID_HW_SET_UART_BAUD 0x0201
#define UID_BLYNK_INITIALIZE 0x0301
#define UID_BLYNK_SET_FIRMWARE_INFO 0x0304
#define UID_BLYNK_GET_NCP_VERSION 0x0305
#define UID_BLYNK_GET_STATE 0x0306
#define UID_BLYNK_SET_METADATA 0x031A
#define UID_OTA_START 0x0341
#define UID_OTA_GET_CRC32 0x0342

/* Functions this firmware serves (called by the NCP). */
#define UID_MCU_PING 0x0181
#define UID_MCU_REBOOT 0x0182
#define UID_MCU_HAS_UID 0x0183
#define UID_STATE_CHANGE 0x0411
#define UID_VPIN_CHANGE 0x0412
#define UID_PROCESS_EVENT 0x0421
#define UID_OTA_AVAILABLE 0x0441
#define UID_OTA_WRITE 0x0442
#define UID_OTA_FINISH 0x0443
#define UID_OTA_CANCEL 0x0444

/* A message being built: little-endian fields appended in order. */
struct writer {
    uint8_t buf[1600];
    size_t len;
    int overflow;
};

void w_init(struct writer *w);
void w_u8(struct writer *w, uint8_t v);
void w_u16(struct writer *w, uint16_t v);
void w_u32(struct writer *w, uint32_t v);
void w_str(struct writer *w, const char *s); /* String: UTF-8 then one NUL */

/* A message being read; any read past its end sets bad. */
struct reader {
    const uint8_t *p;
    size_t len, at;
    int bad;
};

void r_init(struct reader *r, const uint8_t *p, size_t len);
uint8_t r_u8(struct reader *r);
uint16_t r_u16(struct reader *r);
uint32_t r_u32(struct reader *r);
/* String: copied into out (cap bytes, NUL-terminated); bad when it has no NUL. */
void r_str(struct reader *r, char *out, size_t cap);
/* Binary: u16 length then the bytes; points into the message. */
const uint8_t *r_bin(struct reader *r, uint16_t *len);
int r_done(const struct reader *r); /* every byte read, none missing */

/* One call of ours waiting for its RESULT. */
struct call;
typedef void (*call_done)(int ok, uint8_t status, struct reader *result, void *ctx);

struct call {
    int active;
    uint16_t msg_id, uid;
    uint32_t deadline;
    call_done done;
    void *ctx;
};

#define MAX_CALLS 4

struct rpc {
    struct call calls[MAX_CALLS];
    uint16_t next_id;
};

void rpc_init(struct rpc *rpc);
/* Send an INVOKE of uid with args (may be NULL) and wait for its RESULT up to timeout_ms;
 * done runs with ok 0 on a timeout. Returns 0, or -1 when too many calls wait. */
int rpc_call(struct rpc *rpc, uint16_t uid, const struct writer *args, uint32_t timeout_ms,
             call_done done, void *ctx);
void rpc_oneway(uint16_t uid, const struct writer *args);
/* The RESULT of an INVOKE we serve: status, then out values and the return value. */
void rpc_result(uint16_t msg_id, uint8_t status, const struct writer *values);
/* A RESULT arrived: hand it to its call (stale ones are dropped). */
void rpc_on_result(struct rpc *rpc, uint16_t msg_id, uint8_t status, struct reader *rest);
/* Time out calls whose deadline passed; the earliest deadline left (0: none). */
uint32_t rpc_tick(struct rpc *rpc, uint32_t now);
/* Forget every call (the NCP went away): each done runs with ok 0. */
void rpc_drop_all(struct rpc *rpc);

/* Send a payload as one frame. */
void send_payload(const uint8_t *payload, size_t len);

#endif
