/* The few C library string functions the firmware uses, for the bare-metal build (minilibc.c). */
#ifndef REFMCU_MINI_STRING_H
#define REFMCU_MINI_STRING_H
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
char *strncpy(char *dst, const char *src, size_t n);
#endif
