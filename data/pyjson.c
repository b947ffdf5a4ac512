/* pyjson: Python's json.dumps(ensure_ascii=False) and json.loads-or-keep-the-text. */
#include "data/pyjson.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put(gale_bytes *out, const char *s)
{
    gale_bytes_append(out, s, strlen(s));
}

/* Python escapes ", \ and the C0 controls only; everything else, DEL and non-ASCII
 * included, is written as it is. */
static void dump_string(const char *s, size_t len, gale_bytes *out)
{
    gale_bytes_push(out, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': put(out, "\\\""); break;
        case '\\': put(out, "\\\\"); break;
        case '\n': put(out, "\\n"); break;
        case '\r': put(out, "\\r"); break;
        case '\t': put(out, "\\t"); break;
        case '\b': put(out, "\\b"); break;
        case '\f': put(out, "\\f"); break;
        default:
            if (c < 0x20) {
                char esc[8];
                snprintf(esc, sizeof esc, "\\u%04x", c);
                put(out, esc);
            } else {
                gale_bytes_push(out, c);
            }
        }
    }
    gale_bytes_push(out, '"');
}

/* repr(float): the shortest digits that read back to x, then fixed notation when the
 * decimal point falls within -4 < decpt <= 16 (with ".0" when there is no fraction),
 * else d.ddde+XX with at least two exponent digits. */
static void dump_real(double x, gale_bytes *out)
{
    char sci[40];
    for (int prec = 0; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, x);
        if (strtod(sci, NULL) == x)
            break;
    }
    const char *p = sci;
    if (*p == '-') {
        gale_bytes_push(out, '-');
        p++;
    }
    char digits[24];
    int n = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[n++] = *p;
    while (n > 1 && digits[n - 1] == '0')
        n--;
    int decpt = atoi(p + 1) + 1;  /* x = 0.DIGITS * 10^decpt */

    if (decpt <= -4 || decpt > 16) {
        gale_bytes_push(out, (uint8_t)digits[0]);
        if (n > 1) {
            gale_bytes_push(out, '.');
            gale_bytes_append(out, digits + 1, (size_t)(n - 1));
        }
        char exp[16];
        snprintf(exp, sizeof exp, "e%c%02d", decpt - 1 < 0 ? '-' : '+', abs(decpt - 1));
        put(out, exp);
    } else if (decpt <= 0) {
        put(out, "0.");
        gale_bytes_fill(out, '0', (size_t)-decpt);
        gale_bytes_append(out, digits, (size_t)n);
    } else if (decpt < n) {
        gale_bytes_append(out, digits, (size_t)decpt);
        gale_bytes_push(out, '.');
        gale_bytes_append(out, digits + decpt, (size_t)(n - decpt));
    } else {
        gale_bytes_append(out, digits, (size_t)n);
        gale_bytes_fill(out, '0', (size_t)(decpt - n));
        put(out, ".0");
    }
}

void pyjson_dump(const json_t *value, gale_bytes *out)
{
    switch (json_typeof(value)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *member;
        int first = 1;
        gale_bytes_push(out, '{');
        /* jansson's iteration API takes a non-const object; it does not modify it */
        json_object_foreach((json_t *)value, key, member) {
            if (!first)
                put(out, ", ");
            first = 0;
            dump_string(key, strlen(key), out);
            put(out, ": ");
            pyjson_dump(member, out);
        }
        gale_bytes_push(out, '}');
        break;
    }
    case JSON_ARRAY:
        gale_bytes_push(out, '[');
        for (size_t i = 0; i < json_array_size(value); i++) {
            if (i)
                put(out, ", ");
            pyjson_dump(json_array_get(value, i), out);
        }
        gale_bytes_push(out, ']');
        break;
    case JSON_STRING:
        dump_string(json_string_value(value), json_string_length(value), out);
        break;
    case JSON_INTEGER: {
        char num[32];
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
        put(out, num);
        break;
    }
    case JSON_REAL:
        dump_real(json_real_value(value), out);
        break;
    case JSON_TRUE: put(out, "true"); break;
    case JSON_FALSE: put(out, "false"); break;
    case JSON_NULL: put(out, "null"); break;
    }
}

json_t *pyjson_parse(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *value = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    return value ? value : json_stringn_nocheck(text, len);
}
