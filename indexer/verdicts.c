/*
 * verdicts.c - moderators' verdicts on suggested duplicates (schema version 2): storing
 * them, exporting them as a pair file for qdup-train --init, and migrating a version 1
 * store, which had no verdicts table, in place.
 *
 * A verdict says that a moderator closed question NEW as a duplicate of OLD, or
 * dismissed that suggestion. Both must be live when it is given; the row keeps both
 * texts as they were then, so removing or compacting either question later loses
 * nothing learned. Verdicts are not changes of the index (no sequence number, nothing
 * for FAISS): one INSERT OR REPLACE under the writer mutex, so a repeated verdict on
 * the same (NEW, OLD) replaces the earlier one.
 *
 * The migration's DDL is taken from schema.sql itself (its CREATE TABLE verdicts
 * statement), so a migrated store and a new one cannot drift apart.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <sqlite3.h>

#include "qdup/common.h"
#include "qdup/store.h"
#include "store_impl.h"

int st_migrate(qd_store *s)
{
    static const char start[] = "CREATE TABLE verdicts";
    const char *ddl = strstr(qd_store_schema_sql, start);
    const char *end = ddl ? strstr(ddl, ");") : NULL;
    QD_ASSERT(ddl && end); /* schema.sql is compiled in */
    char sql[2048];
    QD_ASSERT((size_t)(end + 2 - ddl) < sizeof sql);
    memcpy(sql, ddl, (size_t)(end + 2 - ddl));
    sql[end + 2 - ddl] = '\0';

    int rc = 0, type;
    int64_t version = 0;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, "starting a transaction");
    rc = st_meta_get(s, "schema_version", &type, &version, NULL, 0);
    /* Anything but a plain version 1 is left to qd_store_open's checks. */
    if (!rc && type == SQLITE_INTEGER && version == 1) {
        rc = st_db_has_table(s, "verdicts");
        if (rc == 0)
            rc = st_db_exec(s, sql);
        if (rc >= 0)
            rc = st_meta_set(s, "schema_version", 'i', 2, NULL, 0);
    }
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "migrating to schema version 2");
    if (rc)
        st_db_rollback(s);
    return rc;
}

static int id_fail(int rc, const char *id, size_t len)
{
    return st_fail(rc, "no live question with id \"%.*s\"", (int)(len > 200 ? 200 : len), id);
}

int qd_store_verdict(qd_store *s, const char *new_id, size_t new_len, const char *old_id,
                     size_t old_len, int duplicate)
{
    st_enter();
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    if (new_len == old_len && memcmp(new_id, old_id, new_len) == 0)
        return st_fail(QD_ERR_INVAL, "a question cannot be a duplicate of itself");
    pthread_mutex_lock(&s->wmu);
    sqlite3_stmt *st = NULL;
    int rc = 0;
    /* Rows are freed only by writers, which hold wmu: a and b stay valid here. */
    const st_row *a = st_map_get_ext(&s->by_ext, new_id, new_len);
    const st_row *b = st_map_get_ext(&s->by_ext, old_id, old_len);
    if (!a)
        rc = id_fail(QD_ERR_NOTFOUND, new_id, new_len);
    else if (!b)
        rc = id_fail(QD_ERR_NOTFOUND, old_id, old_len);
    else if ((rc = st_db_has_table(s, "verdicts")) == 0)
        rc = st_fail(QD_ERR_UNAVAILABLE, "%s is a schema version 1 store not yet migrated "
                     "(it is when opened for writing with room on disk)", s->db_path);
    if (rc == 1)
        rc = st_db_prepare(s, "INSERT OR REPLACE INTO verdicts (new_id, new_text, old_id, "
                           "old_text, duplicate, decided) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           &st);
    if (!rc) {
        sqlite3_bind_text(st, 1, st_row_ext(a), (int)a->id_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, st_row_text(a), (int)a->text_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, st_row_ext(b), (int)b->id_len, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, st_row_text(b), (int)b->text_len, SQLITE_STATIC);
        sqlite3_bind_int(st, 5, duplicate ? 1 : 0);
        sqlite3_bind_double(st, 6, qd_wall_now());
        rc = st_db_run(s, st);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/* A TSV field quoted RFC 4180 style (inner quotes doubled), so that tabs, line breaks
 * and quotes in a text survive the pair reader (pairs.h). */
static void put_quoted(FILE *out, const unsigned char *t, int n)
{
    fputc('"', out);
    for (int i = 0; i < n; i++) {
        if (t[i] == '"')
            fputc('"', out);
        fputc(t[i], out);
    }
    fputc('"', out);
}

int qd_store_export_verdicts(qd_store *s, FILE *out)
{
    st_enter();
    pthread_mutex_lock(&s->wmu);
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
    fputs("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n", out);
    int have = rc ? rc : st_db_has_table(s, "verdicts");
    if (have < 0)
        rc = have;
    /* qids number the distinct questions (an id with its text as it was) in order of
     * first appearance: the pair reader takes decimal qids only, and an external id
     * whose text changed (removed and added again) is another question. */
    if (have == 1)
        rc = st_db_prepare(
            s,
            "WITH q(ext, txt, o) AS (SELECT new_id, new_text, 2 * rowid FROM verdicts "
            "UNION ALL SELECT old_id, old_text, 2 * rowid + 1 FROM verdicts), "
            "n(ext, txt, qid) AS (SELECT ext, txt, row_number() OVER (ORDER BY min(o)) "
            "FROM q GROUP BY ext, txt) "
            "SELECT n1.qid, n2.qid, v.new_text, v.old_text, v.duplicate FROM verdicts v "
            "JOIN n n1 ON n1.ext = v.new_id AND n1.txt = v.new_text "
            "JOIN n n2 ON n2.ext = v.old_id AND n2.txt = v.old_text ORDER BY v.rowid",
            &st);
    int src = SQLITE_DONE;
    for (int64_t i = 0; have == 1 && !rc && (src = sqlite3_step(st)) == SQLITE_ROW; i++) {
        fprintf(out, "%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t", i,
                (int64_t)sqlite3_column_int64(st, 0), (int64_t)sqlite3_column_int64(st, 1));
        put_quoted(out, sqlite3_column_text(st, 2), sqlite3_column_bytes(st, 2));
        fputc('\t', out);
        put_quoted(out, sqlite3_column_text(st, 3), sqlite3_column_bytes(st, 3));
        fprintf(out, "\t%d\n", sqlite3_column_int(st, 4));
    }
    if (have == 1 && !rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the verdicts");
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL); /* ends the read transaction */
    pthread_mutex_unlock(&s->wmu);
    if (!rc && ferror(out))
        rc = st_fail(QD_ERR_IO, "writing the verdicts failed");
    return rc;
}
