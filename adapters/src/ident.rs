//! Latvian identifiers: personal codes (old and new form) and Enterprise Register numbers —
//! validation, masking for logs, and completing fictional fixtures for the simulators.
//!
//! Personal codes are personal data (see `../shared/DOMAIN.md`, "Identifiers"): nothing in this
//! module ever puts one into an error message or a `Debug` output. Only the masked form
//! (`010190-*****`) leaves a [`PersonalCode`] unless the caller explicitly asks for the digits.

use std::fmt;

/// Weights of the old-form personal code check digit, over the first 10 digits.
const PERSONAL_CODE_WEIGHTS: [u32; 10] = [1, 6, 3, 7, 9, 10, 5, 8, 4, 2];

/// Weights of the Enterprise Register number check, over all 11 digits.
const REG_NO_WEIGHTS: [u32; 11] = [9, 1, 4, 8, 3, 10, 2, 5, 7, 6, 1];

/// What replaces the last five digits of a personal code in the masked form.
pub(crate) const MASKED_TAIL: &str = "-*****";

/// The two forms of a Latvian personal code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersonalCodeForm {
    /// `DDMMYY-CNNNK`: birth date, century digit, serial, check digit.
    Old,
    /// Issued since 1 July 2017: `32NNNN-NNNNN`, no birth date and no documented check digit.
    New,
}

/// Why a string is not a valid personal code. The messages never contain the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PersonalCodeError {
    /// Wrong length, a non-digit, or a hyphen somewhere other than after the sixth digit.
    #[error("a personal code must be 11 digits, optionally with a hyphen after the sixth")]
    Format,
    /// The code starts with `3` followed by a digit other than `0`/`1` (old-form days 30 and 31)
    /// or `2` (the only new-form prefix issued so far).
    #[error("a new-form personal code must start with 32")]
    NewFormPrefix,
    /// The seventh digit of an old-form code is not 0 (1800s), 1 (1900s) or 2 (2000s).
    #[error("the century digit (the seventh) of an old-form personal code must be 0, 1 or 2")]
    Century,
    /// The first six digits with the century digit do not make a calendar date.
    #[error("the birth date in the personal code is not a real date")]
    BirthDate,
    /// The last digit does not match the check digit computed from the first ten.
    #[error("the check digit of the personal code does not match")]
    CheckDigit,
}

/// A validated Latvian personal code.
///
/// Holds the 11 digits without the hyphen. `Debug` prints only the masked form; there is
/// deliberately no `Display`: ask for [`PersonalCode::formatted`] or
/// [`PersonalCode::as_str_digits`] where the real code is needed, and [`PersonalCode::mask`]
/// anywhere else.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonalCode {
    /// ASCII digits only (checked by `parse`), so it is always valid UTF-8.
    digits: [u8; 11],
    form: PersonalCodeForm,
}

impl PersonalCode {
    /// Parses `DDMMYY-CNNNK` or the same 11 digits without the hyphen.
    ///
    /// A code starting with `32` is the new form (no date, no check digit); any other code is the
    /// old form and must carry a century digit 0/1/2, a real calendar date and a matching check
    /// digit. Surrounding whitespace is not accepted: trim first if the source needs it.
    pub fn parse(s: &str) -> Result<PersonalCode, PersonalCodeError> {
        let digits = code_shape(s).ok_or(PersonalCodeError::Format)?;
        let d = |i: usize| u32::from(digits[i] - b'0');
        match (d(0), d(1)) {
            (3, 2) => {
                return Ok(PersonalCode {
                    digits,
                    form: PersonalCodeForm::New,
                });
            }
            // Days 30 and 31 are old-form codes; 33..39 fit neither form as issued so far.
            (3, second) if second >= 3 => return Err(PersonalCodeError::NewFormPrefix),
            _ => {}
        }
        let century = d(6);
        if century > 2 {
            return Err(PersonalCodeError::Century);
        }
        let year = 1800 + 100 * century as i32 + (d(4) * 10 + d(5)) as i32;
        if !is_real_date(year, d(2) * 10 + d(3), d(0) * 10 + d(1)) {
            return Err(PersonalCodeError::BirthDate);
        }
        let sum: u32 = PERSONAL_CODE_WEIGHTS
            .iter()
            .enumerate()
            .map(|(i, w)| w * d(i))
            .sum();
        // The sum is at most 9 * 55 = 495, so the subtraction cannot underflow.
        let check = (1101 - sum) % 11;
        if check == 10 || check != d(10) {
            return Err(PersonalCodeError::CheckDigit);
        }
        Ok(PersonalCode {
            digits,
            form: PersonalCodeForm::Old,
        })
    }

