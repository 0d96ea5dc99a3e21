// fs_dtoa: the shortest decimal text that reads back as the same double, from
// Google's double-conversion (Debian libdouble-conversion). printf+strtod
// searching 15/16/17 digits costs ~1 us per float; this costs a few dozen ns.
#include <double-conversion/double-to-string.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fs_dtoa.h"

using double_conversion::DoubleToStringConverter;
using double_conversion::StringBuilder;

extern "C" const double fs_pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

extern "C" const char fs_digit_pairs[201] = "0001020304050607080910111213141516171819"
                                            "2021222324252627282930313233343536373839"
                                            "4041424344454647484950515253545556575859"
                                            "6061626364656667686970717273747576777879"
                                            "8081828384858687888990919293949596979899";

// Most floats an app writes came from short decimals (prices, amounts, their
// products and sums): they have a shortest form of at most 15 significant
// digits. For those, x rounded to 15 digits reads back as x, and then it is
// the shortest form padded with zeros: 15-digit decimals lie further apart
// than x's rounding interval is wide, so only one of them reads back as x,
// and the shortest form (padded) is one. The test is exact: m < 2^53 and
// 10^j <= 10^22 are exact doubles, so m / 10^j is one correctly rounded
// division, what reading the text back gives. Only numbers printed in plain
// notation (1e-5 <= |x| < 1e15) take this path; the rest, and those that
// need 16 or 17 digits, go through double-conversion. Returns the length
// written, or 0 when x is not such a number.
static int shortest15(double x, char *buf)
{
    double a = std::fabs(x);
    if (!(a >= 1e-5 && a < 1e15)) return 0;
    // j: the power of ten that brings a into [1e14, 1e15), estimated from
    // the binary exponent (a >= 2^e2) and corrected; a j one too small
    // gives 14 digits, which is as exact a test, one too large is refused
    uint64_t bits;
    std::memcpy(&bits, &a, sizeof bits);
    int e2 = (int)(bits >> 52) - 1023;
    int j = 14 - (e2 * 78913 >> 18); // 78913 / 2^18 ~ log10(2): floor(log10(2^e2))
    if (j < 0) j = 0;
    if (j > 19) j = 19;
    while (j > 0 && a * fs_pow10_exact[j] >= 1e15) j--;
    while (j < 19 && a * fs_pow10_exact[j + 1] < 1e15) j++;
    double t = a * fs_pow10_exact[j];
    // t < 2^50, a multiple of 1/8 or coarser: t + 0.5 is exact, and its
    // integer part is t rounded to nearest
    uint64_t m = (uint64_t)(t + 0.5);
    if (m == 0 || m >= UINT64_C(1000000000000000) || (double)m / fs_pow10_exact[j] != a) return 0;
    // its digits; the shortest form is them without the trailing zeros
    char digits[16], *end = digits + sizeof digits, *q = fs_digits_back(m, end);
    int point = (int)(end - q) - j; // digits before the decimal point (<= 0: "0.00ddd")
    while (end[-1] == '0') end--;
    int n = (int)(end - q);
    char *p = buf;
    if (std::signbit(x)) *p++ = '-';
    if (point <= 0) {
        *p++ = '0';
        *p++ = '.';
        for (int i = point; i < 0; i++) *p++ = '0';
        std::memcpy(p, q, (size_t)n);
        p += n;
    } else if (point >= n) {
        std::memcpy(p, q, (size_t)n);
        p += n;
        for (int i = n; i < point; i++) *p++ = '0';
        *p++ = '.';
        *p++ = '0';
    } else {
        std::memcpy(p, q, (size_t)point);
        p += point;
        *p++ = '.';
        std::memcpy(p, q + point, (size_t)(n - point));
        p += n - point;
    }
    *p = '\0';
    return (int)(p - buf);
}

extern "C" int fs_dtoa_shortest(double x, char *buf, int size)
{
    // "3.0" (not "3", which would read back as an integer), "1e+300",
    // plain notation from 1e-6 up to 1e21 as JavaScript prints numbers.
    static const DoubleToStringConverter conv(
        DoubleToStringConverter::EMIT_POSITIVE_EXPONENT_SIGN |
            DoubleToStringConverter::EMIT_TRAILING_DECIMAL_POINT |
            DoubleToStringConverter::EMIT_TRAILING_ZERO_AFTER_POINT,
        nullptr, nullptr, 'e', -6, 21, 0, 0);
    if (size < 32) return -1;
    int n = shortest15(x, buf);
    if (n > 0) return n;
    StringBuilder sb(buf, size);
    if (!conv.ToShortest(x, &sb)) return -1; // NaN or infinity
    n = sb.position();
    sb.Finalize();
    return n;
}
