/* fdpo tokenizer train: learn a byte-level BPE (GPT-2 pre-tokenisation) from text files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli/commands.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/tokenizer.h"

static int tokenizer_train(int argc, char **argv) {
    long vocab_size, min_frequency;
    const char *out = NULL;
    flag_list data = {0};
    int overwrite = 0;
    fdpo_flag flags[] = {
        {"vocab-size", FLAG_COUNT, &vocab_size, "8192", "tokens in the vocabulary: 256 bytes + merges + <|endoftext|>", 0},
        {"min-frequency", FLAG_COUNT, &min_frequency, "2", "stop merging when the best pair occurs fewer times", 0},
        {"data", FLAG_LIST, &data, NULL, "a UTF-8 text file to learn from (repeatable; positional FILEs work too)", 0},
        {"out", FLAG_STR, &out, NULL, "directory for vocab.json + merges.txt + tokenizer_config.json (required)", 0},
        {"overwrite", FLAG_BOOL, &overwrite, "0", "replace tokenizer files already in --out", 0},
    };
    const char *usage = "fdpo tokenizer train --vocab-size N --out DIR FILE...";
    int n_pos = 0;
    char **pos = NULL;
    int rc = flags_parse("tokenizer train", usage, flags, NFLAGS(flags), argc, argv, &n_pos, &pos);
    if (rc == FLAGS_HELP) {   /* under mpirun, a rank that asked for --help alone: the others stop at the gate */
        free(pos);
        if (fdpo_dist_size() > 1) {
            fdpo_error("tokenizer train: --help on this rank, a run on another (every rank needs the same command line)");
            (void)cli_alone_gate(-1, NULL, NULL, NULL, 0);
        }
        return 0;
    }
    if (rc) { free(pos); (void)cli_alone_gate(-1, NULL, NULL, NULL, 0); return -1; }   /* every rank hears it */
    if (n_pos > 0 && flags_from_config("data")) data.n = 0;   /* FILE... replaces a config file's data */
    size_t n_files = (size_t)n_pos + data.n;   /* every --data (a second one used to replace the first) */
    const char **files = fdpo_malloc((n_files ? n_files : 1) * sizeof *files);
    for (int i = 0; i < n_pos; i++) files[i] = pos[i];
    for (size_t i = 0; i < data.n; i++) files[(size_t)n_pos + i] = data.v[i];
    free(pos);
    char **texts = fdpo_calloc(n_files ? n_files : 1, sizeof *texts);
    size_t *lens = fdpo_calloc(n_files ? n_files : 1, sizeof *lens);
    fdpo_bpe_trained t = {0};
    fdpo_tokenizer *check = NULL;
    int locked = 0;
    rc = -1;
    fdpo_bpe_train_opts o = {(size_t)vocab_size, (size_t)min_frequency};   /* signs: FLAG_COUNT; ranges: fdpo_bpe_train */
    int checked = !out ? fdpo_error("--out: required (usage: %s)", usage)
                : n_files == 0 ? fdpo_error("no text files given (usage: %s)", usage)
                : fdpo_bpe_train_opts_check(&o);
    /* under mpirun rank 0 alone trains and writes --out, so every rank must name the same
     * --out (a rank given another one was ignored) and the same flags and files (the place
     * each names); the others then wait for rank 0 */
    uint64_t h = fdpo_hash64(FDPO_HASH_INIT, (const long[]){vocab_size, min_frequency, overwrite}, 3 * sizeof(long));
    for (size_t i = 0; !checked && i < n_files; i++) {
        char *id = fdpo_path_identity(files[i]);
        h = fdpo_hash64(h, id, strlen(id) + 1);
        free(id);
    }
    int gate = cli_alone_gate(checked, "--out", out, "the flags or files (--vocab-size, --min-frequency, --overwrite, FILE...)", h);
    if (gate) { rc = gate > 0 ? 0 : -1; goto done; }
    /* one writer per --out, as for every run's OUT: the check below and the save under it */
    if (fdpo_dir_lock(out, "--out")) goto done;
    locked = 1;
    /* under the lock: the temp files (NAME.tmp.PID) of a save that was killed, as every run's OUT */
    fdpo_remove_stale_tmp(out);
    /* a journal the cleanup could not act on (one this build cannot read, or of a live process)
     * would make the reload after training and saving fail: refused before anything is done */
    if (fdpo_tokenizer_dir_settled(out)) { fdpo_error_context("--out"); goto done; }
    if (!overwrite) {
        /* another tokenizer, or a checkpoint whose tokenizer this one would silently replace */
        static const char *const HELD[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "encoder.json",
                                           "fdpo_tokenizer.json", "config.json", "chat_template.jinja"};
        for (size_t i = 0; i < sizeof HELD / sizeof HELD[0]; i++) {
            char *v = fdpo_path_join(out, HELD[i]);
            int exists = fdpo_file_exists(v);
            free(v);
            if (exists) { fdpo_error("--out: %s already holds %s (use --overwrite to replace it)", out, HELD[i]); goto done; }
        }
    }
    /* refused before anything is written (the reload check below came after the save, which
     * had replaced vocab.json and merges.txt by then) */
    static const char *const FIRST[] = {"fdpo_tokenizer.json", "tokenizer.json"};   /* load before vocab.json */
    for (size_t i = 0; i < sizeof FIRST / sizeof FIRST[0]; i++) {
        char *v = fdpo_path_join(out, FIRST[i]);
        int exists = fdpo_file_exists(v);
        free(v);
        if (exists) {
            fdpo_error("--out: %s holds %s, which loads before vocab.json: the tokenizer read from there would not be "
                       "the one trained (use an empty --out)", out, FIRST[i]);
            goto done;
        }
    }
    static const char *const WRITTEN[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    for (size_t k = 0; k < sizeof WRITTEN / sizeof WRITTEN[0]; k++) {
        char *w = fdpo_path_join(out, WRITTEN[k]);
        struct stat sw, sf;
        int have = stat(w, &sw) == 0;
        for (size_t i = 0; have && i < n_files; i++)
            if (stat(files[i], &sf) == 0 && sf.st_dev == sw.st_dev && sf.st_ino == sw.st_ino) {
                fdpo_error("%s: is --out's %s, which this run replaces; train from a copy", files[i], WRITTEN[k]);
                free(w);
                goto done;
            }
        free(w);
    }
    size_t total = 0;
    for (size_t i = 0; i < n_files; i++) {
        texts[i] = fdpo_read_file(files[i], &lens[i]);
        if (!texts[i]) goto done;
        if (lens[i] == 0) { fdpo_error("%s: empty file (nothing to train on)", files[i]); goto done; }
        total += lens[i];
        /* left out of the words (the encoder makes them byte tokens): said, not silent (a
         * Latin-1 or gzip file trained on what was left of it) */
        size_t bad = 0, first = 0;
        for (size_t at = 0; at < lens[i];) {
            size_t k = fdpo_utf8_first_invalid(texts[i] + at, lens[i] - at);
            if (k == lens[i] - at) break;
            if (!bad++) first = at + k;
            at += k + 1;
        }
        if (bad)
            fdpo_log(FDPO_LOG_WARN, "%s: %zu byte%s of ill-formed UTF-8 (the first at byte offset %zu) left out of the "
                     "training: is it UTF-8 text?", files[i], bad, bad == 1 ? "" : "s", first);
    }
    double t0 = fdpo_now();
    if (fdpo_bpe_train((const char *const *)texts, lens, n_files, &o, &t)) goto done;
    if (fdpo_bpe_trained_save(&t, out)) goto done;
    /* a template file there would be read as the trained tokenizer's chat template (it wins over
     * tokenizer_config.json's): it belonged to the tokenizer --overwrite replaces */
    char *jinja = fdpo_path_join(out, "chat_template.jinja");
    int gone = !fdpo_file_exists(jinja) || unlink(jinja) == 0;
    if (!gone) fdpo_error("--out: %s: cannot remove the replaced tokenizer's template: %s", jinja, strerror(errno));
    free(jinja);
    if (!gone) goto done;
    check = fdpo_tokenizer_load_dir(out); /* what every other command will load */
    if (!check) { fdpo_error_context("reloading the trained tokenizer"); goto done; }
    if (fdpo_tokenizer_vocab_size(check) != t.n_tokens) {   /* --overwrite over a directory with other files */
        fdpo_error("--out: %s: the tokenizer that loads from there has %zu tokens, not the %zu trained (another "
                   "tokenizer file there takes precedence over vocab.json; use an empty --out)", out,
                   fdpo_tokenizer_vocab_size(check), t.n_tokens);
        goto done;
    }
    fdpo_log(FDPO_LOG_INFO, "%s: %zu tokens (%zu merges) from %zu bytes, %zu distinct pre-tokens, in %.1fs",
             out, t.n_tokens, t.n_merges, total, t.n_words, fdpo_now() - t0);
    if (t.n_tokens < o.vocab_size)
        fdpo_log(FDPO_LOG_WARN, "only %zu tokens: no pair occurs --min-frequency %zu times beyond that", t.n_tokens, o.min_frequency);
    rc = 0;
done:
    if (locked) fdpo_dir_unlock(out);
    fdpo_tokenizer_free(check);
    fdpo_bpe_trained_free(&t);
    for (size_t i = 0; i < n_files; i++) free(texts[i]);
    free(texts); free(lens); free(files);
    return rc;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "train")) return tokenizer_train(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: fdpo tokenizer train --vocab-size N --out DIR FILE...  (fdpo tokenizer train --help)\n");
        return 0;
    }
    fdpo_error("expected a subcommand: train (usage: fdpo tokenizer train --vocab-size N --out DIR FILE...)");
    (void)cli_alone_gate(-1, NULL, NULL, NULL, 0);   /* under mpirun: said once, every rank ending */
    return -1;
}
