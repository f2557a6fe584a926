//! Kubernetes resource quantities, parsed exactly as the API server parses them.
//!
//! Admission must agree with `k8s.io/apimachinery/pkg/api/resource.ParseQuantity`:
//! whatever it refuses we refuse (with the same one of its three errors), and
//! whatever it accepts we judge by the value it stores. That value is kept
//! exactly, as decimal digits and a power of ten, never as a float.
//!
//! The grammar and its quirks, as the apimachinery scanner implements them:
//!
//! * `[+-]` then digits, an optional `.` and more digits (`"1."`, `".5"`,
//!   `"."` and even a bare sign are numbers; the digit-less ones are zero);
//! * then a run of the letters `eEinumkKMGTP`, an optional sign and digits;
//!   anything else anywhere (spaces, `_`, `x`, `B`) is a format error;
//! * the suffix must then be one of `n u m "" k M G T P E` (decimal SI),
//!   `Ki Mi Gi Ti Pi Ei` (binary SI), or `e`/`E` followed by a signed
//!   integer that fits in 64 bits (a decimal exponent, truncated to 32 bits);
//!   `E` alone is exa;
//! * the stored value is rounded *up* (away from zero) to a multiple of
//!   10⁻⁹, so every non-zero value is at least `1n` in magnitude;
//! * only binary-SI values are capped, at 2⁶³−1; decimal ones are not.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Letters the API server's scanner accepts as the start of a suffix.
const SUFFIX_LETTERS: &[u8] = b"eEinumkKMGTP";

/// The API server scales every quantity to at most nine fractional digits.
const NANO_EXPONENT: i64 = -9;

/// Digits the API server's fast path accepts before it falls back to
/// arbitrary-precision decimals (`maxInt64Factors`).
const FAST_PATH_DIGITS: i32 = 18;

/// A quantity as the API server would store it: exact value, no floating point.
///
/// Equality, ordering and hashing all go by value: `1000m == 1` and
/// `1Gi > 1G`. The suffix the user wrote is not kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    negative: bool,
    /// Significant decimal digits (values 0..=9), most significant first,
    /// without leading or trailing zeros; empty for zero.
    digits: Vec<u8>,
    /// The value is `digits × 10^exponent`; zero has exponent 0.
    exponent: i64,
}

/// Which of the API server's three parse errors a [`QuantityError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityErrorKind {
    /// `resource.ErrFormatWrong`.
    FormatWrong,
    /// `resource.ErrSuffix`.
    Suffix,
    /// `resource.ErrNumeric`.
    Numeric,
}

impl QuantityErrorKind {
    /// The API server's own message for this error, for callers that want to
    /// echo exactly what `kubectl apply` would have printed.
    pub fn api_server_message(self) -> &'static str {
        match self {
            Self::FormatWrong => {
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            }
            Self::Suffix => "unable to parse quantity's suffix",
            Self::Numeric => "unable to parse numeric part of quantity",
        }
    }
}

/// Why a string is not a quantity the API server accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The empty string (the API server reports a format error).
    #[error("empty; a quantity is a number with an optional suffix, such as 10Gi or 500m")]
    Empty,
    /// A character the quantity grammar has no place for.
    #[error(
        "unexpected {found:?} at position {position}; a quantity is a number with an optional suffix, such as 10Gi, \
         500m or 1e3"
    )]
    FormatWrong {
        /// Byte offset of the offending character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// The suffix is made of the right letters but is not a known one.
    #[error(
        "unknown suffix {suffix:?}; accepted are Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E, or e followed by \
         an integer exponent"
    )]
    Suffix {
        /// Everything after the number.
        suffix: String,
    },
    /// A number without any digit whose suffix sends the API server down its
    /// arbitrary-precision path, where it then fails (e.g. `.e-10`, `Pi`).
    #[error("no digits before the suffix {suffix:?}")]
    Numeric {
        /// The exponent suffix.
        suffix: String,
    },
}

impl QuantityError {
    /// Which of the API server's errors this is.
    pub fn kind(&self) -> QuantityErrorKind {
        match self {
            Self::Empty | Self::FormatWrong { .. } => QuantityErrorKind::FormatWrong,
            Self::Suffix { .. } => QuantityErrorKind::Suffix,
            Self::Numeric { .. } => QuantityErrorKind::Numeric,
        }
    }
}

