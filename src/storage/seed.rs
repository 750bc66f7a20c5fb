//! A large generated catalogue for load tests
//! (`biblioteca-almacenamiento seed --libros N`).
//!
//! Book `i` always gets the same valid ISBN-13 (`979-` + nine digits of `i` +
//! check digit), so seeding twice, or with a larger N later, adds only the
//! missing books and never touches existing ones.

use postgres::Client;

/// Rows per INSERT statement.
const BATCH: usize = 1000;

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
            isbns.push(biblioteca_protocol::catalogue::isbn(i));
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