    /// Which form the code is.
    pub fn form(&self) -> PersonalCodeForm {
        self.form
    }

    /// The 11 digits without the hyphen, e.g. `01019012349`. This is the real code: personal data.
    pub fn as_str_digits(&self) -> &str {
        std::str::from_utf8(&self.digits).expect("parse admits ASCII digits only")
    }

    /// The code with the hyphen after the sixth digit, e.g. `010190-12349`. Personal data.
    pub fn formatted(&self) -> String {
        let digits = self.as_str_digits();
        format!("{}-{}", &digits[..6], &digits[6..])
    }

    /// The masked form safe for logs: the first six digits, a hyphen and five stars
    /// (`010190-*****`), for both forms.
    pub fn mask(&self) -> String {
        let mut masked = String::with_capacity(12);
        masked.push_str(&self.as_str_digits()[..6]);
        masked.push_str(MASKED_TAIL);
        masked
    }

    /// The birth date `(year, month, day)` of an old-form code; `None` for the new form, which
    /// carries no date.
    pub fn birth_date(&self) -> Option<(i32, u32, u32)> {
        if self.form != PersonalCodeForm::Old {
            return None;
        }
        let d = |i: usize| u32::from(self.digits[i] - b'0');
        let year = 1800 + 100 * d(6) as i32 + (d(4) * 10 + d(5)) as i32;
        Some((year, d(2) * 10 + d(3), d(0) * 10 + d(1)))
    }
}

impl fmt::Debug for PersonalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalCode")
            .field("masked", &self.mask())
            .field("form", &self.form)
            .finish()
    }
}

/// Masks anything shaped like a personal code (11 digits, or 6 digits, a hyphen and 5 digits),
/// valid or not, to `DDMMYY-*****`; any other input becomes `***`, so the result never contains
/// more than the first six digits of the input.
pub fn mask_personal_code(s: &str) -> String {
    match code_shape(s) {
        Some(digits) => {
            let mut masked = String::with_capacity(12);
            masked.push_str(&s[..6]); // the first six bytes are ASCII digits in both shapes
            debug_assert_eq!(masked.as_bytes(), &digits[..6]);
            masked.push_str(MASKED_TAIL);
            masked
        }
        None => "***".to_owned(),
    }
}

/// Whether `s` is a valid Enterprise Register number: 11 digits with
/// `Σ dᵢ·wᵢ mod 11 == 3`, `w = (9,1,4,8,3,10,2,5,7,6,1)`.
pub fn is_valid_reg_no(s: &str) -> bool {
    reg_no_check_error(s).is_none()
}

/// Why `s` is not a valid Enterprise Register number, or `None` when it is. The reason never
/// echoes the input.
pub fn reg_no_check_error(s: &str) -> Option<&'static str> {
    let bytes = s.as_bytes();
    if bytes.len() != 11 || !bytes.iter().all(u8::is_ascii_digit) {
        return Some("an Enterprise Register number must be exactly 11 digits");
    }
    if weighted_sum(bytes, &REG_NO_WEIGHTS) % 11 != 3 {
        return Some("the check digit of the Enterprise Register number does not match");
    }
    None
}

/// Appends to ten digits the eleventh that makes a valid Enterprise Register number, or `None`
/// when `first10` is not ten digits or no digit works (the needed value would be 10). Meant for
/// simulators building fictional fixtures.
pub fn complete_reg_no(first10: &str) -> Option<String> {
    let bytes = first10.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let partial = weighted_sum(bytes, &REG_NO_WEIGHTS[..10]) % 11;
    // The last weight is 1: the last digit must be (3 - partial) mod 11.
    let last = (3 + 11 - partial) % 11;
    let last = char::from_digit(last, 10)?;
    let mut number = String::with_capacity(11);
    number.push_str(first10);
    number.push(last);
    Some(number)
}

