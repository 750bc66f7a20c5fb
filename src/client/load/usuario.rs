//! Virtual users with coherent request sequences.
//!
//! A user only returns or renews a book it holds, and holds at most
//! [`MAX_PRESTAMOS`] at a time, so a run exercises the business rules instead
//! of producing a wall of `PrestamoNoEncontrado`. What a user holds is learned
//! from the replies; an unknown outcome is assumed applied, and the next reply
//! about that book corrects the belief either way.

use biblioteca_protocol::{CodigoError, Operacion, Peticion, Respuesta};

use super::spec::Mezcla;

/// Loans one virtual user holds at most; beyond it a loan becomes a return.
pub const MAX_PRESTAMOS: usize = 3;

/// splitmix64: fast, seedable, good enough to pick books and think times.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One virtual user and the books it believes it holds.
#[derive(Debug, Clone)]
pub struct Usuario {
    pub nombre: String,
    prestados: Vec<String>,
}

impl Usuario {
    pub fn new(nombre: String) -> Usuario {
        Usuario {
            nombre,
            prestados: Vec::new(),
        }
    }

    pub fn prestados(&self) -> &[String] {
        &self.prestados
    }

    /// The next request: the mix decides, what the user holds constrains.
    pub fn siguiente(&self, rng: &mut Rng, mezcla: &Mezcla, catalogo: &[String]) -> Peticion {
        let mut op = mezcla.elegir(rng.next_u64());
        if matches!(op, Operacion::Devolucion | Operacion::Renovacion) && self.prestados.is_empty()
        {
            op = Operacion::Prestamo;
        }
        if op == Operacion::Prestamo && self.prestados.len() >= MAX_PRESTAMOS {
            op = Operacion::Devolucion;
        }
        let isbn = match op {
            Operacion::Devolucion | Operacion::Renovacion => {
                self.prestados[rng.below(self.prestados.len())].clone()
            }
            Operacion::Prestamo => self.libro_no_prestado(rng, catalogo),
            Operacion::Consulta => catalogo[rng.below(catalogo.len())].clone(),
        };
        Peticion {
            operacion: op,
            isbn,
            usuario: self.nombre.clone(),
            id: None,
        }
    }

    fn libro_no_prestado(&self, rng: &mut Rng, catalogo: &[String]) -> String {
        // A few random draws; a small catalogue may be entirely held already.
        for _ in 0..8 {
            let isbn = &catalogo[rng.below(catalogo.len())];
            if !self.prestados.contains(isbn) {
                return isbn.clone();
            }
        }
        catalogo[rng.below(catalogo.len())].clone()
    }

    /// Updates what the user holds from a reply (`None`: outcome unknown).
    pub fn observar(&mut self, p: &Peticion, r: Option<&Respuesta>) {
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
            Some(true) if !self.prestados.contains(&p.isbn) => self.prestados.push(p.isbn.clone()),
            Some(false) => self.prestados.retain(|i| i != &p.isbn),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::spec::catalogo;
    use serde_json::Value;

    fn ok(op: Operacion) -> Respuesta {
        Respuesta::ok(op.as_str(), "ok", Value::Null)
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        assert!((0..1000).all(|_| a.below(5) < 5));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&a.unit())));
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn sequences_are_coherent() {
        let cat = catalogo(Some(50));
        let mix = Mezcla::parse("prestamo=1,devolucion=1,renovacion=1").unwrap();
        let mut rng = Rng::new(42);
        let mut u = Usuario::new("u".into());
        // A user without loans can only borrow.
        assert_eq!(
            u.siguiente(&mut rng, &mix, &cat).operacion,
            Operacion::Prestamo
        );
        for _ in 0..500 {
            let p = u.siguiente(&mut rng, &mix, &cat);
            match p.operacion {
                Operacion::Prestamo => assert!(!u.prestados().contains(&p.isbn)),
                _ => assert!(u.prestados().contains(&p.isbn), "{p:?}"),
            }
            u.observar(&p, Some(&ok(p.operacion)));
            assert!(u.prestados().len() <= MAX_PRESTAMOS);
        }
    }

    #[test]
    fn replies_correct_beliefs() {
        let mut u = Usuario::new("u".into());
        let p = |op, isbn: &str| Peticion {
            operacion: op,
            isbn: isbn.into(),
            usuario: "u".into(),
            id: None,
        };
        let err = |op: Operacion, c| Respuesta::error(op.as_str(), c, "x");
        u.observar(&p(Operacion::Prestamo, "a"), None);
        u.observar(
            &p(Operacion::Prestamo, "b"),
            Some(&err(
                Operacion::Prestamo,
                CodigoError::SinEjemplaresDisponibles,
            )),
        );
        u.observar(
            &p(Operacion::Prestamo, "c"),
            Some(&err(Operacion::Prestamo, CodigoError::PrestamoActivo)),
        );
        assert_eq!(u.prestados(), ["a", "c"]);
        u.observar(
            &p(Operacion::Renovacion, "a"),
            Some(&err(
                Operacion::Renovacion,
                CodigoError::PrestamoNoEncontrado,
            )),
        );
        u.observar(
            &p(Operacion::Devolucion, "c"),
            Some(&ok(Operacion::Devolucion)),
        );
        assert!(u.prestados().is_empty());
    }
}
