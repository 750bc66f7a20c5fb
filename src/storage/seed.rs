//! A large generated catalogue for load tests
//! (`biblioteca-almacenamiento seed --libros N`).
//!
//! Book `i` always gets the same valid ISBN-13 (`979-` + nine digits of `i` +
//! check digit), so seeding twice, or with a larger N later, adds only the
//! missing books and never touches existing ones.

use postgres::Client;

/// Rows per INSERT statement.
const BATCH: usize = 1000;

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

/// Inserts books `1..=libros` with `ejemplares` copies each when missing;
/// returns how many were new.
pub fn seed(client: &mut Client, libros: u64, ejemplares: i32) -> Result<u64, postgres::Error> {
    let mut inserted = 0;
    let mut start = 1;
    while start <= libros {
        let end = (start + BATCH as u64 - 1).min(libros);
        let mut isbns = Vec::with_capacity(BATCH);
        let mut titulos = Vec::with_capacity(BATCH);
        let mut autores = Vec::with_capacity(BATCH);
        for i in start..=end {
            isbns.push(isbn(i));
            titulos.push(format!("Libro de prueba {i}"));
            autores.push(format!("Autor {}", i % 97 + 1));
        }
        inserted += client.execute(
            "INSERT INTO libros (isbn, titulo, autor, ejemplares) \
             SELECT i, t, a, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS x(i, t, a) \
             ON CONFLICT (isbn) DO NOTHING",
            &[&isbns, &titulos, &autores, &ejemplares],
        )?;
        start = end + 1;
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::validate_isbn;

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
