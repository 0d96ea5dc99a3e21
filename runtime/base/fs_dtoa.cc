// fs_dtoa: the shortest decimal text that reads back as the same double, from
// Google's double-conversion (Debian libdouble-conversion). printf+strtod
// searching 15/16/17 digits costs ~1 us per float; this costs a few dozen ns.
#include <double-conversion/double-to-string.h>

#include "fs_dtoa.h"

using double_conversion::DoubleToStringConverter;
using double_conversion::StringBuilder;

extern "C" int fs_dtoa_shortest(double x, char *buf, int size)
{
    // "3.0" (not "3", which would read back as an integer), "1e+300",
    // plain notation from 1e-6 up to 1e21 as JavaScript prints numbers.
    static const DoubleToStringConverter conv(
        DoubleToStringConverter::EMIT_POSITIVE_EXPONENT_SIGN |
            DoubleToStringConverter::EMIT_TRAILING_DECIMAL_POINT |
            DoubleToStringConverter::EMIT_TRAILING_ZERO_AFTER_POINT,
        nullptr, nullptr, 'e', -6, 21, 0, 0);
    StringBuilder sb(buf, size);
    if (!conv.ToShortest(x, &sb)) return -1; // NaN or infinity
    int n = sb.position();
    sb.Finalize();
    return n;
}
