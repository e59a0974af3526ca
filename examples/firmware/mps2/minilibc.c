/* The C library functions the firmware uses, for a build with none (-ffreestanding -nostdlib). */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (unsigned char)*a - (unsigned char)*b;
}

char *strncpy(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    for (; i < n && src[i]; i++)
        dst[i] = src[i];
    for (; i < n; i++)
        dst[i] = 0;
    return dst;
}

static void put(char *buf, size_t cap, size_t *n, char c)
{
    if (*n + 1 < cap)
        buf[*n] = c;
    (*n)++;
}

static void put_unsigned(char *buf, size_t cap, size_t *n, unsigned long v, unsigned base)
{
    char digits[24];
    int k = 0;
    do {
        digits[k++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    while (k)
        put(buf, cap, n, digits[--k]);
}

int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
    size_t n = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            put(buf, cap, &n, *fmt);
            continue;
        }
        fmt++;
        int is_long = 0;
        if (*fmt == 'l') {
            is_long = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            while (*s)
                put(buf, cap, &n, *s++);
            break;
        }
        case 'c':
            put(buf, cap, &n, (char)va_arg(ap, int));
            break;
        case 'd': {
            long v = is_long ? va_arg(ap, long) : va_arg(ap, int);
            if (v < 0) {
                put(buf, cap, &n, '-');
                v = -v;
            }
            put_unsigned(buf, cap, &n, (unsigned long)v, 10);
            break;
        }
        case 'u':
            put_unsigned(buf, cap, &n, is_long ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 10);
            break;
        case 'x':
            put_unsigned(buf, cap, &n, is_long ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 16);
            break;
        case '%':
            put(buf, cap, &n, '%');
            break;
        default: /* not one this firmware writes */
            put(buf, cap, &n, '?');
            break;
        }
    }
    if (cap)
        buf[n < cap ? n : cap - 1] = 0;
    return (int)n;
}

int snprintf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return n;
}