/// What a suffix multiplies the number by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Decimal SI or a decimal exponent: `× 10^n` (n already truncated to 32 bits).
    Decimal(i32),
    /// Binary SI: `× 2^n`, n one of 10, 20, …, 60. Capped at 2⁶³−1.
    Binary(i32),
}

impl Scale {
    /// Mirrors `quantitySuffixer.interpret`.
    fn of_suffix(suffix: &str) -> Option<Scale> {
        let scale = match suffix {
            "n" => Scale::Decimal(-9),
            "u" => Scale::Decimal(-6),
            "m" => Scale::Decimal(-3),
            "" => Scale::Decimal(0),
            "k" => Scale::Decimal(3),
            "M" => Scale::Decimal(6),
            "G" => Scale::Decimal(9),
            "T" => Scale::Decimal(12),
            "P" => Scale::Decimal(15),
            "E" => Scale::Decimal(18),
            "Ki" => Scale::Binary(10),
            "Mi" => Scale::Binary(20),
            "Gi" => Scale::Binary(30),
            "Ti" => Scale::Binary(40),
            "Pi" => Scale::Binary(50),
            "Ei" => Scale::Binary(60),
            _ => {
                let rest = suffix.strip_prefix('e').or_else(|| suffix.strip_prefix('E'))?;
                // Go's `int32(parsed)` keeps the low 32 bits: `1e4294967296` is 1.
                #[allow(clippy::cast_possible_truncation)]
                Scale::Decimal(parse_go_int64(rest)? as i32)
            }
        };
        Some(scale)
    }
}

