/* snprintf for the bare-metal build: %s %c %d %u %lu %x and %%, no floating point (minilibc.c). */
#ifndef REFMCU_MINI_STDIO_H
#define REFMCU_MINI_STDIO_H
#include <stdarg.h>
#include <stddef.h>
int snprintf(char *buf, size_t cap, const char *fmt, ...);
int vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
#endif
