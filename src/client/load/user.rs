//! Virtual users with coherent request sequences.
//!
//! A user only returns or renews a book it holds, and holds at most
//! [`MAX_LOANS`] at a time, so a run exercises the business rules instead
//! of producing a wall of `PrestamoNoEncontrado`. What a user holds is learned
//! from the replies; an unknown outcome is assumed applied, and the next reply
//! about that book corrects the belief either way.

use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::spec::Mix;

/// Loans one virtual user holds at most; beyond it a loan becomes a return.
pub const MAX_LOANS: usize = 3;

/// One virtual user and the books it believes it holds.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    held: Vec<String>,
}

impl User {
    pub fn new(name: String) -> User {
        User {
            name,
            held: Vec::new(),
        }
    }

    pub fn held(&self) -> &[String] {
        &self.held
    }

    /// The next request: the mix decides, what the user holds constrains.
    pub fn next_request(&self, rng: &mut SmallRng, mix: &Mix, catalogue: &[String]) -> Peticion {
        let mut op = mix.pick(rng.next_u64());
        if matches!(op, Operacion::Devolucion | Operacion::Renovacion) && self.held.is_empty() {
            op = Operacion::Prestamo;
        }
        if op == Operacion::Prestamo && self.held.len() >= MAX_LOANS {
            op = Operacion::Devolucion;
        }
        let isbn = match op {
            Operacion::Devolucion | Operacion::Renovacion => self.held.choose(rng),
            Operacion::Prestamo => self.book_not_held(rng, catalogue),
            Operacion::Consulta => catalogue.choose(rng),
        }
        .cloned()
        .unwrap_or_default();
        Peticion {
            operacion: op,
            isbn,
            usuario: self.name.clone(),
            id: None,
        }
    }

    fn book_not_held<'a>(&self, rng: &mut SmallRng, catalogue: &'a [String]) -> Option<&'a String> {
        // A few random draws; a small catalogue may be entirely held already.
        (0..8)
            .filter_map(|_| catalogue.choose(rng))
            .find(|isbn| !self.held.contains(isbn))
            .or_else(|| catalogue.choose(rng))
    }

    /// Updates what the user holds from a reply (`None`: outcome unknown).
    pub fn observe(&mut self, p: &Peticion, r: Option<&Respuesta>) {
        let code = r.and_then(|r| r.error);
        let exito = r.map(|r| r.exito);
        let holds = match (p.operacion, exito, code) {
            (Operacion::Prestamo, Some(true) | None, _) => Some(true),
            (_, _, Some(CodigoError::PrestamoActivo)) => Some(true),
            (Operacion::Devolucion, Some(true) | None, _) => Some(false),
            (_, _, Some(CodigoError::PrestamoNoEncontrado)) => Some(false),
            _ => None,
        };
        match holds {
            Some(true) if !self.held.contains(&p.isbn) => self.held.push(p.isbn.clone()),
            Some(false) => self.held.retain(|i| i != &p.isbn),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::spec::catalogue;
    use rand::SeedableRng;
    use serde_json::Value;

    fn ok(op: Operacion) -> Respuesta {
        Respuesta::ok(op.as_str(), "ok", Value::Null)
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let cat = catalogue(Some(50));
        let mix = Mix::default();
        let run = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut u = User::new("u".into());
            (0..100)
                .map(|_| {
                    let p = u.next_request(&mut rng, &mix, &cat);
                    u.observe(&p, Some(&ok(p.operacion)));
                    (p.operacion, p.isbn)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn sequences_are_coherent() {
        let cat = catalogue(Some(50));
        let mix = Mix::parse("prestamo=1,devolucion=1,renovacion=1").unwrap();
        let mut rng = SmallRng::seed_from_u64(42);
        let mut u = User::new("u".into());
        // A user without loans can only borrow.
        assert_eq!(
            u.next_request(&mut rng, &mix, &cat).operacion,
            Operacion::Prestamo
        );
        for _ in 0..500 {
            let p = u.next_request(&mut rng, &mix, &cat);
            match p.operacion {
                Operacion::Prestamo => assert!(!u.held().contains(&p.isbn)),
                _ => assert!(u.held().contains(&p.isbn), "{p:?}"),
            }
            u.observe(&p, Some(&ok(p.operacion)));
            assert!(u.held().len() <= MAX_LOANS);
        }
    }

    #[test]
    fn replies_correct_beliefs() {
        let mut u = User::new("u".into());
        let p = |op, isbn: &str| Peticion {
            operacion: op,
            isbn: isbn.into(),
            usuario: "u".into(),
            id: None,
        };
        let err = |op: Operacion, c| Respuesta::error(op.as_str(), c, "x");
        u.observe(&p(Operacion::Prestamo, "a"), None);
        u.observe(
            &p(Operacion::Prestamo, "b"),
            Some(&err(
                Operacion::Prestamo,
                CodigoError::SinEjemplaresDisponibles,
            )),
        );
        u.observe(
            &p(Operacion::Prestamo, "c"),
            Some(&err(Operacion::Prestamo, CodigoError::PrestamoActivo)),
        );
        assert_eq!(u.held(), ["a", "c"]);
        u.observe(
            &p(Operacion::Renovacion, "a"),
            Some(&err(
                Operacion::Renovacion,
                CodigoError::PrestamoNoEncontrado,
            )),
        );
        u.observe(
            &p(Operacion::Devolucion, "c"),
            Some(&ok(Operacion::Devolucion)),
        );
        assert!(u.held().is_empty());
    }
}
