//! Text checks shared by every crate that stores or shows text from outside: which
//! characters render as nothing or reorder the text around them.

/// Characters that render as nothing or reorder the text around them, so that an address
/// holding one looks like another: every format character (general category Cf, from
/// Unicode 16.0 `DerivedGeneralCategory.txt`: zero-width space and joiners, bidi marks,
/// embeddings, overrides and isolates, the byte-order mark, tags…), the other
/// default-ignorable code points (`DerivedCoreProperties.txt`: variation selectors, the
/// combining grapheme joiner, Hangul fillers, Khmer inherent vowels) and the blank
/// Braille pattern.
pub fn invisible(c: char) -> bool {
    let c = u32::from(c);
    INVISIBLE.iter().any(|(low, high)| (*low..=*high).contains(&c))
}

/// The code point ranges [`invisible`] refuses, inclusive, for whoever must spell the same
/// set elsewhere (the REST contract's patterns).
pub const INVISIBLE: &[(u32, u32)] = &[
    // Cf, general category "format".
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
    // Default_Ignorable_Code_Point beyond Cf.
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0FFF),
    // Blank, though not ignorable.
    (0x2800, 0x2800),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_default_ignorable_characters_are_invisible() {
        for c in [
            '\u{200B}',
            '\u{202E}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{034F}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{2800}',
        ] {
            assert!(invisible(c), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn visible_letters_and_combining_marks_are_not() {
        for c in ['a', 'à', 'ж', 'ع', '中', ' ', '\u{0301}'] {
            assert!(!invisible(c), "U+{:04X}", u32::from(c));
        }
    }
}
