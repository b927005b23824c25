//! The few PHP 8 behaviours Shimmie's placement depends on, ported from
//! `Zend/zend_operators.c` and `Zend/zend_hash.c`: the `(int)` cast of a weight,
//! numeric strings, array-key normalisation of node names, and `<=>` / `==` between
//! node names. Shimmie sorts `[score, name]` pairs and flexihash-php dedupes targets
//! with `in_array`, so a name like `"10"` must compare as PHP compares it, not as bytes.
//!
//! Everything here runs at build time; lookups only use precomputed ranks.

use std::cmp::Ordering;

/// Digits in the longest `zend_long` plus one (`MAX_LENGTH_OF_LONG` on 64-bit).
const MAX_LENGTH_OF_LONG: usize = 20;
/// `long_min_digits`: the magnitude of `ZEND_LONG_MIN`.
const LONG_MIN_DIGITS: &[u8] = b"9223372036854775808";

/// PHP's whitespace for numeric strings (not `isspace`: no other bytes).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The value of a numeric string: an integer, or a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Number {
    Long(i64),
    Double(f64),
}

/// What `_is_numeric_string_ex` reports about a string that starts like a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Numeric {
    pub value: Number,
    /// +1 / -1 when an integer overflowed `zend_long` and became a float, else 0.
    pub overflow: i8,
    /// Non-whitespace bytes follow the number ("5abc"): `(int)` accepts it,
    /// comparisons do not treat the string as numeric.
    pub trailing: bool,
}

/// `_is_numeric_string_ex` (with a `dval` pointer, as every caller here has).
/// `None` when the string does not start like a number at all.
pub(crate) fn scan_numeric(s: &[u8]) -> Option<Numeric> {
    // PHP strings are NUL-terminated: reading past the end sees a 0 byte.
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    if s.is_empty() {
        return None;
    }
    let mut start = 0;
    while is_space(at(start)) {
        start += 1;
    }
    let neg = at(start) == b'-';
    let mut p = start;
    if matches!(at(p), b'-' | b'+') {
        p += 1;
    }

    let mut overflow = 0i8;
    let is_double;
    let mut long_digits = 0..0;
    if at(p).is_ascii_digit() {
        while at(p) == b'0' {
            p += 1;
        }
        let first = p;
        let mut double = false;
        loop {
            if p - first >= MAX_LENGTH_OF_LONG {
                // Too many digits for a long: PHP re-reads it as a float.
                overflow = if neg { -1 } else { 1 };
                double = true;
                break;
            }
            match at(p) {
                b'0'..=b'9' => p += 1,
                b'.' => {
                    double = true;
                    break;
                }
                b'e' | b'E' => {
                    let mut e = p + 1;
                    if matches!(at(e), b'-' | b'+') {
                        e += 1;
                    }
                    double = at(e).is_ascii_digit();
                    break;
                }
                _ => break,
            }
        }
        is_double = double;
        long_digits = first..p;
    } else if at(p) == b'.' && at(p + 1).is_ascii_digit() {
        is_double = true;
    } else {
        return None;
    }

    let (value, end) = if is_double {
        let end = strtod_end(s, start);
        (Number::Double(parse_f64(&s[start..end])), end)
    } else if long_digits.len() == MAX_LENGTH_OF_LONG - 1
        && !(c_strcmp(&s[long_digits.start..], LONG_MIN_DIGITS) == Ordering::Less
            || (c_strcmp(&s[long_digits.start..], LONG_MIN_DIGITS) == Ordering::Equal && neg))
    {
        // 19 digits at or past |LONG_MIN|: a float, flagged as overflowed.
        overflow = if neg { -1 } else { 1 };
        let end = strtod_end(s, start);
        (Number::Double(parse_f64(&s[start..end])), long_digits.end)
    } else {
        let magnitude = s[long_digits.clone()].iter().fold(0u64, |acc, d| {
            acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
        });
        let value = if neg {
            magnitude.wrapping_neg()
        } else {
            magnitude
        };
        (Number::Long(value as i64), long_digits.end)
    };
    let trailing = !s
        .get(end..)
        .unwrap_or_default()
        .iter()
        .all(|&b| is_space(b));
    Some(Numeric {
        value,
        overflow,
        trailing,
    })
}

