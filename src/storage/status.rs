//! The storage manager's `{"operacion":"status"}` reply, built from what the
//! threads share, without touching the database.

use serde_json::json;

use super::Shared;
use biblioteca_protocol::Respuesta;

/// `{"operacion":"status"}`: answered without touching the database.
pub(super) fn status_reply(shared: &Shared) -> Vec<u8> {
    let backend = shared.backend();
    let writer = backend.writer().map(|(_, n)| n.cfg.name.clone());
    let mut mensaje = match &writer {
        Some(n) => format!("storage manager up; writes go to {n}"),
        None => "storage manager up; no writable database node".to_string(),
    };
    if shared.replication.registro().estado
        == biblioteca_protocol::config::ReplicationState::Degradada
    {
        mensaje.push_str("; replication degradada: no standby confirms commits");
    }
    Respuesta::ok(
        "status",
        mensaje,
        json!({
            "servicio": "almacenamiento",
            "nodo": writer,
            "uptime_s": shared.started.elapsed().as_secs(),
            "atendidas": shared.answered(),
            "en_curso": shared.in_flight(),
            "workers": backend.config.workers,
            "nodos": backend.nodes_status(),
            "timeline": shared.fencing.newest(),
            "replicacion": shared.replication.status(backend.config.replicacion),
            "roles_from": backend.config.roles_from,
        }),
    )
    .to_bytes()
}
