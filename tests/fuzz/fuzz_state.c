/* libFuzzer: a checkpoint's training_state.json, what --resume and fdpo info read (fdpo_train_state_read_settings,
 * then fdpo_train_state_load up to the moments file, which is absent here: the JSON is what is
 * fuzzed). The input is written as DIR/training_state.json under /dev/shm (memory). Settings
 * read back must have names and typed values; a bad file is an error naming it. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/train.h"
#include "fdpo/trainer.h"

static char dir[64], file[96];

static void cleanup(void) { unlink(file); rmdir(dir); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/dev/shm/fdpo-fuzz-state-%d", (int)getpid());
        snprintf(file, sizeof file, "%s/training_state.json", dir);
        if (mkdir(dir, 0700) && errno != EEXIST) abort();
        atexit(cleanup);
    }
    FILE *f = fopen(file, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size)) abort();
    fclose(f);
    fdpo_settings s;
    size_t step;
    if (fdpo_train_state_read_settings(dir, &s, &step) == 0) {
        for (size_t i = 0; i < s.n; i++) {
            if (!s.v[i].key) abort();
            if (s.v[i].type == FDPO_SETTING_STR && !s.v[i].str) abort();
            char text[256];
            fdpo_setting_text(&s.v[i], text, sizeof text);
        }
        if (fdpo_settings_check_resume(&s, &s)) abort();   /* a state always agrees with itself */
        fdpo_settings_free(&s);
        size_t step_only;   /* what fdpo info reads: the step alone, the same step */
        if (fdpo_train_state_read_settings(dir, NULL, &step_only) || step_only != step) abort();
    }
    size_t step_only;   /* the step alone (fdpo info) reads or names the file */
    if (fdpo_train_state_read_settings(dir, NULL, &step_only) && !strstr(fdpo_last_error(), "training_state.json")) abort();
    fdpo_train_state st;
    fdpo_adamw opt;
    memset(&opt, 0, sizeof opt);
    if (fdpo_train_state_load(dir, &st, &opt, NULL) == 0) abort();   /* no moments file: never loads */
    return 0;
}
