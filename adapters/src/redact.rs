//! Scrubbing Latvian personal codes out of free text (log lines, error messages, peer bodies
//! quoted in errors): defence in depth behind "never log a personal code".
//!
//! [`redact`] runs on every log line, so the common case (nothing to scrub) is one pass over the
//! bytes with no allocation. It works on shapes, not validity: an invalid code is still personal
//! data, and over-masking a look-alike number is cheaper than leaking a real code.
//!
//! What counts as a code, always as a whole digit run (no digit right before or after it):
//! - `DDDDDD-DDDDD`: six digits, a hyphen, five digits — any digits, old or new form;
//! - eleven digits whose first six read as a plausible date (day 01-31, month 01-12): the old
//!   form written without its hyphen;
//! - eleven digits starting with `32`: the new form without its hyphen.
//!
//! Enterprise Register numbers (`40…`, `50…`, `90…`), phone numbers with `+371`, timestamps and
//! UUIDs do not fit these shapes and are left alone. A hex identifier whose digits happen to form
//! an eleven-digit run bounded by letters can be masked; that is accepted as the price of also
//! catching codes glued to text such as `PK%3A01019012349`.

use std::borrow::Cow;

use crate::ident::MASKED_TAIL;

/// Replaces every substring shaped like a personal code with its masked form `DDMMYY-*****`.
///
/// Returns [`Cow::Borrowed`] (no allocation) when nothing matched.
pub fn redact(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    // `text[..copied]` has already been written to `out`.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // `i` starts a maximal digit run: the byte before it (if any) is not a digit.
        let run = digit_run(bytes, i);
        match code_len_at(bytes, i, run) {
            Some(len) => {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 8));
                // Every boundary used here sits next to an ASCII byte, so it is a char boundary.
                out.push_str(&text[copied..i]);
                out.push_str(&text[i..i + 6]);
                out.push_str(MASKED_TAIL);
                i += len;
                copied = i;
            }
            None => i += run,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

