/* The metrics JSONL writer: DIR/metrics.jsonl, one object per logged step, with the lines
 * logged after a resumed checkpoint dropped. */
#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/dist.h"
#include "fdpo/trainer.h"

int fdpo_metrics_open(fdpo_metrics *mw, const char *dir, size_t keep_upto_step) {
    memset(mw, 0, sizeof *mw);
    if (fdpo_dist_rank() > 0) return 0;   /* under MPI rank 0 alone writes metrics */
    mw->path = fdpo_path_join(dir, "metrics.jsonl");
    mw->keep_upto_step = keep_upto_step;
    mw->pending = 1;
    return 0;
}

/* The file is touched at the first line only: a run that fails before it logs anything (a
 * bad option or bad data found after OUT was claimed) leaves no empty metrics.jsonl and
 * leaves an earlier run's lines as they were. */
static int metrics_start(fdpo_metrics *mw) {
    size_t keep_upto_step = mw->keep_upto_step;
    if (mw->pending && keep_upto_step != SIZE_MAX && fdpo_file_exists(mw->path)) {
        /* drop what was logged after the checkpoint we resume from: it will be logged again */
        size_t len;
        char *text = fdpo_read_file(mw->path, &len);
        if (!text) return -1;
        char *kept = fdpo_malloc(len + 1);
        size_t k = 0;
        for (char *p = text; keep_upto_step > 0 && p < text + len;) {
            char *nl = memchr(p, '\n', (size_t)(text + len - p));
            char *end = nl ? nl : text + len;
            cJSON *o = cJSON_ParseWithLength(p, (size_t)(end - p));
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
            if (cJSON_IsNumber(st) && st->valuedouble <= (double)keep_upto_step) {
                memcpy(kept + k, p, (size_t)(end - p)); k += (size_t)(end - p); kept[k++] = '\n';
            }
            cJSON_Delete(o);
            p = end + 1;
        }
        int rc = fdpo_write_file_atomic(mw->path, kept, k);
        free(text); free(kept);
        if (rc) return -1;
    }
    mw->pending = 0;
    mw->f = fopen(mw->path, "a");
    if (!mw->f) return fdpo_error("%s: cannot open for writing: %s", mw->path, strerror(errno));
    return 0;
}

static void line_append(fdpo_metrics *mw, const char *s) {
    size_t n = strlen(s);
    if (mw->len + n + 1 > mw->cap) { mw->cap = (mw->len + n + 1) * 2; mw->line = fdpo_realloc(mw->line, mw->cap); }
    memcpy(mw->line + mw->len, s, n + 1);
    mw->len += n;
}

void fdpo_metrics_begin(fdpo_metrics *mw, size_t step) {
    char buf[64];
    mw->len = 0;
    snprintf(buf, sizeof buf, "{\"step\": %zu", step);
    line_append(mw, buf);
}

void fdpo_metrics_add(fdpo_metrics *mw, const char *key, double value) {
    char num[40];
    fdpo_fmt_double(num, sizeof num, value);
    line_append(mw, ", ");
    cJSON *ks = cJSON_CreateString(key);
    char *kq = cJSON_PrintUnformatted(ks);
    line_append(mw, kq);
    cJSON_free(kq); cJSON_Delete(ks);
    line_append(mw, ": ");
    line_append(mw, num);
}

int fdpo_metrics_end(fdpo_metrics *mw) {
    line_append(mw, "}\n");
    if (!mw->path) return 0;   /* not rank 0 */
    if (mw->held) {   /* until the save that replaces the old run (fdpo_trainer.replacing) */
        if (mw->text_len + mw->len + 1 > mw->text_cap) {
            mw->text_cap = (mw->text_len + mw->len + 1) * 2;
            mw->text = fdpo_realloc(mw->text, mw->text_cap);
        }
        memcpy(mw->text + mw->text_len, mw->line, mw->len + 1);
        mw->text_len += mw->len;
        return 0;
    }
    if (!mw->f && metrics_start(mw)) return -1;
    if (fputs(mw->line, mw->f) < 0 || fflush(mw->f) != 0) return fdpo_error("%s: write failed: %s", mw->path, strerror(errno));
    return 0;
}

int fdpo_metrics_settle(fdpo_metrics *mw) {
    if (!mw->path || !mw->pending || mw->held) return 0;
    if (metrics_start(mw)) return -1;
    fclose(mw->f);
    mw->f = NULL;
    return 0;
}

void fdpo_metrics_close(fdpo_metrics *mw) {
    if (mw->f) fclose(mw->f);
    free(mw->path); free(mw->line); free(mw->text);
    memset(mw, 0, sizeof *mw);
}