/// C `strcmp` of `a` (read up to its first NUL or its end) against `b` (no NUL).
fn c_strcmp(a: &[u8], b: &[u8]) -> Ordering {
    let a = a.iter().position(|&c| c == 0).map_or(a, |n| &a[..n]);
    a.cmp(b)
}

/// Where `zend_strtod` stops reading a decimal float that starts at `from`.
fn strtod_end(s: &[u8], from: usize) -> usize {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let mut i = from;
    if matches!(at(i), b'-' | b'+') {
        i += 1;
    }
    let mut digits = 0;
    while at(i).is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if at(i) == b'.' {
        i += 1;
        while at(i).is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return from;
    }
    if matches!(at(i), b'e' | b'E') {
        let mut j = i + 1;
        if matches!(at(j), b'-' | b'+') {
            j += 1;
        }
        if at(j).is_ascii_digit() {
            while at(j).is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    i
}

/// Correctly rounded, like `zend_strtod`; the text is ASCII digits by construction.
fn parse_f64(text: &[u8]) -> f64 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// PHP's `(int)$text`: leading whitespace, sign and digits ("5abc" is 5, "abc" is 0,
/// "1e3" is 1000, "1.9" is 1); floats out of range saturate, infinities give 0
/// (`zend_dval_to_lval_cap`).
pub fn int_cast(text: &str) -> i64 {
    match scan_numeric(text.as_bytes()) {
        None => 0,
        Some(Numeric {
            value: Number::Long(l),
            ..
        }) => l,
        // `as` saturates, which is exactly the cap.
        Some(Numeric {
            value: Number::Double(d),
            ..
        }) if d.is_finite() => d as i64,
        Some(_) => 0,
    }
}

/// The integer a PHP array turns this key into, if any: `"0"`, `"7"`, `"-3"` become
/// integers; `"01"`, `"-0"`, `" 1"`, `"1.0"` and out-of-range digits stay strings.
pub(crate) fn array_int_key(name: &str) -> Option<i64> {
    let bytes = name.as_bytes();
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && bytes.len() > 1 {
        return None;
    }
    name.parse::<i64>().ok()
}

/// A node name as PHP sees it once it is an array key.
#[derive(Clone, Debug)]
pub(crate) struct PhpName {
    text: Box<str>,
    int_key: Option<i64>,
    /// `is_numeric_string` without errors allowed, for string keys.
    numeric: Option<Numeric>,
}

impl PhpName {
    pub fn new(text: &str) -> PhpName {
        PhpName {
            text: text.into(),
            int_key: array_int_key(text),
            numeric: scan_numeric(text.as_bytes()).filter(|n| !n.trailing),
        }
    }
}

/// `ZEND_NORMALIZE_BOOL(a - b)`: NaN differences count as equal.
fn three_way(a: f64, b: f64) -> Ordering {
    let d = a - b;
    if d > 0.0 {
        Ordering::Greater
    } else if d < 0.0 {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

/// PHP 8 `$a <=> $b` for two array keys (`zend_compare`).
pub(crate) fn compare(a: &PhpName, b: &PhpName) -> Ordering {
    match (a.int_key, b.int_key) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => compare_long_to_string(x, &a.text, b),
        (None, Some(y)) => compare_long_to_string(y, &b.text, a).reverse(),
        (None, None) => smart_strcmp(a, b),
    }
}

/// `compare_longs_to_string`; `long_text` is the key's canonical decimal text.
fn compare_long_to_string(long: i64, long_text: &str, s: &PhpName) -> Ordering {
    match s.numeric.map(|n| n.value) {
        Some(Number::Long(v)) => long.cmp(&v),
        Some(Number::Double(d)) => three_way(long as f64, d),
        None => long_text.as_bytes().cmp(s.text.as_bytes()),
    }
}

/// `zendi_smart_strcmp`: two numeric strings compare as numbers, anything else as bytes.
fn smart_strcmp(a: &PhpName, b: &PhpName) -> Ordering {
    let bytes = || a.text.as_bytes().cmp(b.text.as_bytes());
    let (Some(x), Some(y)) = (a.numeric, b.numeric) else {
        return bytes();
    };
    match (x.value, y.value) {
        (Number::Long(l1), Number::Long(l2)) => l1.cmp(&l2),
        (Number::Long(l1), Number::Double(d2)) => match y.overflow {
            0 => three_way(l1 as f64, d2),
            o if o > 0 => Ordering::Less,
            _ => Ordering::Greater,
        },
        (Number::Double(d1), Number::Long(l2)) => match x.overflow {
            0 => three_way(d1, l2 as f64),
            o if o > 0 => Ordering::Greater,
            _ => Ordering::Less,
        },
        (Number::Double(d1), Number::Double(d2)) => {
            // Overflowed integers on the same side, or equal infinities: a float
            // comparison would be inaccurate, so PHP compares the text.
            if (x.overflow != 0 && x.overflow == y.overflow && d1 - d2 == 0.0)
                || (d1 == d2 && !d1.is_finite())
            {
                bytes()
            } else {
                three_way(d1, d2)
            }
        }
    }
}

/// PHP 8 `$a == $b` for two strings (flexihash-php's `in_array`): `"1" == "01"`.
pub(crate) fn loose_eq(a: &PhpName, b: &PhpName) -> bool {
    smart_strcmp(a, b) == Ordering::Equal
}

/// Ranks names so that `rank[i].cmp(&rank[j])` is PHP's `names[i] <=> names[j]`,
/// equal names sharing a rank. Exact whenever PHP's comparison is transitive on
/// these names; it is not for mixes like `10`, `5x`, `9` (int keys against
/// non-numeric strings that start with digits), where PHP's own result depends on
/// its sort algorithm. An insertion sort, because a non-transitive comparison may
/// make `slice::sort_by` panic.
pub(crate) fn ranks(names: &[PhpName]) -> Vec<u32> {
    let mut sorted: Vec<usize> = Vec::with_capacity(names.len());
    for i in 0..names.len() {
        let pos = sorted
            .iter()
            .rposition(|&j| compare(&names[j], &names[i]) != Ordering::Greater)
            .map_or(0, |p| p + 1);
        sorted.insert(pos, i);
    }
    let mut rank = vec![0u32; names.len()];
    let mut current = 0u32;
    for (k, pair) in sorted.windows(2).enumerate() {
        if compare(&names[pair[0]], &names[pair[1]]) != Ordering::Equal {
            current += 1;
        }
        rank[sorted[k + 1]] = current;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_cast_reads_leading_digits() {
        assert_eq!(int_cast("5"), 5);
        assert_eq!(int_cast("5abc"), 5);
        assert_eq!(int_cast("  7"), 7);
        assert_eq!(int_cast("\n\t7 "), 7);
        assert_eq!(int_cast("+4"), 4);
        assert_eq!(int_cast("-3"), -3);
        assert_eq!(int_cast("007"), 7);
    }

    #[test]
    fn int_cast_of_non_numbers_is_zero() {
        assert_eq!(int_cast(""), 0);
        assert_eq!(int_cast("x"), 0);
        assert_eq!(int_cast("abc5"), 0);
        assert_eq!(int_cast("0x1A"), 0);
        assert_eq!(int_cast("-"), 0);
        assert_eq!(int_cast("."), 0);
        assert_eq!(int_cast(" "), 0);
        assert_eq!(int_cast("\u{a0}5"), 0);
    }

    #[test]
    fn int_cast_reads_floats_and_exponents_like_php8() {
        assert_eq!(int_cast("1e3"), 1000);
        assert_eq!(int_cast("1E+2x"), 100);
        assert_eq!(int_cast("1e"), 1);
        assert_eq!(int_cast("1e+"), 1);
        assert_eq!(int_cast("1.9"), 1);
        assert_eq!(int_cast("-1.9"), -1);
        assert_eq!(int_cast(".5"), 0);
        assert_eq!(int_cast("2."), 2);
        assert_eq!(int_cast("1.5e1"), 15);
    }

    #[test]
    fn int_cast_saturates_out_of_range() {
        assert_eq!(int_cast("9223372036854775807"), i64::MAX);
        assert_eq!(int_cast("9223372036854775808"), i64::MAX);
        assert_eq!(int_cast("99999999999999999999"), i64::MAX);
        assert_eq!(int_cast("-9223372036854775808"), i64::MIN);
        assert_eq!(int_cast("-99999999999999999999"), i64::MIN);
        assert_eq!(int_cast("1e30"), i64::MAX);
    }

    #[test]
    fn int_cast_of_infinite_float_is_zero() {
        assert_eq!(int_cast("1e999"), 0);
        assert_eq!(int_cast("-1e999"), 0);
    }

    #[test]
    fn numeric_strings_allow_surrounding_whitespace_only() {
        let numeric = |s: &str| scan_numeric(s.as_bytes()).is_some_and(|n| !n.trailing);
        assert!(numeric("1"));
        assert!(numeric(" 1 "));
        assert!(numeric("1.0"));
        assert!(numeric("1e3"));
        assert!(numeric(".5"));
        assert!(!numeric("1a"));
        assert!(!numeric("a1"));
        assert!(!numeric(""));
        assert!(!numeric("1 1"));
    }

    #[test]
    fn array_keys_normalise_canonical_integers_only() {
        assert_eq!(array_int_key("0"), Some(0));
        assert_eq!(array_int_key("10"), Some(10));
        assert_eq!(array_int_key("-3"), Some(-3));
        assert_eq!(array_int_key("9223372036854775807"), Some(i64::MAX));
        assert_eq!(array_int_key("-9223372036854775808"), Some(i64::MIN));
        for s in [
            "",
            "-",
            "-0",
            "01",
            "00",
            " 1",
            "1 ",
            "+1",
            "1.0",
            "1e3",
            "a",
            "9223372036854775808",
        ] {
            assert_eq!(array_int_key(s), None, "{s:?}");
        }
    }

    fn cmp(a: &str, b: &str) -> Ordering {
        compare(&PhpName::new(a), &PhpName::new(b))
    }

    #[test]
    fn integer_names_compare_numerically() {
        assert_eq!(cmp("10", "9"), Ordering::Greater);
        assert_eq!(cmp("-1", "0"), Ordering::Less);
    }

    #[test]
    fn plain_names_compare_as_bytes() {
        assert_eq!(cmp("foo", "bar"), Ordering::Greater);
        assert_eq!(cmp("ab", "abc"), Ordering::Less);
        assert_eq!(cmp("B", "a"), Ordering::Less);
    }

    #[test]
    fn integer_against_non_numeric_name_compares_as_text() {
        assert_eq!(cmp("10", "9a"), Ordering::Less);
        assert_eq!(cmp("9a", "10"), Ordering::Greater);
        assert_eq!(cmp("1", "a"), Ordering::Less);
    }

    #[test]
    fn numeric_string_names_compare_as_numbers() {
        assert_eq!(cmp("1.5", "10"), Ordering::Less);
        assert_eq!(cmp("01", "1"), Ordering::Equal);
        assert_eq!(cmp(" 2", "10"), Ordering::Less);
        assert_eq!(cmp("1e1", "9.5"), Ordering::Greater);
    }

    #[test]
    fn overflowed_integer_names_compare_as_text_when_floats_tie() {
        // Both round to the same float; PHP falls back to the bytes.
        assert_eq!(
            cmp("99999999999999999999", "99999999999999999998"),
            Ordering::Greater
        );
        assert_eq!(cmp("99999999999999999999", "5"), Ordering::Greater);
        assert_eq!(cmp("5", "99999999999999999999"), Ordering::Less);
    }

    #[test]
    fn loose_equality_matches_numeric_strings() {
        let eq = |a: &str, b: &str| loose_eq(&PhpName::new(a), &PhpName::new(b));
        assert!(eq("1", "01"));
        assert!(eq("1", "1.0"));
        assert!(eq("1e3", "1000"));
        assert!(!eq("a", "A"));
        assert!(!eq("1", "1a"));
    }

    #[test]
    fn ranks_follow_php_order() {
        let names: Vec<PhpName> = ["9", "10", "a", "01", "1"]
            .iter()
            .map(|s| PhpName::new(s))
            .collect();
        let r = ranks(&names);
        assert!(r[1] > r[0], "10 > 9");
        assert!(r[2] > r[1], "a > 10");
        assert_eq!(r[3], r[4], "01 == 1");
        assert!(r[0] > r[4], "9 > 1");
    }

    #[test]
    fn ranks_survive_non_transitive_names() {
        // 10 < "5x" < 9 < 10 in PHP 8: no panic, some order.
        let names: Vec<PhpName> = ["10", "5x", "9"].iter().map(|s| PhpName::new(s)).collect();
        assert_eq!(ranks(&names).len(), 3);
    }
}