/// The length of the digit run starting at `start`.
fn digit_run(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// If a personal code starts at `start` (the first digit of a maximal run of `run` digits),
/// how many bytes it spans.
fn code_len_at(bytes: &[u8], start: usize, run: usize) -> Option<usize> {
    let digits = &bytes[start..start + run];
    match run {
        11 if digits.starts_with(b"32") || is_plausible_date(digits) => Some(11),
        6 => {
            let after = &bytes[start + 6..];
            let tail_ok = after.len() >= 6
                && after[0] == b'-'
                && after[1..6].iter().all(u8::is_ascii_digit)
                && after.get(6).is_none_or(|b| !b.is_ascii_digit());
            tail_ok.then_some(12)
        }
        _ => None,
    }
}

/// Whether the first six digits read as `DDMMYY` with day 01-31 and month 01-12.
fn is_plausible_date(digits: &[u8]) -> bool {
    let two = |i: usize| (digits[i] - b'0') * 10 + (digits[i + 1] - b'0');
    (1..=31).contains(&two(0)) && (1..=12).contains(&two(2))
}

/// Renders a URL that may hold a password (a broker's, a database's) for messages and logs:
/// the password, if any, becomes `***`.
///
/// `amqp://tilts:secret@mq.example.lv:5672/%2f` -> `amqp://tilts:***@mq.example.lv:5672/%2f`.
/// A string that does not look like a URL but contains `@` is replaced entirely.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return if url.contains('@') {
            "***".to_string()
        } else {
            url.to_string()
        };
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    // The userinfo ends at the last '@' before any query or fragment, so a password with an
    // unescaped '/' or '@' in it is still covered.
    let search_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..search_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..rest_start],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::complete_reg_no;

    fn owned(text: &str) -> String {
        match redact(text) {
            Cow::Owned(s) => s,
            Cow::Borrowed(_) => panic!("expected a change in {text:?}"),
        }
    }

    fn untouched(text: &str) {
        assert!(
            matches!(redact(text), Cow::Borrowed(s) if s == text),
            "{text:?} became {:?}",
            redact(text)
        );
    }

    #[test]
    fn masks_a_code_in_json() {
        assert_eq!(
            owned(r#"{"personalCode":"010190-12349"}"#),
            r#"{"personalCode":"010190-*****"}"#
        );
        assert_eq!(
            owned(r#"{"personalCode":"01019012349","name":"Jānis"}"#),
            r#"{"personalCode":"010190-*****","name":"Jānis"}"#
        );
    }

    #[test]
    fn masks_several_codes_in_one_line() {
        assert_eq!(
            owned("from 161175-19997 to 150285-10005 and 01019012349, then 32064511111"),
            "from 161175-***** to 150285-***** and 010190-*****, then 320645-*****"
        );
        assert_eq!(
            owned("01019012349,16117519997;320645-11111"),
            "010190-*****,161175-*****;320645-*****"
        );
    }

    #[test]
    fn masks_at_start_and_end() {
        assert_eq!(owned("010190-12349"), "010190-*****");
        assert_eq!(owned("01019012349"), "010190-*****");
        assert_eq!(owned("010190-12349 rejected"), "010190-***** rejected");
        assert_eq!(owned("rejected: 010190-12349"), "rejected: 010190-*****");
        assert_eq!(owned("code=01019012349"), "code=010190-*****");
        assert_eq!(owned("010190-12349-"), "010190-*****-");
    }

    #[test]
    fn masks_invalid_codes_too() {
        assert_eq!(owned("pk 010190-12340"), "pk 010190-*****");
        assert_eq!(owned("pk 999999-99999"), "pk 999999-*****");
        assert_eq!(owned("pk 31129912345"), "pk 311299-*****");
    }

    #[test]
    fn masks_the_new_form() {
        assert_eq!(owned("pk=32064511111"), "pk=320645-*****");
        assert_eq!(owned("pk=320645-11111"), "pk=320645-*****");
    }

    #[test]
    fn masks_sign_in_identities_but_not_their_reg_numbers() {
        assert_eq!(
            owned("AU:90000038741-PK:01019012349"),
            "AU:90000038741-PK:010190-*****"
        );
        assert_eq!(
            owned("PK:010190-12349-UR:40003521600"),
            "PK:010190-*****-UR:40003521600"
        );
        assert_eq!(owned("PK%3A01019012349"), "PK%3A010190-*****");
    }

    #[test]
    fn keeps_multibyte_text_around_a_match() {
        assert_eq!(
            owned("Pērsona «010190-12349» — nav atrasta"),
            "Pērsona «010190-*****» — nav atrasta"
        );
    }

    #[test]
    fn longer_or_shorter_digit_runs_are_untouched() {
        untouched("order 010190123490");
        untouched("order 101019012349");
        untouched("order 0101901234");
        untouched("0101901-12349");
        untouched("010190-123490");
        untouched("010190-1234");
        untouched("1010190-12349");
        // The hyphen form needs both halves: a 6-run followed by a longer run stays.
        untouched("010190-123456789");
    }

    #[test]
    fn enterprise_register_numbers_are_untouched() {
        untouched("90000038741");
        untouched("reg no 40003521600, 40003123453 and 90000038741");
        untouched(r#"{"regNo":"40003123454"}"#);
    }

    #[test]
    fn timestamps_uuids_and_phones_are_untouched() {
        untouched("2026-11-28T02:40:42");
        untouched("2026-11-28T02:40:42.123456Z");
        untouched("20261128024042");
        untouched("550e8400-e29b-41d4-a716-446655440000");
        untouched("123e4567-e89b-12d3-a456-426614174000");
        untouched("tel. +37120000000, +371 20000000");
        untouched("took 1234567 µs at 2026-11-28 02:40:42");
    }

    #[test]
    fn eleven_digits_that_are_not_a_date_are_untouched() {
        untouched("00019012349"); // day 00
        untouched("32 is fine, 33064511111 too"); // day 33, not the new form
        untouched("01139012349"); // month 13
        untouched("01009012349"); // month 00
    }

    #[test]
    fn nothing_to_do_borrows() {
        for text in ["", "plain text", "ā", "12345", "-", "2026-11-28"] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text:?}");
        }
    }

    /// A tiny linear congruential generator (Knuth's MMIX constants): deterministic, no crates.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn digits(&mut self, count: usize) -> String {
            (0..count)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// Returns a code in one of the shapes `redact` covers, always written `DDDDDD-DDDDD`.
    fn random_code(rng: &mut Lcg) -> String {
        match rng.below(3) {
            // Old form: a plausible date, any century digit, any serial and check digit.
            0 | 1 => format!(
                "{:02}{:02}{}-{}",
                1 + rng.below(31),
                1 + rng.below(12),
                rng.digits(2),
                rng.digits(5)
            ),
            // New form.
            _ => format!("32{}-{}", rng.digits(4), rng.digits(5)),
        }
    }

    const SEPARATORS: [&str; 12] = [
        " ", "\"", ":", "=", ",", "-", "PK:", "\u{a0}", "ā", "T", " id ", "&pk=",
    ];

    #[test]
    fn generated_codes_never_survive() {
        let mut rng = Lcg(0x7117_5eed);
        for _ in 0..3000 {
            let mut text = String::new();
            let mut expected = String::new();
            let mut codes_written = Vec::new();
            let codes = 1 + rng.below(4);
            for _ in 0..codes {
                let sep = SEPARATORS[rng.below(SEPARATORS.len() as u64) as usize];
                text.push_str(sep);
                expected.push_str(sep);
                let code = random_code(&mut rng);
                let written = if rng.below(2) == 0 {
                    code.clone()
                } else {
                    code.replace('-', "")
                };
                text.push_str(&written);
                expected.push_str(&code[..6]);
                expected.push_str("-*****");
                codes_written.push(written);
            }
            if rng.below(2) == 0 {
                let sep = SEPARATORS[rng.below(SEPARATORS.len() as u64) as usize];
                text.push_str(sep);
                expected.push_str(sep);
            }
            let redacted = redact(&text);
            assert_eq!(redacted, expected, "{text:?}");
            // The separators carry no digits: only the six visible digits of each code remain,
            // so no digit after position 7 of any code survived.
            let digits = redacted.bytes().filter(u8::is_ascii_digit).count();
            assert_eq!(digits as u64, 6 * codes, "{redacted:?}");
            for code in &codes_written {
                assert!(
                    !redacted.contains(code.as_str()),
                    "{code} survived in {redacted:?}"
                );
            }
        }
    }

    #[test]
    fn generated_reg_numbers_are_never_touched() {
        let mut rng = Lcg(0x4000_3521);
        let mut checked = 0;
        while checked < 3000 {
            let prefix = ["40", "50", "90"][rng.below(3) as usize];
            let first10 = format!("{prefix}{}", rng.digits(8));
            if let Some(number) = complete_reg_no(&first10) {
                untouched(&format!("regNo={number}; \"{number}\""));
                checked += 1;
            }
        }
    }
}
