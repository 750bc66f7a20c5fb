-- One function per write operation: the whole exactly-once transaction of a
-- loan, return or renewal in ONE statement, so the storage manager sends one
-- round trip per write (in autocommit) instead of ten; under synchronous
-- replication round trips were most of a request's cost (docs/benchmark.md).
--
-- Same logic and lock order as before (solicitudes -> libros -> prestamos):
-- the writability check (not in recovery, timeline not older than the newest
-- the storage manager has seen), the request-id claim (ON CONFLICT DO NOTHING
-- waits for a concurrent transaction holding the same id), the checks and
-- changes, and the reply stored under the id in the same transaction.
--
-- Every function returns a jsonb envelope read by storage::ops:
--   {"resultado": "aplicada", "respuesta": {...}}      applied now
--   {"resultado": "repetida", "operacion", "isbn", "usuario", "respuesta"}
--                                                      id seen before
--   {"resultado": "cercada", "motivo": "..."}          node must not write
-- Replies have the shape of protocol::Respuesta; the texts are the ones the
-- Rust code produced before this migration.

-- The writability check and the request-id claim every write starts with;
-- NULL when the caller may go on (the id is now claimed by this transaction).
CREATE OR REPLACE FUNCTION biblioteca_inicio(
    p_id text, p_operacion text, p_isbn text, p_usuario text, p_timeline integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_timeline integer;
    v_previa solicitudes%ROWTYPE;
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN jsonb_build_object('resultado', 'cercada', 'motivo', 'node is in recovery');
    END IF;
    -- The timeline a primary writes on, right after a promotion too (see
    -- storage::nodes::PROBE_SQL).
    v_timeline := ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int;
    IF v_timeline < p_timeline THEN
        RETURN jsonb_build_object('resultado', 'cercada', 'motivo',
            format('node is on timeline %s, older than the newest seen (%s)', v_timeline, p_timeline));
    END IF;
    INSERT INTO solicitudes (id, operacion, isbn, usuario)
        VALUES (p_id, p_operacion, p_isbn, p_usuario)
        ON CONFLICT (id) DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_previa FROM solicitudes WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('resultado', 'cercada', 'motivo',
            format('request id %s vanished while being read', p_id));
    END IF;
    RETURN jsonb_build_object('resultado', 'repetida', 'operacion', v_previa.operacion,
        'isbn', v_previa.isbn, 'usuario', v_previa.usuario, 'respuesta', v_previa.respuesta);
END $$;

-- Stores the reply under the id (same transaction) and wraps it.
CREATE OR REPLACE FUNCTION biblioteca_fin(p_id text, p_respuesta jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_respuesta jsonb := p_respuesta || jsonb_build_object('id', p_id);
BEGIN
    UPDATE solicitudes SET respuesta = v_respuesta WHERE id = p_id;
    RETURN jsonb_build_object('resultado', 'aplicada', 'respuesta', v_respuesta);
END $$;

CREATE OR REPLACE FUNCTION biblioteca_error(p_operacion text, p_codigo text, p_mensaje text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('exito', false, 'operacion', p_operacion,
        'mensaje', p_mensaje, 'error', p_codigo)
$$;

CREATE OR REPLACE FUNCTION biblioteca_prestamo(
    p_id text, p_isbn text, p_usuario text, p_timeline integer, p_dias integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_inicio jsonb := biblioteca_inicio(p_id, 'prestamo', p_isbn, p_usuario, p_timeline);
    v_titulo text;
    v_ejemplares integer;
    v_quedan integer;
    v_prestamo integer;
    v_fecha text;
    v_respuesta jsonb;
BEGIN
    IF v_inicio IS NOT NULL THEN
        RETURN v_inicio;
    END IF;
    SELECT titulo, ejemplares INTO v_titulo, v_ejemplares
        FROM libros WHERE isbn = p_isbn FOR UPDATE;
    IF NOT FOUND THEN
        v_respuesta := biblioteca_error('prestamo', 'LibroNoEncontrado',
            format('no book with isbn %s in the catalogue', p_isbn));
    ELSIF EXISTS (SELECT 1 FROM prestamos
                  WHERE isbn = p_isbn AND usuario = p_usuario AND estado = 'ACTIVO') THEN
        v_respuesta := biblioteca_error('prestamo', 'PrestamoActivo',
            format('%s already has ''%s'' (%s) on loan', p_usuario, v_titulo, p_isbn));
    ELSIF v_ejemplares <= 0 THEN
        v_respuesta := biblioteca_error('prestamo', 'SinEjemplaresDisponibles',
            format('no copies of ''%s'' (%s) are available', v_titulo, p_isbn));
    ELSE
        UPDATE libros SET ejemplares = ejemplares - 1 WHERE isbn = p_isbn
            RETURNING ejemplares INTO v_quedan;
        INSERT INTO prestamos (isbn, usuario, fecha_prestamo, fecha_devolucion, estado,
                               renovaciones, solicitud)
            VALUES (p_isbn, p_usuario, now(), CURRENT_DATE + p_dias, 'ACTIVO', 0, p_id)
            RETURNING id, to_char(fecha_devolucion, 'YYYY-MM-DD') INTO v_prestamo, v_fecha;
        v_respuesta := jsonb_build_object('exito', true, 'operacion', 'prestamo',
            'mensaje', format('loan registered: ''%s'' for %s until %s (%s copies left)',
                              v_titulo, p_usuario, v_fecha, v_quedan),
            'datos', jsonb_build_object('isbn', p_isbn, 'usuario', p_usuario,
                'titulo', v_titulo, 'fecha_devolucion', v_fecha,
                'ejemplares_disponibles', v_quedan, 'prestamo_id', v_prestamo));
    END IF;
    RETURN biblioteca_fin(p_id, v_respuesta);
END $$;

CREATE OR REPLACE FUNCTION biblioteca_devolucion(
    p_id text, p_isbn text, p_usuario text, p_timeline integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_inicio jsonb := biblioteca_inicio(p_id, 'devolucion', p_isbn, p_usuario, p_timeline);
    v_titulo text;
    v_quedan integer;
    v_prestamo integer;
    v_respuesta jsonb;
BEGIN
    IF v_inicio IS NOT NULL THEN
        RETURN v_inicio;
    END IF;
    SELECT titulo INTO v_titulo FROM libros WHERE isbn = p_isbn FOR UPDATE;
    IF NOT FOUND THEN
        RETURN biblioteca_fin(p_id, biblioteca_error('devolucion', 'LibroNoEncontrado',
            format('no book with isbn %s in the catalogue', p_isbn)));
    END IF;
    SELECT id INTO v_prestamo FROM prestamos
        WHERE isbn = p_isbn AND usuario = p_usuario AND estado = 'ACTIVO' FOR UPDATE;
    IF NOT FOUND THEN
        v_respuesta := biblioteca_error('devolucion', 'PrestamoNoEncontrado',
            format('%s has no active loan of ''%s'' (%s)', p_usuario, v_titulo, p_isbn));
    ELSE
        UPDATE prestamos SET estado = 'DEVUELTO', fecha_entrega = now() WHERE id = v_prestamo;
        UPDATE libros SET ejemplares = ejemplares + 1 WHERE isbn = p_isbn
            RETURNING ejemplares INTO v_quedan;
        v_respuesta := jsonb_build_object('exito', true, 'operacion', 'devolucion',
            'mensaje', format('return registered: ''%s'' from %s (%s copies available)',
                              v_titulo, p_usuario, v_quedan),
            'datos', jsonb_build_object('isbn', p_isbn, 'usuario', p_usuario,
                'titulo', v_titulo, 'prestamo_id', v_prestamo,
                'ejemplares_disponibles', v_quedan));
    END IF;
    RETURN biblioteca_fin(p_id, v_respuesta);
END $$;

CREATE OR REPLACE FUNCTION biblioteca_renovacion(
    p_id text, p_isbn text, p_usuario text, p_timeline integer,
    p_dias integer, p_maximo integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_inicio jsonb := biblioteca_inicio(p_id, 'renovacion', p_isbn, p_usuario, p_timeline);
    v_titulo text;
    v_prestamo integer;
    v_renovaciones integer;
    v_fecha text;
    v_respuesta jsonb;
BEGIN
    IF v_inicio IS NOT NULL THEN
        RETURN v_inicio;
    END IF;
    SELECT titulo INTO v_titulo FROM libros WHERE isbn = p_isbn;
    IF NOT FOUND THEN
        RETURN biblioteca_fin(p_id, biblioteca_error('renovacion', 'LibroNoEncontrado',
            format('no book with isbn %s in the catalogue', p_isbn)));
    END IF;
    SELECT id, renovaciones, to_char(fecha_devolucion, 'YYYY-MM-DD')
        INTO v_prestamo, v_renovaciones, v_fecha
        FROM prestamos
        WHERE isbn = p_isbn AND usuario = p_usuario AND estado = 'ACTIVO' FOR UPDATE;
    IF NOT FOUND THEN
        v_respuesta := biblioteca_error('renovacion', 'PrestamoNoEncontrado',
            format('%s has no active loan of ''%s'' (%s)', p_usuario, v_titulo, p_isbn));
    ELSIF v_renovaciones >= p_maximo THEN
        v_respuesta := biblioteca_error('renovacion', 'LimiteRenovaciones',
            format('the loan of ''%s'' to %s was already renewed %s times (the maximum); it is due %s',
                   v_titulo, p_usuario, v_renovaciones, v_fecha));
    ELSE
        UPDATE prestamos SET fecha_devolucion = fecha_devolucion + p_dias,
                             renovaciones = renovaciones + 1
            WHERE id = v_prestamo
            RETURNING to_char(fecha_devolucion, 'YYYY-MM-DD'), renovaciones
            INTO v_fecha, v_renovaciones;
        v_respuesta := jsonb_build_object('exito', true, 'operacion', 'renovacion',
            'mensaje', format('loan of ''%s'' to %s renewed until %s (%s renewals left)',
                              v_titulo, p_usuario, v_fecha, p_maximo - v_renovaciones),
            'datos', jsonb_build_object('isbn', p_isbn, 'usuario', p_usuario,
                'titulo', v_titulo, 'prestamo_id', v_prestamo, 'fecha_devolucion', v_fecha,
                'renovaciones', v_renovaciones,
                'renovaciones_restantes', p_maximo - v_renovaciones));
    END IF;
    RETURN biblioteca_fin(p_id, v_respuesta);
END $$;
