/* fs_dtoa: shortest round-trip formatting of doubles (C face of a C++ library). */
#ifndef FS_DTOA_H
#define FS_DTOA_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1e0 .. 1e22: every one is exact in a double (the JSON decoder's and
 * fs_dtoa_shortest's exact fast paths rely on it). */
extern const double fs_pow10_exact[23];

/* "00" "01" ... "99": two decimal digits per lookup halves the divisions. */
extern const char fs_digit_pairs[201];

/* Writes u in decimal backwards, ending just before `end`; returns the first
 * byte. At most 20 bytes. */
static inline char *fs_digits_back(uint64_t u, char *end)
{
    char *p = end;
    while (u >= 100) {
        p -= 2;
        memcpy(p, fs_digit_pairs + 2 * (u % 100), 2);
        u /= 100;
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, fs_digit_pairs + 2 * u, 2);
    } else {
        *--p = (char)('0' + u);
    }
    return p;
}

/* Writes the shortest text that reads back as x, always with a '.' or an
 * exponent, NUL-terminated; returns its length, or -1 for NaN/inf or a buffer
 * smaller than 32 bytes. Locale-independent. */
int fs_dtoa_shortest(double x, char *buf, int size);

#ifdef __cplusplus
}
#endif

#endif