/// `strconv.ParseInt(s, 10, 64)`: optional sign, at least one ASCII digit,
/// nothing else, within the i64 range (leading zeros allowed).
fn parse_go_int64(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut magnitude: i128 = 0;
    for b in digits.bytes() {
        magnitude = magnitude * 10 + i128::from(b - b'0');
        if magnitude > 1 << 63 {
            return None;
        }
    }
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// The position just past a run of ASCII digits starting at `pos`.
fn skip_digits(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    pos
}

/// A length as Go's `int32(len(..))` would see it for any input the API
/// server can receive (its request bodies are capped at a few MiB).
fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

impl Quantity {
    /// Parses `s` exactly as the API server's `resource.ParseQuantity` does.
    ///
    /// # Errors
    /// The same inputs the API server refuses, classified by [`QuantityError::kind`]
    /// into its three errors.
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let bytes = s.as_bytes();
        let format_error = |position: usize| QuantityError::FormatWrong {
            position,
            found: s[position..].chars().next().unwrap_or('\u{fffd}'),
        };
        let Some(&first) = bytes.first() else {
            return Err(QuantityError::Empty);
        };

        // Sign, then leading zeros; a number that is only those is zero,
        // whatever follows (`"-"`, `"+"`, `"000"`).
        let negative = first == b'-';
        let mut pos = usize::from(first == b'-' || first == b'+');
        let number_start = pos;
        while pos < bytes.len() && bytes[pos] == b'0' {
            pos += 1;
        }
        if pos == bytes.len() {
            return Ok(Quantity::zero());
        }

        // Integer digits, then an optional `.` and fraction digits.
        let integer_start = pos;
        pos = skip_digits(bytes, pos);
        let integer = &bytes[integer_start..pos];
        let mut fraction: &[u8] = &[];
        if pos < bytes.len() && bytes[pos] == b'.' {
            let fraction_start = pos + 1;
            pos = skip_digits(bytes, fraction_start);
            fraction = &bytes[fraction_start..pos];
        }
        let has_digit = bytes[number_start..pos].iter().any(u8::is_ascii_digit);

        // Suffix: letters from a fixed set, then an optional sign and digits.
        let suffix_start = pos;
        while pos < bytes.len() && SUFFIX_LETTERS.contains(&bytes[pos]) {
            pos += 1;
        }
        if pos < bytes.len() {
            if bytes[pos] == b'+' || bytes[pos] == b'-' {
                pos += 1;
            }
            pos = skip_digits(bytes, pos);
            if pos < bytes.len() {
                return Err(format_error(pos));
            }
        }
        let suffix = &s[suffix_start..];
        let scale = Scale::of_suffix(suffix).ok_or_else(|| QuantityError::Suffix { suffix: suffix.to_owned() })?;

        let mut all_digits = Vec::with_capacity(integer.len() + fraction.len());
        all_digits.extend(integer.iter().chain(fraction).map(|b| b - b'0'));
        let fraction_len = len_i32(fraction.len());

        let mut quantity = match scale {
            Scale::Decimal(exponent) => {
                // The API server takes an int64 fast path when the digits fit
                // and the result needs at most nine fractional digits; both of
                // its paths compute the exponent in wrapping 32-bit arithmetic,
                // which only matters for exponents near ±2³¹.
                let integer_len = len_i32(integer.len().max(1));
                let precision = FAST_PATH_DIGITS.wrapping_sub(integer_len.wrapping_add(fraction_len));
                let fast_exponent = exponent.wrapping_sub(fraction_len);
                let value_exponent = if precision >= 0 && i64::from(fast_exponent) >= NANO_EXPONENT {
                    i64::from(fast_exponent)
                } else if has_digit {
                    -i64::from(fraction_len.wrapping_sub(exponent))
                } else {
                    // The slow path re-parses the number text, finds no digit, and fails.
                    return Err(QuantityError::Numeric { suffix: suffix.to_owned() });
                };
                Quantity::from_digits(negative, all_digits, value_exponent)
            }
            Scale::Binary(power) => {
                // The API server's binary fast path needs a rough digit budget
                // (`15 - len(num) - 3·power/10 - 1 >= 0`); outside it, the slow
                // path fails on a number without digits: `Gi` is zero but `Pi`
                // and `Ei` are refused.
                let budget = 13_i32.saturating_sub(len_i32(integer.len().max(1))).saturating_sub(3 * power / 10);
                if !has_digit && budget < 0 {
                    return Err(QuantityError::Numeric { suffix: suffix.to_owned() });
                }
                for _ in 0..power / 10 {
                    multiply_digits(&mut all_digits, 1024);
                }
                let mut q = Quantity::from_digits(negative, all_digits, -i64::from(fraction_len));
                q.round_up_to_nano();
                if q.cmp_magnitude(&Quantity::from_units(i64::MAX)) == Ordering::Greater {
                    q = Quantity::from_units(if negative { -i64::MAX } else { i64::MAX });
                }
                return Ok(q);
            }
        };
        quantity.round_up_to_nano();
        Ok(quantity)
    }

    /// True below zero; resource requests and limits must not be.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// True for zero, however it was written (`0`, `-0Gi`, `.`, `+`).
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// True when the value has no fractional part (storage must be whole bytes).
    pub fn is_whole(&self) -> bool {
        self.exponent >= 0
    }

    /// The value as a whole number of units (e.g. bytes).
    ///
    /// `None` when the value is fractional, and also when it is whole but
    /// outside the `i128` range (beyond about 1.7·10³⁸); compare against
    /// bounds built with [`Quantity::from_units`] or use [`Quantity::is_whole`]
    /// to tell those two apart.
    pub fn whole_units(&self) -> Option<i128> {
        if !self.is_whole() {
            return None;
        }
        let mut value: i128 = 0;
        for &d in &self.digits {
            value = value.checked_mul(10)?.checked_add(i128::from(d))?;
        }
        for _ in 0..self.exponent {
            value = value.checked_mul(10)?;
        }
        Some(if self.negative { -value } else { value })
    }

    /// An exact whole quantity, for bounds such as 1Mi or 64Ti.
    pub fn from_units(n: i64) -> Quantity {
        let digits = n.unsigned_abs().to_string().bytes().map(|b| b - b'0').collect();
        Quantity::from_digits(n < 0, digits, 0)
    }

    fn zero() -> Quantity {
        Quantity { negative: false, digits: Vec::new(), exponent: 0 }
    }

    /// Normalises `digits × 10^exponent` so equal values compare equal.
    fn from_digits(negative: bool, mut digits: Vec<u8>, mut exponent: i64) -> Quantity {
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        let trailing = digits.iter().rev().take_while(|&&d| d == 0).count();
        if digits.is_empty() {
            return Quantity::zero();
        }
        digits.truncate(digits.len() - trailing);
        exponent = exponent.saturating_add(i64::try_from(trailing).unwrap_or(i64::MAX));
        Quantity { negative, digits, exponent }
    }

    /// The API server rounds magnitudes up to a whole number of nano-units,
    /// "so that anyone who asks for some resource gets some".
    fn round_up_to_nano(&mut self) {
        if self.exponent >= NANO_EXPONENT || self.is_zero() {
            return;
        }
        // Digits below 10⁻⁹; the last significant digit is non-zero, so the
        // dropped part is never zero and the kept part always goes up by one.
        let dropped = usize::try_from(NANO_EXPONENT - self.exponent).unwrap_or(usize::MAX);
        let mut kept =
            if dropped >= self.digits.len() { Vec::new() } else { self.digits[..self.digits.len() - dropped].to_vec() };
        add_one(&mut kept);
        *self = Quantity::from_digits(self.negative, kept, NANO_EXPONENT);
    }

    /// Decimal position of the most significant digit, plus one.
    fn magnitude_order(&self) -> i128 {
        i128::from(self.exponent) + self.digits.len() as i128
    }

    fn cmp_magnitude(&self, other: &Quantity) -> Ordering {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            // Normalised digits have no trailing zeros, so once the orders
            // agree, plain lexicographic comparison of the digits is numeric.
            (false, false) => {
                self.magnitude_order().cmp(&other.magnitude_order()).then_with(|| self.digits.cmp(&other.digits))
            }
        }
    }
}

