//! Exact decimal text → integer conversion for money and token counts: `"0.06"` dollars
//! → 60 000 µ$, `"123.45"` cents → 1 234 500 µ$, without going through binary floating
//! point. Must not know which report a number came from (callers pick the scale).
//!
//! Rule: the decimal text (optional sign, digits, optional fraction, optional exponent)
//! is multiplied by 10^shift exactly; digits below the unit are rounded half away from
//! zero. JSON numbers are read through their shortest round-trip decimal text, which is
//! the text the provider sent for every value of at most 15 significant digits.

/// `text × 10^shift`, rounded half away from zero, or why it is not a number.
pub(crate) fn scaled(text: &str, shift: i32) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a decimal number");
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| bad())?;
    // value = digits × 10^(exp + shift − frac_len)
    let power = exp
        .checked_add(shift)
        .and_then(|p| p.checked_sub(frac_len))
        .ok_or_else(bad)?;
    let too_big = || format!("`{text}` is too large");
    let magnitude: i128 = if digits.is_empty() {
        0
    } else if power >= 0 {
        let base: i128 = digits.parse().map_err(|_| too_big())?;
        let p = u32::try_from(power).map_err(|_| too_big())?;
        10i128
            .checked_pow(p)
            .and_then(|m| base.checked_mul(m))
            .ok_or_else(too_big)?
    } else {
        let cut = usize::try_from(-i64::from(power)).map_err(|_| bad())?;
        if cut > digits.len() {
            0
        } else {
            let (keep, dropped) = digits.split_at(digits.len() - cut);
            let kept: i128 = if keep.is_empty() {
                0
            } else {
                keep.parse().map_err(|_| too_big())?
            };
            let round_up = dropped.as_bytes().first().is_some_and(|d| *d >= b'5');
            kept + i128::from(round_up)
        }
    };
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed).map_err(|_| too_big())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::scaled;

    #[test]
    fn dollars_cents_and_micros() {
        assert_eq!(scaled("0.06", 6).unwrap(), 60_000);
        assert_eq!(scaled("123.45", 4).unwrap(), 1_234_500);
        assert_eq!(scaled("42", 0).unwrap(), 42);
        assert_eq!(scaled("-5", 6).unwrap(), -5_000_000);
        assert_eq!(scaled("1e-7", 6).unwrap(), 0);
        assert_eq!(scaled("1.5e-6", 6).unwrap(), 2);
        assert_eq!(scaled("2.5E2", 0).unwrap(), 250);
        assert_eq!(scaled(".5", 0).unwrap(), 1);
        assert_eq!(scaled("-0.0000005", 6).unwrap(), -1);
        assert_eq!(scaled("0.0000004999", 6).unwrap(), 0);
        assert_eq!(scaled("12345678.1234564", 6).unwrap(), 12_345_678_123_456);
        // 0.1 + 0.2 style values: exact from the text, no float noise.
        assert_eq!(scaled("0.3", 6).unwrap(), 300_000);
    }

    #[test]
    fn rejects_garbage() {
        for t in ["", "abc", "1.2.3", "1e", "--1", "1,5", "e5", "."] {
            assert!(scaled(t, 6).is_err(), "{t}");
        }
        assert!(scaled("1e30", 6).is_err());
    }
}