/// The 11 ASCII digits of `s` if it is shaped like a personal code (`DDDDDDDDDDD` or
/// `DDDDDD-DDDDD`), without any validation of their meaning.
fn code_shape(s: &str) -> Option<[u8; 11]> {
    let bytes = s.as_bytes();
    let mut digits = [0u8; 11];
    match bytes.len() {
        11 => digits.copy_from_slice(bytes),
        12 if bytes[6] == b'-' => {
            digits[..6].copy_from_slice(&bytes[..6]);
            digits[6..].copy_from_slice(&bytes[7..]);
        }
        _ => return None,
    }
    digits.iter().all(u8::is_ascii_digit).then_some(digits)
}

/// `Σ dᵢ·wᵢ` over ASCII digits (the caller has checked they are digits).
fn weighted_sum(digits: &[u8], weights: &[u32]) -> u32 {
    digits
        .iter()
        .zip(weights)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum()
}

/// Whether `day`.`month`.`year` exists in the (proleptic) Gregorian calendar.
fn is_real_date(year: i32, month: u32, day: u32) -> bool {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a valid old-form code from its first ten digits (test helper, mirrors the rule).
    fn with_check_digit(first10: &str) -> Option<String> {
        let sum = weighted_sum(first10.as_bytes(), &PERSONAL_CODE_WEIGHTS);
        let check = (1101 - sum) % 11;
        (check != 10).then(|| format!("{}-{}{check}", &first10[..6], &first10[6..]))
    }

    /// A code starting with `prefix7` (date and century digit) whose check digit is right, with
    /// the first serial that does not give check value 10.
    fn code_for(prefix7: &str) -> String {
        (0..1000)
            .find_map(|serial| with_check_digit(&format!("{prefix7}{serial:03}")))
            .expect("some serial has a check digit")
    }

    #[test]
    fn valid_old_form_fixtures_parse() {
        for fixture in ["161175-19997", "010190-12349", "150285-10005"] {
            let code = PersonalCode::parse(fixture).unwrap();
            assert_eq!(code.form(), PersonalCodeForm::Old);
            assert_eq!(code.formatted(), fixture);
            assert_eq!(code.as_str_digits(), fixture.replace('-', ""));
        }
    }

    #[test]
    fn hyphen_is_optional() {
        let with = PersonalCode::parse("010190-12349").unwrap();
        let without = PersonalCode::parse("01019012349").unwrap();
        assert_eq!(with, without);
        assert_eq!(without.formatted(), "010190-12349");
        assert_eq!(without.as_str_digits(), "01019012349");
    }

    #[test]
    fn wrong_check_digit_is_rejected() {
        assert_eq!(
            PersonalCode::parse("010190-12340"),
            Err(PersonalCodeError::CheckDigit)
        );
        assert_eq!(
            PersonalCode::parse("01019012340"),
            Err(PersonalCodeError::CheckDigit)
        );
    }

    #[test]
    fn check_digit_ten_is_invalid() {
        // Find ten digits whose check value is 10: every last digit must be rejected.
        let first10 = (0..1000)
            .map(|serial| format!("010190-1{serial:03}").replace('-', ""))
            .find(|f| with_check_digit(f).is_none())
            .expect("some serial gives check value 10");
        for last in 0..=9 {
            let code = format!("{}-{}{last}", &first10[..6], &first10[6..]);
            assert_eq!(
                PersonalCode::parse(&code),
                Err(PersonalCodeError::CheckDigit)
            );
        }
    }

    #[test]
    fn new_form_parses_without_check_digit() {
        for fixture in ["32064511111", "320645-11111", "32000000000", "329999-99999"] {
            let code = PersonalCode::parse(fixture).unwrap();
            assert_eq!(code.form(), PersonalCodeForm::New);
            assert_eq!(code.birth_date(), None);
        }
        let code = PersonalCode::parse("320645-11111").unwrap();
        assert_eq!(code.as_str_digits(), "32064511111");
        assert_eq!(code.formatted(), "320645-11111");
        assert_eq!(code.mask(), "320645-*****");
    }

    #[test]
    fn prefixes_33_to_39_are_neither_form() {
        for prefix in 33..=39 {
            let code = format!("{prefix}0645-11111");
            assert_eq!(
                PersonalCode::parse(&code),
                Err(PersonalCodeError::NewFormPrefix)
            );
        }
    }

    #[test]
    fn days_30_and_31_are_old_form() {
        let code = PersonalCode::parse(&code_for("3001901")).unwrap();
        assert_eq!(code.form(), PersonalCodeForm::Old);
        assert_eq!(code.birth_date(), Some((1990, 1, 30)));
        let code = PersonalCode::parse(&code_for("3112991")).unwrap();
        assert_eq!(code.birth_date(), Some((1999, 12, 31)));
        assert_eq!(
            PersonalCode::parse(&code_for("3104901")),
            Err(PersonalCodeError::BirthDate),
            "April has 30 days"
        );
    }

    #[test]
    fn birth_date_uses_the_century_digit() {
        let code = PersonalCode::parse("161175-19997").unwrap();
        assert_eq!(code.birth_date(), Some((1975, 11, 16)));
        let code = PersonalCode::parse(&code_for("0101050")).unwrap();
        assert_eq!(code.birth_date(), Some((1805, 1, 1)));
        let code = PersonalCode::parse(&code_for("0101052")).unwrap();
        assert_eq!(code.birth_date(), Some((2005, 1, 1)));
    }

    #[test]
    fn leap_years() {
        // 29 February 2000 (divisible by 400) exists.
        let code = code_for("2902002");
        assert_eq!(
            PersonalCode::parse(&code).unwrap().birth_date(),
            Some((2000, 2, 29))
        );
        // 29 February 2001 does not.
        let code = code_for("2902012");
        assert_eq!(
            PersonalCode::parse(&code),
            Err(PersonalCodeError::BirthDate)
        );
        // 29 February 1900 (divisible by 100, not 400) does not.
        let code = code_for("2902001");
        assert_eq!(
            PersonalCode::parse(&code),
            Err(PersonalCodeError::BirthDate)
        );
        // 29 February 2004 does.
        let code = code_for("2902042");
        assert!(PersonalCode::parse(&code).is_ok());
    }

    #[test]
    fn impossible_dates_are_rejected() {
        for first10 in ["0001901234", "0100901234", "0113901234", "3002901234"] {
            let code = code_for(&first10[..7]);
            assert_eq!(
                PersonalCode::parse(&code),
                Err(PersonalCodeError::BirthDate),
                "{first10}"
            );
        }
    }

    #[test]
    fn century_digit_must_be_0_1_or_2() {
        assert_eq!(
            PersonalCode::parse("010190-32349"),
            Err(PersonalCodeError::Century)
        );
        assert_eq!(
            PersonalCode::parse("010190-92349"),
            Err(PersonalCodeError::Century)
        );
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        for input in [
            "",
            "0101901234",
            "010190123490",
            "010190-1234",
            "010190-123490",
            "0101901-2349",
            "01019-012349",
            "010190 12349",
            " 010190-12349",
            "010190-12349 ",
            "010190-1234a",
            "O10190-12349",
            "abcdefghijk",
            "010190–12349", // an en dash, not a hyphen
            "０10190-12349",
        ] {
            assert_eq!(
                PersonalCode::parse(input),
                Err(PersonalCodeError::Format),
                "{input:?}"
            );
        }
    }

    #[test]
    fn errors_never_contain_the_input() {
        for input in [
            "010190-12340",
            "010190-92349",
            "290201-20005",
            "330645-11111",
            "01019",
        ] {
            let err = PersonalCode::parse(input).unwrap_err();
            let message = err.to_string();
            let debug = format!("{err:?}");
            for text in [&message, &debug] {
                assert!(!text.contains(input), "{text}");
                assert!(!text.contains(&input[..5.min(input.len())]), "{text}");
            }
        }
    }

    #[test]
    fn mask_shows_only_the_first_six_digits() {
        assert_eq!(
            PersonalCode::parse("010190-12349").unwrap().mask(),
            "010190-*****"
        );
        assert_eq!(
            PersonalCode::parse("01019012349").unwrap().mask(),
            "010190-*****"
        );
        assert_eq!(
            PersonalCode::parse("32064511111").unwrap().mask(),
            "320645-*****"
        );
    }

    #[test]
    fn debug_does_not_leak_the_code() {
        for fixture in ["161175-19997", "01019012349", "320645-11111"] {
            let code = PersonalCode::parse(fixture).unwrap();
            let debug = format!("{code:?} {code:#?} {:?}", Some(&code));
            let digits = code.as_str_digits();
            assert!(!debug.contains(digits), "{debug}");
            assert!(!debug.contains(&digits[6..]), "{debug}");
            assert!(!debug.contains(&code.formatted()), "{debug}");
            assert!(debug.contains(&code.mask()), "{debug}");
        }
    }

    #[test]
    fn mask_personal_code_masks_any_code_shape() {
        assert_eq!(mask_personal_code("010190-12349"), "010190-*****");
        assert_eq!(mask_personal_code("01019012349"), "010190-*****");
        // Invalid codes are masked too: the shape is enough.
        assert_eq!(mask_personal_code("010190-12340"), "010190-*****");
        assert_eq!(mask_personal_code("999999-99999"), "999999-*****");
        assert_eq!(mask_personal_code("320645-11111"), "320645-*****");
    }

    #[test]
    fn mask_personal_code_hides_everything_else() {
        for input in [
            "",
            "hello",
            "010190-1234",
            "0101901234900",
            "010190-12349x",
            " 010190-12349",
            "0101901234a",
            "ĀĒĪŪĶĻŅČŠŽ",
        ] {
            assert_eq!(mask_personal_code(input), "***", "{input:?}");
        }
    }

    #[test]
    fn reg_no_fixtures() {
        for valid in ["90000038741", "40003521600", "40003123453"] {
            assert!(is_valid_reg_no(valid), "{valid}");
            assert_eq!(reg_no_check_error(valid), None);
        }
        assert!(!is_valid_reg_no("40003123454"));
        assert_eq!(
            reg_no_check_error("40003123454"),
            Some("the check digit of the Enterprise Register number does not match")
        );
    }

    #[test]
    fn reg_no_wrong_shapes() {
        for input in [
            "",
            "4000312345",
            "400031234530",
            "4000312345a",
            "40003-123453",
            " 40003123453",
            "LV40003123453",
        ] {
            assert!(!is_valid_reg_no(input), "{input:?}");
            let reason = reg_no_check_error(input).unwrap();
            assert_eq!(
                reason,
                "an Enterprise Register number must be exactly 11 digits"
            );
            if !input.is_empty() {
                assert!(!reason.contains(input));
            }
        }
    }

    #[test]
    fn complete_reg_no_appends_the_check_digit() {
        assert_eq!(
            complete_reg_no("9000003874").as_deref(),
            Some("90000038741")
        );
        assert_eq!(
            complete_reg_no("4000352160").as_deref(),
            Some("40003521600")
        );
        assert_eq!(
            complete_reg_no("4000312345").as_deref(),
            Some("40003123453")
        );
        assert_eq!(complete_reg_no(""), None);
        assert_eq!(complete_reg_no("400031234"), None);
        assert_eq!(complete_reg_no("40003123453"), None);
        assert_eq!(complete_reg_no("400031234x"), None);
    }

    #[test]
    fn complete_reg_no_agrees_with_validation() {
        let mut completed = 0;
        let mut impossible = 0;
        for n in 0..2000u64 {
            let first10 = format!("{:010}", 4_000_300_000 + n * 7919);
            match complete_reg_no(&first10) {
                Some(number) => {
                    completed += 1;
                    assert!(number.starts_with(&first10));
                    assert!(is_valid_reg_no(&number), "{number}");
                    // Exactly one last digit works.
                    let valid = (0..=9)
                        .filter(|d| is_valid_reg_no(&format!("{first10}{d}")))
                        .count();
                    assert_eq!(valid, 1, "{first10}");
                }
                None => {
                    impossible += 1;
                    assert!(
                        (0..=9).all(|d| !is_valid_reg_no(&format!("{first10}{d}"))),
                        "{first10}"
                    );
                }
            }
        }
        assert!(completed > 0 && impossible > 0);
    }
}