/// `digits *= factor`, digits most significant first.
fn multiply_digits(digits: &mut Vec<u8>, factor: u32) {
    let mut carry: u32 = 0;
    for d in digits.iter_mut().rev() {
        let product = u32::from(*d) * factor + carry;
        *d = (product % 10) as u8;
        carry = product / 10;
    }
    let mut head = Vec::new();
    while carry > 0 {
        head.push((carry % 10) as u8);
        carry /= 10;
    }
    head.reverse();
    digits.splice(0..0, head);
}

/// `digits += 1`, digits most significant first.
fn add_one(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

impl Ord for Quantity {
    fn cmp(&self, other: &Quantity) -> Ordering {
        let sign = |q: &Quantity| match (q.is_zero(), q.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal if self.negative => other.cmp_magnitude(self),
            Ordering::Equal => self.cmp_magnitude(other),
            unequal => unequal,
        }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Quantity) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Quantity, QuantityError> {
        Quantity::parse(s)
    }
}

/// The exact value without a suffix: plain decimal (`1073741824`, `0.5`,
/// `-0.000000001`) unless it would be absurdly long, then `<digits>e<exponent>`.
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PLAIN_LIMIT: i64 = 40;
        if self.is_zero() {
            return f.write_str("0");
        }
        let digits: String = self.digits.iter().map(|&d| char::from(b'0' + d)).collect();
        let sign = if self.negative { "-" } else { "" };
        let len = i64::try_from(digits.len()).unwrap_or(i64::MAX);
        if self.exponent >= 0 && self.exponent <= PLAIN_LIMIT {
            let zeros = "0".repeat(usize::try_from(self.exponent).unwrap_or(0));
            write!(f, "{sign}{digits}{zeros}")
        } else if self.exponent < 0 && self.exponent >= -PLAIN_LIMIT {
            let fraction_len = usize::try_from(-self.exponent).unwrap_or(0);
            if len > -self.exponent {
                let (whole, fraction) = digits.split_at(digits.len() - fraction_len);
                write!(f, "{sign}{whole}.{fraction}")
            } else {
                let zeros = "0".repeat(fraction_len - digits.len());
                write!(f, "{sign}0.{zeros}{digits}")
            }
        } else {
            write!(f, "{sign}{digits}e{}", self.exponent)
        }
    }
}

