//! The load generator's small languages: durations, think times, rates, the
//! operation mix and the book catalogue.
//!
//! Each parser returns a reason the CLI can print as is; none panics on input.

use std::time::Duration;

use biblioteca_protocol::Operacion;

/// ISBNs of the guide's catalogue, used when no `--libros` is given.
pub const CATALOGO_GUIA: [&str; 4] = [
    "978-0134685991",
    "978-0135957059",
    "978-0596007126",
    "978-1491950357",
];

/// The catalogue the virtual clients borrow from.
pub fn catalogo(libros: Option<u64>) -> Vec<String> {
    match libros {
        // Books 1..=N of `biblioteca-almacenamiento seed --libros N`.
        Some(n) if n > 0 => (1..=n).map(biblioteca_protocol::catalogue::isbn).collect(),
        _ => CATALOGO_GUIA.iter().map(|s| s.to_string()).collect(),
    }
}

/// `500ms`, `30s`, `1.5s`, `2m`, `1h`; a bare number is seconds.
pub fn duracion(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m, 1h)"))?;
    let factor = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    let secs = n * factor;
    if !secs.is_finite() || !(0.0..=86_400.0 * 7.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A think-time range `0.5s..2s` (or a single fixed duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Espera {
    pub min: Duration,
    pub max: Duration,
}

pub fn espera(s: &str) -> Result<Espera, String> {
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (duracion(a)?, duracion(b)?),
        None => {
            let d = duracion(s)?;
            (d, d)
        }
    };
    if a > b {
        return Err(format!("think time {s:?}: the minimum exceeds the maximum"));
    }
    Ok(Espera { min: a, max: b })
}

/// Requests per second of `500/s`, `30/m`, `7200/h` or a bare number.
pub fn tasa(s: &str) -> Result<f64, String> {
    let (num, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 500/s)"))?;
    let per_secs = match per.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown rate unit {other:?} in {s:?}")),
    };
    let rate = n / per_secs;
    if !rate.is_finite() || rate <= 0.0 || rate > 1_000_000.0 {
        return Err(format!("rate {s:?} must be positive and at most 1000000/s"));
    }
    Ok(rate)
}

/// Weighted operation mix: `prestamo=40,devolucion=40,renovacion=20`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mezcla {
    pesos: Vec<(Operacion, u32)>,
    total: u32,
}

impl Default for Mezcla {
    fn default() -> Self {
        Mezcla {
            pesos: vec![
                (Operacion::Prestamo, 40),
                (Operacion::Devolucion, 40),
                (Operacion::Renovacion, 20),
            ],
            total: 100,
        }
    }
}

impl Mezcla {
    pub fn parse(s: &str) -> Result<Mezcla, String> {
        let mut pesos: Vec<(Operacion, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} must be OPERATION=WEIGHT"))?;
            let op = Operacion::parse(name.trim())
                .ok_or_else(|| format!("unknown operation {:?} in the mix", name.trim()))?;
            let w: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {:?} of {op} is not a whole number", weight.trim()))?;
            if pesos.iter().any(|(o, _)| *o == op) {
                return Err(format!("{op} appears twice in the mix"));
            }
            pesos.push((op, w));
        }
        let total = pesos
            .iter()
            .try_fold(0u32, |acc, (_, w)| acc.checked_add(*w))
            .ok_or("mix weights are too large")?;
        if total == 0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(Mezcla { pesos, total })
    }

    /// The operation whose cumulative weight covers `r` (any u64).
    pub fn elegir(&self, r: u64) -> Operacion {
        let mut x = (r % u64::from(self.total)) as u32;
        for (op, w) in &self.pesos {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        Operacion::Prestamo
    }
}

impl std::fmt::Display for Mezcla {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.pesos.iter().map(|(o, w)| format!("{o}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duracion("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duracion("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duracion("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duracion("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duracion("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "m", "2x", "-1s", "1e9h", "1..2s"] {
            assert!(duracion(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn think_times_and_rates() {
        let e = espera("0.5s..2s").unwrap();
        assert_eq!(e.min, Duration::from_millis(500));
        assert_eq!(e.max, Duration::from_secs(2));
        assert_eq!(espera("1s").unwrap().min, Duration::from_secs(1));
        assert!(espera("2s..1s").is_err());
        assert_eq!(tasa("500/s"), Ok(500.0));
        assert_eq!(tasa("60/m"), Ok(1.0));
        assert_eq!(tasa("20"), Ok(20.0));
        assert!(tasa("0/s").is_err());
        assert!(tasa("5/d").is_err());
        assert!(tasa("x/s").is_err());
    }

    #[test]
    fn mixes() {
        let m = Mezcla::parse("prestamo=40,devolucion=40,renovacion=20").unwrap();
        assert_eq!(m, Mezcla::default());
        assert_eq!(m.elegir(0), Operacion::Prestamo);
        assert_eq!(m.elegir(39), Operacion::Prestamo);
        assert_eq!(m.elegir(40), Operacion::Devolucion);
        assert_eq!(m.elegir(99), Operacion::Renovacion);
        assert_eq!(m.elegir(100), Operacion::Prestamo);
        let short = Mezcla::parse("PRES=1, cons=0").unwrap();
        assert!((0..50).all(|r| short.elegir(r) == Operacion::Prestamo));
        assert_eq!(short.to_string(), "prestamo=1,consulta=0");
        for bad in [
            "",
            "prestamo",
            "robo=1",
            "prestamo=x",
            "prestamo=0",
            "PRES=1,prestamo=2",
        ] {
            assert!(Mezcla::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn catalogues() {
        assert_eq!(catalogo(None).len(), 4);
        let c = catalogo(Some(3));
        assert_eq!(c[0], biblioteca_protocol::catalogue::isbn(1));
        assert_eq!(c[2], biblioteca_protocol::catalogue::isbn(3));
        assert!(c
            .iter()
            .all(|i| biblioteca_protocol::validate_isbn(i).is_ok()));
    }
}
