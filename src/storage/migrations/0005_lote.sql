-- Several write requests for ONE book in one transaction and one statement:
-- the storage manager queues a book's writes while one of its batches runs
-- and sends the next ones together (storage::dispatch), so requests for a hot
-- book share one commit, i.e. one synchronous-standby round trip, instead of
-- queueing as row-lock waiters that each hold the lock across their own.
--
-- Each request runs through its own write function (migration 0004), in the
-- order given, so every guarantee of a single request holds for each:
-- the request-id claim (a later duplicate of an id in the same batch finds
-- the claim of the earlier one, sees its stored reply and changes nothing),
-- the business checks against the effects of the requests before it, and the
-- reply stored under the id in the same transaction. Any error rolls the
-- whole batch back: no outcome without its effect.
--
-- Returns a jsonb array with one envelope per request (see migration 0004),
-- or, when the node must not take writes, an array holding the single
-- 'cercada' envelope (checked first, so nothing was claimed).
CREATE OR REPLACE FUNCTION biblioteca_lote(
    p_operaciones text[], p_ids text[], p_isbns text[], p_usuarios text[],
    p_timeline integer, p_dias_prestamo integer, p_dias_renovacion integer,
    p_max_renovaciones integer
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_salidas jsonb[] := '{}';
    v_salida jsonb;
BEGIN
    IF array_length(p_ids, 1) IS DISTINCT FROM array_length(p_operaciones, 1)
       OR array_length(p_ids, 1) IS DISTINCT FROM array_length(p_isbns, 1)
       OR array_length(p_ids, 1) IS DISTINCT FROM array_length(p_usuarios, 1) THEN
        RAISE EXCEPTION 'biblioteca_lote: arrays of different lengths';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
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
        v_salidas := v_salidas || v_salida;
    END LOOP;
    RETURN to_jsonb(v_salidas);
END $$;