/// Renders a byte count for an error message in its shortest exact form,
/// preferring binary suffixes on a tie: `1048576` → `1Mi`, `10000000000` →
/// `10G`, `1500` → `1500`. The result always parses back to the same value.
pub fn format_bytes(n: i128) -> String {
    const BINARY: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    const DECIMAL: [(&str, u32); 6] = [("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3)];
    let sign = if n < 0 { "-" } else { "" };
    let magnitude = n.unsigned_abs();
    let largest = |units: &[(&str, u128)]| {
        units
            .iter()
            .find(|(_, unit)| magnitude != 0 && magnitude.is_multiple_of(*unit))
            .map(|(suffix, unit)| format!("{sign}{}{suffix}", magnitude / unit))
    };
    let binary: Vec<(&str, u128)> = BINARY.iter().map(|&(s, p)| (s, 1_u128 << p)).collect();
    let decimal: Vec<(&str, u128)> = DECIMAL.iter().map(|&(s, p)| (s, 10_u128.pow(p))).collect();
    [largest(&binary), largest(&decimal), Some(format!("{sign}{magnitude}"))]
        .into_iter()
        .flatten()
        .min_by_key(String::len)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// What `ParseQuantity` does with an input.
    enum Want {
        /// Accepted; the exact stored value, as our `Display` renders it.
        Value(&'static str),
        /// Refused with this API-server error.
        Refused(QuantityErrorKind),
    }
    use QuantityErrorKind::{FormatWrong, Numeric, Suffix};
    use Want::{Refused, Value};

    /// Every row was checked against apimachinery's `ParseQuantity` (its
    /// `TestQuantityParse`/`TestParseQuantity` tables where a row says so,
    /// otherwise by reading `parseQuantityString` and `interpret`).
    #[rustfmt::skip]
    const TABLE: &[(&str, Want, &str)] = &[
        // --- plain numbers and signs
        ("0", Value("0"), "the API server's explicit zero shortcut"),
        ("1", Value("1"), "quantity-less numbers are allowed (apimachinery table)"),
        ("+1", Value("1"), "leading + is accepted and ignored"),
        ("-1", Value("-1"), "leading - makes it negative"),
        ("007", Value("7"), "leading zeros are stripped"),
        ("-0", Value("0"), "negative zero is zero"),
        ("000", Value("0"), "only zeros: the scanner returns 0 early"),
        ("-", Value("0"), "a bare sign: zero-stripping hits the end, num becomes \"0\""),
        ("+", Value("0"), "same for +"),
        (".", Value("0"), "no digits at all, fast path parses num \"0\" (apimachinery TestParseQuantityString)"),
        ("-.", Value("0"), "same with a sign (apimachinery TestParseQuantityString)"),
        ("1.", Value("1"), "trailing dot with empty fraction (apimachinery table: things written by trolls)"),
        (".5", Value("0.5"), "leading dot"),
        (".001", Value("0.001"), "apimachinery table: things written by trolls"),
        ("9.01", Value("9.01"), "apimachinery table"),
        ("999999999999999999", Value("999999999999999999"), "18 digits: the int64 fast path (apimachinery TestParseQuantity)"),
        ("9999999999999999999", Value("9999999999999999999"), "19 digits: slow path, still exact"),
        ("10000000000000000000000m", Value("10000000000000000000"), "apimachinery TestParseQuantity: 1e19, not capped"),
        // --- decimal SI suffixes
        ("5n", Value("0.000000005"), "nano (apimachinery table)"),
        ("4u", Value("0.000004"), "micro"),
        ("1000m", Value("1"), "milli: 1000m is exactly 1"),
        ("8k", Value("8000"), "kilo is lowercase k"),
        ("7M", Value("7000000"), "mega"),
        ("1G", Value("1000000000"), "giga"),
        ("5T", Value("5000000000000"), "tera"),
        ("2P", Value("2000000000000000"), "peta"),
        ("1E", Value("1000000000000000000"), "E alone is exa, not an exponent (apimachinery table)"),
        ("12E", Value("12000000000000000000"), "decimal SI is NOT capped at 2^63-1 (apimachinery table)"),
        ("10E", Value("10000000000000000000"), "apimachinery TestParseQuantity: min/max 20 digits"),
        ("100.035k", Value("100035"), "fraction with a suffix (apimachinery table)"),
        ("1.G", Value("1000000000"), "empty fraction before a suffix is allowed (apimachinery TODO keeps it)"),
        ("0.0005k", Value("0.5"), "apimachinery table"),
        ("m", Value("0"), "a suffix with no number at all is zero (fast path)"),
        ("E", Value("0"), "exa of nothing is zero"),
        // --- binary SI suffixes
        ("1Ki", Value("1024"), "apimachinery table"),
        ("1Mi", Value("1048576"), "2^20"),
        ("1Gi", Value("1073741824"), "2^30"),
        ("5Ti", Value("5497558138880"), "apimachinery table"),
        ("4Pi", Value("4503599627370496"), "apimachinery table"),
        ("3Ei", Value("3458764513820540928"), "apimachinery table"),
        ("0.5Mi", Value("524288"), "fractional binary (apimachinery table)"),
        ("0.05Gi", Value("53687091.2"), "apimachinery table: 536870912e-1"),
        ("1.5Gi", Value("1610612736"), "1.5 × 2^30"),
        ("Gi", Value("0"), "no number: the BinarySI fast path parses num \"0\""),
        ("-Gi", Value("0"), "same with a sign"),
        ("Ti", Value("0"), "the last binary suffix whose digit budget (15-1-12-1) still allows the fast path"),
        ("Pi", Refused(Numeric), "budget 15-1-15-1 < 0: slow path, which finds no digits"),
        ("-.Ei", Refused(Numeric), "same for Ei, with a sign and a dot"),
        ("9Ei", Value("9223372036854775807"), "binary SI is capped at 2^63-1 (apimachinery table)"),
        ("-9Ei", Value("-9223372036854775807"), "the cap applies to the magnitude"),
        ("9223372036854775807Ki", Value("9223372036854775807"), "capped (apimachinery table)"),
        ("0.000000000001Ki", Value("0.000000002"), "1.024e-12 rounds UP to 2n (apimachinery table)"),
        // --- decimal exponents
        ("1e3", Value("1000"), "e is an exponent (apimachinery table)"),
        ("1E-3", Value("0.001"), "E followed by a signed integer is an exponent (apimachinery table)"),
        ("1.3E+6", Value("1300000"), "explicit + in the exponent (apimachinery table)"),
        ("1e03", Value("1000"), "ParseInt accepts leading zeros in the exponent"),
        ("1e-0", Value("1"), "negative zero exponent"),
        ("1e4294967296", Value("1"), "2^32 truncated to int32 is 0"),
        ("1e4294967297", Value("10"), "2^32+1 truncated to int32 is 1"),
        ("1e9223372036854775807", Value("0.1"), "i64::MAX truncated to int32 is -1"),
        ("1e-9223372036854775808", Value("1"), "i64::MIN truncated to int32 is 0"),
        ("1e100", Value("1e100"), "huge decimal exponents are exact and uncapped"),
        ("e3", Value("0"), "exponent of nothing is zero (fast path)"),
        ("e-9", Value("0"), "still the fast path at exactly nano scale"),
        // --- rounding up to 1n
        ("1n", Value("0.000000001"), "smallest representable step"),
        ("0.1n", Value("0.000000001"), "non-zero values below 1n round UP to 1n"),
        ("-0.1n", Value("-0.000000001"), "rounding is away from zero"),
        ("3.001n", Value("0.000000004"), "apimachinery table"),
        ("1.1E-9", Value("0.000000002"), "apimachinery table"),
        ("0.00000012345", Value("0.000000124"), "apimachinery table"),
        ("1.0000000001", Value("1.000000001"), "rounding applies to every value, not just tiny ones"),
        ("1e-2147483648", Value("1e2147483648"), "int32 negation wraps in the slow path: 10^(2^31) (the API server spins rounding it)"),
        ("1.5e-2147483648", Value("15e2147483647"), "int32 scale - len(denom) wraps into the fast path"),
        // --- refused: format (ErrFormatWrong)
        ("", Refused(FormatWrong), "empty string (apimachinery TestQuantityParse)"),
        (" 1", Refused(FormatWrong), "leading whitespace (apimachinery invalid table)"),
        ("1 ", Refused(FormatWrong), "trailing whitespace (apimachinery invalid table)"),
        ("1Gi ", Refused(FormatWrong), "trailing whitespace after a suffix"),
        ("1 Gi", Refused(FormatWrong), "space between number and suffix"),
        ("1KB", Refused(FormatWrong), "B is not a suffix letter"),
        ("1GB", Refused(FormatWrong), "GB is not Kubernetes"),
        ("KB", Refused(FormatWrong), "no number and an unknown letter"),
        ("0x10", Refused(FormatWrong), "no hex"),
        ("1_000", Refused(FormatWrong), "no digit separators"),
        ("1,5", Refused(FormatWrong), "no decimal comma"),
        ("1.1.M", Refused(FormatWrong), "two dots (apimachinery invalid table)"),
        ("aoeu", Refused(FormatWrong), "apimachinery invalid table"),
        ("1e3e", Refused(FormatWrong), "letters after the exponent digits"),
        ("1e+-3", Refused(FormatWrong), "only one sign in the exponent"),
        ("1e1.5", Refused(FormatWrong), "fractional exponent"),
        ("1+1.0M", Refused(FormatWrong), "apimachinery invalid table: the dot after +1 is a format error"),
        ("1Gi\u{a0}", Refused(FormatWrong), "non-ASCII whitespace"),
        // --- refused: suffix (ErrSuffix)
        ("1ki", Refused(Suffix), "binary kilo is Ki, not ki"),
        ("ki", Refused(Suffix), "same with no number"),
        ("1i", Refused(Suffix), "apimachinery invalid table"),
        (".5i", Refused(Suffix), "apimachinery invalid table"),
        ("0.1mi", Refused(Suffix), "apimachinery invalid table"),
        ("1e", Refused(Suffix), "e without an exponent"),
        ("1e+", Refused(Suffix), "e and a sign without digits"),
        ("-3.01e-", Refused(Suffix), "apimachinery invalid table"),
        ("1+5", Refused(Suffix), "a sign and digits with no letter"),
        ("1-", Refused(Suffix), "a trailing sign"),
        ("--1", Refused(Suffix), "the second sign starts the suffix \"-1\""),
        ("1Ki5", Refused(Suffix), "digits after a binary suffix"),
        ("1mE3", Refused(Suffix), "a decimal exponent must start with e or E"),
        ("1Ee3", Refused(Suffix), "E then e: ParseInt(\"e3\") fails"),
        ("1KiB", Refused(FormatWrong), "B is not a suffix letter"),
        ("1e9223372036854775808", Refused(Suffix), "exponent outside int64: ParseInt fails"),
        // --- refused: numeric part (ErrNumeric)
        (".e-10", Refused(Numeric), "no digits and an exponent that forces the slow path"),
        ("-e-20", Refused(Numeric), "same with a sign"),
        ("+.E-10", Refused(Numeric), "same with E"),
    ];

    #[test]
    fn parse_table_matches_the_api_server() {
        assert!(TABLE.len() >= 60, "table has {} rows", TABLE.len());
        for (input, want, why) in TABLE {
            let got = match Quantity::parse(input) {
                Ok(q) => q.to_string(),
                Err(err) => format!("refused: {:?}", err.kind()),
            };
            let want = match want {
                Value(value) => (*value).to_owned(),
                Refused(kind) => format!("refused: {kind:?}"),
            };
            assert_eq!(got, want, "{input:?}: {why}");
        }
    }

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn comparison_is_by_value() {
        assert!(q("1Gi") > q("1G"), "2^30 > 10^9");
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1024"), q("1Ki"));
        assert_eq!(q("0.5Gi"), q("512Mi"));
        assert_eq!(q("-0"), q("0"));
        assert!(q("-1") < q("0"));
        assert!(q("-2") < q("-1"), "more negative is smaller");
        assert!(q("-1Gi") < q("-1G"));
        assert!(q("1n") > q("0"));
        assert!(q("999m") < q("1"));
        assert!(q("1.5") > q("1.49999"));
        assert!(q("10E") > q("9Ei"), "decimal SI is uncapped, binary SI is capped");
        assert!(q("1e100") > q("9Ei"));
        assert!(q("1e-2147483648") > q("1e100"), "the wrapped exponent is a huge value");
        assert_eq!(q("64Ti").cmp(&q("64Ti")), Ordering::Equal);
        let mut sorted = [q("1Gi"), q("1"), q("-5"), q("500m"), q("1G"), q("0")];
        sorted.sort();
        let rendered: Vec<String> = sorted.iter().map(ToString::to_string).collect();
        assert_eq!(rendered, ["-5", "0", "0.5", "1", "1000000000", "1073741824"]);
    }

    #[test]
    fn rounding_to_nano() {
        assert_eq!(q("1n"), q("0.1n"), "0.1n rounds up to 1n");
        assert_eq!(q("0.9n"), q("1n"), "apimachinery table");
        assert_eq!(q("0.0000000005"), q("1n"), "apimachinery table");
        assert_eq!(q("1.0000000001"), q("1000000001n"));
        assert_eq!(q("999999999.9999999999"), q("1000000000"), "carry through every digit");
        assert!(!q("0.1n").is_zero(), "non-zero never rounds to zero");
        assert!(q("0n").is_zero());
    }

    #[test]
    fn binary_cap() {
        let max = Quantity::from_units(i64::MAX);
        assert_eq!(q("8Ei"), max, "2^63 is one above the cap");
        assert_eq!(q("7.99999999999999999999Ei"), max, "just under 2^63 still rounds to above the cap");
        assert!(q("7Ei") < max);
        assert_eq!(q("1e19"), q("10E"), "decimal exponent is never capped either");
        assert!(q("1e19") > max);
    }

    #[test]
    fn whole_units() {
        assert_eq!(q("0.5Gi").whole_units(), Some(536_870_912), "half a GiB is whole bytes");
        assert_eq!(q("1.5").whole_units(), None, "1.5 is not whole");
        assert!(!q("1.5").is_whole());
        assert_eq!(q("1500m").whole_units(), None);
        assert_eq!(q("2000m").whole_units(), Some(2));
        assert_eq!(q("10Gi").whole_units(), Some(10 * (1 << 30)));
        assert_eq!(q("-1Ki").whole_units(), Some(-1024));
        assert_eq!(q("0").whole_units(), Some(0));
        assert_eq!(q("10E").whole_units(), Some(10_000_000_000_000_000_000));
        assert_eq!(q("1e100").whole_units(), None, "beyond i128");
        assert!(q("1e100").is_whole(), "… but whole");
        assert_eq!(q("1n").whole_units(), None);
    }

    #[test]
    fn from_units_matches_parse() {
        assert_eq!(Quantity::from_units(1 << 20), q("1Mi"));
        assert_eq!(Quantity::from_units(64 << 40), q("64Ti"));
        assert_eq!(Quantity::from_units(0), q("0"));
        assert_eq!(Quantity::from_units(-1500), q("-1.5k"));
        assert_eq!(Quantity::from_units(i64::MIN).to_string(), "-9223372036854775808");
        assert!(Quantity::from_units(-1).is_negative());
        assert!(!Quantity::from_units(0).is_negative());
    }

    #[test]
    fn from_str_and_flags() {
        let parsed: Quantity = "-2Gi".parse().unwrap();
        assert!(parsed.is_negative());
        assert!(!parsed.is_zero());
        assert!("10GB".parse::<Quantity>().is_err());
        assert!(!q("-0").is_negative(), "negative zero is plain zero");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = Quantity::parse("10GB").unwrap_err();
        assert_eq!(err, QuantityError::FormatWrong { position: 3, found: 'B' });
        assert!(err.to_string().contains("unexpected 'B' at position 3"), "{err}");
        let err = Quantity::parse("10ki").unwrap_err();
        assert_eq!(err, QuantityError::Suffix { suffix: "ki".to_owned() });
        assert!(err.to_string().contains("\"ki\""), "{err}");
        assert!(err.to_string().contains("Ki"), "{err}");
        assert_eq!(Quantity::parse("").unwrap_err(), QuantityError::Empty);
        assert_eq!(Quantity::parse(".e-10").unwrap_err().kind(), Numeric);
        assert!(FormatWrong.api_server_message().contains("[eEinumkKMGTP]*"));
        assert_eq!(Suffix.api_server_message(), "unable to parse quantity's suffix");
        assert_eq!(Numeric.api_server_message(), "unable to parse numeric part of quantity");
    }

    #[test]
    fn format_bytes_reads_like_a_human() {
        assert_eq!(format_bytes(1_048_576), "1Mi");
        assert_eq!(format_bytes(1500), "1500");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(64 << 40), "64Ti");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1_024_000), "1024k", "shorter than 1000Ki");
        assert_eq!(format_bytes(2048), "2Ki");
        assert_eq!(format_bytes(2000), "2k");
        assert_eq!(format_bytes(10_000_000_000), "10G");
        assert_eq!(format_bytes(-1024), "-1Ki");
        assert_eq!(format_bytes(1 << 70), "1024Ei");
        assert_eq!(format_bytes(i128::MIN), format!("-{}Ei", 1_u128 << 67), "no overflow at i128::MIN");
        for n in [1_i128, 1023, 1024, 1500, 1 << 20, 5 << 40, 2000, 7_000_000] {
            assert_eq!(q(&format_bytes(n)).whole_units(), Some(n), "{n} round-trips");
        }
    }

    #[test]
    fn display_is_exact() {
        assert_eq!(q("0.05Gi").to_string(), "53687091.2");
        assert_eq!(q("-5n").to_string(), "-0.000000005");
        assert_eq!(q("1.5e-2147483648").to_string(), "15e2147483647");
        assert_eq!(
            q("123456789012345678901234567890123456789012345").to_string(),
            "123456789012345678901234567890123456789012345"
        );
    }

    #[test]
    fn long_inputs_stay_exact() {
        let long = format!("1{}", "0".repeat(5000));
        assert_eq!(q(&long), q("1e5000"));
        let tiny = format!("0.{}1", "0".repeat(5000));
        assert_eq!(q(&tiny), q("1n"));
        let big_binary = format!("{}Ki", "9".repeat(200));
        assert_eq!(q(&big_binary), Quantity::from_units(i64::MAX));
    }
}
