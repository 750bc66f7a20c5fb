-- Catalogue, loans and the request ids that make every write exactly-once.

CREATE TABLE IF NOT EXISTS libros (
    isbn        text PRIMARY KEY,
    titulo      text NOT NULL,
    autor       text NOT NULL DEFAULT '',
    ejemplares  integer NOT NULL CHECK (ejemplares >= 0)
);

CREATE TABLE IF NOT EXISTS prestamos (
    id                serial PRIMARY KEY,
    isbn              text NOT NULL REFERENCES libros (isbn),
    usuario           text NOT NULL,
    fecha_prestamo    timestamptz NOT NULL DEFAULT now(),
    fecha_devolucion  date NOT NULL,
    estado            text NOT NULL DEFAULT 'ACTIVO' CHECK (estado IN ('ACTIVO', 'DEVUELTO')),
    renovaciones      integer NOT NULL DEFAULT 0 CHECK (renovaciones BETWEEN 0 AND 2),
    fecha_entrega     timestamptz,
    solicitud         text
);

-- At most one active loan of a book per user.
CREATE UNIQUE INDEX IF NOT EXISTS prestamos_un_activo
    ON prestamos (isbn, usuario) WHERE estado = 'ACTIVO';
CREATE INDEX IF NOT EXISTS prestamos_usuario ON prestamos (usuario);

-- One row per write request id, with the reply it got (NULL only inside the
-- transaction that is applying it).
CREATE TABLE IF NOT EXISTS solicitudes (
    id         text PRIMARY KEY,
    operacion  text NOT NULL,
    isbn       text NOT NULL,
    usuario    text NOT NULL,
    respuesta  jsonb,
    creado     timestamptz NOT NULL DEFAULT now()
);
