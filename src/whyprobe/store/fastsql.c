/* SPDX-License-Identifier: Apache-2.0 */
/* Bulk int64 rows in and out of SQLite, on the sqlite3 handle of a Python
 * sqlite3.Connection. Python's executemany/fetchall build one object per
 * value (0.3 M rows/s in, ~0.5 M rows/s out for 13 columns); here the same
 * statements run in C over a numpy buffer, without the GIL. Integers, plus
 * one optional TEXT column (`events.detail`) taken from one byte buffer. */
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int fail(sqlite3 *db, sqlite3_stmt *st, int rc, char *err, int errlen)
{
	if (err && errlen > 0) {
		strncpy(err, sqlite3_errmsg(db), errlen - 1);
		err[errlen - 1] = 0;
	}
	if (st)
		sqlite3_finalize(st);
	return rc ? rc : SQLITE_ERROR;
}

const char *wp_db_filename(sqlite3 *db)
{
	return sqlite3_db_filename(db, "main");
}

/* Bind `rows` rows of ncols integers, each followed by one TEXT parameter when
 * `text` is set: the bytes text[toff[r], toff[r] + tlen[r]) of row r (UTF-8),
 * NULL where tlen[r] < 0; then step once. */
static int bind_step(sqlite3_stmt *st, const int64_t *vals, int ncols, int rows, const char *text, const int64_t *toff,
		     const int32_t *tlen)
{
	int p = 1, rc;

	for (int r = 0; r < rows; r++) {
		for (int c = 0; c < ncols; c++)
			sqlite3_bind_int64(st, p++, vals[r * ncols + c]);
		if (!text)
			continue;
		if (tlen[r] < 0)
			sqlite3_bind_null(st, p++);
		else
			sqlite3_bind_text(st, p++, text + toff[r], tlen[r], SQLITE_STATIC);
	}
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc;
}

/* Insert the rows of a row-major buffer: `many` rows per step of `sql_many`
 * (an INSERT of `many` VALUES tuples; one step per row costs ~1/3 more CPU),
 * the remainder one per step of `sql_one`. With `text`, each row also binds
 * its TEXT parameter after the integers (see bind_step). */
static int insert_rows(sqlite3 *db, const char *sql_many, int many, const char *sql_one, const int64_t *data, int64_t nrows,
		       int ncols, const char *text, const int64_t *toff, const int32_t *tlen, char *err, int errlen)
{
	sqlite3_stmt *sm = NULL, *s1 = NULL;
	int64_t i = 0;
	int rc;

	if (many > 1 && nrows >= many) {
		rc = sqlite3_prepare_v2(db, sql_many, -1, &sm, NULL);
		if (rc != SQLITE_OK)
			return fail(db, NULL, rc, err, errlen);
		for (; i + many <= nrows; i += many) {
			rc = bind_step(sm, data + i * ncols, ncols, many, text, toff ? toff + i : NULL, tlen ? tlen + i : NULL);
			if (rc != SQLITE_DONE)
				return fail(db, sm, rc, err, errlen);
		}
		sqlite3_finalize(sm);
	}
	if (i == nrows)
		return SQLITE_OK;
	rc = sqlite3_prepare_v2(db, sql_one, -1, &s1, NULL);
	if (rc != SQLITE_OK)
		return fail(db, NULL, rc, err, errlen);
	for (; i < nrows; i++) {
		rc = bind_step(s1, data + i * ncols, ncols, 1, text, toff ? toff + i : NULL, tlen ? tlen + i : NULL);
		if (rc != SQLITE_DONE)
			return fail(db, s1, rc, err, errlen);
	}
	sqlite3_finalize(s1);
	return SQLITE_OK;
}

int wp_insert_i64(sqlite3 *db, const char *sql_many, int many, const char *sql_one, const int64_t *data, int64_t nrows, int ncols,
		  char *err, int errlen)
{
	return insert_rows(db, sql_many, many, sql_one, data, nrows, ncols, NULL, NULL, NULL, err, errlen);
}

int wp_insert_i64_text(sqlite3 *db, const char *sql_many, int many, const char *sql_one, const int64_t *data, int64_t nrows, int ncols,
		       const char *text, const int64_t *toff, const int32_t *tlen, char *err, int errlen)
{
	return insert_rows(db, sql_many, many, sql_one, data, nrows, ncols, text, toff, tlen, err, errlen);
}

/* Run a SELECT of ncols integer columns; rows come back row-major in *out (free with wp_free). */
int wp_select_i64(sqlite3 *db, const char *sql, const int64_t *params, int nparams, int ncols, int64_t **out, int64_t *nrows,
		  char *err, int errlen)
{
	sqlite3_stmt *st = NULL;
	int64_t cap = 1 << 16, n = 0;
	int64_t *buf;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

	*out = NULL;
	*nrows = 0;
	if (rc != SQLITE_OK)
		return fail(db, NULL, rc, err, errlen);
	if (sqlite3_column_count(st) != ncols)
		return fail(db, st, SQLITE_MISMATCH, err, errlen);
	for (int p = 0; p < nparams; p++)
		sqlite3_bind_int64(st, p + 1, params[p]);
	buf = malloc(cap * ncols * sizeof(*buf));
	if (!buf)
		return fail(db, st, SQLITE_NOMEM, err, errlen);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			int64_t *grown = realloc(buf, 2 * cap * ncols * sizeof(*buf));

			if (!grown) {
				free(buf);
				return fail(db, st, SQLITE_NOMEM, err, errlen);
			}
			buf = grown;
			cap *= 2;
		}
		for (int c = 0; c < ncols; c++)
			buf[n * ncols + c] = sqlite3_column_int64(st, c);
		n++;
	}
	if (rc != SQLITE_DONE) {
		free(buf);
		return fail(db, st, rc, err, errlen);
	}
	sqlite3_finalize(st);
	*out = buf;
	*nrows = n;
	return SQLITE_OK;
}

void wp_free(void *p)
{
	free(p);
}
