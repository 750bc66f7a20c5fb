//! User names of any script, one user per name whatever its Unicode form:
//! `muñoz` typed precomposed (NFC) and with a combining tilde (NFD) is one
//! row in the database; a `consulta` needs no `usuario`.

use serde_json::json;

use crate::common::{assert_ok, sql, World, ISBNS};

pub fn one_user_per_name_in_any_form(w: &mut World) {
    let isbn = ISBNS[2];
    let (nfc, nfd) = ("muñoz", "mun\u{303}oz");
    assert_ne!(nfc.as_bytes(), nfd.as_bytes());
    let r = w.send(&json!({"operacion": "prestamo", "isbn": isbn, "usuario": nfd, "id": "uni-1"}));
    assert_ok(&r, "loan as the NFD spelling");
    let r = w.send(&json!({"operacion": "prestamo", "isbn": isbn, "usuario": nfc, "id": "uni-2"}));
    assert_eq!(
        r["error"], "PrestamoActivo",
        "the NFC spelling is another user: {r}"
    );
    let rows = sql(
        w.primary(),
        &format!(
            "SELECT string_agg(usuario, ',') FROM prestamos WHERE isbn = '{isbn}' AND estado = 'ACTIVO' AND usuario LIKE 'mu%'"
        ),
    );
    assert_eq!(rows, nfc, "the database holds the NFC name once");
    let r =
        w.send(&json!({"operacion": "devolucion", "isbn": isbn, "usuario": nfc, "id": "uni-3"}));
    assert_ok(&r, "return as the NFC spelling");
    for name in ["joão", "usuário_ñandú"] {
        let r = w.send(&json!({"operacion": "renovacion", "isbn": isbn, "usuario": name}));
        assert_ne!(r["error"], "PeticionInvalida", "{name} refused: {r}");
    }
    let r = w.send(&json!({"operacion": "consulta", "isbn": isbn}));
    assert_ok(&r, "consulta without usuario");
}
