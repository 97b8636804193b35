/* SPDX-License-Identifier: Apache-2.0 */
/* Bulk int64 rows in and out of SQLite, on the sqlite3 handle of a Python
 * sqlite3.Connection. Python's executemany/fetchall build one object per
 * value (0.3 M rows/s in, ~0.5 M rows/s out for 13 columns); here the same
 * statements run in C over a numpy buffer, without the GIL. Only integers:
 * every column of `events` that bulk paths touch is an INTEGER. */
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

/* Run `sql` (an INSERT with ncols parameters) once per row of a row-major buffer. */
int wp_insert_i64(sqlite3 *db, const char *sql, const int64_t *data, int64_t nrows, int ncols, char *err, int errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

	if (rc != SQLITE_OK)
		return fail(db, NULL, rc, err, errlen);
	for (int64_t i = 0; i < nrows; i++) {
		const int64_t *row = data + i * ncols;

		for (int c = 0; c < ncols; c++)
			sqlite3_bind_int64(st, c + 1, row[c]);
		rc = sqlite3_step(st);
		if (rc != SQLITE_DONE)
			return fail(db, st, rc, err, errlen);
		sqlite3_reset(st);
	}
	sqlite3_finalize(st);
	return SQLITE_OK;
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
