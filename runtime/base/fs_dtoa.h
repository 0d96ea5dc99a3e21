/* fs_dtoa: shortest round-trip formatting of doubles (C face of a C++ library). */
#ifndef FS_DTOA_H
#define FS_DTOA_H

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the shortest text that reads back as x, always with a '.' or an
 * exponent, NUL-terminated; returns its length, or -1 for NaN/inf or a buffer
 * smaller than 32 bytes. Locale-independent. */
int fs_dtoa_shortest(double x, char *buf, int size);

#ifdef __cplusplus
}
#endif

#endif
