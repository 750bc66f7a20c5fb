//! The generated catalogue's ISBNs: book `i` of a seeded catalogue has one
//! fixed ISBN, so the storage manager that seeds it, the load generator that
//! borrows from it and the benchmark's pgbench script agree without a query.

/// The ISBN of generated book `i` (`979-XXXXXXXXXX`, 13 digits, valid check digit).
pub fn isbn(i: u64) -> String {
    let body = format!("979{:09}", i % 1_000_000_000);
    format!("979-{}{}", &body[3..], check_digit(&body))
}

/// EAN-13 check digit of 12 digits: weights 1,3,1,3,… from the left.
pub fn check_digit(twelve: &str) -> u32 {
    let sum: u32 = twelve
        .chars()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d } else { 3 * d })
        .sum();
    (10 - sum % 10) % 10
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate_isbn;

    #[test]
    fn generated_isbns_are_valid_and_distinct() {
        // Known-good ISBN-13 check digits.
        assert_eq!(check_digit("978013468599"), 1);
        assert_eq!(check_digit("978059600712"), 6);
        let a = isbn(1);
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("979-"));
        assert!(validate_isbn(&a).is_ok());
        assert_ne!(isbn(1), isbn(2));
        let digits: String = isbn(123_456).chars().filter(char::is_ascii_digit).collect();
        assert_eq!(
            check_digit(&digits[..12]),
            digits[12..].parse::<u32>().unwrap()
        );
    }
}
