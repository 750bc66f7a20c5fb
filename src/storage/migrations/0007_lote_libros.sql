-- Batches of several books: the storage manager now puts the writes of every
-- book that is ready into one transaction (storage::dispatch), so one
-- transaction may lock several `libros` rows. To keep concurrent batches
-- free of deadlocks the requests run in a fixed order: by book (isbn), and
-- within a book in arrival order. Every transaction therefore takes its book
-- locks in ascending isbn order, each after that request's id claim, the
-- order of migration 0004 (solicitudes -> libros -> prestamos) per book.
--
-- Same signature, arguments and envelopes as migration 0005; the outcomes
-- come back in the order the requests were given, whatever order they ran
-- in. A business refusal (no copies left, renewal limit, no active loan) is
-- an outcome stored under its id like a success, not an error: it neither
-- aborts nor changes the other requests of the batch, which only see its
-- effects when it had any (requests of the same book, in order).
CREATE OR REPLACE FUNCTION biblioteca_lote(
    p_operaciones text[], p_ids text[], p_isbns text[], p_usuarios text[],
    p_timeline integer, p_dias_prestamo integer, p_dias_renovacion integer,
    p_max_renovaciones integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := coalesce(array_length(p_ids, 1), 0);
    v_salidas jsonb[] := array_fill(NULL::jsonb, ARRAY[v_n]);
    v_salida jsonb;
    i integer;
BEGIN
    IF array_length(p_ids, 1) IS DISTINCT FROM array_length(p_operaciones, 1)
       OR array_length(p_ids, 1) IS DISTINCT FROM array_length(p_isbns, 1)
       OR array_length(p_ids, 1) IS DISTINCT FROM array_length(p_usuarios, 1) THEN
        RAISE EXCEPTION 'biblioteca_lote: arrays of different lengths';
    END IF;
    FOR i IN SELECT o.n::integer FROM unnest(p_isbns) WITH ORDINALITY AS o(isbn, n)
             ORDER BY o.isbn COLLATE "C", o.n LOOP
        CASE p_operaciones[i]
            WHEN 'prestamo' THEN
                v_salida := biblioteca_prestamo(p_ids[i], p_isbns[i], p_usuarios[i],
                                                p_timeline, p_dias_prestamo);
            WHEN 'devolucion' THEN
                v_salida := biblioteca_devolucion(p_ids[i], p_isbns[i], p_usuarios[i],
                                                  p_timeline);
            WHEN 'renovacion' THEN
                v_salida := biblioteca_renovacion(p_ids[i], p_isbns[i], p_usuarios[i],
                                                  p_timeline, p_dias_renovacion,
                                                  p_max_renovaciones);
            ELSE
                RAISE EXCEPTION 'biblioteca_lote: % is not a write operation', p_operaciones[i];
        END CASE;
        -- Writability does not change within a transaction: a fenced node
        -- refuses the first request, before anything was claimed.
        IF v_salida->>'resultado' = 'cercada' THEN
            RETURN jsonb_build_array(v_salida);
        END IF;
        v_salidas[i] := v_salida;
    END LOOP;
    RETURN to_jsonb(v_salidas);
END $$;
